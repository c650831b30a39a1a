//! The objects a question names: found with the detector, read inside, answered from.
//!
//! "What word is printed on the face of the wall clock?", "Which game is shown on the left
//! monitor?": the answer is text *on* an object, and a photo holds text everywhere. A list of
//! lines does not say which is on the clock, and a small text controller cannot tell. So the
//! loop finds the objects the question names (the words the detector knows; a word asked
//! *for* — "which game", "what kind of drink" — is not where to look), picks the one a
//! position word points at ("left", "top"…), reads inside it magnified, and narrows the
//! answer to the text on it when some was read there. A colour word before the name ("that
//! black mug") chooses among several found. An object the question names that is
//! not found, or found too many times to tell which, changes nothing.

use serde_json::json;
use tracing::Instrument;

use super::calls::Caller;
use super::colour_focus::colour_words;
use super::zoom::ZoomSpent;
use super::{AskOptions, Session, Turn};
use crate::agents::{Capability, FindingKind};
use crate::vision::colour::{dominant_colours, ColourOptions};
use crate::vision::BBox;

/// More objects of the named kind than this, with no position word to choose, and the
/// question does not say which one: nothing is narrowed.
const MAX_NAMED: usize = 3;

/// How far around a detected object its text is looked for, as a share of its longer side.
const OBJECT_PAD: f32 = 0.08;

/// A colour word before an object's name chooses the objects showing that colour in at
/// least this share of their (background-discounted) pixels.
const OBJECT_COLOUR_SHARE: f32 = 0.25;

/// The colour words (basic terms) up to two words before a named object ("the black coffee
/// mug").
fn colours_before(question: &str, named: &[(usize, String)]) -> Vec<&'static str> {
    let w = words(question);
    let mut out = Vec::new();
    for (i, _) in named {
        for x in &w[i.saturating_sub(2)..*i] {
            for c in colour_words(x) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Position words and the coordinate they choose an object by (lower is chosen).
pub(super) fn position_key(word: &str) -> Option<fn(&BBox) -> f32> {
    Some(match word {
        "left" | "leftmost" => |b: &BBox| b.x1 + b.x2,
        "right" | "rightmost" => |b: &BBox| -(b.x1 + b.x2),
        "top" | "upper" | "above" | "highest" => |b: &BBox| b.y1 + b.y2,
        "bottom" | "lower" | "below" | "lowest" => |b: &BBox| -(b.y1 + b.y2),
        "biggest" | "largest" | "big" | "large" => |b: &BBox| -b.area(),
        "smallest" | "small" | "little" => |b: &BBox| b.area(),
        _ => return None,
    })
}

/// How one object stands to another, read from the words between their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Relation {
    /// "holding / carrying / with / has": the other lies (mostly) inside this one's box, or
    /// within reach of it.
    Holds,
    /// "next to / beside / near / by": the closest.
    NextTo,
    /// "below / under / beneath": under the other, overlapping it across.
    Below,
    /// "above / over / on": over the other, overlapping it across.
    Above,
}

impl Relation {
    fn of(word: &str) -> Option<Self> {
        Some(match word {
            "holding" | "holds" | "hold" | "carrying" | "carries" | "carry" | "with" | "has"
            | "having" => Relation::Holds,
            "next" | "beside" | "near" | "by" | "nearest" | "closest" => Relation::NextTo,
            "below" | "under" | "beneath" | "underneath" => Relation::Below,
            "above" | "over" | "on" | "atop" => Relation::Above,
            _ => return None,
        })
    }

    /// How well `s` stands in this relation to `o` (higher is better); `None`: not at all.
    pub(super) fn score(&self, s: &BBox, o: &BBox) -> Option<f32> {
        let scale = s
            .width()
            .max(s.height())
            .max(o.width().max(o.height()))
            .max(1.0);
        let across = s.x1.max(o.x1) < s.x2.min(o.x2);
        let (sc, oc) = ((s.y1 + s.y2) / 2.0, (o.y1 + o.y2) / 2.0);
        match self {
            Relation::Holds => {
                // What is held is often raised above the head or held out beside the
                // body, just outside the holder's box.
                let m = 0.15 * s.width().max(s.height());
                let reach = BBox::new(s.x1 - m, s.y1 - m, s.x2 + m, s.y2 + m);
                let inside = reach.intersection(o) / o.area().max(1.0);
                (inside >= 0.3).then_some(inside)
            }
            Relation::NextTo => {
                let dx = (s.x1 - o.x2).max(o.x1 - s.x2).max(0.0);
                let dy = (s.y1 - o.y2).max(o.y1 - s.y2).max(0.0);
                let gap = (dx * dx + dy * dy).sqrt() / scale;
                (gap < 2.0).then_some(-gap)
            }
            Relation::Below => (across && sc > oc).then_some(-(s.y1 - o.y2).abs() / scale),
            Relation::Above => (across && sc < oc).then_some(-(o.y1 - s.y2).abs() / scale),
        }
    }
}

/// The first named object, a relation word after it and a second named object after that
/// ("the man holding the bag"), with only little words between them.
fn relation(question: &str, named: &[(usize, String)]) -> Option<(String, Relation, String)> {
    const BETWEEN: &[&str] = &[
        "who", "that", "which", "is", "are", "the", "a", "an", "to", "of", "it", "its", "his",
        "her", "their", "top",
    ];
    let w = words(question);
    let (ia, a) = named.first()?;
    let (ib, b) = named.iter().find(|(i, _)| i > ia)?;
    let mut rel = None;
    for x in &w[ia + 1..*ib] {
        match Relation::of(x) {
            Some(r) if rel.is_none() => rel = Some(r),
            Some(_) => {}
            None if BETWEEN.contains(&x.as_str()) => {}
            None => return None,
        }
    }
    Some((a.clone(), rel?, b.clone()))
}

/// Lower-case words of the question.
pub(super) fn words(question: &str) -> Vec<String> {
    question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The words that may name an object to look at, with their index: not the little words,
/// and not the thing asked *for* ("which game", "what kind of drink", "what colour").
pub(super) fn object_words(question: &str) -> Vec<(usize, String)> {
    const LITTLE: &[&str] = &[
        "what", "which", "who", "whose", "where", "when", "how", "why", "the", "a", "an", "is",
        "are", "was", "were", "of", "on", "in", "at", "to", "for", "from", "by", "with", "that",
        "this", "there", "it", "its", "do", "does", "did", "we", "can", "you", "me", "tell", "and",
        "or", "be", "much", "many", "left", "right", "top", "bottom", "name", "word", "words",
        "number", "written", "printed", "shown", "says", "say", "read",
    ];
    const ASKING: &[&str] = &["what", "which", "whose"];
    const KIND: &[&str] = &["kind", "kinds", "type", "types", "sort", "sorts"];
    let w = words(question);
    w.iter()
        .enumerate()
        .filter(|(i, word)| {
            if LITTLE.contains(&word.as_str()) || word.chars().count() < 3 {
                return false;
            }
            let before = |k: usize| i.checked_sub(k).map(|j| w[j].as_str());
            let asked_for = before(1).is_some_and(|p| ASKING.contains(&p))
                || (before(1) == Some("of") && before(2).is_some_and(|p| KIND.contains(&p)));
            !asked_for
        })
        .map(|(i, word)| (i, word.clone()))
        .collect()
}

/// The position word next to the word at `at` ("the left monitor", "the monitor at the
/// top"), if any: up to two words before it, or "at/on/in the X" right after.
fn position_near(question: &str, at: usize) -> Option<fn(&BBox) -> f32> {
    let w = words(question);
    let before = at.saturating_sub(2)..at;
    let after = (at + 1)..(at + 4).min(w.len());
    before
        .chain(after)
        .filter_map(|i| w.get(i))
        .find_map(|x| position_key(x))
}

impl Session<'_> {
    /// The objects `question` names, found with the detector and chosen by a position word
    /// (see the module docs): their region ids, best first; empty when there is no detector,
    /// the question names nothing it knows, nothing was found, or (unless `best_of_many`,
    /// then the best few) too many to tell which.
    pub(super) async fn named_objects(
        &mut self,
        step: usize,
        question: &str,
        opts: &AskOptions,
        best_of_many: bool,
    ) -> Vec<String> {
        let Some(agent) = self
            .orch
            .tools
            .with_capability(Capability::Objects)
            .cloned()
        else {
            return Vec::new();
        };
        let content = object_words(question);
        // A colour word before a noun describes it ("the orange sign" names no orange).
        let adjective = |i: usize, w: &str| {
            !colour_words(w).is_empty() && content.iter().any(|(j, _)| *j == i + 1)
        };
        let named: Vec<(usize, String)> = content
            .iter()
            .filter(|(i, w)| !adjective(*i, w))
            .filter(|(_, w)| agent.knows(w) != Some(false))
            .take(4)
            .cloned()
            .collect();
        if named.is_empty() || Self::cancelled(opts) {
            return Vec::new();
        }
        // "the man holding the bag", "the car next to the bus": the first object is chosen
        // by where the second is.
        if let Some((a, rel, b)) = relation(question, &named) {
            let subjects = self
                .detected(step, agent.as_ref(), &[a.as_str()], opts)
                .await;
            let others = self
                .detected(step, agent.as_ref(), &[b.as_str()], opts)
                .await;
            let best = subjects
                .iter()
                .filter_map(|(id, s)| {
                    let score = others
                        .iter()
                        .filter(|(oid, _)| oid != id)
                        .filter_map(|(_, o)| rel.score(s, o))
                        .fold(None::<f32>, |m, v| Some(m.map_or(v, |m| m.max(v))))?;
                    Some((id.clone(), score))
                })
                .max_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((id, _)) = best {
                return vec![id];
            }
        }
        let words: Vec<&str> = named.iter().map(|(_, w)| w.as_str()).collect();
        let mut found = self.detected(step, agent.as_ref(), &words, opts).await;
        // "that black mug" among six cups: the colour word chooses.
        // (With one object named: the boxes found do not say which name they answer.)
        let colours = colours_before(question, &named);
        if named.len() == 1 && !colours.is_empty() && self.has_colour_agent() {
            let opts = ColourOptions::default();
            let matching: Vec<(String, BBox)> = found
                .iter()
                .filter(|(_, b)| {
                    dominant_colours(self.image.rgb(), Some(*b), &opts).is_ok_and(|cs| {
                        colours.iter().all(|w| {
                            cs.iter()
                                .any(|c| c.name == *w && c.share >= OBJECT_COLOUR_SHARE)
                        })
                    })
                })
                .cloned()
                .collect();
            if !matching.is_empty() {
                found = matching;
            }
        }
        let position = named.iter().find_map(|(i, _)| position_near(question, *i));
        match position {
            Some(key) => found
                .into_iter()
                .min_by(|a, b| key(&a.1).total_cmp(&key(&b.1)))
                .map(|(id, _)| id)
                .into_iter()
                .collect(),
            None if found.len() <= MAX_NAMED || best_of_many => found
                .into_iter()
                .take(MAX_NAMED)
                .map(|(id, _)| id)
                .collect(),
            None => Vec::new(),
        }
    }

    /// The objects `agent` finds for `objects`, as region ids and boxes, best first.
    async fn detected(
        &mut self,
        step: usize,
        agent: &dyn crate::agents::DynAgent,
        objects: &[&str],
        opts: &AskOptions,
    ) -> Vec<(String, BBox)> {
        let span = tracing::info_span!("objects", step, objects = ?objects);
        self.located(step, agent, json!({ "objects": objects }), opts, span)
            .await
    }

    /// The loop's own call of a locating agent (a detector, the layout agent) with
    /// `arguments`: one call, an earlier identical call's results standing; the objects it
    /// returned as region ids and boxes, best first.
    pub(super) async fn located(
        &mut self,
        step: usize,
        agent: &dyn crate::agents::DynAgent,
        arguments: serde_json::Value,
        opts: &AskOptions,
        span: tracing::Span,
    ) -> Vec<(String, BBox)> {
        let name = agent.name().to_string();
        let ids = match self.call_regions.get(&format!("{name} {arguments}")) {
            Some(ids) => ids.clone(),
            None => {
                let called = self
                    .call(step, &name, arguments.clone(), opts, None, Caller::Loop)
                    .instrument(span)
                    .await;
                self.turns.push(Turn::Call {
                    agent: name.clone(),
                    arguments,
                });
                self.turns.push(Turn::Observation {
                    agent: name,
                    content: called.content,
                });
                called.ids
            }
        };
        ids.iter()
            .filter_map(|id| self.evidence.get(id))
            .filter(|r| r.kind == FindingKind::Object)
            .map(|r| (r.id.clone(), r.bbox))
            .collect()
    }

    /// Finds the objects `question` names, reads inside them magnified and narrows the
    /// answer to the text on them (see the module docs).
    pub(super) async fn find_named_objects(
        &mut self,
        step: usize,
        question: &str,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) {
        let ids = self.named_objects(step, question, opts, false).await;
        let (w, h) = (self.facts.width as f32, self.facts.height as f32);
        // A detector's box is loose: text on an object's rim (a monitor's brand on its
        // bezel) may lie just outside it.
        let chosen: Vec<BBox> = ids
            .iter()
            .filter_map(|id| self.evidence.get(id))
            .map(|r| {
                let pad = OBJECT_PAD * r.bbox.width().max(r.bbox.height());
                BBox::new(
                    r.bbox.x1 - pad,
                    r.bbox.y1 - pad,
                    r.bbox.x2 + pad,
                    r.bbox.y2 + pad,
                )
                .clamp(w, h)
            })
            .collect();
        if chosen.is_empty() {
            return;
        }
        self.object_focus = chosen.clone();
        let Some(reader) = self.zoom_agent() else {
            return;
        };
        let budget = self.orch.cfg.zoom.clone();
        for window in chosen {
            if spent.zooms >= budget.max_zooms
                || spent.seconds >= budget.max_seconds
                || spent.pixels >= budget.max_pixels
                || Self::cancelled(opts)
            {
                break;
            }
            if self
                .zoomed
                .iter()
                .any(|z| window.intersection(z) >= 0.9 * window.area())
            {
                continue;
            }
            let why = "inside an object the question names";
            self.zoom_into(step, reader.as_ref(), &window, why, opts, spent)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(q: &str) -> Vec<String> {
        object_words(q).into_iter().map(|(_, w)| w).collect()
    }

    #[test]
    fn the_thing_asked_for_is_not_where_to_look() {
        assert_eq!(ws("Which game is shown on the left monitor?"), ["monitor"]);
        assert_eq!(
            ws("What kind of fruit is sold at that market stall?"),
            ["sold", "market", "stall"]
        );
        assert_eq!(
            ws("What word is printed on the face of the wall clock?"),
            ["face", "wall", "clock"]
        );
        assert_eq!(
            ws("Tell me the number of that player who is shooting."),
            ["player", "shooting"]
        );
    }

    #[test]
    fn a_relation_between_two_named_objects_is_read() {
        let named = |q: &str, known: &[&str]| -> Vec<(usize, String)> {
            object_words(q)
                .into_iter()
                .filter(|(_, w)| known.contains(&w.as_str()))
                .collect()
        };
        let q = "What is written on the bag of the man holding the umbrella?";
        let n = named(q, &["bag", "man", "umbrella"]);
        // The first named object is the bag, and "of the man" says no relation.
        assert_eq!(relation(q, &n), None);
        let q2 = "What number is on the player holding the ball?";
        let n2 = named(q2, &["player", "ball"]);
        assert_eq!(
            relation(q2, &n2),
            Some(("player".into(), Relation::Holds, "ball".into()))
        );
        let q3 = "Which brand is the car next to the bus?";
        let n3 = named(q3, &["car", "bus"]);
        assert_eq!(
            relation(q3, &n3),
            Some(("car".into(), Relation::NextTo, "bus".into()))
        );
        let q4 = "What does the sign below the clock say?";
        let n4 = named(q4, &["sign", "clock"]);
        assert_eq!(relation(q4, &n4).map(|r| r.1), Some(Relation::Below));
    }

    #[test]
    fn relations_score_boxes() {
        let person = BBox::new(100.0, 100.0, 200.0, 400.0);
        let other = BBox::new(300.0, 100.0, 400.0, 400.0);
        let ball = BBox::new(140.0, 90.0, 170.0, 120.0);
        assert!(Relation::Holds.score(&person, &ball).is_some());
        assert!(Relation::Holds.score(&other, &ball).is_none());
        let bag = BBox::new(210.0, 300.0, 260.0, 380.0);
        let near = Relation::NextTo.score(&person, &bag).unwrap();
        let far = Relation::NextTo
            .score(&other, &bag)
            .unwrap_or(f32::NEG_INFINITY);
        assert!(near > far);
        let clock = BBox::new(100.0, 0.0, 200.0, 50.0);
        assert!(Relation::Below.score(&person, &clock).is_some());
        assert!(Relation::Above.score(&person, &clock).is_none());
    }

    #[test]
    fn position_words_choose_one() {
        let q = "Which game is shown on the left monitor?";
        let at = object_words(q)[0].0;
        let key = position_near(q, at).unwrap();
        let (a, b) = (
            BBox::new(0.0, 0.0, 10.0, 10.0),
            BBox::new(50.0, 0.0, 60.0, 10.0),
        );
        assert!(key(&a) < key(&b));
        let q2 = "What brand is the monitor at the top?";
        let at2 = object_words(q2)[0].0;
        let top = position_near(q2, at2).unwrap();
        assert!(top(&BBox::new(0.0, 0.0, 5.0, 5.0)) < top(&BBox::new(0.0, 50.0, 5.0, 55.0)));
        assert!(position_near("the wall clock", 2).is_none());
    }
}
