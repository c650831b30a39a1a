//! Dumps what p2g's NanoDet sees and says, for the check against TensorFlow.js
//! (`benches/nanodet_vs_tfjs.sh`): per image NAME, the letterboxed input (`NAME.input.f32`,
//! float32 [1,3,416,416]) and the six raw outputs (`NAME.p2g.cls52.f32`, … `reg13`), plus one
//! JSON line of timings. With `--tiles`, every tile the agent reads of a large image is a case
//! of its own (`NAME_t0`, …), and the whole `detect` call is timed too.
//!
//! cargo run --release --example nanodet_dump -- --out DIR [--runs 3] [--threads N] [--tiles] IMAGES...

use std::path::{Path, PathBuf};
use std::time::Instant;

use p2g::agents::detect::coco::{CocoConfig, CocoDetectAgent};
use p2g::agents::detect::nanodet::{self, NanoDet};
use p2g::agents::detect::{tile_layout, DetectArgs, Phrases};
use p2g::models::runtime::{self, SessionOptions};
use p2g::models::{ModelSource, Store};
use p2g::vision::crop::Rect;
use p2g::vision::{Image, LoadOptions};

fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut out: Option<PathBuf> = None;
    let (mut runs, mut threads, mut tiles) = (3usize, runtime::default_threads(), false);
    let mut images = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            "--threads" => threads = args.next().unwrap_or_default().parse()?,
            "--tiles" => tiles = true,
            _ => images.push(PathBuf::from(a)),
        }
    }
    let out = out.ok_or_else(|| anyhow::anyhow!("--out DIR is required"))?;
    std::fs::create_dir_all(&out)?;
    let store = Store::open_default()?;
    let mut cfg = CocoConfig::embedded()?;
    cfg.session = SessionOptions {
        intra_threads: threads,
        ..SessionOptions::default()
    };
    let source = ModelSource::Store(store.clone());
    let agent = CocoDetectAgent::load(&source, &store, cfg.clone())?;
    let path = source.file("nanodet", "nanodet.onnx")?;
    let model = NanoDet::open(runtime::environment(&store)?, &path, &cfg.session, 80)?;
    let norm = cfg.options.normalisation();
    for img in &images {
        let stem = img
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("image")
            .to_string();
        let image = Image::open(img, &LoadOptions::default())?;
        let rgb = image.rgb();
        let mut cases = vec![(stem.clone(), Rect::full(rgb))];
        if tiles {
            let o = &cfg.options;
            let (w, h) = rgb.dimensions();
            for (i, t) in tile_layout(w, h, o.tile_size, o.tile_overlap, o.max_tiles)
                .into_iter()
                .enumerate()
            {
                cases.push((format!("{stem}_t{i}"), t));
            }
        }
        for (name, rect) in &cases {
            let (input, _) = nanodet::letterbox(rgb, *rect, model.size, &norm);
            write_f32(&out.join(format!("{name}.input.f32")), &input)?;
            let mut levels = model.run(&input)?;
            let mut times = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                levels = model.run(&input)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            for l in &levels {
                write_f32(
                    &out.join(format!("{name}.p2g.cls{}.f32", l.grid)),
                    &l.scores,
                )?;
                write_f32(&out.join(format!("{name}.p2g.reg{}.f32", l.grid)), &l.dist)?;
            }
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{}",
                serde_json::json!({"name": name, "ms_median": median(times), "ms_min": min, "threads": threads})
            );
        }
        if tiles {
            let args = DetectArgs {
                objects: Phrases::Caption("person".into()),
                region: None,
            };
            agent.detect(&image, &args)?;
            let t = Instant::now();
            let found = agent.detect(&image, &args)?;
            println!(
                "{}",
                serde_json::json!({"name": stem, "detect_ms": t.elapsed().as_secs_f64() * 1e3,
                    "passes": cases.len(), "persons": found.detections.len()})
            );
        }
    }
    Ok(())
}
