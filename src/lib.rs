//! # p2g — plug-and-play grounding
//!
//! A controller model reads a question about a (usually high-resolution) image and decides,
//! step by step, whether it can answer directly or must first call expert agents — OCR and an
//! open-vocabulary detector — whose results are fed back until it answers (the P²G design).
//!
//! The crate is laid out like the system:
//!
//! - [`vision`]: image IO (EXIF, formats, decompression-bomb limits), geometry (boxes, quads,
//!   minimum-area rectangles), crops, tiling and drawing. Knows nothing of models.
//! - [`models`]: the model store — a pinned manifest of every model file, fetched from a package
//!   registry on first use, verified and cached — and the ONNX Runtime loader.
//! - [`agents`]: the expert agents behind one small typed [`agents::Agent`] trait: the PP-OCRv5
//!   [`agents::ocr`] pipeline (which also reads regions zoomed) and Grounding DINO
//!   [`agents::detect`].
//! - [`controller`]: the model that decides the next step (the embedded GGUF controller).
//! - [`answer`]: how an answer is taken from the evidence — candidate spans, the controller's
//!   likelihood over them against "not in the evidence", answer shapes, grounding.
//! - [`orchestrator`]: the loop — steps, budgets, evidence, and the zoom policy that goes back
//!   to the image when the evidence does not answer.
//! - [`trace`]: every step as JSON lines, shown and drawn.
//! - [`server`]: `p2g serve`, the loop and its agents over HTTP (admission, sessions, limits).
//!
//! Each layer has its own error enum; only the `p2g` binary folds them into `anyhow`.

pub mod agents;
pub mod answer;
pub mod controller;
pub mod models;
pub mod orchestrator;
pub mod server;
pub mod trace;
pub mod vision;

/// An error and its causes on one line, outermost first ("cannot load the controller model:
/// cannot read /x.gguf: No such file or directory"). A cause whose words the line already holds
/// (an error that quotes its source, a transparent wrapper) is not said twice.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let text = c
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// `s` on one line (runs of whitespace made one space), at most `max` characters, an ellipsis
/// marking a cut: how errors quote text they do not control (model output, a server's body, a
/// parser's message quoting a megabyte-long line).
pub fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The README's code examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
