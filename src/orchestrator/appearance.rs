//! Questions no loaded model can answer: what things look like (colours, shapes) or what is
//! depicted (a drawing, a logo), when neither the controller nor any agent sees appearance.
//! They are answered plainly as unanswerable instead of being handed to a text controller,
//! which answers "what colour is the paper?" with a word it read.

use std::time::Instant;

use super::calls::Caller;
use super::{Answer, AskOptions, Session, Turn};
use crate::agents::Capability;
use crate::controller::Citation;
use crate::trace::TraceEvent;
use crate::vision::BBox;

impl Session<'_> {
    /// "What colour is the taxi?": the detector finds the taxi (or the question's region is
    /// used), the colour agent names its colour, and that is the answer, cited to the
    /// object. `None` when this does not apply (not a colour question, an agent or
    /// controller that sees appearance, or no colour or object agent).
    pub(super) async fn colour_answer(
        &mut self,
        question: &str,
        opts: &AskOptions,
        started: Instant,
    ) -> Option<Answer> {
        let has = |c: Capability| self.orch.tools.has_capability(c);
        if !asks_about_colour(question)
            || self.orch.controller.accepts_images()
            || has(Capability::Appearance)
            || !has(Capability::Colour)
            || (opts.region.is_none() && !has(Capability::Objects))
        {
            return None;
        }
        let colour = self
            .orch
            .tools
            .with_capability(Capability::Colour)?
            .name()
            .to_string();
        self.turns.push(Turn::Question {
            text: question.to_string(),
            region: opts.region,
        });
        let targets: Vec<(Option<String>, BBox)> = match opts.region {
            Some(r) => vec![(None, r)],
            None => {
                let ids = self.named_objects(1, question, opts, true).await;
                ids.iter()
                    .filter_map(|id| self.evidence.get(id))
                    .map(|r| (Some(r.id.clone()), r.bbox))
                    .collect()
            }
        };
        if targets.is_empty() {
            let text = concat!(
                "I cannot tell: the colours of a thing are named once the detector finds it, ",
                "and it found nothing the question names (it knows 80 common kinds of object)."
            )
            .to_string();
            return Some(self.answered(&text, &[], false, 1, started));
        }
        // Each object's colour; the answer is the commonest (ties: the best-scoring object).
        let mut named: Vec<(String, Vec<Citation>)> = Vec::new();
        for (object, bbox) in targets {
            let b = bbox.rounded();
            let arguments = serde_json::json!({ "region": [b.x1, b.y1, b.x2, b.y2] });
            let called = self
                .call(1, &colour, arguments.clone(), opts, None, Caller::Loop)
                .await;
            self.turns.push(Turn::Call {
                agent: colour.clone(),
                arguments,
            });
            self.turns.push(Turn::Observation {
                agent: colour.clone(),
                content: called.content,
            });
            let Some(region) = called.ids.first().and_then(|id| self.evidence.get(id)) else {
                continue;
            };
            let name = region
                .text
                .split([' ', ','])
                .next()
                .unwrap_or_default()
                .to_string();
            let mut cites = vec![Citation {
                region: region.id.clone(),
                phrase: None,
                bbox: None,
            }];
            cites.extend(object.map(|id| Citation {
                region: id,
                phrase: None,
                bbox: None,
            }));
            match named.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => c.extend(cites),
                None => named.push((name, cites)),
            }
        }
        let (name, cites) = named
            .into_iter()
            .enumerate()
            .max_by_key(|(i, (_, c))| (c.len(), std::cmp::Reverse(*i)))
            .map(|(_, n)| n)?;
        Some(self.answered(&name, &cites, true, 1, started))
    }

    /// A question about what things look like, when neither the controller nor any agent can
    /// see appearance, is answered plainly as unanswerable instead of being guessed (a text
    /// controller given OCR lines answers "what colour is the paper?" with a word it read).
    pub(super) fn unanswerable(&mut self, question: &str, started: Instant) -> Option<Answer> {
        if !asks_about_appearance(question)
            || self.orch.controller.accepts_images()
            || self.orch.tools.has_capability(Capability::Appearance)
        {
            return None;
        }
        let tools: Vec<&str> = self.orch.tools.all().map(|a| a.name()).collect();
        let has_colour = self.orch.tools.has_capability(Capability::Colour);
        let text = format!(
            "I cannot tell: answering needs to see what things look like (colours, shapes, \
             drawings, logos), and no vision model is loaded; the available tools ({}) only {}.",
            if tools.is_empty() {
                "none".to_string()
            } else {
                tools.join(", ")
            },
            if self.orch.tools.has_capability(Capability::Objects) {
                if has_colour {
                    "read text, locate objects and name the colours of what they find"
                } else {
                    "read text and locate objects"
                }
            } else {
                "read text"
            }
        );
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.trace.record(TraceEvent::Answer {
            text: text.clone(),
            controller_text: String::new(),
            copied: false,
            linked: text.clone(),
            grounding: Vec::new(),
            steps: 0,
            elapsed_ms: elapsed_ms as f64,
        });
        Some(Answer {
            answer: text.clone(),
            grounding: Vec::new(),
            linked: text,
            steps: 0,
            elapsed_ms,
            controller_text: String::new(),
        })
    }
}

/// Words that ask what something looks like.
///
/// Also words that ask what is *depicted* — a drawing, a painting, a logo, an animal: a text
/// reader finds words near such things (a street name next to a drawn tiger, a monitor's brand
/// next to a mug's logo), and a small controller asked "what animal is drawn on the sign?"
/// answers with one of them.
const APPEARANCE_WORDS: [&str; 27] = [
    "colour",
    "color",
    "colours",
    "colors",
    "coloured",
    "colored",
    "shade",
    "shape",
    "shaped",
    "appearance",
    "look like",
    "looks like",
    "wearing",
    "material",
    "drawn",
    "drawing",
    "painted",
    "painting",
    "pictured",
    "picture of",
    "depicted",
    "depict",
    "illustrated",
    "illustration",
    "logo",
    "icon",
    "animal",
];

/// Whether a question asks for a colour, and nothing a colour measurement cannot see (what is
/// drawn, a logo, a shape).
pub fn asks_about_colour(question: &str) -> bool {
    let q = question.to_lowercase();
    let words: Vec<&str> = q.split(|c: char| !c.is_alphanumeric()).collect();
    let colour = words.iter().any(|w| {
        [
            "colour", "color", "colours", "colors", "coloured", "colored",
        ]
        .contains(w)
    });
    let other = APPEARANCE_WORDS
        .iter()
        .filter(|w| !w.starts_with("colo"))
        .any(|w| {
            if w.contains(' ') {
                q.contains(w)
            } else {
                words.contains(w)
            }
        });
    colour && !other
}

/// Whether a question asks about appearance (colours, shapes) or what is depicted (a drawing,
/// a logo), which text tools cannot see.
pub fn asks_about_appearance(question: &str) -> bool {
    let q = question.to_lowercase();
    let words: Vec<&str> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.join(" ");
    APPEARANCE_WORDS.iter().any(|w| {
        if w.contains(' ') {
            joined.contains(w)
        } else {
            words.contains(w)
        }
    })
}
