//! `p2g detect`: find objects by name (Grounding DINO when one is added, else the COCO
//! detector).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use p2g::agents::detect::coco::{CocoConfig, CocoDetectAgent};
use p2g::agents::detect::{DetectAgent, DetectArgs, DetectConfig, DetectOutput, Phrases};
use p2g::agents::{AgentError, AgentManifest};
use p2g::models::{ModelError, Store};
use p2g::vision::{draw, BBox, Image, LoadOptions, Quad};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct DetectCmd {
    /// The image to search (JPEG, PNG, WebP, TIFF, BMP).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// What to find: short phrases separated by " . ", e.g. "black mug . red sign".
    #[arg(value_name = "PHRASES")]
    phrases: String,

    /// Print {"width","height","elapsed_ms","detections":[{"phrase","score","bbox"}]}.
    #[arg(long)]
    json: bool,

    /// Write the image with the boxes drawn (one colour per phrase).
    #[arg(long, value_name = "OUT.png")]
    draw: Option<PathBuf>,

    /// Search only inside this box: x1,y1,x2,y2 in image pixels.
    #[arg(long, value_name = "X1,Y1,X2,Y2", value_parser = super::ocr::parse_bbox, allow_hyphen_values = true)]
    region: Option<BBox>,

    #[command(flatten)]
    models: ModelArgs,

    /// Refuse images with more pixels than this (protects against decompression bombs).
    #[arg(long, value_name = "N", default_value_t = p2g::vision::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    /// An edited detect manifest (thresholds, input/output names) instead of the embedded one.
    #[arg(long, value_name = "TOML")]
    manifest: Option<PathBuf>,

    /// Keep boxes whose score is above this (0..1; default 0.35): Grounding DINO's best token
    /// score, the COCO detector's class score.
    #[arg(long, value_name = "P")]
    box_threshold: Option<f32>,

    /// Grounding DINO only: name a box only with a phrase that scores above this (0..1;
    /// default 0.25).
    #[arg(long, value_name = "P")]
    text_threshold: Option<f32>,

    #[command(flatten)]
    tiles: super::TileArgs,
}

/// The detector `p2g detect` runs.
enum Detector {
    Dino(DetectAgent),
    Coco(CocoDetectAgent),
}

impl Detector {
    fn detect(&self, image: &Image, args: &DetectArgs) -> Result<DetectOutput> {
        Ok(match self {
            Detector::Dino(a) => a.detect(image, args)?,
            Detector::Coco(a) => a.detect(image, args)?,
        })
    }
}

fn check_unit(v: Option<f32>, what: &str) -> Result<Option<f32>> {
    if let Some(v) = v {
        anyhow::ensure!((0.0..=1.0).contains(&v), "{what} must be between 0 and 1");
    }
    Ok(v)
}

/// Grounding DINO when its files are added (or `--manifest` names its bundle), else NanoDet.
fn load_detector(cmd: &DetectCmd, store: &Store) -> Result<Detector> {
    let source = cmd.models.source(store);
    let manifest = cmd
        .manifest
        .as_deref()
        .map(AgentManifest::load)
        .transpose()?;
    let box_t = check_unit(cmd.box_threshold, "--box-threshold")?;
    let text_t = check_unit(cmd.text_threshold, "--text-threshold")?;
    let mut dino = DetectConfig::embedded()?;
    let wants_dino = match &manifest {
        Some(m) => m.bundle()? == dino.manifest.bundle()?,
        None => DetectAgent::available(&source, &dino.manifest),
    };
    if wants_dino {
        if let Some(m) = manifest {
            dino.options = m.options()?;
            dino.manifest = m;
        }
        dino.session = cmd.models.session();
        let o = &mut dino.options;
        cmd.tiles.apply(
            &mut o.tiling,
            &mut o.tile_size,
            &mut o.tile_overlap,
            &mut o.max_tiles,
        );
        o.box_threshold = box_t.unwrap_or(o.box_threshold);
        o.text_threshold = text_t.unwrap_or(o.text_threshold);
        return Ok(Detector::Dino(DetectAgent::load(&source, store, dino)?));
    }
    anyhow::ensure!(
        text_t.is_none(),
        "--text-threshold is for Grounding DINO, which is not added (`p2g models add \
         grounding-dino DIR`); the COCO detector has one score per box (--box-threshold)"
    );
    let mut coco = CocoConfig::embedded()?;
    if let Some(m) = manifest {
        coco.options = m.options()?;
        coco.manifest = m;
    }
    coco.session = cmd.models.session();
    let o = &mut coco.options;
    cmd.tiles.apply(
        &mut o.tiling,
        &mut o.tile_size,
        &mut o.tile_overlap,
        &mut o.max_tiles,
    );
    o.score_threshold = box_t.unwrap_or(o.score_threshold);
    match CocoDetectAgent::load(&source, store, coco) {
        Ok(a) => Ok(Detector::Coco(a)),
        // No npm or no registry: say both ways to get a detector, in one line.
        Err(AgentError::Model(
            e @ (ModelError::NpmMissing { .. } | ModelError::PackageFailed { .. }),
        )) => anyhow::bail!(
            "no detector: {e}; or add a Grounding DINO model (`p2g models add grounding-dino DIR`, README \"Grounding DINO: real weights\")"
        ),
        Err(e) => Err(e.into()),
    }
}

pub fn run(cmd: DetectCmd) -> Result<ExitCode> {
    let store = Store::open_default()?;
    // Check the phrases before loading anything.
    let args = DetectArgs {
        objects: Phrases::Caption(cmd.phrases.clone()),
        region: cmd.region,
    };
    anyhow::ensure!(
        !args.objects.cleaned().is_empty(),
        "no phrases to look for; write them like \"black mug . red sign\""
    );
    let agent = load_detector(&cmd, &store)?;
    let started = std::time::Instant::now();
    let image = Image::open(
        &cmd.image,
        &LoadOptions {
            max_pixels: cmd.max_pixels,
        },
    )?;
    let mut out = agent.detect(&image, &args)?;
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
        draw_detections(&image, &out, path)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(w: &mut impl Write, out: &DetectOutput) -> Result<()> {
    if let Some(note) = &out.note {
        writeln!(w, "note: {note}")?;
    }
    if out.detections.is_empty() {
        writeln!(
            w,
            "nothing found ({}x{}, {} ms)",
            out.width, out.height, out.elapsed_ms
        )?;
        return Ok(());
    }
    for d in &out.detections {
        let b = d.bbox;
        writeln!(
            w,
            "{:<24} {:.2}  [{:.0}, {:.0}, {:.0}, {:.0}]",
            d.phrase, d.score, b.x1, b.y1, b.x2, b.y2
        )?;
    }
    Ok(())
}

fn draw_detections(image: &Image, out: &DetectOutput, path: &std::path::Path) -> Result<()> {
    let mut canvas = image.rgb().clone();
    let t = draw::default_thickness(&canvas);
    let mut phrases: Vec<&str> = Vec::new();
    for d in &out.detections {
        let i = match phrases.iter().position(|p| *p == d.phrase) {
            Some(i) => i,
            None => {
                phrases.push(&d.phrase);
                phrases.len() - 1
            }
        };
        let colour = draw::PALETTE[i % draw::PALETTE.len()];
        draw::draw_quad(&mut canvas, &Quad::from_bbox(&d.bbox), colour, t);
    }
    draw::save(&canvas, path)?;
    Ok(())
}
