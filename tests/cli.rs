//! The `p2g` binary: output formats, several images, drawing, and one-line errors.

mod common;

use std::process::Command;

fn p2g() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p2g"))
}

/// A JSON object's keys, sorted.
fn sorted_keys(v: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    keys
}

/// A successful run's stdout and its lines parsed as JSON (the run's stderr on failure).
fn json_lines(out: std::process::Output) -> (String, Vec<serde_json::Value>) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (stdout, lines)
}

#[test]
fn json_has_exactly_the_documented_shape_per_image_in_order() {
    let out = p2g()
        .args(["ocr", "--json"])
        .arg(common::fixture("header.png"))
        .arg(common::fixture("receipt.jpg"))
        .output()
        .unwrap();
    let (_, objs) = json_lines(out);
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0]["height"], 250);
    assert_eq!(objs[1]["height"], 1013);
    for o in &objs {
        let keys = sorted_keys(o);
        assert_eq!(keys, ["elapsed_ms", "height", "lines", "width"]);
        for l in o["lines"].as_array().unwrap() {
            let keys = sorted_keys(l);
            assert_eq!(keys, ["bbox", "confidence", "quad", "text"]);
            assert_eq!(l["bbox"].as_array().unwrap().len(), 4);
            assert_eq!(l["quad"].as_array().unwrap().len(), 4);
        }
    }
    let text: Vec<&str> = objs[1]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(
        text.iter()
            .any(|t| t.contains("TOTAL") || t.contains("Total")),
        "{text:?}"
    );
}

#[test]
fn plain_output_and_draw() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let out = p2g()
        .args(["ocr"])
        .arg(common::fixture("header.png"))
        .arg("--draw")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("789417-W"), "{text}");
    let drawn = image::open(&png).unwrap().to_rgb8();
    let original = image::open(common::fixture("header.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    assert_ne!(drawn.as_raw(), original.as_raw(), "boxes were drawn");
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    for (args, needle) in [
        (
            vec!["ocr", "tests/fixtures/not_an_image.jpg"],
            "not an image",
        ),
        (vec!["ocr", "tests/fixtures/truncated.jpg"], "end-of-image"),
        (vec!["ocr", "tests/fixtures/bomb.png"], "--max-pixels"),
        (vec!["ocr", "no/such/file.png"], "cannot read image"),
        (
            vec![
                "ocr",
                "tests/fixtures/header.png",
                "--model-dir",
                "/nonexistent",
            ],
            "not found in /nonexistent",
        ),
        (
            vec!["ocr", "tests/fixtures/header.png", "--region", "5,5,1,1"],
            "x2 must exceed x1",
        ),
        (
            vec!["models", "fetch", "no-such-bundle"],
            "no model bundle named",
        ),
        // The cause chain, not only the outermost message: which file, and why.
        (
            vec![
                "ask",
                "tests/fixtures/receipt.jpg",
                "What?",
                "--controller-model",
                "/nonexistent.gguf",
                "--no-agents",
            ],
            "cannot load the controller model: cannot read /nonexistent.gguf: No such file",
        ),
    ] {
        let out = p2g()
            .current_dir(common::root())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        if args[0] == "ocr" && !args.contains(&"--region") {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    }
}

#[test]
fn a_bad_image_among_good_ones_keeps_order_and_fails_the_run() {
    let out = p2g()
        .current_dir(common::root())
        .args([
            "ocr",
            "--json",
            "tests/fixtures/header.png",
            "tests/fixtures/empty.png",
            "tests/fixtures/header_gray.png",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["lines"].is_array());
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("is empty (0 bytes)"));
    assert!(lines[2]["lines"].is_array());
}

#[test]
fn ask_prints_the_documented_json_and_its_trace_can_be_shown_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let out = p2g()
        .args(["ask", "--json", "--trace"])
        .arg(&trace)
        .arg(common::fixture("receipt.jpg"))
        .arg("What is the total amount?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = sorted_keys(&v);
    assert_eq!(
        keys,
        ["answer", "elapsed_ms", "grounding", "linked", "steps"]
    );
    assert_eq!(v["answer"], "9.00", "{v}");
    let g = &v["grounding"][0];
    assert_eq!(g["phrase"], "9.00");
    assert!(g["region"].as_str().unwrap().starts_with('r'));
    assert_eq!(g["bbox"].as_array().unwrap().len(), 4);

    let shown = p2g().args(["trace", "show"]).arg(&trace).output().unwrap();
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(text.contains("What is the total amount?"), "{text}");
    assert!(text.contains("call ocr"), "{text}");
    assert!(text.contains("⇒ 9.00"), "{text}");
    // Why this text: the total answer shape's spans, the model's choice among them.
    assert!(
        text.contains("spans of the `total` answer shape") && text.contains("the model found"),
        "{text}"
    );
    let png = dir.path().join("t.png");
    let drawn = p2g()
        .args(["trace", "draw"])
        .arg(&trace)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        drawn.status.success(),
        "{}",
        String::from_utf8_lossy(&drawn.stderr)
    );
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (463, 1013));
}

#[test]
fn ask_and_trace_errors_are_one_line() {
    let out = p2g()
        .args(["ask", "/nonexistent.png", "What?"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("p2g: error:") && err.contains("nonexistent"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"event\": \"nope\"}\n").unwrap();
    let out = p2g().args(["trace", "show"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:1: not a trace event"), "{err}");
}

/// `p2g eval sroie` on a one-receipt folder (the fixture is SROIE receipt 000), two fields:
/// one JSON line per question, then the summary, the fields not asked `null`.
#[test]
fn eval_scores_the_asked_fields_and_prints_the_documented_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("img")).unwrap();
    std::fs::create_dir_all(dir.path().join("key")).unwrap();
    std::fs::copy(
        common::fixture("receipt.jpg"),
        dir.path().join("img/000.jpg"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("key/000.json"),
        r#"{"company": "BOOK TA .K (TAMAN DAYA) SDN BHD", "date": "25/12/2018", "address": "-", "total": "9.00"}"#,
    )
    .unwrap();
    let out = p2g()
        .args(["eval", "sroie", "--json", "--fields", "date,total"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, lines) = json_lines(out);
    assert_eq!(lines.len(), 3, "{stdout}");
    for (q, field) in lines.iter().zip(["date", "total"]) {
        assert_eq!(
            sorted_keys(q),
            [
                "answer",
                "correct",
                "error",
                "expected",
                "field",
                "receipt",
                "seconds",
                "similarity",
                "steps"
            ]
        );
        assert_eq!(q["field"], field);
        assert_eq!(q["receipt"], "000");
    }
    assert_eq!(lines[0]["answer"], "25/12/2018", "{stdout}");
    assert_eq!(lines[0]["correct"], true);
    let summary = &lines[2];
    assert_eq!(
        sorted_keys(summary),
        [
            "accuracy",
            "failures",
            "median_s",
            "n",
            "parallel",
            "similarity",
            "wall_s"
        ]
    );
    assert_eq!(summary["n"], 1);
    let acc = &summary["accuracy"];
    assert_eq!(
        sorted_keys(acc),
        ["address", "company", "date", "overall", "total"]
    );
    assert!(
        acc["company"].is_null() && acc["address"].is_null(),
        "{acc}"
    );
    assert_eq!(acc["date"], 1.0);
    assert!(acc["overall"].as_f64().unwrap() >= 0.5, "{acc}");

    let out = p2g()
        .args(["eval", "sroie"])
        .arg(dir.path().join("img"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an SROIE-layout folder"), "{err}");
}

/// `p2g eval qa` on a two-question file about the receipt fixture: one line per question with
/// the documented keys, then the summary by kind of question.
#[test]
fn eval_qa_scores_open_questions_and_prints_the_documented_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::fixture("receipt.jpg"), dir.path().join("r.jpg")).unwrap();
    let q = dir.path().join("q.jsonl");
    std::fs::write(
        &q,
        concat!(
            r#"{"image": "r.jpg", "question": "What is the total amount?", "answers": ["9.00"], "needs": "text"}"#,
            "\n",
            r#"{"image": "r.jpg", "question": "What colour is the paper?", "answers": ["white"], "needs": "vision"}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = p2g()
        .args(["eval", "qa", "--json"])
        .arg(&q)
        .output()
        .unwrap();
    let (stdout, lines) = json_lines(out);
    assert_eq!(lines.len(), 3, "{stdout}");
    for l in &lines[..2] {
        assert_eq!(
            sorted_keys(l),
            ["answer", "image", "question", "right", "seconds", "steps"],
            "{stdout}"
        );
    }
    assert_eq!(lines[0]["answer"], "9.00", "{stdout}");
    assert_eq!(lines[0]["right"], true);
    assert_eq!(lines[1]["right"], false);
    let summary = &lines[2];
    assert_eq!(
        sorted_keys(summary),
        ["accuracy", "median_s", "n", "of", "right"]
    );
    assert_eq!(summary["n"], 2);
    assert_eq!(summary["right"]["text"], 1);
    assert_eq!(summary["of"]["vision"], 1);
    assert_eq!(summary["of"]["objects+text"], 0);
    assert_eq!(summary["accuracy"], 0.5);

    std::fs::write(&q, "{\"image\": \"r.jpg\"}\n").unwrap();
    let out = p2g().args(["eval", "qa"]).arg(&q).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.lines().count() == 1, "{err}");
}

#[test]
fn the_repl_answers_piped_questions_and_commands() {
    use std::io::Write;
    let mut child = p2g()
        .arg("repl")
        .arg(common::fixture("receipt.jpg"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the total amount?\n:agents\n:bogus\n:region 1,2\n:trace\n:quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("9.00"), "{text}");
    assert!(text.contains("ocr: Read the text"), "{text}");
    assert!(text.contains("unknown command :bogus"), "{text}");
    assert!(text.contains("error: expected four numbers"), "{text}");
    assert!(text.contains("━━ What is the total amount?"), "{text}");
}

/// A 1000x800 black PNG with a red and a blue square (see tests/detect.rs for the fixture).
fn squares_png(dir: &std::path::Path) -> std::path::PathBuf {
    let mut img = image::RgbImage::new(1000, 800);
    for (x1, y1, x2, y2, c) in [
        (300, 100, 450, 200, [255, 0, 0]),
        (600, 500, 700, 640, [0, 0, 255]),
    ] {
        for y in y1..y2 {
            for x in x1..x2 {
                img.put_pixel(x, y, image::Rgb(c));
            }
        }
    }
    let path = dir.join("squares.png");
    img.save(&path).unwrap();
    path
}

/// `p2g` with an empty cache of its own, but the already-cached ONNX Runtime.
fn p2g_fresh_cache(home: &std::path::Path) -> Command {
    let store = p2g::models::Store::open_default().unwrap();
    let ort = p2g::models::runtime::library_path(&store).unwrap();
    let mut c = p2g();
    c.env("P2G_HOME", home).env("P2G_ORT_DYLIB", ort);
    c
}

#[test]
fn detect_prints_the_documented_json_and_draws() {
    let dir = tempfile::tempdir().unwrap();
    let img = squares_png(dir.path());
    let drawn = dir.path().join("boxes.png");
    let out = p2g()
        .args(["detect", "--json", "--draw"])
        .arg(&drawn)
        .arg("--model-dir")
        .arg(common::fixture("grounding_dino"))
        .arg(&img)
        .arg("red square . blue square")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = sorted_keys(&v);
    assert_eq!(keys, ["detections", "elapsed_ms", "height", "width"]);
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1000), Some(800))
    );
    let dets = v["detections"].as_array().unwrap();
    assert_eq!(dets.len(), 2);
    for d in dets {
        let keys = sorted_keys(d);
        assert_eq!(keys, ["bbox", "phrase", "score"]);
    }
    assert_eq!(dets[0]["phrase"], "red square");
    assert_eq!(
        dets[0]["bbox"],
        serde_json::json!([300.0, 100.0, 450.0, 200.0])
    );
    assert_eq!(dets[1]["phrase"], "blue square");
    let drawn = image::open(&drawn).unwrap().to_rgb8();
    // The red square's box is drawn in the first palette colour, the blue's in the second.
    assert_eq!(drawn.get_pixel(375, 100).0, [230, 25, 75]);
    assert_eq!(drawn.get_pixel(650, 640).0, [60, 180, 75]);
}

#[test]
fn detect_without_a_model_says_how_to_add_one_and_add_makes_it_work() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = squares_png(dir.path());
    // No Grounding DINO and no npm to fetch the COCO detector: one line naming both ways.
    let out = p2g_fresh_cache(home.path())
        .env("P2G_NPM", "/nonexistent/npm")
        .arg("detect")
        .arg(&img)
        .arg("red square")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Above it, the fetch's own progress lines.
    let err = stderr.trim().lines().last().unwrap_or_default();
    assert!(err.starts_with("p2g: error:"), "{stderr}");
    assert!(
        err.contains("p2g models add grounding-dino DIR"),
        "{stderr}"
    );
    assert!(err.contains("npm"), "{stderr}");

    // A folder whose model is not a Grounding DINO export is refused and leaves nothing.
    let bad = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture("grounding_dino/vocab.txt"),
        bad.path().join("vocab.txt"),
    )
    .unwrap();
    std::fs::write(bad.path().join("model.onnx"), b"junk").unwrap();
    let out = p2g_fresh_cache(home.path())
        .args(["models", "add", "grounding-dino"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not added"));
    assert!(!home
        .path()
        .join("models/grounding-dino/groundingdino.onnx")
        .exists());

    let out = p2g_fresh_cache(home.path())
        .args(["models", "add", "grounding-dino"])
        .arg(common::fixture("grounding_dino"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p2g_fresh_cache(home.path())
        .arg("detect")
        .arg(&img)
        .arg("blue square")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("blue square"), "{text}");
    assert!(text.contains("[600, 500, 700, 640]"), "{text}");
    let list = p2g_fresh_cache(home.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.lines().any(|l| l.starts_with("grounding-dino")
            && l.contains("added")
            && !l.contains("not added")),
        "{list}"
    );
}

#[test]
fn a_llava_pair_is_added_checked_and_asked_with_its_policy_in_the_trace() {
    let home = tempfile::tempdir().unwrap();
    let img = common::fixture("receipt.jpg");
    // Not added yet: one line saying how.
    let out = p2g_fresh_cache(home.path())
        .args(["ask", "--controller", "llava", "--no-agents"])
        .arg(&img)
        .arg("What is it?")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p2g models add llava DIR") && err.contains("Vision-language models"),
        "{err}"
    );
    // A pair whose widths differ is refused and leaves nothing.
    let pair = |llm: &str, mmproj: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            common::fixture("llava").join(llm),
            dir.path().join("model.gguf"),
        )
        .unwrap();
        std::fs::copy(
            common::fixture("mmproj").join(mmproj),
            dir.path().join("mmproj.gguf"),
        )
        .unwrap();
        dir
    };
    let bad = pair("tiny_llm_qwen2.gguf", "tiny_mmproj_mlp.gguf");
    let out = p2g_fresh_cache(home.path())
        .args(["models", "add", "llava"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was not added") && err.contains("not a pair"),
        "{err}"
    );
    assert!(!home.path().join("models/llava/model.gguf").exists());
    let good = pair("tiny_llm_llama.gguf", "tiny_mmproj_mlp.gguf");
    let out = p2g_fresh_cache(home.path())
        .args(["models", "add", "llava"])
        .arg(good.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = home.path().join("trace.jsonl");
    let out = p2g_fresh_cache(home.path())
        .args([
            "ask",
            "--controller",
            "llava",
            "--no-agents",
            "--json",
            "--trace",
        ])
        .arg(&trace)
        .arg(&img)
        .arg("What is it?")
        .output()
        .unwrap();
    let (_, lines) = json_lines(out);
    assert_eq!(lines.len(), 1);
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let visual = events
        .iter()
        .find(|e| e["event"] == "visual" || e["kind"] == "visual")
        .unwrap_or_else(|| panic!("no visual event: {events:?}"));
    // The whole image alone: through the MLP, one token per patch of the 2x2 grid.
    assert_eq!(visual["tokens"], 4, "{visual}");
    assert_eq!(visual["images"][0]["encoder"]["kind"], "mlp", "{visual}");
    let shown = p2g().args(["trace", "show"]).arg(&trace).output().unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("shown 4 visual tokens: image mlp 4"),
        "{text}"
    );
}
