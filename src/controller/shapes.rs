//! Answer shapes: what kind of text a question asks for (a date, a time, an amount), so that
//! a copied answer can be held to spans of the evidence with that shape.
//!
//! Why: a 0.5B controller that is asked for "the date" and copies from the line
//! `09/01/2019 8:01:11 PM` keeps copying past the date, and asked for "the total" it sometimes
//! starts at a time or a phone number. The model still chooses *which* span; the shape only
//! rules out spans that cannot be what was asked. Shapes live in `prompts/answer_shapes.toml`
//! (embedded, overridable with `--prompts DIR`), so a user can add their own or switch them
//! off with an empty file.

use regex::Regex;
use serde::Deserialize;

/// One shape: which questions it applies to and what an answer to them looks like.
#[derive(Debug, Clone)]
pub struct AnswerShape {
    pub name: String,
    question: Regex,
    /// `answer`, anchored at both ends.
    answer: Regex,
    /// Longest span, in words.
    pub max_words: usize,
}

impl PartialEq for AnswerShape {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.question.as_str() == other.question.as_str()
            && self.answer.as_str() == other.answer.as_str()
            && self.max_words == other.max_words
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapesFile {
    #[serde(default)]
    shape: Vec<ShapeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeEntry {
    name: String,
    question: String,
    answer: String,
    #[serde(default = "default_max_words")]
    max_words: usize,
}

fn default_max_words() -> usize {
    3
}

/// Parses `answer_shapes.toml`; the error says which shape and pattern is wrong.
pub fn parse_shapes(text: &str) -> Result<Vec<AnswerShape>, String> {
    let file: ShapesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.shape
        .into_iter()
        .map(|e| {
            let compile = |what: &str, pattern: &str| {
                Regex::new(pattern)
                    .map_err(|err| format!("shape `{}`: bad `{what}` pattern: {err}", e.name))
            };
            if e.max_words == 0 {
                return Err(format!("shape `{}`: max_words must be at least 1", e.name));
            }
            Ok(AnswerShape {
                question: compile("question", &e.question)?,
                answer: compile("answer", &format!("^(?:{})$", e.answer))?,
                name: e.name,
                max_words: e.max_words,
            })
        })
        .collect()
}

/// The first shape that applies to `question`.
pub fn shape_for<'a>(shapes: &'a [AnswerShape], question: &str) -> Option<&'a AnswerShape> {
    shapes.iter().find(|s| s.question.is_match(question))
}

impl AnswerShape {
    /// Byte ranges of `text` that have this shape: up to `max_words` consecutive words,
    /// starting at a word or at its first digit after a prefix ("RM9.00"), ending at a
    /// word's end with or without its trailing `.,:;`.
    pub fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        let b = text.as_bytes();
        let words: Vec<(usize, usize)> = text
            .split_ascii_whitespace()
            .map(|w| {
                let start = w.as_ptr() as usize - text.as_ptr() as usize;
                (start, start + w.len())
            })
            .collect();
        let mut out = Vec::new();
        for (w, &(ws, we)) in words.iter().enumerate() {
            // Inside a word, only the first digit after a prefix without digits ("RM", "Date:"):
            // never the middle of a number or a time.
            let first_digit = (ws..we).find(|&p| b[p].is_ascii_digit());
            let starts = std::iter::once(ws).chain(first_digit.filter(|&p| p > ws));
            for s in starts {
                for &(_, end) in words.iter().skip(w).take(self.max_words) {
                    let trimmed = s + text[s..end].trim_end_matches(['.', ',', ':', ';']).len();
                    for e in [end, trimmed] {
                        if e > s
                            && !out.contains(&(s, e))
                            && text.get(s..e).is_some_and(|t| self.answer.is_match(t))
                        {
                            out.push((s, e));
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> Vec<AnswerShape> {
        parse_shapes(include_str!("../../prompts/answer_shapes.toml")).unwrap()
    }

    fn spans_of(shape: &AnswerShape, text: &str) -> Vec<String> {
        shape
            .spans(text)
            .into_iter()
            .map(|(s, e)| text[s..e].to_string())
            .collect()
    }

    #[test]
    fn questions_pick_their_shape() {
        let shapes = embedded();
        let name = |q: &str| shape_for(&shapes, q).map(|s| s.name.as_str());
        assert_eq!(name("What is the date?"), Some("date"));
        assert_eq!(name("What is the total amount?"), Some("amount"));
        assert_eq!(name("What time was it paid?"), Some("time"));
        assert_eq!(name("What is the company name?"), None);
        assert_eq!(name("What is the address?"), None);
    }

    #[test]
    fn spans_hold_only_the_asked_part() {
        let shapes = embedded();
        let get = |n: &str| shapes.iter().find(|s| s.name == n).unwrap();
        assert_eq!(
            spans_of(get("date"), "09/01/2019 8:01:11 PM"),
            vec!["09/01/2019"]
        );
        assert_eq!(spans_of(get("date"), "Date:25/12/2018"), vec!["25/12/2018"]);
        assert_eq!(
            spans_of(get("date"), "05 Mar 2018 18:24"),
            vec!["05 Mar 2018"]
        );
        assert_eq!(
            spans_of(get("date"), "Tel 07-8263254"),
            Vec::<String>::new()
        );
        assert_eq!(
            spans_of(get("time"), "09/01/2019 8:01:11 PM"),
            vec!["8:01:11", "8:01:11 PM"]
        );
        assert_eq!(
            spans_of(get("amount"), "TOTAL: RM9.00"),
            vec!["RM9.00", "9.00"]
        );
        assert_eq!(spans_of(get("amount"), "Total 1,234.50."), vec!["1,234.50"]);
        assert!(spans_of(get("amount"), "Tel 07-8263254 20:17").is_empty());
    }

    #[test]
    fn bad_shapes_are_refused_with_their_name() {
        let bad = "[[shape]]\nname = \"x\"\nquestion = \"(\"\nanswer = \"a\"\n";
        let err = parse_shapes(bad).unwrap_err();
        assert!(
            err.contains("shape `x`") && err.contains("question"),
            "{err}"
        );
        assert!(parse_shapes("").unwrap().is_empty());
        assert!(parse_shapes("[[shape]]\nname = \"x\"\n").is_err());
    }
}
