//! Times p2g's layout agent the way `benches/layout_reference.py` times rapid-layout: per
//! image, decoded once, one warm-up call, then the median of `--runs` calls (pre-processing,
//! inference and post-processing), one JSON line each.
//!
//! cargo run --release --example layout_speed -- [--runs 3] [--threads N] IMAGES...

use std::time::Instant;

use p2g::agents::layout::{LayoutAgent, LayoutArgs, LayoutConfig};
use p2g::models::runtime::{self, SessionOptions};
use p2g::models::{ModelSource, Store};
use p2g::vision::{Image, LoadOptions};

fn main() -> anyhow::Result<()> {
    let (mut runs, mut threads) = (3usize, runtime::default_threads());
    let mut images = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            "--threads" => threads = args.next().unwrap_or_default().parse()?,
            _ => images.push(a),
        }
    }
    let store = Store::open_default()?;
    let mut cfg = LayoutConfig::embedded()?;
    cfg.session = SessionOptions {
        intra_threads: threads,
        ..SessionOptions::default()
    };
    let agent = LayoutAgent::load(&ModelSource::Store(store.clone()), &store, cfg)?;
    let none = LayoutArgs::default();
    for path in &images {
        let image = Image::open(path.as_ref(), &LoadOptions::default())?;
        let out = agent.layout(&image, &none)?;
        let mut times: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                let t = Instant::now();
                let r = agent.layout(&image, &none);
                (t.elapsed().as_secs_f64() * 1e3, r.is_ok())
            })
            .map(|(ms, _)| ms)
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"image": path, "ms": times[times.len() / 2], "threads": threads,
                "regions": out.regions.len()})
        );
    }
    Ok(())
}
