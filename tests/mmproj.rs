//! The mmproj vision tower + MLP projector (src/vision/mmproj.rs) against the numpy
//! reference of llama.cpp's clip.cpp (`benches/mmproj_reference.py`), on the tiny generated
//! LLaVA-style file `tests/fixtures/mmproj/tiny_mmproj_mlp.gguf`
//! (`tests/fixtures/make_mmproj_fixtures.py`).
//!
//! `tiny_image_preprocessed_mlp.png` is the reference's preprocessed image (its
//! `--dump-stages` `img0_u8.npy`, the 40x30 `tiny_image.png` resized and padded to 28x28 as
//! clip.cpp does): the tower and projector are checked on it, and the resize against it.

mod common;

use p2g::vision::mmproj::{Mmproj, MmprojError, ProjectorKind};

fn dir() -> std::path::PathBuf {
    common::fixture("mmproj")
}

fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let values: Vec<f32> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, values)
}

#[test]
fn the_mlp_tower_matches_the_clip_cpp_reference() {
    let m = Mmproj::load(&dir().join("tiny_mmproj_mlp.gguf")).unwrap();
    assert_eq!(m.config.projector, ProjectorKind::Mlp);
    assert_eq!(m.tokens_per_image(), 4);
    assert_eq!(m.embedding_width(), 48);
    let rgb = image::open(dir().join("tiny_image_preprocessed_mlp.png"))
        .unwrap()
        .to_rgb8();
    let pixels = m.normalise(&rgb).unwrap();
    let out = m.encode(&pixels).unwrap();
    let (shape, want) = reference("reference_mlp.json");
    assert_eq!(out.dims(), shape.as_slice());
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let worst = difference(&got, &want);
    eprintln!("largest difference from the reference: {worst:.2e} (relative)");
    assert!(worst < 1e-3, "max difference {worst}");
    // The check can tell: current upstream llama.cpp's class-token-last graph gives other
    // numbers, and they are far from these.
    let (_, other) = reference("reference_mlp_cls_last.json");
    assert!(difference(&got, &other) > 1e-2);
}

/// The largest absolute difference, relative to the largest reference value.
fn difference(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0f32, f32::max)
}

#[test]
fn the_resize_is_clip_cpps_to_the_byte_and_the_whole_path_matches() {
    let m = Mmproj::load(&dir().join("tiny_mmproj_mlp.gguf")).unwrap();
    let raw = image::open(dir().join("tiny_image.png")).unwrap().to_rgb8();
    let want = image::open(dir().join("tiny_image_preprocessed_mlp.png"))
        .unwrap()
        .to_rgb8();
    let got = m.preprocess(&raw).unwrap();
    assert_eq!(got.dimensions(), (28, 28));
    let differing = got
        .pixels()
        .zip(want.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "pixels differing from clip.cpp's resize");
    // A tall image and one smaller than the tower's input (upscaled), made and resized by
    // the reference (`--synthetic WxH --write-synthetic --dump-stages`).
    for name in ["synthetic_23x61", "synthetic_10x7"] {
        let raw = image::open(dir().join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let want = image::open(dir().join(format!("{name}_preprocessed_mlp.png")))
            .unwrap()
            .to_rgb8();
        assert!(m.preprocess(&raw).unwrap() == want, "{name}");
    }
    let out = m.encode(&m.normalise(&got).unwrap()).unwrap();
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let (_, want) = reference("reference_mlp.json");
    assert!(difference(&got, &want) < 1e-3);
}

#[test]
fn unsupported_corrupt_and_wrong_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // The resampler file with another projector type written in its metadata.
    let mut bytes = std::fs::read(dir().join("tiny_mmproj_resampler.gguf")).unwrap();
    let key = b"clip.projector_type";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // The value: its type (u32), its length (u64), then the text.
    bytes[at + 12..at + 12 + 9].copy_from_slice(b"idefics3_");
    let other = tmp.path().join("other.gguf");
    std::fs::write(&other, &bytes).unwrap();
    let e = Mmproj::load(&other).err().unwrap();
    assert!(matches!(e, MmprojError::Projector { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("idefics3_") && msg.contains("resampler") && msg.contains("mlp"),
        "{msg}"
    );
    let bytes = std::fs::read(dir().join("tiny_mmproj_mlp.gguf")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = Mmproj::load(&cut).err().unwrap();
    assert!(e.to_string().contains("cut.gguf"), "{e}");
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf at all").unwrap();
    assert!(matches!(
        Mmproj::load(&junk).err().unwrap(),
        MmprojError::Read { .. }
    ));
    let m = Mmproj::load(&dir().join("tiny_mmproj_mlp.gguf")).unwrap();
    let small = image::RgbImage::new(10, 10);
    assert!(m.normalise(&small).is_err());
    let wrong = candle_core::Tensor::zeros(
        (3, 10, 10),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(m.encode(&wrong).is_err());
}

#[test]
fn the_resampler_matches_the_clip_cpp_reference_on_the_overview_image() {
    let m = Mmproj::load(&dir().join("tiny_mmproj_resampler.gguf")).unwrap();
    assert_eq!(m.config.projector, ProjectorKind::Resampler);
    assert_eq!(m.tokens_per_image(), 4);
    assert_eq!(m.embedding_width(), 128);
    let raw = image::open(dir().join("tiny_image.png")).unwrap().to_rgb8();
    let ready = m.preprocess(&raw).unwrap();
    // mtmd's llava-uhd overview of a 40x30 image for a 28-pixel tower: 28x28, bilinear.
    assert_eq!(ready.dimensions(), (28, 28));
    let text = std::fs::read_to_string(dir().join("reference_resampler.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let overview = &v["images"][0];
    assert_eq!(overview["role"], "overview");
    use sha2::Digest;
    let sha = format!("{:x}", sha2::Sha256::digest(ready.as_raw()));
    assert_eq!(overview["preprocessed_u8_sha256"], sha.as_str());
    let (tokens, _) = m.embed(&raw).unwrap();
    assert_eq!(tokens.dims(), [4, 128]);
    let got: Vec<f32> = tokens.flatten_all().unwrap().to_vec1().unwrap();
    let (_, all) = reference("reference_resampler.json");
    // The overview's rows come first (tokens [0, 4)).
    let want = &all[..4 * 128];
    let worst = difference(&got, want);
    eprintln!("resampler: largest difference from the reference: {worst:.2e} (relative)");
    assert!(worst < 1e-3, "max difference {worst}");
    // A non-square image gets a non-square grid and still the resampler's 4 tokens.
    let wide = image::RgbImage::from_fn(90, 30, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 8) as u8, 90])
    });
    let ready = m.preprocess(&wide).unwrap();
    assert_eq!(ready.dimensions(), (42, 14));
    assert_eq!(m.embed(&wide).unwrap().0.dims(), [4, 128]);
}
