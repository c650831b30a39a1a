//! What the vision side of `--controller llava` costs on this CPU: the tower and projector of
//! the tiny fixture (`tests/fixtures/mmproj/tiny_mmproj_mlp.gguf`), and of LLaVA-1.5's
//! ViT-L/14-336 + 2-layer MLP measured directly: random-weight mmproj files of exactly that
//! width (1024 wide, 16 heads, FFN 4096, 336 px, patch 14, MLP 1024 -> 4096 -> 4096) with 2 and
//! 3 stored blocks (1 and 2 run, llama.cpp skips the last) are written to a temporary folder;
//! the difference is one block, and the full tower runs 23. It also prints the fixture's time
//! scaled by FLOPs, as a cross-check. One JSON line per measurement.
//!
//! cargo run --release --example vision_speed -- [--runs 3]

use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use p2g::vision::mmproj::Mmproj;

/// LLaVA-1.5's tower: width, heads, FFN, image size, patch, blocks stored.
const VIT_L: (usize, usize, usize, usize, usize, usize) = (1024, 16, 4096, 336, 14, 24);
const LLM_WIDTH: usize = 4096;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_encode(m: &Mmproj, runs: usize) -> anyhow::Result<f64> {
    let s = m.config.image_size as u32;
    let img = image::RgbImage::from_fn(s + 40, s, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    });
    m.embed(&img)?; // warm-up
    let mut t = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        m.embed(&img)?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

/// Multiply-adds of the tower's run blocks and the MLP for `tokens` positions.
fn macs(width: usize, ffn: usize, tokens: usize, run: usize, mlp: (usize, usize)) -> f64 {
    let (t, w, f) = (tokens as f64, width as f64, ffn as f64);
    let block = t * (4.0 * w * w + 2.0 * w * f) + 2.0 * t * t * w;
    let patches = (tokens - 1) as f64;
    run as f64 * block + patches * (w * mlp.0 as f64 + mlp.0 as f64 * mlp.1 as f64)
}

fn write_vit_l(path: &std::path::Path, stored: usize) -> anyhow::Result<()> {
    let (w, heads, ffn, size, patch, _) = VIT_L;
    let dev = Device::Cpu;
    let n_pos = (size / patch).pow(2) + 1;
    let rand = |shape: &[usize], std: f64| -> anyhow::Result<QTensor> {
        let t = Tensor::randn(0f32, std as f32, shape, &dev)?;
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    };
    let ones = |n: usize| -> anyhow::Result<QTensor> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &dev)?,
            GgmlDType::F32,
        )?)
    };
    let mut t: Vec<(String, QTensor)> = vec![
        (
            "v.patch_embd.weight".into(),
            rand(&[w, 3, patch, patch], 0.02)?,
        ),
        ("v.class_embd".into(), rand(&[w], 0.02)?),
        ("v.position_embd.weight".into(), rand(&[n_pos, w], 0.02)?),
        ("v.pre_ln.weight".into(), ones(w)?),
        ("v.pre_ln.bias".into(), rand(&[w], 0.01)?),
        ("mm.0.weight".into(), rand(&[LLM_WIDTH, w], 0.02)?),
        ("mm.0.bias".into(), rand(&[LLM_WIDTH], 0.01)?),
        ("mm.2.weight".into(), rand(&[LLM_WIDTH, LLM_WIDTH], 0.02)?),
        ("mm.2.bias".into(), rand(&[LLM_WIDTH], 0.01)?),
    ];
    for i in 0..stored {
        let p = format!("v.blk.{i}");
        for n in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            t.push((format!("{p}.{n}.weight"), rand(&[w, w], 0.02)?));
            t.push((format!("{p}.{n}.bias"), rand(&[w], 0.01)?));
        }
        for n in ["ln1", "ln2"] {
            t.push((format!("{p}.{n}.weight"), ones(w)?));
            t.push((format!("{p}.{n}.bias"), rand(&[w], 0.01)?));
        }
        t.push((format!("{p}.ffn_up.weight"), rand(&[ffn, w], 0.02)?));
        t.push((format!("{p}.ffn_up.bias"), rand(&[ffn], 0.01)?));
        t.push((format!("{p}.ffn_down.weight"), rand(&[w, ffn], 0.02)?));
        t.push((format!("{p}.ffn_down.bias"), rand(&[w], 0.01)?));
    }
    use gguf_file::Value as V;
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("clip".into())),
        ("clip.has_vision_encoder", V::Bool(true)),
        ("clip.projector_type", V::String("mlp".into())),
        ("clip.vision.image_size", V::U32(size as u32)),
        ("clip.vision.patch_size", V::U32(patch as u32)),
        ("clip.vision.embedding_length", V::U32(w as u32)),
        ("clip.vision.feed_forward_length", V::U32(ffn as u32)),
        ("clip.vision.attention.head_count", V::U32(heads as u32)),
        ("clip.vision.block_count", V::U32(stored as u32)),
        ("clip.vision.projection_dim", V::U32(768)),
        ("clip.vision.attention.layer_norm_epsilon", V::F32(1e-5)),
    ];
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().unwrap_or_default().parse()?;
        }
    }
    let (w, _, ffn, size, patch, stored) = VIT_L;
    let vit_tokens = (size / patch).pow(2) + 1;
    let vit_macs = macs(w, ffn, vit_tokens, stored - 1, (LLM_WIDTH, LLM_WIDTH));

    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mmproj/tiny_mmproj_mlp.gguf");
    let m = Mmproj::load(&fixture)?;
    let c = &m.config;
    let ms = time_encode(&m, runs.max(20))?;
    let tiny_macs = macs(
        c.hidden,
        c.ffn,
        m.tokens_per_image() + 1,
        c.blocks - 1,
        (48, 48),
    );
    println!(
        "{}",
        serde_json::json!({ "tower": "tiny fixture", "ms": ms, "gmac": tiny_macs / 1e9,
            "vit_l_336_scaled_by_flops_ms": ms * vit_macs / tiny_macs })
    );

    let dir = tempfile::tempdir()?;
    let mut by_run = Vec::new();
    for stored in [2usize, 3] {
        let path = dir.path().join(format!("vit_l_{stored}.gguf"));
        write_vit_l(&path, stored)?;
        let m = Mmproj::load(&path)?;
        let ms = time_encode(&m, runs)?;
        println!(
            "{}",
            serde_json::json!({ "tower": format!("ViT-L/14-336 width, {} block(s) run + MLP", stored - 1),
                "ms": ms, "gmac": macs(w, ffn, vit_tokens, stored - 1, (LLM_WIDTH, LLM_WIDTH)) / 1e9 })
        );
        by_run.push(ms);
    }
    let block = by_run[1] - by_run[0];
    let full = by_run[0] + (stored - 2) as f64 * block;
    println!(
        "{}",
        serde_json::json!({ "tower": "ViT-L/14-336 + MLP (LLaVA-1.5), 23 blocks run",
            "ms_per_block": block, "estimated_ms": full, "gmac": vit_macs / 1e9,
            "gmac_per_s": vit_macs / 1e9 / (full / 1e3) })
    );
    Ok(())
}
