//! `p2g layout`: the blocks of a document page (text, title, figure, table, ...).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use p2g::agents::layout::{LayoutAgent, LayoutArgs, LayoutConfig, LayoutOutput};
use p2g::agents::AgentManifest;
use p2g::models::Store;
use p2g::vision::{draw, BBox, Image, LoadOptions, Quad};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct LayoutCmd {
    /// The page to analyse (JPEG, PNG, WebP, TIFF, BMP).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// Print {"width","height","elapsed_ms","regions":[{"kind","score","bbox"}]}.
    #[arg(long)]
    json: bool,

    /// Write the image with the regions drawn (one colour per kind).
    #[arg(long, value_name = "OUT.png")]
    draw: Option<PathBuf>,

    /// Analyse only inside this box: x1,y1,x2,y2 in image pixels.
    #[arg(long, value_name = "X1,Y1,X2,Y2", value_parser = super::ocr::parse_bbox, allow_hyphen_values = true)]
    region: Option<BBox>,

    /// Only blocks of this kind (repeatable): a class name or a word for one ("title",
    /// "heading", "table", "chart", "caption", "footer"…).
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,

    /// Keep regions whose class score is above this (0..1; default 0.5).
    #[arg(long, value_name = "P")]
    score_threshold: Option<f32>,

    #[command(flatten)]
    models: ModelArgs,

    /// Refuse images with more pixels than this (protects against decompression bombs).
    #[arg(long, value_name = "N", default_value_t = p2g::vision::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    /// An edited layout manifest (thresholds, class names) instead of the embedded one.
    #[arg(long, value_name = "TOML")]
    manifest: Option<PathBuf>,
}

pub fn run(cmd: LayoutCmd) -> Result<ExitCode> {
    if let Some(p) = cmd.score_threshold {
        anyhow::ensure!(
            (0.0..=1.0).contains(&p),
            "--score-threshold must be between 0 and 1"
        );
    }
    let store = Store::open_default()?;
    let mut cfg = LayoutConfig::embedded()?;
    if let Some(path) = &cmd.manifest {
        let m = AgentManifest::load(path)?;
        cfg.options = m.options()?;
        cfg.manifest = m;
    }
    cfg.session = cmd.models.session();
    if let Some(p) = cmd.score_threshold {
        cfg.options.score_threshold = p;
    }
    let agent = LayoutAgent::load(&cmd.models.source(&store), &store, cfg)?;
    let started = std::time::Instant::now();
    let image = Image::open(
        &cmd.image,
        &LoadOptions {
            max_pixels: cmd.max_pixels,
        },
    )?;
    let mut out = agent.layout(
        &image,
        &LayoutArgs {
            region: cmd.region,
            kinds: (!cmd.kinds.is_empty()).then(|| cmd.kinds.clone()),
        },
    )?;
    // Users time the whole image, decoding included.
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if cmd.json {
        serde_json::to_writer(&mut w, &out)?;
        writeln!(w)?;
    } else {
        print_human(&mut w, &out)?;
    }
    w.flush()?;
    if let Some(path) = &cmd.draw {
        draw_regions(&image, &out, agent.classes(), path)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(w: &mut impl Write, out: &LayoutOutput) -> Result<()> {
    if out.regions.is_empty() {
        writeln!(
            w,
            "no regions found ({}x{}, {} ms)",
            out.width, out.height, out.elapsed_ms
        )?;
        return Ok(());
    }
    for r in &out.regions {
        let b = r.bbox;
        writeln!(
            w,
            "{:<15} {:.2}  [{:.0}, {:.0}, {:.0}, {:.0}]",
            r.kind, r.score, b.x1, b.y1, b.x2, b.y2
        )?;
    }
    Ok(())
}

/// Draws each region in its class's colour (the same kind always gets the same colour).
fn draw_regions(
    image: &Image,
    out: &LayoutOutput,
    classes: &[String],
    path: &std::path::Path,
) -> Result<()> {
    let mut canvas = image.rgb().clone();
    let t = draw::default_thickness(&canvas);
    for r in &out.regions {
        let i = classes.iter().position(|c| *c == r.kind).unwrap_or(0);
        let colour = draw::PALETTE[i % draw::PALETTE.len()];
        draw::draw_quad(&mut canvas, &Quad::from_bbox(&r.bbox), colour, t);
    }
    draw::save(&canvas, path)?;
    Ok(())
}
