//! Questions no loaded model can answer: what things look like (colours, shapes) or what is
//! depicted (a drawing, a logo), when neither the controller nor any agent sees appearance.
//! They are answered plainly as unanswerable instead of being handed to a text controller,
//! which answers "what colour is the paper?" with a word it read.

use std::time::Instant;

use super::{Answer, Session};
use crate::agents::Capability;
use crate::trace::TraceEvent;

impl Session<'_> {
    /// A question about what things look like, when neither the controller nor any agent can
    /// see appearance, is answered plainly as unanswerable instead of being guessed (a text
    /// controller given OCR lines answers "what colour is the paper?" with a word it read).
    pub(super) fn unanswerable(&mut self, question: &str, started: Instant) -> Option<Answer> {
        if !asks_about_appearance(question)
            || self.orch.controller.accepts_images()
            || self
                .orch
                .agents
                .iter()
                .any(|a| a.capabilities().contains(&Capability::Appearance))
        {
            return None;
        }
        let tools: Vec<&str> = self.orch.agents.iter().map(|a| a.name()).collect();
        let text = format!(
            "I cannot tell: answering needs to see what things look like (colours, shapes, \
             drawings, logos), and no vision model is loaded; the available tools ({}) only {}.",
            if tools.is_empty() {
                "none".to_string()
            } else {
                tools.join(", ")
            },
            if self
                .orch
                .agents
                .iter()
                .any(|a| a.capabilities().contains(&Capability::Objects))
            {
                "read text and locate objects"
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
