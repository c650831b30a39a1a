//! `p2g ocr`: read the text in images.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use p2g::agents::ocr::{OcrAgent, OcrArgs, OcrConfig, OcrOutput, TextLine, Zoom, ZoomApplied};
use p2g::agents::{AgentManifest, Lead};
use p2g::models::Store;
use p2g::vision::{draw, BBox, Image, LoadOptions, Quad};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct OcrCmd {
    /// Images to read (JPEG, PNG, WebP, TIFF, BMP); models are loaded once for all of them.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,

    /// Print one JSON object per image per line, in input order.
    #[arg(long)]
    json: bool,

    /// Write the image with the text boxes drawn (several images: OUT-1.png, OUT-2.png, ...).
    #[arg(long, value_name = "OUT.png")]
    draw: Option<PathBuf>,

    /// Read only inside this box: x1,y1,x2,y2 in image pixels.
    #[arg(long, value_name = "X1,Y1,X2,Y2", value_parser = parse_bbox, allow_hyphen_values = true)]
    region: Option<BBox>,

    /// Magnify the region (or the whole image) before reading: `auto` (bring its text to the
    /// height the models read best) or a factor from 1 to `zoom_max_scale` (4), e.g. 2.5.
    #[arg(long, value_name = "auto|N", value_parser = parse_zoom)]
    zoom: Option<Zoom>,

    /// With --json, also list the leads: places where text was seen but not read well.
    #[arg(long)]
    leads: bool,

    #[command(flatten)]
    models: ModelArgs,

    /// Refuse images with more pixels than this (protects against decompression bombs).
    #[arg(long, value_name = "N", default_value_t = p2g::vision::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    /// An edited OCR manifest (thresholds, model file names) instead of the embedded one.
    #[arg(long, value_name = "TOML")]
    manifest: Option<PathBuf>,

    #[command(flatten)]
    tiles: super::TileArgs,

    /// Read every tile of a large image, not only where the global pass saw text too small to
    /// resolve (slower; for exhaustive reading).
    #[arg(long)]
    tile_all: bool,

    /// Do not read the tiles where the global pass saw nothing text-like (they are read for
    /// leads only, so lines do not change; it saves time on large photos).
    #[arg(long)]
    no_explore: bool,

    /// Longest side of the whole-image detection pass.
    #[arg(long, value_name = "PX")]
    det_limit_side: Option<u32>,

    /// Drop lines read with a lower mean confidence (0..1).
    #[arg(long, value_name = "P")]
    min_confidence: Option<f32>,

    /// Skip the text-line orientation classifier.
    #[arg(long)]
    no_orientation: bool,

    /// Keep the recogniser's raw output (no spaces restored between words).
    #[arg(long)]
    no_restore_spaces: bool,

    /// Keep a zero read among letters ("CH0PPING") and an O among digits ("456OO") as read.
    #[arg(long)]
    no_fix_confusions: bool,
}

pub fn parse_bbox(s: &str) -> Result<BBox, String> {
    BBox::parse(s)
}

fn parse_zoom(s: &str) -> Result<Zoom, String> {
    s.parse()
}

/// The exact `--json` shape: one object per image; `zoom` only when --zoom was given,
/// `leads` only with --leads.
#[derive(Serialize)]
struct JsonLine<'a> {
    width: u32,
    height: u32,
    elapsed_ms: u64,
    lines: Vec<JsonText<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zoom: Option<ZoomApplied>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leads: Option<&'a [Lead]>,
}

#[derive(Serialize)]
struct JsonText<'a> {
    text: &'a str,
    confidence: f32,
    bbox: BBox,
    quad: Quad,
}

impl<'a> JsonLine<'a> {
    fn new(out: &'a OcrOutput, leads: bool) -> Self {
        Self {
            zoom: out.zoom,
            leads: leads.then_some(out.leads.as_slice()),
            width: out.width,
            height: out.height,
            elapsed_ms: out.elapsed_ms,
            lines: out
                .lines
                .iter()
                .map(|l: &'a TextLine| JsonText {
                    text: &l.text,
                    confidence: (l.confidence * 10000.0).round() / 10000.0,
                    bbox: l.bbox,
                    quad: l.quad,
                })
                .collect(),
        }
    }
}

pub fn run(cmd: OcrCmd) -> Result<ExitCode> {
    let store = Store::open_default()?;
    let source = cmd.models.source(&store);
    let mut cfg = OcrConfig::embedded()?;
    if let Some(path) = &cmd.manifest {
        cfg.manifest = AgentManifest::load(path)?;
        cfg.options = cfg.manifest.options()?;
    }
    cfg.session = cmd.models.session();
    let o = &mut cfg.options;
    cmd.tiles.apply(
        &mut o.tiling,
        &mut o.tile_size,
        &mut o.tile_overlap,
        &mut o.max_tiles,
    );
    o.tile_all |= cmd.tile_all;
    o.explore_tiles &= !cmd.no_explore;
    o.use_orientation &= !cmd.no_orientation;
    o.restore_spaces &= !cmd.no_restore_spaces;
    o.fix_confusions &= !cmd.no_fix_confusions;
    if let Some(v) = cmd.det_limit_side {
        o.det_limit_side = v;
    }
    if let Some(v) = cmd.min_confidence {
        o.min_confidence = v;
    }
    let agent = OcrAgent::load(&source, &store, cfg)?;
    let load = LoadOptions {
        max_pixels: cmd.max_pixels,
    };
    let args = OcrArgs {
        region: cmd.region,
        zoom: cmd.zoom,
    };
    let many = cmd.images.len() > 1;
    let mut failures = 0usize;
    let stdout = std::io::stdout();
    for (n, path) in cmd.images.iter().enumerate() {
        let result = read_one(&agent, path, &load, &args);
        let mut out = stdout.lock();
        match result {
            Ok((image, ocr)) => {
                if cmd.json {
                    serde_json::to_writer(&mut out, &JsonLine::new(&ocr, cmd.leads))?;
                    writeln!(out)?;
                } else {
                    if many {
                        writeln!(
                            out,
                            "== {} ({}x{}, {} lines, {} ms)",
                            path.display(),
                            ocr.width,
                            ocr.height,
                            ocr.lines.len(),
                            ocr.elapsed_ms
                        )?;
                    }
                    for l in &ocr.lines {
                        writeln!(out, "{}", l.text)?;
                    }
                }
                out.flush()?;
                if let Some(draw_path) = &cmd.draw {
                    let target = if many {
                        numbered(draw_path, n + 1)
                    } else {
                        draw_path.clone()
                    };
                    draw_lines(&image, &ocr, &target)?;
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("p2g: error: {}: {e}", path.display());
                if cmd.json {
                    let v = serde_json::json!({ "image": path, "error": e.to_string() });
                    writeln!(out, "{v}")?;
                }
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_one(
    agent: &OcrAgent,
    path: &Path,
    load: &LoadOptions,
    args: &OcrArgs,
) -> Result<(Image, OcrOutput)> {
    let started = std::time::Instant::now();
    let image = Image::open(path, load)?;
    let mut ocr = agent.read(&image, args)?;
    // Users time the whole image, decoding included.
    ocr.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((image, ocr))
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{n}.{ext}"))
}

fn draw_lines(image: &Image, ocr: &OcrOutput, path: &Path) -> Result<()> {
    let mut canvas = image.rgb().clone();
    let t = draw::default_thickness(&canvas);
    for (i, l) in ocr.lines.iter().enumerate() {
        draw::draw_quad(
            &mut canvas,
            &l.quad,
            draw::PALETTE[i % draw::PALETTE.len()],
            t,
        );
    }
    draw::save(&canvas, path)?;
    Ok(())
}
