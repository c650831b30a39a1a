//! What a copied answer may be, as the answer string holds it: an answer shape's spans
//! ([`ShapedSpans`]), JSON-escaped, with the regions each covers.

use std::collections::BTreeMap;

use super::shapes::{AnswerShape, Rank, RowOf};
use crate::controller::RegionText;

/// `t` as it appears inside a JSON string (what the answer string holds), without the quotes.
pub fn json_escaped(t: &str) -> String {
    let quoted = serde_json::to_string(t).unwrap_or_default();
    // Strip exactly one quote each side: a text ending in `"` ends in `\""` here.
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// What a copied answer may be: [`super::rank::copy_search`] asks it about every token.
pub trait CopyConstraint {
    /// Whether a copy may begin with `t` (a first token).
    fn begins(&self, t: &[u8]) -> bool;
    /// Whether the copy may be `t` so far (`closes`: and end there).
    fn allows(&self, t: &[u8], closes: bool) -> bool;
    /// The regions the finished copy `t` came from.
    fn regions_of(&self, t: &[u8]) -> Vec<String>;
    /// How finished copies are ranked against each other.
    fn rank(&self) -> Rank {
        Rank::Search
    }
    /// Every copy allowed, where the constraint is a list of them (a shape's spans).
    fn complete(&self) -> Option<Vec<&[u8]>> {
        None
    }
    /// The rest of the only copy that begins with `t`, where exactly one does (and is longer
    /// or equal): the search then runs it in one pass instead of token by token.
    fn only_completion(&self, _t: &[u8]) -> Option<&[u8]> {
        None
    }
}

/// The spans of the evidence with a question's answer shape (JSON-escaped, as the answer
/// string holds them), each with the regions it covers: a copy must be one of them, whole.
pub struct ShapedSpans {
    spans: Vec<(Vec<u8>, Vec<String>)>,
    rank: Rank,
    /// The shape's name, for the trace.
    shape: String,
}

impl ShapedSpans {
    pub fn new(regions: &[RegionText], shape: &AnswerShape) -> Self {
        let lines: Vec<String> = regions.iter().map(|r| json_escaped(&r.text)).collect();
        // Each region's row as the controller reads it: its regions' texts, " | " between.
        let mut cells: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for r in regions {
            cells.entry(r.row).or_default().push(&r.text);
        }
        let joined: BTreeMap<usize, String> =
            cells.into_iter().map(|(n, c)| (n, c.join(" | "))).collect();
        let rows: Vec<RowOf> = regions
            .iter()
            .map(|r| RowOf {
                number: r.row,
                text: joined[&r.row].clone(),
            })
            .collect();
        let spans = shape
            .find(&lines, &rows)
            .into_iter()
            .map(|span| {
                let ids = regions[span.lines].iter().map(|r| r.id.clone());
                (span.text.into_bytes(), ids.collect())
            })
            .collect();
        Self {
            spans,
            rank: shape.rank,
            shape: shape.name.clone(),
        }
    }

    /// How a copy from these spans was chosen, in words, for a person reading the trace.
    pub fn how_chosen(&self) -> String {
        let by = match self.rank {
            Rank::Search => "the model's likeliest copy, token by token",
            Rank::Whole => "the one the model found likeliest as a whole",
            Rank::Start => "the one whose first token the model found likeliest",
            Rank::First => "the first in reading order (a rule: the model was not asked)",
        };
        format!(
            "copied: one of {} spans of the `{}` answer shape in the evidence, {by}",
            self.spans.len(),
            self.shape
        )
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl CopyConstraint for ShapedSpans {
    fn begins(&self, t: &[u8]) -> bool {
        self.allows(t, false)
    }

    fn allows(&self, t: &[u8], closes: bool) -> bool {
        self.spans
            .iter()
            .any(|(s, _)| if closes { s == t } else { s.starts_with(t) })
    }

    fn regions_of(&self, t: &[u8]) -> Vec<String> {
        self.spans
            .iter()
            .find(|(s, _)| s == t)
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default()
    }

    fn rank(&self) -> Rank {
        self.rank
    }

    fn complete(&self) -> Option<Vec<&[u8]>> {
        Some(self.spans.iter().map(|(s, _)| s.as_slice()).collect())
    }

    fn only_completion(&self, t: &[u8]) -> Option<&[u8]> {
        let mut it = self.spans.iter().filter(|(s, _)| s.starts_with(t));
        let (first, _) = it.next()?;
        // The same text from other regions is the same copy.
        if it.any(|(s, _)| s != first) {
            return None;
        }
        Some(&first[t.len()..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_completion_needs_one_span_left() {
        let spans = ShapedSpans {
            spans: vec![
                (b"BOOK TA".to_vec(), vec!["r1".into()]),
                (
                    b"BOOK TA -K SDN BHD".to_vec(),
                    vec!["r1".into(), "r2".into()],
                ),
                (b"tan woon".to_vec(), vec!["r3".into()]),
                (b"tan woon".to_vec(), vec!["r4".into()]),
            ],
            rank: Rank::Search,
            shape: "company".into(),
        };
        assert_eq!(spans.only_completion(b"BOOK"), None);
        assert_eq!(spans.only_completion(b"BOOK TA -"), Some(&b"K SDN BHD"[..]));
        assert_eq!(spans.only_completion(b"tan"), Some(&b" woon"[..]));
        assert_eq!(spans.only_completion(b"tan woon"), Some(&b""[..]));
        assert_eq!(spans.only_completion(b"x"), None);
    }

    #[test]
    fn evidence_is_escaped_as_the_answer_string_holds_it() {
        assert_eq!(json_escaped("9.00"), "9.00");
        assert_eq!(json_escaped("say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(json_escaped(""), "");
    }
}
