//! Property tests of everything that reads untrusted text or bytes: a controller's output
//! (tool calls, boxes in every model's convention), answers grounded in evidence, agent
//! manifests, prompt templates and image files. Each property checks that nothing panics
//! and that what comes back keeps its promise (a parsed box is a real box, a grounding names
//! a region that exists, a decoded image is within the pixel limit).
//!
//! Needs no model files; the whole file runs in well under a minute.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};

use p2g::agents::{AgentManifest, Finding, FindingKind};
use p2g::answer::boxes::{
    qwen25vl_resized, BoxConvention, Frame, Parsed, QWEN25VL_MAX_PIXELS, QWEN25VL_MIN_PIXELS,
};
use p2g::answer::grounding::{ground, linked_text};
use p2g::controller::parse::parse_decision;
use p2g::controller::prompt::render;
use p2g::controller::{Citation, Decision};
use p2g::orchestrator::evidence::Evidence;
use p2g::vision::{BBox, Image, LoadOptions};

// ---------------------------------------------------------------------------------------------
// Shared strategies.

/// Strings built from `items` (with a little arbitrary text between them): inputs that look
/// enough like the real thing to get past the first check of a parser.
fn fragments(items: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(items).prop_map(str::to_string),
            1 => "\\PC{0,6}",
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

/// Any f32, NaN and infinities included.
fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -5000f32..5000f32,
        1 => any::<f32>(),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
    ]
}

/// Any box, inverted, empty and non-finite ones included.
fn any_bbox() -> impl Strategy<Value = BBox> {
    (any_f32(), any_f32(), any_f32(), any_f32()).prop_map(|(a, b, c, d)| BBox::new(a, b, c, d))
}

fn same_bits(a: &BBox, b: &BBox) -> bool {
    [a.x1, a.y1, a.x2, a.y2]
        .iter()
        .zip([b.x1, b.y1, b.x2, b.y2].iter())
        .all(|(x, y)| x.to_bits() == y.to_bits())
}

fn finite_box(b: &BBox) -> bool {
    b.x1.is_finite() && b.y1.is_finite() && b.x2.is_finite() && b.y2.is_finite()
}

// ---------------------------------------------------------------------------------------------
// Tool-call parsing.

const TOOLS: &[&str] = &["ocr"];

const CALL_FRAGMENTS: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "{\"name\":",
    "{\"name\": \"ocr\", ",
    "\"name\"",
    "\"ocr\"",
    "\"answer\"",
    "\"zoom\"",
    "\"arguments\":",
    "\"parameters\":",
    "\"region\":",
    "\"text\":",
    "\"regions\":",
    "[1, 2, 3, 4]",
    "[\"r1\"]",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "\\\"",
    "\\u",
    "\\ud800",
    "\\udc00",
    "<think>",
    "</think>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "</s>",
    "```json\n",
    "```",
    "\n",
    " ",
    "1e999",
    "-0",
    "NaN",
    "Infinity",
    "null",
    "true",
    "12345678901234567890123",
    "0.5",
    "\"\"",
    "[r1]",
    "[r12, r3]",
    "[r]",
    "r7",
    "é",
    "猫",
    "🦀",
    "\u{0}",
    "\u{200b}",
    "\u{feff}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "]]]]]]]]]]]]]]]]",
    "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
];

/// Parses `s` and checks what any decision must be.
fn check_decision(s: &str) {
    match parse_decision(s, "answer", TOOLS) {
        Ok(Decision::Call { agent, arguments }) => {
            assert_eq!(agent, "ocr", "a call to a tool that was not offered: {s:?}");
            assert!(
                arguments.is_object(),
                "arguments not an object: {arguments} from {s:?}"
            );
        }
        Ok(Decision::Answer { grounding, .. }) => {
            for c in &grounding {
                assert!(c.bbox.is_none(), "parsing never draws a box: {s:?}");
            }
        }
        Ok(Decision::NotFound { .. }) => panic!("parse_decision never says not-found: {s:?}"),
        Err(e) => assert!(!e.is_empty(), "an empty reason for {s:?}"),
    }
}

/// Finite numbers as a model might write them (serde_json writes them back; magnitudes stay
/// away from the ends of the f64 range, where serde_json's own parsing may lose a unit).
fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e6f64..1e6f64,
        2 => any::<i32>().prop_map(f64::from),
        1 => -1e300f64..1e300f64,
        1 => -1.0f64..1.0f64,
        1 => Just(0.0f64),
        1 => Just(-0.0f64),
    ]
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// A well-formed call in one of the forms servers leave in the text.
fn wrap_call(form: u8, body: &str, prose: &str, think: &str) -> String {
    match form % 6 {
        0 => format!("{think}{prose}<tool_call>\n{body}\n</tool_call>"),
        1 => format!("{think}{prose}<tool_call>{body}"),
        2 => format!("{think}{prose}<|python_tag|>{body}<|eom_id|>"),
        3 => format!("{think}{prose}[TOOL_CALLS][{body}]"),
        4 => format!("{think}```json\n{body}\n```"),
        _ => format!("{think}{body}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decision_parsing_never_panics_on_any_text(s in any::<String>()) {
        check_decision(&s);
    }

    #[test]
    fn decision_parsing_never_panics_on_call_like_text(s in fragments(CALL_FRAGMENTS, 48)) {
        check_decision(&s);
    }

    #[test]
    fn well_formed_calls_are_read_exactly(
        region in prop::array::uniform4(finite_f64()),
        form in any::<u8>(),
        parameters in any::<bool>(),
        pretty in any::<bool>(),
        prose in "[a-zA-Z0-9 ,.!?]{0,30}",
        thought in prop::option::of("[a-zA-Z0-9 ,.]{0,30}"),
    ) {
        let mut args = serde_json::Map::new();
        args.insert("region".into(), json!(region));
        let mut call = serde_json::Map::new();
        call.insert("name".into(), json!("ocr"));
        let key = if parameters { "parameters" } else { "arguments" };
        call.insert(key.into(), Value::Object(args));
        let call = Value::Object(call);
        let body = if pretty {
            serde_json::to_string_pretty(&call).unwrap()
        } else {
            serde_json::to_string(&call).unwrap()
        };
        let think = thought.map(|t| format!("<think>{t}</think>")).unwrap_or_default();
        let text = wrap_call(form, &body, &prose, &think);
        match parse_decision(&text, "answer", TOOLS) {
            Ok(Decision::Call { agent, arguments }) => {
                prop_assert_eq!(agent, "ocr");
                let got: Vec<f64> = arguments["region"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no region list in {arguments} from {text:?}"))
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN))
                    .collect();
                prop_assert_eq!(got.len(), 4, "{:?}", got);
                for (g, want) in got.iter().zip(region.iter()) {
                    prop_assert!(close(*g, *want), "{} != {} in {:?}", g, want, text);
                }
                prop_assert_eq!(arguments.as_object().map(|o| o.len()), Some(1));
            }
            other => prop_assert!(false, "{:?} -> {:?}", text, other),
        }
    }

    #[test]
    fn plain_text_is_the_answer_and_bracketed_ids_cite(
        words in "[a-zA-Z0-9 .,!?]{0,60}",
        ids in prop::collection::vec(0u32..100_000, 0..4),
    ) {
        let want: Vec<String> = ids.iter().map(|n| format!("r{n}")).collect();
        let text = if want.is_empty() {
            words.clone()
        } else {
            format!("{words} [{}]", want.join(", "))
        };
        match parse_decision(&text, "answer", TOOLS) {
            Ok(Decision::Answer { text: got, grounding }) => {
                prop_assert_eq!(got.as_str(), words.trim());
                let cited: Vec<String> = grounding.into_iter().map(|c| c.region).collect();
                prop_assert_eq!(cited, want);
            }
            Err(e) if text.trim().is_empty() => prop_assert!(e.contains("empty"), "{}", e),
            other => prop_assert!(false, "{:?} -> {:?}", text, other),
        }
    }
}

#[test]
fn deeply_nested_calls_are_refused_not_overflowed() {
    for depth in [64usize, 127, 128, 129, 1_000, 100_000] {
        let open = "[".repeat(depth);
        let close = "]".repeat(depth);
        for s in [
            format!("<tool_call>{open}"),
            format!("<tool_call>{{\"name\": \"ocr\", \"arguments\": {open}1{close}}}</tool_call>"),
            format!(
                "{{\"name\": \"ocr\", \"arguments\": {}",
                "{\"a\":".repeat(depth)
            ),
            format!("[TOOL_CALLS]{}", "[{\"name\":".repeat(depth)),
            format!("<|python_tag|>{open}{{\"name\": \"ocr\"}}{close}"),
            format!("<think>{open}</think>answer [r1]"),
        ] {
            check_decision(&s);
        }
    }
    for name in [
        "controller_deep_nesting.txt",
        "controller_deep_nesting_unclosed.txt",
        "controller_1mib_string.txt",
        "controller_lone_surrogate.txt",
        "controller_huge_number_region.txt",
        "controller_nan_region.txt",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/bad_inputs")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_decision(&String::from_utf8_lossy(&bytes));
    }
}

// ---------------------------------------------------------------------------------------------
// Boxes: `x1,y1,x2,y2` regions and the conventions of grounding models.

const BOX_FRAGMENTS: &[&str] = &[
    "<p>",
    "</p>",
    "{<",
    "><",
    ">}",
    "<delim>",
    "<phrase>",
    "</phrase>",
    "<object>",
    "</object>",
    "<patch_index_0044>",
    "<patch_index_1023>",
    "<patch_index_9999>",
    "<patch_index_",
    "</delimiter_of_multi_objects/>",
    "<grounding>",
    "</image>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "(",
    ")",
    ",",
    "[",
    "]",
    ";",
    "<loc_",
    "<loc_0>",
    "<loc_999>",
    "<loc_1000>",
    "<loc_5>",
    "<r1>",
    "<r0>",
    "[r3]",
    "[r999999999]",
    "r7",
    "r1",
    "<roi>",
    "</roi>",
    "```json\n",
    "```",
    "{\"bbox_2d\": [",
    "\"bbox_2d\"",
    "'bbox_2d'",
    "\"label\": \"",
    "'label': '",
    "\"",
    "'",
    "{",
    "}",
    ":",
    "0",
    "1",
    "12",
    "999",
    "1000",
    "-3",
    "-0",
    "0.5",
    "0.999",
    ".",
    "1e9",
    "1e39",
    "1e999",
    "99999999999999999999",
    "NaN",
    "inf",
    "-inf",
    " ",
    "\n",
    "\t",
    "dog",
    "é",
    "猫",
    "<|endoftext|>",
    "<|im_end|>",
    "</s>",
    "<pad>",
    "\u{1}",
    "\\",
    "\\\"",
];

/// What every parsed box must be (the contract of `FoundBox`), and what a parse must leave.
fn check_parsed(c: BoxConvention, p: &Parsed, f: &Frame, text: &str) {
    let (w, h) = (f.image.0 as f32, f.image.1 as f32);
    for b in &p.boxes {
        let bb = b.bbox;
        assert!(finite_box(&bb), "{c}: {bb:?} from {text:?}");
        assert!(bb.x1 < bb.x2 && bb.y1 < bb.y2, "{c}: {bb:?} from {text:?}");
        assert!(
            bb.x1 >= 0.0 && bb.y1 >= 0.0 && bb.x2 <= w && bb.y2 <= h,
            "{c}: {bb:?} outside {w}x{h} from {text:?}"
        );
        if let Some(id) = &b.region {
            assert!(
                f.regions.iter().any(|(r, _)| r == id),
                "{c}: region {id} was never given, from {text:?}"
            );
        }
    }
    assert!(
        !p.text.contains('\u{1}'),
        "{c}: a markup marker left in {:?}",
        p.text
    );
    assert!(
        p.rejected.len() <= 201,
        "{c}: {} rejections",
        p.rejected.len()
    );
}

/// Finite f32 coordinates, some huge, some tiny.
fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -1e4f32..1e4f32,
        2 => any::<i16>().prop_map(f32::from),
        1 => -1.5e38f32..1.5e38f32,
        1 => 1e-30f32..1e-3f32,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
    ]
}

/// Two finite numbers, the first smaller.
fn ordered_pair() -> impl Strategy<Value = (f32, f32)> {
    (finite_f32(), finite_f32())
        .prop_filter("two different numbers", |p| p.0 != p.1)
        .prop_map(|(a, b)| (a.min(b), a.max(b)))
}

/// An image side pair with an aspect ratio within 1:4, so that a box of a tenth of the
/// image survives every convention's quantisation.
fn frame_dims() -> impl Strategy<Value = (u32, u32)> {
    (32u32..=4000, 0.25f64..4.0).prop_map(|(w, r)| {
        let h = (f64::from(w) * r).round().clamp(32.0, 16_000.0) as u32;
        (w, h)
    })
}

/// The size the model was sent (the convention's frame); the image's when not given.
fn input_dims(f: &Frame) -> (f64, f64) {
    let (w, h) = if f.input.0 > 0 && f.input.1 > 0 {
        f.input
    } else {
        f.image
    };
    (f64::from(w), f64::from(h))
}

/// The largest error a format -> parse round trip may add, in original-image pixels (as the
/// unit tests of `answer::boxes` reckon it, plus f32 rounding).
fn tolerance(c: BoxConvention, f: &Frame) -> (f64, f64) {
    let (w, h) = (f64::from(f.image.0), f64::from(f.image.1));
    let (iw, ih) = input_dims(f);
    let unit = |per: f64| (per * w, per * h);
    let (tw, th) = match c {
        BoxConvention::Pixels => (0.5 * w / iw, 0.5 * h / ih),
        BoxConvention::Shikra => {
            let side = iw.max(ih);
            (0.0005 * side * w / iw, 0.0005 * side * h / ih)
        }
        BoxConvention::Ferret => unit(1.0 / 1000.0),
        BoxConvention::MiniGptV2 => unit(0.5 / 100.0),
        BoxConvention::Kosmos2 => unit(1.0 / 32.0),
        BoxConvention::QwenVl | BoxConvention::Florence2 => unit(0.5 / 1000.0),
        BoxConvention::Qwen25Vl => {
            let (iw, ih) = input_dims(f);
            let (rw, rh) = qwen25vl_resized(
                iw as u32,
                ih as u32,
                QWEN25VL_MIN_PIXELS,
                QWEN25VL_MAX_PIXELS,
            );
            (0.5 * w / f64::from(rw), 0.5 * h / f64::from(rh))
        }
        BoxConvention::RegionIds => (0.0, 0.0),
    };
    (tw + 1e-3 + 1e-5 * w, th + 1e-3 + 1e-5 * h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bbox_parse_never_panics_and_only_gives_real_boxes(
        s in prop_oneof![
            any::<String>(),
            fragments(&[",", " ", "-", "+", ".", "e", "E", "1", "0", "9", "1e39", "NaN", "inf",
                        "-0", "1e-45", "340282350000000000000000000000000000000", "[", "]",
                        "\u{a0}", "\t", "０"], 24),
        ],
    ) {
        if let Ok(b) = BBox::parse(&s) {
            prop_assert!(finite_box(&b), "{:?} -> {:?}", s, b);
            prop_assert!(b.x2 > b.x1 && b.y2 > b.y1, "{:?} -> {:?}", s, b);
        }
    }

    #[test]
    fn bbox_written_as_four_numbers_reads_back_exactly(
        (x1, x2) in ordered_pair(),
        (y1, y2) in ordered_pair(),
        spaced in any::<bool>(),
    ) {
        let s = if spaced {
            format!(" {x1} , {y1} ,{x2},  {y2} ")
        } else {
            format!("{x1},{y1},{x2},{y2}")
        };
        match BBox::parse(&s) {
            Ok(b) => prop_assert_eq!(b, BBox::new(x1, y1, x2, y2), "{}", s),
            Err(e) => prop_assert!(false, "{:?}: {}", s, e),
        }
        // The same box inverted is refused, not clamped.
        let inverted = format!("{x2},{y1},{x1},{y2}");
        prop_assert!(BBox::parse(&inverted).is_err(), "{}", inverted);
    }

    #[test]
    fn box_conventions_never_panic_and_keep_their_contract(
        text in prop_oneof![any::<String>(), fragments(BOX_FRAGMENTS, 60)],
        image in (0u32..5000, 0u32..5000),
        input in prop_oneof![Just((0u32, 0u32)), (0u32..5000, 0u32..5000)],
        boxes in prop::collection::vec(any_bbox(), 0..4),
        bare_ids in any::<bool>(),
    ) {
        let regions: Vec<(String, BBox)> = boxes
            .iter()
            .enumerate()
            .map(|(i, b)| (if bare_ids { format!("{i}") } else { format!("r{i}") }, *b))
            .collect();
        let f = Frame { image, input, regions: &regions };
        for c in BoxConvention::ALL {
            let p = c.parse(&text, &f);
            check_parsed(c, &p, &f, &text);
            // Writing any box (NaN, inverted, outside) never panics or writes a non-number.
            for (id, b) in &regions {
                for region in [None, Some(id.as_str())] {
                    let s = c.format(b, &f, region);
                    prop_assert!(!s.contains("NaN") && !s.contains("inf"), "{}: {}", c, s);
                    check_parsed(c, &c.parse(&s, &f), &f, &s);
                }
            }
        }
    }

    #[test]
    fn box_conventions_round_trip_within_their_quantisation(
        image in frame_dims(),
        input in prop_oneof![Just((0u32, 0u32)), frame_dims()],
        fx in (0.0f64..1.0, 0.0f64..1.0),
        fy in (0.0f64..1.0, 0.0f64..1.0),
    ) {
        // A box of at least a tenth of the image on each side, inside it.
        let span = |(a, b): (f64, f64)| {
            let lo = a * 0.9;
            (lo, lo + 0.1 + b * (0.9 - lo))
        };
        let ((x1, x2), (y1, y2)) = (span(fx), span(fy));
        let (w, h) = (f64::from(image.0), f64::from(image.1));
        let b = BBox::new((x1 * w) as f32, (y1 * h) as f32, (x2 * w) as f32, (y2 * h) as f32);
        let regions = vec![("r0".to_string(), b)];
        let f = Frame { image, input, regions: &regions };
        for c in BoxConvention::ALL {
            let written = c.format(&b, &f, Some("r0"));
            let p = c.parse(&written, &f);
            prop_assert_eq!(p.boxes.len(), 1, "{} {:?} {:?}: {:?} -> {} -> {:?}", c, image, input, b, written, p);
            prop_assert!(p.rejected.is_empty(), "{}: {:?}", c, p.rejected);
            let got = p.boxes[0].bbox;
            let (tw, th) = tolerance(c, &f);
            let d = |g: f32, want: f32| (f64::from(g) - f64::from(want)).abs();
            let ok = d(got.x1, b.x1) <= tw
                && d(got.x2, b.x2) <= tw
                && d(got.y1, b.y1) <= th
                && d(got.y2, b.y2) <= th;
            prop_assert!(
                ok,
                "{} {:?} {:?}: {:?} -> {} -> {:?} (tolerance {}, {})",
                c, image, input, b, written, got, tw, th
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grounding an answer in the evidence.

const WORDS: &[&str] = &[
    "TOTAL",
    "total",
    "9.00",
    "9.80",
    "RM",
    "60.31",
    "DATE:",
    "25/12/2018",
    "10/03/20185:41:06",
    " ",
    " ",
    " ",
    ":",
    ".",
    ",",
    "S8.20",
    "$8.20",
    "SYARIKAT",
    "GIN",
    "KEE",
    "é",
    "猫",
    "ß",
    "İ",
    "\u{301}",
    "\t",
    "\n",
    "[",
    "]",
    "(",
    ")",
    "r1",
    "-",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn grounding_only_names_regions_that_exist(
        answer in prop_oneof!["\\PC{0,24}", fragments(WORDS, 8)],
        texts in prop::collection::vec(prop_oneof!["\\PC{0,32}", fragments(WORDS, 10)], 0..6),
        cites in prop::collection::vec(
            (0usize..9, any::<bool>(), prop::option::of(any_bbox())),
            0..5,
        ),
        quoted in any::<bool>(),
    ) {
        let mut evidence = Evidence::default();
        for (i, t) in texts.iter().enumerate() {
            let o = 10.0 * i as f32;
            let finding = Finding {
                bbox: BBox::new(o, o, o + 50.0, o + 20.0),
                text: t.clone(),
                kind: if i % 3 == 2 { FindingKind::Object } else { FindingKind::Text },
                score: 0.9,
                quad: None,
            };
            let _id = evidence.add("ocr", &finding);
        }
        let citations: Vec<Citation> = cites
            .iter()
            .map(|(n, phrase, bbox)| Citation {
                region: format!("r{n}"),
                phrase: phrase.then(|| answer.clone()),
                bbox: *bbox,
            })
            .collect();
        let g = ground(&answer, &citations, &evidence, quoted);
        for gr in &g.grounding {
            match evidence.get(&gr.region) {
                Some(r) => {
                    prop_assert!(same_bits(&gr.bbox, &r.bbox), "{:?} vs {:?}", gr, r);
                    prop_assert!(
                        r.text.contains(gr.phrase.as_str()),
                        "phrase {:?} is not in region {} {:?}", gr.phrase, r.id, r.text
                    );
                }
                None => {
                    // Only a box the controller drew itself may name no region: it is kept
                    // as drawn.
                    prop_assert!(
                        citations
                            .iter()
                            .any(|c| c.region == gr.region
                                && c.bbox.is_some_and(|b| same_bits(&b, &gr.bbox))),
                        "grounding {:?} names no region and no drawn box", gr
                    );
                }
            }
        }
        for u in &g.unknown {
            prop_assert!(evidence.get(u).is_none(), "{} is known but listed unknown", u);
            prop_assert!(citations.iter().any(|c| &c.region == u), "{} was never cited", u);
        }
        if g.copied {
            prop_assert!(!g.grounding.is_empty(), "a copied answer cites nothing: {:?}", g);
            prop_assert!(!g.text.is_empty());
        }
        let linked = linked_text(&g.text, &g.grounding);
        if g.grounding.is_empty() {
            prop_assert_eq!(linked, g.text.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Agent manifests.

const MANIFESTS: &[&str] = &[
    include_str!("../agents/ocr.toml"),
    include_str!("../agents/detect.toml"),
    include_str!("../agents/detect_coco.toml"),
    include_str!("../agents/colour.toml"),
    include_str!("../agents/layout.toml"),
];

const TOML_VALUES: &[&str] = &[
    "\"../ppocrv5_det.onnx\"",
    "\"/etc/passwd\"",
    "\"C:\\\\model.onnx\"",
    "\"\"",
    "\".\"",
    "\"..\"",
    "\"a/b\"",
    "-1",
    "0",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "[1, 2]",
    "[]",
    "{ a = 1 }",
    "{}",
    "true",
    "99999999999999999999999",
    "\"auto\"",
    "1979-05-27T07:32:00Z",
    "'''\nmulti\n'''",
    "\"\"\"",
    "[[[",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "0x7fffffffffffffff",
    "-9223372036854775808",
];

const TOML_FRAGMENTS: &[&str] = &[
    "name = ",
    "description = ",
    "[parameters]",
    "[models]",
    "[options]",
    "[vocabulary]",
    "[endpoints]",
    "bundle = ",
    "det = ",
    "[[a]]",
    "[a.b.c]",
    "\"ocr\"",
    "\"x\"",
    "\"\"\"",
    "'''",
    "=",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\n",
    " ",
    "1",
    "-",
    "e",
    "\\",
    "\\u",
    "é",
    "\u{0}",
    "\r",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value of the n-th `key = value` line.
    Value(usize, String),
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Cut the text at this byte (moved back to a char boundary).
    Truncate(usize),
    Insert(usize, String),
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "\\PC{0,30}",
        3 => prop::sample::select(TOML_VALUES).prop_map(str::to_string),
        2 => "[a-z./\\\\]{0,12}".prop_map(|s| format!("{s:?}")),
        1 => Just(format!("\"{}\"", "x".repeat(4001))),
        1 => Just(format!("\"{}\"", "é".repeat(4000))),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        5 => (any::<usize>(), toml_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => any::<usize>().prop_map(Edit::DeleteLine),
        1 => any::<usize>().prop_map(Edit::DuplicateLine),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), fragments(TOML_FRAGMENTS, 6)).prop_map(|(i, s)| Edit::Insert(i, s)),
    ]
}

fn apply_edit(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match e {
        Edit::Value(i, v) => {
            let keyed: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains('=') && !l.trim_start().starts_with('#'))
                .map(|(n, _)| n)
                .collect();
            if let Some(&n) = keyed.get(i % keyed.len().max(1)) {
                let key = lines[n]
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .trim_end()
                    .to_string();
                lines[n] = format!("{key} = {v}");
            }
        }
        Edit::DeleteLine(i) if !lines.is_empty() => {
            let n = i % lines.len();
            lines.remove(n);
        }
        Edit::DuplicateLine(i) if !lines.is_empty() => {
            let n = i % lines.len();
            let l = lines[n].clone();
            lines.insert(n, l);
        }
        Edit::Truncate(i) => {
            let mut at = i % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
        Edit::Insert(i, s) => {
            let n = i % (lines.len() + 1);
            lines.insert(n, s.clone());
        }
        _ => {}
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Parses a manifest and checks what an accepted one promises.
fn check_manifest(text: &str) {
    if let Ok(m) = AgentManifest::parse(text, "x.toml") {
        assert!(
            m.description.chars().count() <= 4000,
            "an over-long description was accepted"
        );
        for (role, v) in &m.models {
            if let Some(file) = v.as_str() {
                assert!(
                    !file.is_empty()
                        && !file.contains('/')
                        && !file.contains('\\')
                        && file != "."
                        && file != "..",
                    "[models] {role} = {file:?} was accepted"
                );
            }
        }
        let _ = m.definition();
        let _ = m.bundle();
        let _ = m.model_file("det");
        let _ = m.endpoint("det");
        let _ = m.check_name("ocr");
        let _ = m.options::<p2g::agents::ocr::OcrOptions>();
    }
}

#[test]
fn shipped_manifests_parse() {
    for text in MANIFESTS {
        let m = AgentManifest::parse(text, "agents/x.toml").unwrap();
        assert!(!m.name.is_empty());
        check_manifest(text);
    }
    let ocr = AgentManifest::parse(MANIFESTS[0], "agents/ocr.toml").unwrap();
    assert_eq!(ocr.name, "ocr");
    ocr.options::<p2g::agents::ocr::OcrOptions>().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn manifest_parsing_never_panics_on_any_text(
        text in prop_oneof![any::<String>(), fragments(TOML_FRAGMENTS, 40)],
    ) {
        check_manifest(&text);
    }

    #[test]
    fn manifest_parsing_never_panics_on_edited_manifests(
        which in 0usize..MANIFESTS.len(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut text = MANIFESTS[which].to_string();
        for e in &edits {
            text = apply_edit(&text, e);
        }
        check_manifest(&text);
    }
}

// ---------------------------------------------------------------------------------------------
// Prompt templates.

const JINJA_FRAGMENTS: &[&str] = &[
    "{% for i in range(999999) %}",
    "{% for i in range(3) %}",
    "{% for i in range(2000) %}",
    "{% for k in z %}",
    "{% for c in x %}",
    "{% endfor %}",
    "{{ x }}",
    "{{ i }}",
    "{{ k }}",
    "{{ y }}",
    "{{ z.a }}",
    "{{ z['b'] }}",
    "{{ x | tojson }}",
    "{{ y | tojson }}",
    "{{ loop.index }}",
    "{{ loop.length }}",
    "{% if x %}",
    "{% if not y %}",
    "{% if undefined_name %}",
    "{% elif y %}",
    "{% else %}",
    "{% endif %}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{%-",
    "-%}",
    "{% raw %}",
    "{% endraw %}",
    "{% set s = 1 %}",
    "{% set s = s + 1 %}",
    "{{ s }}",
    "{{ undefined_name }}",
    "{{ undefined_name.attr }}",
    "{{ raise_exception('refused') }}",
    "{{ range(5) | list }}",
    "{{ x ~ x }}",
    "{{ 1 / 0 }}",
    "{{ 1 // 0 }}",
    "{{ 1 % 0 }}",
    "{{ -9223372036854775808 // -1 }}",
    "{{ 9223372036854775807 + 1 }}",
    "{{ 2 ** 64 }}",
    "{{ 2 ** -1 }}",
    "{{ x[0] }}",
    "{{ y[99] }}",
    "{{ y[-1] }}",
    "{{ x[::-1] }}",
    "{% include 'other' %}",
    "{% extends 'base' %}",
    "{% import 'lib' as lib %}",
    "{% block b %}",
    "{% endblock %}",
    "{% macro m(a) %}",
    "{% endmacro %}",
    "{{ n(1) }}",
    "{% filter upper %}",
    "{% endfilter %}",
    "{% with w = 2 %}",
    "{% endwith %}",
    "{{ x | upper }}",
    "{{ x | nosuchfilter }}",
    "{{ y | join(',') }}",
    "{{ '%s' | format(x) }}",
    "text ",
    "\n",
    " ",
    "é",
    "猫",
    "{{ '\u{0}' }}",
    "\"",
    "'",
    "(",
    ")",
];

fn template_ctx(x: &str) -> Value {
    json!({"x": x, "y": [1, 2, 3], "z": {"a": 1, "b": "two"}})
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn prompt_templates_never_panic_or_hang(
        template in prop_oneof![1 => "\\PC{0,40}", 4 => fragments(JINJA_FRAGMENTS, 24)],
    ) {
        let t0 = Instant::now();
        let out = render("fuzz.md", &template, template_ctx("hi"));
        let took = t0.elapsed();
        prop_assert!(took < Duration::from_secs(20), "{:?} took {:?}", template, took);
        if let Ok(text) = out {
            // Fuel bounds the instructions a render runs; what they can print is bounded
            // with it here (each fragment prints little).
            prop_assert!(text.len() < 64 << 20, "{:?} printed {} bytes", template, text.len());
        }
    }

    #[test]
    fn text_without_template_syntax_renders_as_itself(
        text in "[a-zA-Z0-9 .,!?()<>\\[\\]:;'\"-]{0,80}",
    ) {
        let out = render("plain.md", &text, template_ctx("hi"));
        prop_assert_eq!(out.ok(), Some(text));
    }

    #[test]
    fn a_printed_value_is_printed_as_it_is(x in "\\PC{0,50}") {
        let out = render("value.md", "{{ x }}", template_ctx(&x));
        prop_assert_eq!(out.ok(), Some(x));
    }
}

/// Templates that recurse without end (a macro calling itself, a recursive loop) or nest
/// past the parser's limit are stopped with an error, on a stack the size of a tokio worker
/// thread's (2 MiB, where `p2g serve` renders prompts). A stack overflow here aborts the
/// whole test binary with "thread 'jinja-2mib' has overflowed its stack": the recursion
/// limit then needs lowering for that stack (`Environment::set_recursion_limit`).
#[test]
fn recursive_and_deeply_nested_templates_stop_with_an_error() {
    let worker = std::thread::Builder::new()
        .name("jinja-2mib".into())
        .stack_size(2 << 20)
        .spawn(|| {
            let templates = [
                "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}".to_string(),
                "{% for a in y recursive %}{{ loop(y) }}{% endfor %}".to_string(),
                format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000)),
                format!(
                    "{}x{}",
                    "{% if x %}".repeat(2_000),
                    "{% endif %}".repeat(2_000)
                ),
                format!("{{{{ {} }}}}", "[".repeat(10_000)),
                "{{ x".repeat(10_000),
            ];
            templates
                .iter()
                .map(|t| {
                    let t0 = Instant::now();
                    let r = render("deep.md", t, template_ctx("hi"));
                    (
                        t.chars().take(60).collect::<String>(),
                        r.is_err(),
                        t0.elapsed(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    for (t, err, took) in worker.join().unwrap() {
        assert!(err, "{t:?} rendered");
        assert!(took < Duration::from_secs(20), "{t:?} took {took:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Image decoding.

const MAX_PIXELS: u64 = 4_000_000;

/// Small real files of every format p2g reads (some valid, some broken on purpose).
static SEEDS: &[(&str, &[u8])] = &[
    ("header.png", include_bytes!("fixtures/header.png") as &[u8]),
    (
        "image_1x1.png",
        include_bytes!("bad_inputs/image_1x1.png") as &[u8],
    ),
    (
        "image_palette_trns.png",
        include_bytes!("bad_inputs/image_palette_trns.png") as &[u8],
    ),
    (
        "image_exif_orientation_0.jpg",
        include_bytes!("bad_inputs/image_exif_orientation_0.jpg") as &[u8],
    ),
    (
        "image_progressive.jpg",
        include_bytes!("bad_inputs/image_progressive.jpg") as &[u8],
    ),
    (
        "image_huge_header_65535x1.jpg",
        include_bytes!("bad_inputs/image_huge_header_65535x1.jpg") as &[u8],
    ),
    (
        "image_animated.gif",
        include_bytes!("bad_inputs/image_animated.gif") as &[u8],
    ),
    (
        "image_animated.webp",
        include_bytes!("bad_inputs/image_animated.webp") as &[u8],
    ),
    (
        "image_tiff_strip_past_eof.tiff",
        include_bytes!("bad_inputs/image_tiff_strip_past_eof.tiff") as &[u8],
    ),
    (
        "image_bmp_height_i32_min.bmp",
        include_bytes!("bad_inputs/image_bmp_height_i32_min.bmp") as &[u8],
    ),
];

/// Byte prefixes that get arbitrary bytes past format detection into a decoder.
static MAGIC: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"RIFF\x00\x01\x00\x00WEBPVP8X",
    b"II*\x00",
    b"MM\x00*",
];

const INTERESTING_U32: &[u32] = &[
    0,
    1,
    2,
    255,
    256,
    2000,
    2001,
    65535,
    65536,
    16384,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    /// Insert a piece of a seed (this one or another) at a position.
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Overwrite four bytes (a size field, often) with an interesting number.
    U32 {
        at: usize,
        value: u32,
        big_endian: bool,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::Flip(p, v)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::Set(p, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), any::<usize>(), 0usize..4096)
            .prop_map(|(at, seed, from, len)| Mutation::Splice { at, seed, from, len }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (any::<usize>(), 1usize..256).prop_map(|(p, n)| Mutation::Delete(p, n)),
        2 => (
            any::<usize>(),
            prop_oneof![prop::sample::select(INTERESTING_U32), any::<u32>()],
            any::<bool>(),
        )
            .prop_map(|(at, value, big_endian)| Mutation::U32 { at, value, big_endian }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::Flip(p, v) if len > 0 => bytes[p % len] ^= v | 1,
        Mutation::Set(p, v) if len > 0 => bytes[p % len] = v,
        Mutation::Truncate(p) => bytes.truncate(p % (len + 1)),
        Mutation::Splice {
            at,
            seed,
            from,
            len: n,
        } => {
            let src = SEEDS[seed % SEEDS.len()].1;
            if !src.is_empty() {
                let s = from % src.len();
                let n = n.min(src.len() - s);
                let at = at % (len + 1);
                insert_at(bytes, at, &src[s..s + n]);
            }
        }
        Mutation::Insert(p, ref data) => {
            insert_at(bytes, p % (len + 1), data);
        }
        Mutation::Delete(p, n) if len > 0 => {
            let a = p % len;
            let b = (a + n).min(len);
            let tail = bytes.split_off(b);
            bytes.truncate(a);
            bytes.extend_from_slice(&tail);
        }
        Mutation::U32 {
            at,
            value,
            big_endian,
        } if len >= 4 => {
            let i = at % (len - 3);
            let v = if big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            };
            bytes[i..i + 4].copy_from_slice(&v);
        }
        _ => {}
    }
}

fn insert_at(bytes: &mut Vec<u8>, at: usize, piece: &[u8]) {
    let tail = bytes.split_off(at.min(bytes.len()));
    bytes.extend_from_slice(piece);
    bytes.extend_from_slice(&tail);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Rewrites every PNG chunk's CRC, so that a mutated chunk reaches the decoder's checks of
/// its content instead of failing its checksum.
fn fix_png_crcs(b: &mut [u8]) {
    if !b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return;
    }
    let mut i = 8usize;
    while i + 12 <= b.len() {
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let end = match i.checked_add(8).and_then(|x| x.checked_add(len)) {
            Some(e) if e + 4 <= b.len() => e,
            _ => break,
        };
        let crc = crc32(&b[i + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        i = end + 4;
    }
}

/// Decodes and checks what a decoded image promises; the size when it decoded.
fn check_decode(bytes: &[u8]) -> Option<(u32, u32)> {
    let opts = LoadOptions {
        max_pixels: MAX_PIXELS,
    };
    match Image::decode(bytes, "x", &opts) {
        Ok(img) => {
            let (w, h) = (img.width(), img.height());
            let px = u64::from(w) * u64::from(h);
            assert!(px > 0 && px <= MAX_PIXELS, "{w}x{h} decoded past the limit");
            assert_eq!(img.rgb().as_raw().len() as u64, px * 3, "{w}x{h}: not RGB8");
            assert_eq!(img.sha256().len(), 64);
            Some((w, h))
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

#[test]
fn image_seeds_decode_as_expected() {
    for &(_, bytes) in SEEDS {
        check_decode(bytes);
    }
    assert_eq!(check_decode(SEEDS[0].1), Some((463, 250)), "header.png");
    assert_eq!(check_decode(SEEDS[1].1), Some((1, 1)), "image_1x1.png");
    // Rewriting the CRCs of an intact PNG changes nothing.
    let mut png = SEEDS[0].1.to_vec();
    fix_png_crcs(&mut png);
    assert_eq!(
        png, SEEDS[0].1,
        "crc32 disagrees with the PNG's own checksums"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..4096),
            (prop::sample::select(MAGIC), prop::collection::vec(any::<u8>(), 0..2048))
                .prop_map(|(m, rest)| [m, rest.as_slice()].concat()),
        ],
    ) {
        check_decode(&bytes);
    }

    #[test]
    fn decoding_mutated_images_never_panics(
        seed in 0usize..SEEDS.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
        fix_crcs in any::<bool>(),
    ) {
        let mut bytes = SEEDS[seed].1.to_vec();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        if fix_crcs {
            fix_png_crcs(&mut bytes);
        }
        check_decode(&bytes);
    }
}
