//! The zoom policy: where and when to look again.
//!
//! P²G's point is that a system goes back to the image for the detail a question needs. A
//! 0.5B controller rarely asks for a zoom itself, so the loop decides, within a budget per
//! question ([`ZoomBudget`]), and each zoomed read becomes new regions the controller is shown.
//!
//! The places ([`targets`]), best first:
//! - the region a question is about (`--region`, `:region`), read anew when little was read
//!   there;
//! - objects a detection agent found whose name the question uses ("that black mug");
//! - places an agent could not read well ([`Lead`]s): text-like pixels no line came out of,
//!   and lines read with low confidence — those near words of the question first (`WMT DE`
//!   next to `ENTRANCE` when asked how long the wait is).
//!
//! When ([`Round`]): right after the first read of a photo (every lead, best first: the
//! evidence is completed before anything is answered from it); before a follow-up question
//! (the places it points at); when the controller finds no answer (the best places left); and
//! before an answer is copied from a weak reading (that reading, [`Session::verify`]).
//!
//! A place already zoomed into is not read again, and one reading per place stands
//! ([`Evidence::settle`]): a closer look is not better by itself.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::calls::Caller;
use super::evidence::{Evidence, Region};
use super::{AskOptions, Session};
use crate::agents::{DynAgent, FindingKind, Lead, LeadKind};
use crate::answer::grounding::levenshtein;
use crate::controller::{Citation, Turn};
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
    /// A closer reading of a place replaces the first only when it is this much more
    /// confident ([`Evidence::settle`]).
    pub supersede_gain: f32,
}

impl Default for ZoomBudget {
    fn default() -> Self {
        Self {
            max_zooms: 6,
            per_round: 3,
            max_pixels: 40e6,
            max_seconds: 30.0,
            verify_below: 0.8,
            supersede_gain: 0.1,
        }
    }
}

/// Why the loop reads places again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Round {
    /// Right after a first read of a photo: every place it could not read well, best first,
    /// within the question's budget — the evidence is completed before anything is answered
    /// from it.
    FirstRead,
    /// Before a follow-up question: the places this question points at.
    Pointed,
    /// The evidence did not answer: the best places left, a few at a time.
    Again,
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

/// How close a word near a place must be to a word of the question for the question to
/// point there (1 - edit distance / length: "WMT" for "WAIT" is 0.5, "STONE" for "STORM"
/// 0.6).
const POINTED: f32 = 0.6;

/// What the policy looks at for one question.
pub struct Scene<'a> {
    pub question: &'a str,
    /// Only the places the question points at: where text was seen but not read, and weak
    /// readings near the question's words (before answering); otherwise every lead (when
    /// the evidence did not answer).
    pub pointed: bool,
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
        if scene.pointed && lead.kind == LeadKind::LowConfidence && rel < POINTED {
            continue;
        }
        let (base, what) = match lead.kind {
            LeadKind::UnreadText => (1.0, "text-like pixels no line came out of".to_string()),
            LeadKind::LowConfidence => (
                1.0 - lead.score.clamp(0.0, 1.0),
                format!("{own:?} read with confidence {:.2}", lead.score),
            ),
        };
        // Small text gains most from magnification.
        let small = lead.text_height.is_some_and(|t| t < 24.0) as u8 as f32 * 0.25;
        let why = if rel >= POINTED && !near.is_empty() {
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
    if let Some(f) = scene.focus {
        let f = f.clamp(w, h);
        out.retain(|t| t.window.intersection(&f) >= 0.5 * t.window.area());
        for t in &mut out {
            t.window = t.window.overlap(&f);
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
            let u = o.window.union(&t.window);
            o.window.intersection(&t.window) > 0.0
                && u.area() <= 1.5 * (o.window.area() + t.window.area())
        });
        match joined {
            Some(o) => o.window = o.window.union(&t.window),
            None => out.push(t),
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// What one question has spent on zooming.
#[derive(Debug, Default)]
pub(super) struct ZoomSpent {
    pub zooms: usize,
    pub pixels: f64,
    pub seconds: f64,
}

/// A zoomed read, as the trace records it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ZoomRecord {
    /// The window read, in image pixels.
    pub window: BBox,
    /// The magnification the agent applied, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    /// Why this place was read again.
    pub why: String,
}

impl Session<'_> {
    /// The agent that reads magnified (the first that can), if any.
    pub(super) fn zoom_agent(&self) -> Option<Arc<dyn DynAgent>> {
        let probe = BBox::new(0.0, 0.0, 2.0, 2.0);
        self.orch
            .tools
            .all()
            .find(|a| a.zoom_arguments(&probe).is_some())
            .cloned()
    }

    /// Whether the text read so far makes the image a document.
    pub(super) fn is_document(&self) -> bool {
        self.orch.cfg.document.holds(
            self.evidence
                .regions()
                .iter()
                .filter(|r| r.kind == FindingKind::Text)
                .map(|r| r.bbox),
            self.facts.width,
            self.facts.height,
        )
    }

    /// Before answering with a span read with low confidence: reads its regions again
    /// magnified; returns whether a closer read superseded one of them (the controller is
    /// then asked again, on the better reading).
    pub(super) async fn verify(
        &mut self,
        step: usize,
        cited: &[Citation],
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) -> bool {
        let budget = self.orch.cfg.zoom.clone();
        let Some(agent) = self.zoom_agent() else {
            return false;
        };
        let weak: Vec<Region> = cited
            .iter()
            .filter_map(|c| self.evidence.get(&c.region))
            .filter(|r| r.kind == FindingKind::Text && r.score < budget.verify_below)
            .filter(|r| {
                !self
                    .zoomed
                    .iter()
                    .any(|z| r.bbox.intersection(z) >= 0.9 * r.bbox.area())
            })
            .cloned()
            .collect();
        let mut changed = false;
        for r in weak {
            if spent.zooms >= budget.max_zooms || spent.seconds >= budget.max_seconds {
                break;
            }
            let th = r.bbox.height().min(r.bbox.width());
            let window = window(
                &r.bbox,
                Some(th),
                self.facts.width as f32,
                self.facts.height as f32,
            );
            let why = format!(
                "the answer's reading {:?} (confidence {:.2}), read again closer before answering",
                r.text, r.score
            );
            self.zoom_into(step, agent.as_ref(), &window, &why, opts, spent)
                .await;
            // Read again more confidently (the same text), it stands; replaced, or not read
            // again at all, the answer must be decided anew.
            let Some(now) = self.evidence.get(&r.id) else {
                continue;
            };
            if now.superseded_by.is_some() {
                changed = true;
            } else if now.score < budget.verify_below {
                self.evidence.unconfirm(&r.id);
                changed = true;
            }
        }
        changed
    }

    /// Reads the best places to look again, magnified, within the budget; returns whether
    /// anything was read (the controller is then asked again).
    pub(super) async fn zoom_round(
        &mut self,
        step: usize,
        question: &str,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
        round: Round,
    ) -> bool {
        let pointed = round == Round::Pointed;
        let per_round = match round {
            Round::FirstRead => usize::MAX,
            Round::Pointed | Round::Again => self.orch.cfg.zoom.per_round,
        };
        let budget = self.orch.cfg.zoom.clone();
        let Some(agent) = self.zoom_agent() else {
            return false;
        };
        let targets = targets(&Scene {
            question,
            pointed,
            evidence: &self.evidence,
            leads: &self.leads,
            focus: opts.region,
            zoomed: &self.zoomed,
            width: self.facts.width,
            height: self.facts.height,
        });
        tracing::debug!(targets = targets.len(), "zoom targets");
        let mut ran = 0;
        for t in targets {
            if ran >= per_round
                || spent.zooms >= budget.max_zooms
                || spent.pixels >= budget.max_pixels
                || spent.seconds >= budget.max_seconds
                || Self::cancelled(opts)
            {
                break;
            }
            // An earlier zoom of this round may have covered this window already.
            if self.zoomed.iter().any(|z| covered(&t.window, z)) {
                continue;
            }
            self.zoom_into(step, agent.as_ref(), &t.window, &t.why, opts, spent)
                .await;
            ran += 1;
        }
        ran > 0
    }

    /// Reads `window` magnified with `agent`, as a call the controller sees.
    pub(super) async fn zoom_into(
        &mut self,
        step: usize,
        agent: &dyn DynAgent,
        window: &BBox,
        why: &str,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) {
        let window = window.rounded();
        let Some(arguments) = agent.zoom_arguments(&window) else {
            return;
        };
        let name = agent.name().to_string();
        let t0 = Instant::now();
        let span = tracing::info_span!("zoom", step, window = ?window, why);
        let record = ZoomRecord {
            window,
            scale: None,
            why: why.to_string(),
        };
        let first_new = self.evidence.regions().len();
        let called = self
            .call(
                step,
                &name,
                arguments.clone(),
                opts,
                Some(record),
                Caller::Loop,
            )
            .instrument(span)
            .await;
        let scale = called.scale.unwrap_or(1.0) as f64;
        spent.zooms += 1;
        spent.seconds += t0.elapsed().as_secs_f64();
        spent.pixels += window.area() as f64 * scale * scale;
        self.zoomed.push(window);
        let (gain, confident) = (
            self.orch.cfg.zoom.supersede_gain,
            self.orch.cfg.zoom.verify_below,
        );
        let set_aside = self
            .evidence
            .settle(&window, &called.ids, first_new, gain, confident);
        if !set_aside.is_empty() {
            tracing::debug!(?set_aside, "one reading per place");
        }
        // The controller is shown what the closer look added that stands: a reading it set
        // aside would be one more line to pick an answer from.
        let content = if called.ids.is_empty() {
            called.content
        } else {
            let standing: Vec<&super::Region> = called
                .ids
                .iter()
                .filter_map(|id| self.evidence.get(id))
                .filter(|r| r.stands())
                .collect();
            if standing.is_empty() {
                format!("{name} read nothing more there.")
            } else {
                super::evidence::render(&standing, self.facts.width, self.facts.height)
            }
        };
        self.turns.push(Turn::Call {
            agent: name.clone(),
            arguments,
        });
        self.turns.push(Turn::Observation {
            agent: name,
            content,
        });
    }

    /// Before a question about `focus`: reads it magnified when little has been read there
    /// (no text region inside, or none read confidently).
    pub(super) async fn read_region(
        &mut self,
        focus: BBox,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) {
        let focus = focus.clamp(self.facts.width as f32, self.facts.height as f32);
        let thin = !self.evidence.regions().iter().any(|r| {
            r.kind == FindingKind::Text
                && r.stands()
                && r.score >= THIN_CONFIDENCE
                && inside(&r.bbox, &focus)
        });
        let done = self
            .zoomed
            .iter()
            .any(|z| focus.intersection(z) >= 0.9 * focus.area());
        if !thin || done || self.orch.cfg.zoom.max_zooms == 0 {
            return;
        }
        if let Some(agent) = self.zoom_agent() {
            let why = "the region the question is about, little read there yet";
            self.zoom_into(0, agent.as_ref(), &focus, why, opts, spent)
                .await;
        }
    }
}

/// Below this confidence, what was read in a region does not count as having read it.
const THIN_CONFIDENCE: f32 = 0.8;

/// Whether `b` lies mostly (half its area or more) inside `focus`.
pub(super) fn inside(b: &BBox, focus: &BBox) -> bool {
    b.area() > 0.0 && b.intersection(focus) >= 0.5 * b.area()
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
            pointed: false,
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
