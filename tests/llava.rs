//! The vision-language controller (`--controller llava`): a tiny generated llama.cpp pair
//! (`tests/fixtures/make_llava_fixtures.py`: 2-layer llama and qwen2 GGUFs with a byte-level
//! tokenizer and Qwen's chat template, random weights) with the tiny mmproj files of
//! `tests/fixtures/mmproj/`.
//!
//! - Equivalence: text and image embeddings spliced into p2g's transformer give the
//!   next-token logits of the numpy reference of llama.cpp (`benches/llava_reference.py`,
//!   numbers in `tests/fixtures/llava/reference_*.json`), for the MLP, the pooled resampler
//!   and MiniCPM-V's learned resampler.
//! - P²G's policy: the tokens per image for 0, 1, 4, 5 and 12 crops, on both kinds of model.
//! - The loop: crops of what the agents found are shown with their region ids, the trace
//!   records the policy, and a crop's region id reaches the answer's grounding.
//! - Bad pairs: wrong widths, unknown projectors, truncated files are clear errors.

mod common;

use std::path::PathBuf;

use p2g::controller::embedded::EmbeddedConfig;
use p2g::controller::llava::{self, VisionConfig};
use p2g::controller::llm::{LanguageModel, Session};
use p2g::controller::prompt::Prompts;
use p2g::controller::{
    Controller, ControllerError, Conversation, ImageFacts, StepContext, Turn, VisualInput,
};
use p2g::vision::visual_tokens::{Encoder, VisualTokenizer};
use p2g::vision::{BBox, Image};

fn llava_dir() -> PathBuf {
    common::fixture("llava")
}

fn mmproj(name: &str) -> PathBuf {
    common::fixture("mmproj").join(name)
}

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(llava_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(floats).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}

/// The largest absolute difference, relative to the largest reference value.
fn difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0f32, f32::max)
}

/// Builds the reference's prompt in a p2g session — text through p2g's tokenizer, images
/// through p2g's tower and projector, spliced at their places — and compares ids,
/// embeddings and the next-token logits.
fn check_reference(name: &str) {
    let r = reference(name);
    let lm = LanguageModel::load(&llava_dir().join(r["llm"].as_str().unwrap()), 4096).unwrap();
    let lm = std::sync::Arc::new(lm);
    let mm = llava_dir().join(r["mmproj"].as_str().unwrap());
    let image = image::open(llava_dir().join(r["image"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let mut s = Session::new(lm.clone());
    let mut tokens = Vec::new();
    for (i, seg) in r["segments"].as_array().unwrap().iter().enumerate() {
        if let Some(text) = seg["text"].as_str() {
            let ids = lm.encode(text).unwrap();
            let want: Vec<u32> = seg["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want, "{name}: segment {i} tokenised differently");
            tokens.extend(ids);
            continue;
        }
        let how = seg["image"].as_str().unwrap();
        let (pool, encoder) = match how.strip_prefix("pool:") {
            Some(k) => {
                let k: usize = k.parse().unwrap();
                (k, Encoder::PooledResampler { k })
            }
            None if how == "mlp" => (1, Encoder::Mlp),
            None => (1, Encoder::LearnedResampler),
        };
        let vt = VisualTokenizer::load(&mm, pool).unwrap();
        let part = match seg["box"].as_array() {
            Some(b) => {
                let b: Vec<u32> = b.iter().map(|v| v.as_u64().unwrap() as u32).collect();
                image::imageops::crop_imm(&image, b[0], b[1], b[2] - b[0], b[3] - b[1]).to_image()
            }
            None => image.clone(),
        };
        let rows = vt.encode(&part, encoder).unwrap();
        let rows: Vec<f32> = rows.flatten_all().unwrap().to_vec1().unwrap();
        let want = floats(&seg["embeddings"]);
        let d = difference(&rows, &want);
        assert!(
            d < 1e-4,
            "{name}: segment {i} ({how}) embeddings differ by {d}"
        );
        tokens.extend(s.splice(&format!("{name}:{i}"), &rows).unwrap());
    }
    assert_eq!(tokens.len() as u64, r["n_positions"].as_u64().unwrap());
    s.set_prompt(&tokens);
    let logits = s.next_logits().unwrap();
    let want = floats(&r["logits"]);
    let d = difference(&logits, &want);
    eprintln!("{name}: logits differ from the reference by {d:.2e} (relative)");
    assert!(d < 1e-3, "{name}: logits differ by {d}");
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(best as u64, r["top5"][0].as_u64().unwrap());
}

#[test]
fn the_mlp_pair_matches_the_llama_cpp_reference() {
    check_reference("reference_llama_mlp_global.json");
}

#[test]
fn crops_and_the_pooled_global_image_match_the_reference() {
    check_reference("reference_llama_mlp_crops.json");
}

#[test]
fn the_learned_resampler_pair_matches_the_reference() {
    check_reference("reference_qwen2_resampler.json");
}

#[test]
fn pooling_matches_pytorchs_adaptive_average() {
    let r = reference("pool_reference.json");
    let grid = r["n"].as_u64().unwrap() as usize;
    let input = floats(&r["grid"]);
    let width = input.len() / (grid * grid);
    let rows =
        candle_core::Tensor::from_vec(input, (grid * grid, width), &candle_core::Device::Cpu)
            .unwrap();
    for (k, out) in r["pooled"].as_object().unwrap() {
        let k: usize = k.parse().unwrap();
        let got = p2g::vision::mmproj::resampler::pool(&rows, (grid, grid), k).unwrap();
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        assert!(difference(&got, &floats(&out["rows"])) < 1e-6, "k = {k}");
    }
}

fn controller(
    llm: &str,
    mm: &str,
    pool: usize,
) -> Result<p2g::controller::EmbeddedController, ControllerError> {
    llava::load(
        &llava_dir().join(llm),
        &mmproj(mm),
        EmbeddedConfig::new(Prompts::embedded().unwrap()),
        VisionConfig { pool },
    )
}

/// Loads a pair from two paths with the default settings.
fn load_pair(
    llm: &std::path::Path,
    mm: &std::path::Path,
) -> Result<p2g::controller::EmbeddedController, ControllerError> {
    llava::load(
        llm,
        mm,
        EmbeddedConfig::new(Prompts::embedded().unwrap()),
        VisionConfig::default(),
    )
}

fn test_image() -> Image {
    Image::from_rgb(image::open(mmproj("tiny_image.png")).unwrap().to_rgb8())
}

/// A conversation showing the whole image and `crops` crops of it.
fn conversation(crops: usize) -> Conversation {
    let img = test_image();
    let mut visual = vec![VisualInput {
        region: None,
        bbox: BBox::new(0.0, 0.0, 40.0, 30.0),
        window: BBox::new(0.0, 0.0, 40.0, 30.0),
        image: img.clone(),
    }];
    for i in 0..crops {
        let (x, y) = ((i % 4) as u32 * 5, (i / 4) as u32 * 5);
        let cut = image::imageops::crop_imm(img.rgb(), x, y, 20, 15).to_image();
        visual.push(VisualInput {
            region: Some(format!("r{}", i + 1)),
            bbox: BBox::new(x as f32, y as f32, (x + 20) as f32, (y + 15) as f32),
            window: BBox::new(x as f32, y as f32, (x + 20) as f32, (y + 15) as f32),
            image: Image::from_rgb(cut),
        });
    }
    Conversation {
        image: ImageFacts {
            name: "tiny_image.png".into(),
            width: 40,
            height: 30,
        },
        turns: vec![Turn::Question {
            text: "What is this?".into(),
            region: None,
        }],
        tools: Vec::new(),
        regions: Vec::new(),
        visual,
        must_answer: true,
        narrowed: false,
        document: None,
    }
}

/// (encoder, tokens) per image shown for `crops` crops.
fn shown(c: &p2g::controller::EmbeddedController, crops: usize) -> Vec<(Encoder, usize)> {
    let conv = conversation(crops);
    let step = common::rt()
        .block_on(c.decide(&conv, &StepContext::default()))
        .unwrap();
    step.shown.iter().map(|s| (s.encoder, s.tokens)).collect()
}

#[test]
fn the_policy_gives_p2gs_token_counts() {
    // MLP-only (LLaVA-style, 2x2 patches = 4 tokens), pooled to 1x1 when resampled.
    let c = controller("tiny_llm_llama.gguf", "tiny_mmproj_mlp.gguf", 1).unwrap();
    assert!(c.accepts_images());
    let mlp = (Encoder::Mlp, 4);
    let pooled = (Encoder::PooledResampler { k: 1 }, 1);
    assert_eq!(shown(&c, 0), vec![mlp]);
    assert_eq!(shown(&c, 1), vec![pooled, mlp]);
    assert_eq!(shown(&c, 4), vec![pooled, mlp, mlp, mlp, mlp]);
    assert_eq!(shown(&c, 5), vec![pooled; 6]);
    assert_eq!(shown(&c, 12), vec![pooled; 13]);
    // MiniCPM-V-style: the learned resampler is its only projector, 4 queries per image.
    let c = controller("tiny_llm_qwen2.gguf", "tiny_mmproj_resampler.gguf", 1).unwrap();
    let learned = (Encoder::LearnedResampler, 4);
    for crops in [0, 1, 4, 5, 12] {
        assert_eq!(shown(&c, crops), vec![learned; crops + 1], "{crops} crops");
    }
}

#[test]
fn the_prompt_introduces_each_crop_with_its_region_and_box() {
    let c = controller("tiny_llm_llama.gguf", "tiny_mmproj_mlp.gguf", 1).unwrap();
    let text = c.render(&conversation(2)).unwrap();
    assert!(text.contains("You see it"), "{text}");
    let whole = text.find("The image:\n\u{E000}image-").unwrap();
    let r1 = text
        .find("Region r1 at [0,0,20,15]:\n\u{E000}image-")
        .unwrap();
    let r2 = text
        .find("Region r2 at [5,0,25,15]:\n\u{E000}image-")
        .unwrap();
    let question = text.rfind("What is this?").unwrap();
    assert!(whole < r1 && r1 < r2 && r2 < question, "{text}");
}

#[test]
fn bad_pairs_are_clear_errors() {
    // A 48-wide projector with a 128-wide language model.
    let e = controller("tiny_llm_qwen2.gguf", "tiny_mmproj_mlp.gguf", 8)
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(matches!(e, ControllerError::Pair { .. }), "{msg}");
    assert!(
        msg.contains("48") && msg.contains("128") && msg.contains("Vision-language"),
        "{msg}"
    );
    let tmp = tempfile::tempdir().unwrap();
    // Truncated files, each side.
    let bytes = std::fs::read(llava_dir().join("tiny_llm_llama.gguf")).unwrap();
    let cut_llm = tmp.path().join("cut_llm.gguf");
    std::fs::write(&cut_llm, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_pair(&cut_llm, &mmproj("tiny_mmproj_mlp.gguf"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("cut_llm.gguf"), "{e}");
    let bytes = std::fs::read(mmproj("tiny_mmproj_mlp.gguf")).unwrap();
    let cut_mm = tmp.path().join("cut_mmproj.gguf");
    std::fs::write(&cut_mm, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_pair(&llava_dir().join("tiny_llm_llama.gguf"), &cut_mm)
        .err()
        .unwrap();
    assert!(e.to_string().contains("cut_mmproj.gguf"), "{e}");
    // The two swapped: a language model is no mmproj.
    let e = load_pair(
        &mmproj("tiny_mmproj_mlp.gguf"),
        &llava_dir().join("tiny_llm_llama.gguf"),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("tiny_llm_llama.gguf"), "{e}");
}

/// One image shown: its region, encoder, tokens and box.
type Shown = (Option<String>, Encoder, usize, BBox);

/// The images the loop showed at each decision.
fn visual_events(events: &[p2g::trace::TraceEvent]) -> Vec<Vec<Shown>> {
    events
        .iter()
        .filter_map(|e| match e {
            p2g::trace::TraceEvent::Visual { images, tokens, .. } => {
                assert_eq!(*tokens, images.iter().map(|i| i.tokens).sum::<usize>());
                Some(
                    images
                        .iter()
                        .map(|i| (i.region.clone(), i.encoder, i.tokens, i.bbox))
                        .collect(),
                )
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_loop_shows_crops_of_what_was_read_and_answers_cite_them() {
    use p2g::orchestrator::{AskOptions, Orchestrator};
    let c = controller("tiny_llm_llama.gguf", "tiny_mmproj_mlp.gguf", 1).unwrap();
    let o = Orchestrator::builder()
        .controller(c)
        .agent(common::agent_with(|_| {}))
        .answer_by(std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let path = common::fixture("receipt.jpg");
    let img = Image::open(&path, &Default::default()).unwrap();
    let mut s = o.session(img, &path);
    let rt = common::rt();
    // The receipt's header: its lines are read (a zoom of the region), more than 4 of them,
    // so the whole image and every crop are resampled.
    let region = BBox::new(0.0, 0.0, 463.0, 200.0);
    let a = rt
        .block_on(s.ask(
            "What is written here?",
            AskOptions {
                region: Some(region),
                ..Default::default()
            },
        ))
        .unwrap();
    let shown = visual_events(s.trace());
    let first = shown.first().expect("a visual event in the trace");
    assert_eq!(first[0].0, None, "the whole image comes first: {first:?}");
    let crops: Vec<_> = first.iter().skip(1).collect();
    assert!(crops.len() > 4, "{first:?}");
    for (region, encoder, tokens, _) in first {
        assert_eq!(
            (*encoder, *tokens),
            (Encoder::PooledResampler { k: 1 }, 1),
            "{region:?}"
        );
    }
    // The answer cites regions whose crops were shown, at their boxes.
    assert!(!a.grounding.is_empty(), "{a:?}");
    for g in &a.grounding {
        let crop = crops
            .iter()
            .find(|c| c.0.as_deref() == Some(g.region.as_str()))
            .unwrap_or_else(|| panic!("{} was not shown: {first:?}", g.region));
        assert_eq!(crop.3, g.bbox);
    }
    // A smaller region holds one line: 1-4 crops keep every patch, the whole image is
    // resampled.
    let region = BBox::new(60.0, 20.0, 330.0, 70.0);
    rt.block_on(s.ask(
        "What is written here?",
        AskOptions {
            region: Some(region),
            ..Default::default()
        },
    ))
    .unwrap();
    let shown = visual_events(s.trace());
    let last = shown.last().unwrap();
    assert!((2..=5).contains(&last.len()), "{last:?}");
    assert_eq!(
        (last[0].1, last[0].2),
        (Encoder::PooledResampler { k: 1 }, 1)
    );
    for crop in &last[1..] {
        assert_eq!((crop.1, crop.2), (Encoder::Mlp, 4), "{last:?}");
    }
}
