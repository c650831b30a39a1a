//! Answers: how an answer is taken from the evidence, in one place.
//!
//! ```text
//! evidence regions ─▶ candidates (spans: words of a region, whole regions, a row's or a
//!                     column's neighbouring regions)        ─┐
//! question ─▶ answer shape? ─▶ that shape's spans only       ─┼─▶ rank (the controller's
//!                                                              │    likelihood, against
//!                                                              │    "not in the evidence")
//!                                                              ▼
//!                              a span, copied ─▶ grounding (cited regions, links)
//!                              or "not found" ─▶ the loop looks again (zoom), then says so
//! ```
//!
//! - [`candidates`]: every span of the evidence an answer may be.
//! - [`shapes`]: the specialised case — a question for a date, an amount, a company name —
//!   whose answers must have that shape.
//! - [`copy`]: a shape's spans as the answer string holds them.
//! - [`rank`]: the controller's likelihood over copies: greedy search, exact scoring, and the
//!   general choice with its "not in the evidence" alternative.
//! - [`grounding`]: the cited regions, their boxes and Kosmos-2-style links.
//!
//! Why not let the model write its answer: a 0.5B controller asked about a photo answered
//! with another region's coordinates, or with a name from its system prompt's example. An
//! answer here is a span of the evidence or an honest "not found", never a guess dressed as
//! evidence, and never a box or a region id ([`looks_like_box_or_id`]).

pub mod boxes;
pub mod candidates;
pub mod copy;
pub mod grounding;
pub mod rank;
pub mod shapes;

use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;

use crate::controller::RegionText;
use crate::vision::BBox;

pub use candidates::{candidates, Candidate, Limits};
pub use grounding::Grounding;

/// Whether `text` is a box (`1070,1359,1144,1381`, `[12, 40, 200, 64]`) or region ids
/// (`r7`, `r7, r8`): what a controller shown numbered, boxed evidence writes when it has no
/// answer. Never an answer.
pub fn looks_like_box_or_id(text: &str) -> bool {
    static PATTERNS: OnceLock<[Regex; 2]> = OnceLock::new();
    let [boxes, ids] = PATTERNS.get_or_init(|| {
        let num = r"-?\d+(?:\.\d+)?";
        [
            Regex::new(&format!(r"^\W*{num}(?:\s*[,;\s]\s*{num}){{3}}\W*$"))
                .unwrap_or_else(|_| unreachable!("a fixed pattern")),
            Regex::new(r#"^[\s\[\("']*r\d+(?:[\s"',;]+r\d+)*[\s\]\)"'.]*$"#)
                .unwrap_or_else(|_| unreachable!("a fixed pattern")),
        ]
    });
    boxes.is_match(text) || ids.is_match(text)
}

/// When the text read makes an image a document (a receipt, a form, a page) rather than a
/// photo with a few signs: at least `min_lines` text regions covering at least
/// `min_coverage` of the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocumentTest {
    pub min_lines: usize,
    pub min_coverage: f64,
}

impl Default for DocumentTest {
    /// A scanned receipt has 25-70 lines covering 3-40% of it; a 12-megapixel street photo a
    /// few signs covering under 2.5%.
    fn default() -> Self {
        Self {
            min_lines: 15,
            min_coverage: 0.025,
        }
    }
}

impl DocumentTest {
    /// Whether text regions with these boxes make a `width` x `height` image a document.
    /// Document layout rules (a company name is in the first lines) apply to documents only;
    /// on a photo, "the company's name on the orange sign" is wherever the sign is. And a
    /// photo's unread places are worth reading before answering; a document's are margins.
    pub fn holds(&self, boxes: impl Iterator<Item = BBox>, width: u32, height: u32) -> bool {
        let area = width as f64 * height as f64;
        let (mut n, mut covered) = (0usize, 0.0f64);
        for b in boxes {
            n += 1;
            covered += b.area() as f64;
        }
        area > 0.0 && n >= self.min_lines && covered / area >= self.min_coverage
    }
}

/// Whether the regions a controller is given make the image a document ([`DocumentTest`],
/// with the settings' thresholds).
pub fn reads_as_document(regions: &[RegionText], width: u32, height: u32, s: &Settings) -> bool {
    s.document_test()
        .holds(regions.iter().map(|r| r.bbox), width, height)
}

/// Settings of general answer extraction (`prompts/answers.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// What the controller says when the evidence does not hold the answer; scored against
    /// the evidence's spans (the answer tool's description tells the model to say it).
    pub not_found: Vec<String>,
    /// A span wins only if its log-probability is above the likeliest not-found phrase's
    /// minus this (nats). Positive: a span is preferred when the two are close.
    pub margin: f64,
    /// Added to `margin` when the regions were narrowed to where the question points (a
    /// block, object or colours it names): the answer is expected there.
    #[serde(default)]
    pub narrowed_margin: f64,
    /// Words in a candidate span taken from inside one region.
    pub max_words: usize,
    /// Regions joined along a row or down a column into one candidate.
    pub max_regions: usize,
    /// Forward passes the exact scoring may run per answer (each scores one span and the
    /// shorter spans it begins with).
    pub max_passes: usize,
    /// With calibration: spans within this many nats of the likeliest are candidates...
    pub window: f64,
    /// ...and the likeliest this many of them are scored against the neutral question.
    pub recheck: usize,
    /// Which span answers is chosen by `log p(span | question) - calibration * log p(span |
    /// neutral_question)` (0: by the first term alone; see [`rank::Calibration`]).
    pub calibration: f64,
    /// The question with the content taken away, for `calibration`.
    pub neutral_question: String,
    /// Weight of how surely the agent read a span (the log of its regions' confidence)
    /// in choosing which span answers (0: not at all).
    #[serde(default)]
    pub reading: f64,
    /// A document has at least this many regions...
    pub document_min_lines: usize,
    /// ...covering at least this fraction of the image.
    pub document_min_coverage: f64,
}

impl Settings {
    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        if s.not_found.iter().all(|p| p.trim().is_empty()) {
            return Err("not_found needs at least one phrase".into());
        }
        if s.max_words == 0 || s.max_regions == 0 || s.max_passes == 0 || s.recheck == 0 {
            return Err("max_words, max_regions, max_passes and recheck must be at least 1".into());
        }
        if !s.window.is_finite() || s.window <= 0.0 {
            return Err("window must be a positive number of nats".into());
        }
        if !s.margin.is_finite()
            || !s.narrowed_margin.is_finite()
            || s.narrowed_margin < 0.0
            || !(0.0..=1.0).contains(&s.document_min_coverage)
        {
            return Err(
                "margin must be a number, narrowed_margin a number >= 0 and \
                 document_min_coverage within 0..1"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&s.calibration) || s.neutral_question.trim().is_empty() {
            return Err("calibration must be within 0..1, with a neutral_question".into());
        }
        if !s.reading.is_finite() || s.reading < 0.0 {
            return Err("reading must be a number >= 0".into());
        }
        Ok(s)
    }

    pub fn document_test(&self) -> DocumentTest {
        DocumentTest {
            min_lines: self.document_min_lines,
            min_coverage: self.document_min_coverage,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_words: self.max_words,
            max_regions: self.max_regions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_and_region_ids_are_recognised() {
        for t in [
            "1070,1359,1144,1381",
            "2855,1324,2946,1365",
            "[12, 40, 200, 64]",
            "(1.5 2 3 4)",
            "r7",
            "r7, r8",
            "[\"r12\"]",
        ] {
            assert!(looks_like_box_or_id(t), "{t}");
        }
        for t in [
            "4:51",
            "9.00",
            "R2-D2",
            "(408) 391-9081",
            "1,359",
            "HARBOUR",
            "r7 road",
        ] {
            assert!(!looks_like_box_or_id(t), "{t}");
        }
    }

    #[test]
    fn the_embedded_settings_parse_and_bad_ones_are_refused() {
        let s = Settings::parse(include_str!("../../prompts/answers.toml")).unwrap();
        assert!(!s.not_found.is_empty());
        assert!(Settings::parse("not_found = []").is_err());
        let bad =
            include_str!("../../prompts/answers.toml").replace("max_words = ", "max_words = 0 #");
        assert!(Settings::parse(&bad).is_err());
    }
}
