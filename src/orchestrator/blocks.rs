//! The blocks of a document a question names: found with the layout agent, answered from.
//!
//! "What is the title of the paper?", "What does the table's caption say?", "What is in the
//! footer?": on a page the answer is the text of one block, and a list of lines does not say
//! which line is the title. So, on a document, the loop asks the layout agent for the blocks
//! of the kinds the question's words name (the agent's vocabulary: "heading" is a title,
//! "chart" a figure, "the table's caption" a table caption), picks one by a position word
//! when there are several ("the first table", "the caption at the bottom"), and narrows the
//! answer to the text inside them, read anew (magnified) where the page's reading left a block
//! empty. A question that names no kind, or kinds the page does not have, narrows nothing.
//! Unlike an object ("which *game*" asks for a game and is no place to look), the kind a
//! question asks for is where its answer is: "what is the *title*" is read in the title.
//!
//! Kind words have other senses ("the reference number", "the figure for revenue", "the
//! header row", "how many tables"), and a wrong block would hide the answer, so a word counts
//! only as a noun of its own: after a determiner or a possessive ("the title", "the table's
//! caption"), not before a word that makes it a modifier, and not in a counting question.

use super::objects::words;
use super::zoom::{inside, ZoomSpent};
use super::{AskOptions, Session};
use crate::agents::{Capability, FindingKind};
use crate::vision::BBox;
use serde_json::json;

/// A layout block's box is tight: its text may touch the edge. Grown by this share of its
/// shorter side (at least 2 px) before text is looked for inside it.
const BLOCK_PAD: f32 = 0.15;

/// Words before a kind word that make it a noun of its own.
const DETERMINERS: &[&str] = &[
    "the", "this", "that", "its", "their", "his", "her", "a", "an", "each", "every", "first",
    "second", "third", "last", "top", "bottom", "upper", "lower", "left", "right", "s",
];

/// Words after a kind word that make it a modifier ("the reference number", "the title page",
/// "the figure for revenue", "the header row").
const COMPOUNDS: &[&str] = &[
    "number", "numbers", "no", "row", "rows", "column", "columns", "cell", "cells", "name", "id",
    "code", "page", "for", "value", "values", "amount", "total", "date",
];

/// Indices of the words that may name a page block: after a determiner or possessive, not
/// before a compound head, and none in a counting question ("how many tables").
fn block_words(words: &[String]) -> Vec<usize> {
    if words.windows(2).any(|p| p[0] == "how" && p[1] == "many") {
        return Vec::new();
    }
    (0..words.len())
        .filter(|&i| i > 0 && DETERMINERS.contains(&words[i - 1].as_str()))
        .filter(|&i| {
            words
                .get(i + 1)
                .is_none_or(|n| !COMPOUNDS.contains(&n.as_str()))
        })
        .collect()
}

/// The position word that picks one block of several: just before the kind word ("the
/// first table", "the right header") or right after it ("the header on the right", "the
/// caption at the bottom"). Relations ("the total below the table") are not positions.
fn position_near(words: &[String], at: usize) -> Option<fn(&BBox) -> f32> {
    let key = |w: &str| -> Option<fn(&BBox) -> f32> {
        Some(match w {
            "left" | "leftmost" => |b: &BBox| b.x1 + b.x2,
            "right" | "rightmost" => |b: &BBox| -(b.x1 + b.x2),
            "top" | "upper" | "first" => |b: &BBox| b.y1 + b.y2,
            "bottom" | "lower" | "last" => |b: &BBox| -(b.y1 + b.y2),
            _ => return None,
        })
    };
    let before = at.saturating_sub(2)..at;
    let after = (at + 1)..(at + 4).min(words.len());
    before.chain(after).find_map(|i| key(&words[i]))
}

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
        let Some(agent) = self.orch.tools.with_capability(Capability::Layout).cloned() else {
            return;
        };
        let words = words(question);
        let at: Vec<usize> = block_words(&words)
            .into_iter()
            .filter(|&i| agent.knows(&words[i]) == Some(true))
            .collect();
        let mut named: Vec<String> = at.iter().map(|&i| words[i].clone()).collect();
        named.sort();
        named.dedup();
        if named.is_empty() || Self::cancelled(opts) {
            return;
        }
        let span = tracing::info_span!("blocks", step, kinds = ?named);
        let mut blocks: Vec<BBox> = self
            .located(step, agent.as_ref(), json!({ "kinds": named }), opts, span)
            .await
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        if blocks.is_empty() {
            return;
        }
        if let Some(key) = at.iter().find_map(|&i| position_near(&words, i)) {
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
            let zoomed = self
                .zoomed
                .iter()
                .any(|z| window.intersection(z) >= 0.9 * window.area());
            if read
                || zoomed
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::orchestrator::objects::words as ws;

    fn named(q: &str) -> Vec<String> {
        let w = ws(q);
        block_words(&w).into_iter().map(|i| w[i].clone()).collect()
    }

    #[test]
    fn kind_words_count_only_as_nouns_of_their_own() {
        assert!(named("What is the title of the page?").contains(&"title".to_string()));
        assert!(named("What does the table's caption say?").contains(&"caption".to_string()));
        assert!(!named("What is the reference number?").contains(&"reference".to_string()));
        assert!(!named("What is the figure for revenue?").contains(&"figure".to_string()));
        assert!(!named("What is in the header row?").contains(&"header".to_string()));
        assert!(named("How many tables are on the page?").is_empty());
        assert!(!named("What is the job title?").contains(&"title".to_string()));
    }

    #[test]
    fn positions_are_read_next_to_the_kind_word_not_from_relations() {
        let w = ws("What is written in the header on the right?");
        let i = w.iter().position(|x| x == "header").unwrap();
        let key = position_near(&w, i).unwrap();
        assert!(key(&BBox::new(900.0, 0.0, 1000.0, 10.0)) < key(&BBox::new(0.0, 0.0, 100.0, 10.0)));
        let w = ws("What is the total below the table?");
        let i = w.iter().position(|x| x == "table").unwrap();
        assert!(position_near(&w, i).is_none());
    }
}
