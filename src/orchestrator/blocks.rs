//! The blocks of a document a question names: found with the layout agent, answered from.
//!
//! "What is the title of the paper?", "What does the table's caption say?", "What is in the
//! footer?": on a page the answer is the text of one block, and a list of lines does not say
//! which line is the title. So, on a document, the loop asks the layout agent for the blocks
//! of the kinds the question's words name (the agent's vocabulary: "heading" is a title,
//! "chart" a figure, "the table's caption" a table caption), picks one by a position word
//! when there are several ("the first table", "the caption at the bottom"), and narrows the
//! answer to the text inside them, read anew (magnified) where the page's reading left a block
//! empty. A question that names no kind, or kinds the page does not have, changes nothing.
//! Unlike an object ("which *game*" asks for a game and is no place to look), the kind a
//! question asks for is where its answer is: "what is the *title*" is read in the title.

use serde_json::json;
use tracing::Instrument;

use super::calls::Caller;
use super::objects::position_key;
use super::zoom::{inside, ZoomSpent};
use super::{AskOptions, Session, Turn};
use crate::agents::{Capability, FindingKind};
use crate::vision::BBox;

/// A layout block's box is tight: its text may touch the edge. Grown by this share of its
/// shorter side (at least 2 px) before text is looked for inside it.
const BLOCK_PAD: f32 = 0.15;

impl Session<'_> {
    /// Finds the blocks `question` names on a document and narrows the answer to the text
    /// in them (see the module docs).
    pub(super) async fn find_named_blocks(
        &mut self,
        step: usize,
        question: &str,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) {
        let Some(agent) = self
            .orch
            .agents
            .iter()
            .find(|a| a.capabilities().contains(&Capability::Layout))
            .cloned()
        else {
            return;
        };
        let words: Vec<String> = question
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let named: Vec<String> = words
            .iter()
            .filter(|w| agent.knows(w) == Some(true))
            .cloned()
            .collect();
        if named.is_empty() || Self::cancelled(opts) {
            return;
        }
        let arguments = json!({ "kinds": named });
        let name = agent.name().to_string();
        let key = format!("{name} {arguments}");
        let ids = match self.call_regions.get(&key) {
            Some(ids) => ids.clone(),
            None => {
                let span = tracing::info_span!("blocks", step, kinds = ?named);
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
        let mut blocks: Vec<BBox> = ids
            .iter()
            .filter_map(|id| self.evidence.get(id))
            .filter(|r| r.kind == FindingKind::Object)
            .map(|r| r.bbox)
            .collect();
        if blocks.is_empty() {
            return;
        }
        if let Some(key) = words.iter().find_map(|w| position_key(w)) {
            if let Some(best) = blocks
                .iter()
                .copied()
                .min_by(|a, b| key(a).total_cmp(&key(b)))
            {
                blocks = vec![best];
            }
        }
        let (w, h) = (self.facts.width as f32, self.facts.height as f32);
        let padded: Vec<BBox> = blocks
            .iter()
            .map(|b| {
                let p = (BLOCK_PAD * b.width().min(b.height())).max(2.0);
                BBox::new(b.x1 - p, b.y1 - p, b.x2 + p, b.y2 + p).clamp(w, h)
            })
            .collect();
        self.object_focus = padded.clone();
        let Some(reader) = self.zoom_agent() else {
            return;
        };
        let budget = self.orch.cfg.zoom.clone();
        for window in padded {
            let read = self
                .evidence
                .regions()
                .iter()
                .any(|r| r.kind == FindingKind::Text && r.stands() && inside(&r.bbox, &window));
            if read
                || spent.zooms >= budget.max_zooms
                || spent.seconds >= budget.max_seconds
                || spent.pixels >= budget.max_pixels
                || Self::cancelled(opts)
            {
                continue;
            }
            let why = "inside a block of the page the question names";
            self.zoom_into(step, reader.as_ref(), &window, why, opts, spent)
                .await;
        }
    }
}
