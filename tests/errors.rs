//! Errors say why, at every layer: the one-line form (`p2g::error_line`, what the binary and
//! the server print) of an error from each layer holds the underlying cause — the file, the
//! system's reason, the server's words — and says each part once.

mod common;

use std::path::Path;

use p2g::agents::ocr::{OcrAgent, OcrConfig};
use p2g::controller::embedded::EmbeddedConfig;
use p2g::controller::prompt::Prompts;
use p2g::controller::EmbeddedController;
use p2g::models::runtime::{self, OnnxModel, SessionOptions};
use p2g::models::{ModelSource, Store};
use p2g::orchestrator::{AskOptions, Orchestrator};
use p2g::server::ServeError;
use p2g::vision::{Image, LoadOptions};

/// The line holds every part (once each, unless a cause's own words repeat it: ONNX Runtime
/// quotes the path it was given).
fn says(e: &(dyn std::error::Error + 'static), parts: &[&str]) -> String {
    let line = p2g::error_line(e);
    assert!(!line.contains('\n'), "{line}");
    for p in parts {
        assert!(line.contains(p), "{line:?} lacks {p:?}");
    }
    line
}

fn once(line: &str, part: &str) {
    assert_eq!(
        line.matches(part).count(),
        1,
        "{line:?} says {part:?} more than once"
    );
}

#[test]
fn vision_errors_name_the_file_and_the_system_reason() {
    let e = Image::open(Path::new("/nonexistent/scan.png"), &LoadOptions::default()).unwrap_err();
    let line = says(&e, &["/nonexistent/scan.png", "No such file or directory"]);
    once(&line, "No such file or directory");
}

#[test]
fn model_errors_name_the_file_and_what_onnx_runtime_said() {
    let store = Store::open_default().unwrap();
    let env = runtime::environment(&store).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("det.onnx");
    std::fs::write(&bad, b"not a protobuf").unwrap();
    let e = OnnxModel::open(env, &bad, &SessionOptions::default())
        .err()
        .unwrap();
    let line = says(&e, &[bad.to_str().unwrap()]);
    assert!(line.to_lowercase().contains("protobuf"), "{line}");

    let e = OnnxModel::remote("http://127.0.0.1:9/v2/models/det")
        .err()
        .unwrap();
    says(
        &e,
        &["http://127.0.0.1:9/v2/models/det", "connection refused"],
    );
}

#[test]
fn agent_errors_carry_the_model_error_beneath() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ppocrv5_det.onnx", "ppocrv5_cls.onnx", "ppocrv5_rec.onnx"] {
        std::fs::write(dir.path().join(f), b"junk").unwrap();
    }
    let store = Store::open_default().unwrap();
    let keys = store.ensure("ocr").unwrap().join("ppocr_keys_v5.txt");
    std::fs::copy(keys, dir.path().join("ppocr_keys_v5.txt")).unwrap();
    let e = OcrAgent::load(
        &ModelSource::Dir(dir.path().to_path_buf()),
        &store,
        OcrConfig::embedded().unwrap(),
    )
    .err()
    .unwrap();
    let line = says(&e, &["ppocrv5_det.onnx"]);
    assert!(line.to_lowercase().contains("protobuf"), "{line}");
}

#[test]
fn controller_errors_name_the_file_and_the_reason() {
    let cfg = EmbeddedConfig::new(Prompts::embedded().unwrap());
    let e = EmbeddedController::from_file(Path::new("/nonexistent.gguf"), "x", cfg)
        .err()
        .unwrap();
    let line = says(&e, &["/nonexistent.gguf", "No such file or directory"]);
    once(&line, "No such file or directory");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("system.md"), "{% if %}").unwrap();
    let e = Prompts::with_overrides(dir.path()).err().unwrap();
    says(&e, &["system.md", "syntax error"]);
}

#[test]
fn loop_errors_keep_the_controllers_cause() {
    // A question template that prints a variable the loop never sets: the question fails with
    // the template's name and the reason, through the orchestrator's error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("question.md"),
        "{{ question }} {{ no_such_value }}",
    )
    .unwrap();
    let mut cfg = EmbeddedConfig::new(Prompts::with_overrides(dir.path()).unwrap());
    cfg.prompt_cache = None;
    let store = Store::open_default().unwrap();
    let c = EmbeddedController::load(
        p2g::controller::ControllerChoice::Smollm2,
        &ModelSource::Store(store),
        cfg,
    )
    .unwrap();
    let o = Orchestrator::builder().controller(c).build().unwrap();
    let img = Image::open(&common::fixture("header.png"), &LoadOptions::default()).unwrap();
    let mut s = o.session(img, &common::fixture("header.png"));
    let e = common::rt()
        .block_on(s.ask("What is the shop's name?", AskOptions::default()))
        .unwrap_err();
    says(&e, &["question.md", "undefined"]);
}

#[test]
fn server_errors_carry_the_cause_into_the_reply() {
    let e = Image::open(Path::new("/nonexistent/scan.png"), &LoadOptions::default()).unwrap_err();
    let e = ServeError::from(e);
    assert_eq!(e.status().as_u16(), 422);
    says(&e, &["/nonexistent/scan.png", "No such file or directory"]);
    let e = ServeError::from(p2g::server::PathError::Parent);
    assert_eq!(e.status().as_u16(), 403);
    says(&e, &["'..'"]);
}
