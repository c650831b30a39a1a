//! The zoom policy: where to look again when the evidence does not answer.
//!
//! P²G's point is that a system goes back to the image for the detail a question needs. A
//! 0.5B controller rarely asks for a zoom itself, so the loop decides: when the controller
//! finds no answer in the evidence ([`crate::controller::Decision::NotFound`]), the places
//! worth a closer look are ranked and the best few are read again magnified, within a budget
//! ([`ZoomBudget`]); their readings become new regions, and the controller is asked again.
//!
//! The places, best first:
//! - the region a question is about (`--region`, `:region`), read anew when little was read
//!   there;
//! - objects a detection agent found whose name the question uses ("that black mug");
//! - places an agent could not read well ([`Lead`]s): text-like pixels no line came out of,
//!   and lines read with low confidence — those near words of the question first (`WMT DE`
//!   next to `ENTRANCE` when asked how long the wait is);
//! and never a place already zoomed into.

use serde::{Deserialize, Serialize};

use super::evidence::{Evidence, Region};
use crate::agents::{FindingKind, Lead, LeadKind};
use crate::answer::grounding::levenshtein;
use crate::vision::BBox;

/// Limits on looking again, per question.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoomBudget {
    /// Zoomed reads per question (0: never zoom on its own).
    pub max_zooms: usize,
    /// Zoomed reads between two controller decisions.
    pub per_round: usize,
    /// Pixels read magnified per question (a window's area times its scale squared).
    pub max_pixels: f64,
    /// Seconds spent on zoomed reads per question; none starts after this.
    pub max_seconds: f64,
    /// An answer copied from a region read with less confidence than this is read again
    /// magnified before it is given.
    pub verify_below: f32,
}

impl Default for ZoomBudget {
    fn default() -> Self {
        Self {
            max_zooms: 6,
            per_round: 3,
            max_pixels: 40e6,
            max_seconds: 30.0,
            verify_below: 0.8,
        }
    }
}

/// One place to read again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The window to read, in image pixels (the place with context around it).
    pub window: BBox,
    /// Why, for the trace ("text-like pixels no line came out of, near 'ENTRANCE'").
    pub why: String,
    /// Higher first.
    pub priority: f32,
}

/// Words of a question that say what to look for (not "what", "the", "is"...).
fn content_words(question: &str) -> Vec<String> {
    const STOP: [&str; 40] = [
        "what", "which", "who", "whose", "where", "when", "how", "why", "the", "a", "an", "is",
        "are", "was", "were", "of", "on", "in", "at", "to", "for", "from", "by", "with", "that",
        "this", "there", "it", "its", "do", "does", "did", "we", "can", "you", "me", "tell", "and",
        "or", "be",
    ];
    question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

/// How well any word of `text` matches any of `words`: 1 - edit distance / longer length,
/// so an OCR misreading of a question's word ("WMT" for "WAIT") still counts somewhat.
fn relevance(text: &str, words: &[String]) -> f32 {
    let mut best = 0.0f32;
    for t in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| t.len() >= 2)
    {
        let t: Vec<char> = t.to_lowercase().chars().collect();
        for w in words {
            let w: Vec<char> = w.chars().collect();
            let d = levenshtein(&t, &w) as f32;
            best = best.max(1.0 - d / t.len().max(w.len()) as f32);
        }
    }
    best
}

/// `b` grown by `pad` on every side, clamped to the image.
fn padded(b: &BBox, pad: f32, w: f32, h: f32) -> BBox {
    BBox::new(b.x1 - pad, b.y1 - pad, b.x2 + pad, b.y2 + pad).clamp(w, h)
}

/// The window around a place: its box with context (a word the reader saw only part of
/// goes on beyond it), at least a few text heights on each side.
pub fn window(b: &BBox, text_height: Option<f32>, w: f32, h: f32) -> BBox {
    let th = text_height.unwrap_or_else(|| b.height().min(b.width()));
    let pad = (0.5 * b.width().max(b.height())).max(3.0 * th).max(16.0);
    padded(b, pad, w, h)
}

/// Texts of the regions near `b` (within a few text heights), joined.
fn nearby_text(b: &BBox, regions: &[Region]) -> String {
    let reach = 3.0 * b.height().min(b.width()).max(8.0);
    let around = padded(b, reach, f32::MAX, f32::MAX);
    regions
        .iter()
        .filter(|r| r.kind == FindingKind::Text && r.bbox.intersection(&around) > 0.0)
        .map(|r| r.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the policy looks at for one question.
pub struct Scene<'a> {
    pub question: &'a str,
    pub evidence: &'a Evidence,
    pub leads: &'a [Lead],
    /// The region the question is about, if any: only places inside it count.
    pub focus: Option<BBox>,
    /// Windows already read magnified.
    pub zoomed: &'a [BBox],
    pub width: u32,
    pub height: u32,
}

/// The places worth reading again, best first, none already zoomed into and, with a focus,
/// all inside it.
pub fn targets(scene: &Scene<'_>) -> Vec<Target> {
    let (w, h) = (scene.width as f32, scene.height as f32);
    let words = content_words(scene.question);
    let regions = scene.evidence.regions();
    let mut out: Vec<Target> = Vec::new();
    for lead in scene.leads {
        let near = nearby_text(&lead.bbox, regions);
        let own = lead.text.as_deref().unwrap_or("");
        let rel = relevance(&format!("{own} {near}"), &words);
        let (base, what) = match lead.kind {
            LeadKind::UnreadText => (1.0, "text-like pixels no line came out of".to_string()),
            LeadKind::LowConfidence => (
                1.0 - lead.score.clamp(0.0, 1.0),
                format!("{own:?} read with confidence {:.2}", lead.score),
            ),
        };
        // Small text gains most from magnification.
        let small = lead.text_height.is_some_and(|t| t < 24.0) as u8 as f32 * 0.25;
        let why = if rel >= 0.6 && !near.is_empty() {
            format!("{what}, near {:?}", clip(&near, 40))
        } else {
            what
        };
        out.push(Target {
            window: window(&lead.bbox, lead.text_height, w, h),
            why,
            priority: base + small + 2.0 * rel.max(0.0),
        });
    }
    for r in regions.iter().filter(|r| r.kind == FindingKind::Object) {
        let rel = relevance(&r.text, &words);
        if rel >= 0.8 {
            out.push(Target {
                window: window(&r.bbox, None, w, h),
                why: format!("the {:?} the question is about", r.text),
                priority: 3.0 + rel,
            });
        }
    }
    if let Some(f) = scene.focus {
        let f = f.clamp(w, h);
        out.retain(|t| t.window.intersection(&f) >= 0.5 * t.window.area());
        for t in &mut out {
            t.window = intersect(&t.window, &f);
        }
        out.push(Target {
            window: f,
            why: "the region the question is about".into(),
            priority: 10.0,
        });
    }
    out.retain(|t| t.window.width() >= 2.0 && t.window.height() >= 2.0);
    out.retain(|t| !scene.zoomed.iter().any(|z| covered(&t.window, z)));
    out.sort_by(|a, b| b.priority.total_cmp(&a.priority));
    merge(out)
}

fn intersect(a: &BBox, b: &BBox) -> BBox {
    BBox::new(
        a.x1.max(b.x1),
        a.y1.max(b.y1),
        a.x2.min(b.x2),
        a.y2.min(b.y2),
    )
}

/// Whether most of `a` was already read inside `z`.
fn covered(a: &BBox, z: &BBox) -> bool {
    a.area() > 0.0 && a.intersection(z) >= 0.7 * a.area()
}

/// Joins overlapping windows (the same sign seen by two leads) when the union is not much
/// bigger than the two, keeping the better priority and order.
fn merge(sorted: Vec<Target>) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for t in sorted {
        let joined = out.iter_mut().find(|o| {
            let u = union(&o.window, &t.window);
            o.window.intersection(&t.window) > 0.0
                && u.area() <= 1.5 * (o.window.area() + t.window.area())
        });
        match joined {
            Some(o) => o.window = union(&o.window, &t.window),
            None => out.push(t),
        }
    }
    out
}

fn union(a: &BBox, b: &BBox) -> BBox {
    BBox::new(
        a.x1.min(b.x1),
        a.y1.min(b.y1),
        a.x2.max(b.x2),
        a.y2.max(b.y2),
    )
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::Finding;

    fn lead(kind: LeadKind, b: [f32; 4], text: Option<&str>, score: f32) -> Lead {
        Lead {
            bbox: BBox::from(b),
            kind,
            text_height: Some(b[3] - b[1]),
            text: text.map(str::to_string),
            score,
        }
    }

    fn evidence(lines: &[(&str, [f32; 4])]) -> Evidence {
        let mut e = Evidence::default();
        for (t, b) in lines {
            e.add(
                "ocr",
                &Finding {
                    bbox: BBox::from(*b),
                    text: t.to_string(),
                    kind: FindingKind::Text,
                    score: 0.95,
                    quad: None,
                },
            );
        }
        e
    }

    fn scene<'a>(
        question: &'a str,
        evidence: &'a Evidence,
        leads: &'a [Lead],
        zoomed: &'a [BBox],
    ) -> Scene<'a> {
        Scene {
            question,
            evidence,
            leads,
            focus: None,
            zoomed,
            width: 4000,
            height: 3000,
        }
    }

    #[test]
    fn places_near_the_questions_words_come_first() {
        let e = evidence(&[("ENTRANCE", [1000.0, 1000.0, 1200.0, 1040.0])]);
        let leads = [
            // Far from anything the question names, but less confident.
            lead(
                LeadKind::LowConfidence,
                [100.0, 100.0, 160.0, 120.0],
                Some("XQ"),
                0.55,
            ),
            // Next to "ENTRANCE": the board the question is about.
            lead(
                LeadKind::LowConfidence,
                [1000.0, 1050.0, 1150.0, 1090.0],
                Some("WMT DE"),
                0.71,
            ),
        ];
        let t = targets(&scene(
            "How long is the wait at the entrance?",
            &e,
            &leads,
            &[],
        ));
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(
            t[0].window
                .intersection(&BBox::new(1000.0, 1050.0, 1150.0, 1090.0))
                > 0.0
        );
        assert!(t[0].why.contains("ENTRANCE"), "{}", t[0].why);
    }

    #[test]
    fn windows_already_zoomed_are_not_read_again_and_a_focus_bounds_them() {
        let e = Evidence::default();
        let leads = [
            lead(
                LeadKind::UnreadText,
                [1950.0, 1360.0, 2010.0, 1520.0],
                None,
                0.0,
            ),
            lead(
                LeadKind::UnreadText,
                [3000.0, 200.0, 3100.0, 230.0],
                None,
                0.0,
            ),
        ];
        let all = targets(&scene("Which team's flag?", &e, &leads, &[]));
        assert_eq!(all.len(), 2);
        let done = [all[0].window];
        let rest = targets(&scene("Which team's flag?", &e, &leads, &done));
        assert_eq!(rest.len(), 1);
        let mut s = scene("What does it say here?", &e, &leads, &[]);
        s.focus = Some(BBox::new(1800.0, 1200.0, 2200.0, 1700.0));
        let focused = targets(&s);
        assert_eq!(focused[0].window, BBox::new(1800.0, 1200.0, 2200.0, 1700.0));
        assert!(focused
            .iter()
            .all(|t| t.window.intersection(&s.focus.unwrap()) >= t.window.area() * 0.99));
    }

    #[test]
    fn question_words_skip_the_little_ones() {
        assert_eq!(
            content_words("How long do we have to wait in line?"),
            ["long", "have", "wait", "line"]
        );
        assert!(relevance("WMT DE", &["wait".to_string()]) >= 0.5);
    }
}
