//! The detection agent end to end (image and text pre-processing, ONNX Runtime session,
//! post-processing, tiling, merging) through the Grounding DINO stand-in in
//! `tests/fixtures/grounding_dino/`, whose outputs are a known function of its inputs (see
//! `make_fixture.py` there):
//!
//! - query 0/1/2 box = bounding box of the pixels whose red/green/blue byte exceeds
//!   211/201/189; query 3 repeats query 0's box with logits 0.5 lower (a duplicate for NMS);
//! - logit(query, token) = E[word] + 0.01 * position_id + 0.001 * (row sum of the sub-sentence
//!   mask) + 0.1 * token_type_id, minus 20 when the query's colour is absent;
//! - E: "red" 2.0 on the red query, "green" 2.0 on green, "blue" 1.0 on blue; "square" and
//!   "dot" -1.5, "sign" -0.8, "big" 0.5 on every query; anything else -6.
//!
//! So every expected score below is written out by hand from the caption's tokens.

mod common;

use image::{Rgb, RgbImage};
use p2g::agents::detect::{DetectAgent, DetectArgs, DetectConfig, DetectOutput};
use p2g::agents::{AgentError, DynAgent, FindingKind};
use p2g::models::{ModelError, ModelSource, Store};
use p2g::vision::{BBox, Image};

fn sig(x: f64) -> f32 {
    (1.0 / (1.0 + (-x).exp())) as f32
}

fn fixture_dir() -> std::path::PathBuf {
    common::fixture("grounding_dino")
}

fn agent_with(change: impl FnOnce(&mut DetectConfig)) -> DetectAgent {
    let store = Store::open_default().expect("model store");
    let mut cfg = DetectConfig::embedded().expect("embedded detect manifest");
    change(&mut cfg);
    DetectAgent::load(&ModelSource::Dir(fixture_dir()), &store, cfg).expect("fixture loads")
}

fn agent() -> DetectAgent {
    agent_with(|_| {})
}

/// A black image with filled rectangles `[x1, y1, x2, y2)` of pure colours.
fn image(w: u32, h: u32, rects: &[([u32; 4], [u8; 3])]) -> Image {
    let mut img = RgbImage::new(w, h);
    for &([x1, y1, x2, y2], c) in rects {
        for y in y1..y2 {
            for x in x1..x2 {
                img.put_pixel(x, y, Rgb(c));
            }
        }
    }
    Image::from_rgb(img)
}

const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];
const BLUE: [u8; 3] = [0, 0, 255];

fn summary(out: &DetectOutput) -> Vec<(String, [f32; 4])> {
    out.detections
        .iter()
        .map(|d| (d.phrase.clone(), d.bbox.into()))
        .collect()
}

fn assert_score(got: f32, want: f32) {
    assert!((got - want).abs() < 1e-6, "score {got}, expected {want}");
}

/// 1000x800: the shorter side is already 800, so the model sees the pixels unresized and
/// every box is exact.
fn two_squares() -> Image {
    image(
        1000,
        800,
        &[([300, 100, 450, 200], RED), ([600, 500, 700, 640], BLUE)],
    )
}

#[test]
fn boxes_phrases_and_scores_are_exact() {
    let out = agent()
        .detect(&two_squares(), &DetectArgs::new("Red square . Blue square"))
        .unwrap();
    assert_eq!((out.width, out.height), (1000, 800));
    assert_eq!(
        summary(&out),
        vec![
            ("red square".into(), [300.0, 100.0, 450.0, 200.0]),
            ("blue square".into(), [600.0, 500.0, 700.0, 640.0]),
        ]
    );
    // [CLS] red square . blue square . [SEP]: "red" and "blue" open their phrases (position
    // 0) in 3-token blocks (row sum 3). The duplicate query (0.5 lower) was merged by NMS, the
    // absent green one never passed the box threshold.
    assert_score(out.detections[0].score, sig(2.0 + 0.003));
    assert_score(out.detections[1].score, sig(1.0 + 0.003));
}

#[test]
fn position_ids_and_the_sub_sentence_mask_reach_the_model() {
    // [CLS] big red square . [SEP]: "red" has position id 1 in a 4-token block; absolute
    // positions (2) or a full mask (row sum 6) would change the score.
    let img = image(1000, 800, &[([300, 100, 450, 200], RED)]);
    let out = agent()
        .detect(&img, &DetectArgs::new("big red square"))
        .unwrap();
    assert_eq!(
        summary(&out),
        vec![("big red square".into(), [300.0, 100.0, 450.0, 200.0])]
    );
    assert_score(out.detections[0].score, sig(2.0 + 0.01 + 0.004));
}

#[test]
fn wordpieces_belong_to_their_phrase() {
    // "squares" is "square" + "##s": the phrase spans both, "red" keeps row sum 4.
    let img = image(1000, 800, &[([300, 100, 450, 200], RED)]);
    let out = agent()
        .detect(&img, &DetectArgs::new("red squares"))
        .unwrap();
    assert_eq!(
        summary(&out),
        vec![("red squares".into(), [300.0, 100.0, 450.0, 200.0])]
    );
    assert_score(out.detections[0].score, sig(2.0 + 0.004));
}

#[test]
fn box_and_text_thresholds_come_from_the_options() {
    // "sign" scores sigmoid(-0.8 + 0.002) = 0.3105 on the green query: under the default box
    // threshold (0.35), so nothing is found.
    let img = image(1000, 800, &[([10, 20, 30, 40], GREEN)]);
    let args = DetectArgs::new("sign");
    assert!(agent().detect(&img, &args).unwrap().detections.is_empty());
    let lower = agent_with(|c| c.options.box_threshold = 0.3);
    let out = lower.detect(&img, &args).unwrap();
    assert_eq!(
        summary(&out),
        vec![("sign".into(), [10.0, 20.0, 30.0, 40.0])]
    );
    assert_score(out.detections[0].score, sig(-0.8 + 0.002));
    // The box passes, but its phrase does not pass a text threshold above its score.
    let strict = agent_with(|c| {
        c.options.box_threshold = 0.3;
        c.options.text_threshold = 0.32;
    });
    assert!(strict.detect(&img, &args).unwrap().detections.is_empty());
}

#[test]
fn each_box_goes_to_the_phrase_that_scores_highest() {
    // The green square: "green" (2.0) in the second phrase beats "sign" (-0.8) in the first.
    let img = image(1000, 800, &[([10, 20, 30, 40], GREEN)]);
    let out = agent()
        .detect(&img, &DetectArgs::new("sign . green dot"))
        .unwrap();
    assert_eq!(
        summary(&out),
        vec![("green dot".into(), [10.0, 20.0, 30.0, 40.0])]
    );
    // [CLS] sign . green dot . [SEP]: "green" at position 0 of a 3-token block.
    assert_score(out.detections[0].score, sig(2.0 + 0.003));
}

#[test]
fn the_deciding_word_may_end_its_phrase_and_captions_split_at_every_dot() {
    // "square red . blue": "red" is the last word of its phrase (position 1, block of 3).
    // Written "Square red.Blue" the reference splits it the same way.
    let out = agent()
        .detect(&two_squares(), &DetectArgs::new("Square red.Blue"))
        .unwrap();
    assert_eq!(
        summary(&out),
        vec![
            ("square red".into(), [300.0, 100.0, 450.0, 200.0]),
            ("blue".into(), [600.0, 500.0, 700.0, 640.0]),
        ]
    );
    assert_score(out.detections[0].score, sig(2.0 + 0.01 + 0.003));
    // [CLS] square red . blue . [SEP]: "blue" opens a 2-token block.
    assert_score(out.detections[1].score, sig(1.0 + 0.002));
}

#[test]
fn a_region_is_searched_alone_and_mapped_back() {
    let mut args = DetectArgs::new("red square . blue square");
    args.region = Some(BBox::new(500.0, 400.0, 1000.0, 800.0));
    let out = agent().detect(&two_squares(), &args).unwrap();
    // The 500x400 crop is upscaled to 1000x800 for the model; edges land within a pixel.
    assert_eq!(out.detections.len(), 1, "{:?}", out.detections);
    let d = &out.detections[0];
    assert_eq!(d.phrase, "blue square");
    let want = [600.0, 500.0, 700.0, 640.0];
    let got: [f32; 4] = d.bbox.into();
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1.0, "{got:?} vs {want:?}");
    }
}

/// 2400x1600: the whole-image pass sees it at half size, where a 3x3 red dot fades to
/// (7/8)^2 = 77% red, below the detector's threshold (83%); native 800-pixel tiles see it.
fn large() -> Image {
    image(
        2400,
        1600,
        &[
            ([400, 400, 1000, 1000], BLUE),
            ([1700, 1210, 1703, 1213], RED),
        ],
    )
}

#[test]
fn tiles_find_small_objects_the_whole_image_pass_misses() {
    let args = DetectArgs::new("red dot . blue square");
    let global_only = agent_with(|c| c.options.tiling = false)
        .detect(&large(), &args)
        .unwrap();
    assert_eq!(
        global_only
            .detections
            .iter()
            .map(|d| d.phrase.as_str())
            .collect::<Vec<_>>(),
        vec!["blue square"]
    );
    let out = agent().detect(&large(), &args).unwrap();
    let got = summary(&out);
    // The dot lies in two overlapping tiles: found twice at native resolution, merged once.
    // The blue square is cut by every tile that holds part of it, so those boxes are dropped
    // and the whole-image pass's box stands.
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], ("red dot".into(), [1700.0, 1210.0, 1703.0, 1213.0]));
    assert_eq!(got[1].0, "blue square");
    assert_eq!(got[1].1, <[f32; 4]>::from(global_only.detections[0].bbox));
    // At half size each output pixel blends source pixels with weights 1/8, 3/8, 3/8, 1/8
    // (PIL-style antialiased bilinear): the edge pixel of the square reads 7/8 blue (above
    // the threshold), the one outside 1/8 (below), so the edges map back exactly.
    assert_eq!(got[1].1, [400.0, 400.0, 1000.0, 1000.0]);
    assert_score(out.detections[0].score, sig(2.0 + 0.003));
    assert_score(out.detections[1].score, sig(1.0 + 0.003));
}

#[test]
fn many_phrases_take_several_passes_with_the_same_result() {
    let args = DetectArgs::new("red square . blue square");
    let one = agent().detect(&two_squares(), &args).unwrap();
    // [CLS] red square . blue square . [SEP] is 8 tokens; at most 6 per pass splits it in two
    // captions of 5, and each phrase keeps its own block, positions and scores.
    let split = agent_with(|c| c.options.max_text_len = 6)
        .detect(&two_squares(), &args)
        .unwrap();
    assert_eq!(summary(&one), summary(&split));
    assert_eq!(one.detections[0].score, split.detections[0].score);
    // A phrase longer than a whole pass is refused, not truncated.
    let err = agent_with(|c| c.options.max_text_len = 4)
        .detect(&two_squares(), &args)
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Arguments { reason, .. } if reason.contains("at most 4")),
        "{err}"
    );
}

#[test]
fn other_exporters_names_are_taken_from_the_manifest() {
    // `samples` in, `pred_logits` / `pred_boxes` out: the default manifest lists both spellings.
    let store = Store::open_default().unwrap();
    let variant = ModelSource::Dir(common::fixture("grounding_dino_variant"));
    let a = DetectAgent::load(&variant, &store, DetectConfig::embedded().unwrap()).unwrap();
    let args = DetectArgs::new("red square . blue square");
    assert_eq!(
        a.detect(&two_squares(), &args).unwrap().detections,
        agent().detect(&two_squares(), &args).unwrap().detections
    );
    // A manifest that does not know the export's names says which names the model has.
    let mut cfg = DetectConfig::embedded().unwrap();
    cfg.options.image_input = vec!["pixel_values".into()];
    let err = DetectAgent::load(&variant, &store, cfg).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("no image input named pixel_values") && msg.contains("samples"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_tool_takes_json_and_reports_objects() {
    let a = agent();
    let def = DynAgent::definition(&a);
    assert_eq!(def.name, "detect");
    assert_eq!(def.parameters["required"][0], "objects");
    let img = two_squares();
    let reply = DynAgent::call(&a, &img, serde_json::json!({"objects": ["blue square"]}))
        .await
        .unwrap();
    assert_eq!(reply.findings.len(), 1);
    assert_eq!(reply.findings[0].kind, FindingKind::Object);
    assert_eq!(reply.findings[0].text, "blue square");
    assert_eq!(reply.output["detections"][0]["bbox"][2], 700.0);
    // One caption string is accepted too.
    let reply = DynAgent::call(
        &a,
        &img,
        serde_json::json!({"objects": "red square . green dot"}),
    )
    .await
    .unwrap();
    assert_eq!(reply.findings.len(), 1);
    for bad in [
        serde_json::json!({"objects": []}),
        serde_json::json!({"objects": " . "}),
        serde_json::json!({"object": ["mug"]}),
        serde_json::json!({"objects": ["mug"], "region": [5, 5, 5, 5]}),
    ] {
        let err = DynAgent::call(&a, &img, bad.clone()).await.unwrap_err();
        assert!(matches!(err, AgentError::Arguments { .. }), "{bad}: {err}");
    }
}

#[test]
fn missing_or_wrong_model_files_are_clear_errors() {
    let store = Store::open_default().unwrap();
    let cfg = || DetectConfig::embedded().unwrap();
    // Nothing added to an empty cache: the error says how to supply the model.
    let tmp = tempfile::tempdir().unwrap();
    let empty = Store::new(tmp.path().to_path_buf(), store.manifest().clone());
    let err = DetectAgent::load(&ModelSource::Store(empty.clone()), &store, cfg())
        .err()
        .unwrap();
    assert!(
        matches!(err, AgentError::Model(ModelError::UserSupplied { .. })),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("p2g models add grounding-dino DIR"), "{msg}");
    assert!(msg.contains("README"), "{msg}");
    assert!(!DetectAgent::available(
        &ModelSource::Store(empty),
        &cfg().manifest
    ));
    // A folder without the files.
    let err = DetectAgent::load(&ModelSource::Dir(tmp.path().into()), &store, cfg())
        .err()
        .unwrap();
    assert!(err.to_string().contains("groundingdino.onnx"), "{err}");
    // A file that is not an ONNX model, and a vocabulary without BERT's tokens.
    std::fs::write(tmp.path().join("groundingdino.onnx"), b"not a model").unwrap();
    std::fs::copy(
        fixture_dir().join("vocab.txt"),
        tmp.path().join("vocab.txt"),
    )
    .unwrap();
    let err = DetectAgent::load(&ModelSource::Dir(tmp.path().into()), &store, cfg())
        .err()
        .unwrap();
    assert!(
        matches!(err, AgentError::Model(ModelError::Session { .. })),
        "{err}"
    );
    std::fs::write(tmp.path().join("vocab.txt"), "hello\nworld\n").unwrap();
    let err = DetectAgent::load(&ModelSource::Dir(tmp.path().into()), &store, cfg())
        .err()
        .unwrap();
    assert!(err.to_string().contains("[CLS]"), "{err}");
}

#[test]
fn an_added_folder_is_found_in_the_store() {
    let store = Store::open_default().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = Store::new(tmp.path().to_path_buf(), store.manifest().clone());
    // The user's export may have any name: the folder's only .onnx file is taken.
    let user = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("groundingdino.onnx"),
        user.path().join("grounded_swint.onnx"),
    )
    .unwrap();
    std::fs::copy(
        fixture_dir().join("vocab.txt"),
        user.path().join("vocab.txt"),
    )
    .unwrap();
    let added = cache.add("grounding-dino", user.path()).unwrap();
    assert_eq!(added.len(), 2);
    let source = ModelSource::Store(cache.clone());
    let cfg = DetectConfig::embedded().unwrap();
    assert!(DetectAgent::available(&source, &cfg.manifest));
    let a = DetectAgent::load(&source, &store, cfg).unwrap();
    let out = a
        .detect(&two_squares(), &DetectArgs::new("blue square"))
        .unwrap();
    assert_eq!(out.detections.len(), 1);
    assert!(cache
        .verify("grounding-dino")
        .unwrap()
        .iter()
        .all(|c| c.problem.is_none()));
    // Pinned bundles are fetched, not added.
    assert!(cache.add("ocr", user.path()).is_err());
}

#[test]
fn controllers_are_offered_detect_only_when_its_model_is_present() {
    let store = Store::open_default().unwrap();
    let ocr_dir = store.ensure("ocr").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&ocr_dir).unwrap() {
        let f = f.unwrap().path();
        std::os::unix::fs::symlink(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let session = p2g::models::runtime::SessionOptions::default();
    let names = |source: &ModelSource| -> Vec<String> {
        p2g::agents::load_available(source, &store, session)
            .unwrap()
            .iter()
            .map(|a| a.definition().name)
            .collect()
    };
    let source = ModelSource::Dir(dir.path().to_path_buf());
    assert_eq!(names(&source), ["ocr", "colour"]);
    for f in ["groundingdino.onnx", "vocab.txt"] {
        std::fs::copy(fixture_dir().join(f), dir.path().join(f)).unwrap();
    }
    assert_eq!(names(&source), ["ocr", "detect", "colour"]);
    // Present but broken is an error, not a silently missing tool.
    std::fs::write(dir.path().join("groundingdino.onnx"), b"junk").unwrap();
    assert!(p2g::agents::load_available(&source, &store, session).is_err());
}
