//! Answer shapes: what kind of text a question asks for (a date, a time, an amount, a name
//! printed on a line of its own), so that a copied answer can be held to spans of the evidence
//! with that shape.
//!
//! Why: a 0.5B controller that is asked for "the date" and copies from the line
//! `09/01/2019 8:01:11 PM` keeps copying past the date, and asked for "the total" it sometimes
//! starts at a time or a phone number; asked for a company name, it starts in the middle of
//! the line or stops before its end. The model still chooses *which* span; the shape only
//! rules out spans that cannot be what was asked. The address shape asks for a word of three
//! letters and a digit: with two letters (or a digit alone) a date line ending in "PM" or an
//! amount is an "address", and the model's likeliest one (see BENCHMARKS.md).
//! Shapes live in `prompts/answer_shapes.toml`
//! (embedded, overridable with `--prompts DIR`), so a user can add their own or switch them
//! off with an empty file.

use std::ops::Range;

use regex::Regex;
use serde::Deserialize;

/// What a span of a shape is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Consecutive words of one line (a date, an amount).
    #[default]
    Words,
    /// Consecutive whole lines, joined with a space (a name printed over one or two lines).
    Lines,
}

/// One shape: which questions it applies to and what an answer to them looks like.
#[derive(Debug, Clone)]
pub struct AnswerShape {
    pub name: String,
    question: Regex,
    /// `answer`, anchored at both ends.
    answer: Regex,
    pub unit: Unit,
    /// Longest span, in units (words or lines).
    pub max_len: usize,
}

impl PartialEq for AnswerShape {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.question.as_str() == other.question.as_str()
            && self.answer.as_str() == other.answer.as_str()
            && self.unit == other.unit
            && self.max_len == other.max_len
    }
}

/// A span of the evidence with a shape: its text and the lines it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub text: String,
    pub lines: Range<usize>,
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
    #[serde(default)]
    unit: Unit,
    max_words: Option<usize>,
    max_lines: Option<usize>,
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
            let (max_len, key, other) = match e.unit {
                Unit::Words => (
                    e.max_words.unwrap_or(3),
                    "max_words",
                    e.max_lines.map(|_| "max_lines"),
                ),
                Unit::Lines => (
                    e.max_lines.unwrap_or(1),
                    "max_lines",
                    e.max_words.map(|_| "max_words"),
                ),
            };
            if let Some(other) = other {
                return Err(format!(
                    "shape `{}`: {other} does not apply to unit = \"{}\" (use {key})",
                    e.name,
                    if e.unit == Unit::Words {
                        "words"
                    } else {
                        "lines"
                    }
                ));
            }
            if max_len == 0 {
                return Err(format!("shape `{}`: {key} must be at least 1", e.name));
            }
            Ok(AnswerShape {
                question: compile("question", &e.question)?,
                answer: compile("answer", &format!("^(?:{})$", e.answer))?,
                name: e.name,
                unit: e.unit,
                max_len,
            })
        })
        .collect()
}

/// The first shape that applies to `question`.
pub fn shape_for<'a>(shapes: &'a [AnswerShape], question: &str) -> Option<&'a AnswerShape> {
    shapes.iter().find(|s| s.question.is_match(question))
}

impl AnswerShape {
    /// The spans of `lines` (in reading order) with this shape, each once, first occurrence
    /// first.
    pub fn find(&self, lines: &[String]) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        let mut push = |text: String, lines: Range<usize>| {
            if !out.iter().any(|s| s.text == text) {
                out.push(Span { text, lines });
            }
        };
        match self.unit {
            Unit::Words => {
                for (i, line) in lines.iter().enumerate() {
                    for (a, b) in self.spans(line) {
                        push(line[a..b].to_string(), i..i + 1);
                    }
                }
            }
            Unit::Lines => {
                for start in 0..lines.len() {
                    let mut text = String::new();
                    for end in start + 1..=(start + self.max_len).min(lines.len()) {
                        let line = lines[end - 1].trim();
                        if line.is_empty() {
                            break;
                        }
                        if !text.is_empty() {
                            text.push(' ');
                        }
                        text.push_str(line);
                        if self.answer.is_match(&text) {
                            push(text.clone(), start..end);
                        }
                    }
                }
            }
        }
        out
    }

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
                for &(_, end) in words.iter().skip(w).take(self.max_len) {
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

    /// The spans of `shape` over `lines` (regions' texts in reading order).
    fn find_in(shape: &AnswerShape, lines: &[&str]) -> Vec<Span> {
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        shape.find(&lines)
    }

    fn texts(found: &[Span]) -> Vec<&str> {
        found.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn questions_pick_their_shape() {
        let shapes = embedded();
        let name = |q: &str| shape_for(&shapes, q).map(|s| s.name.as_str());
        assert_eq!(name("What is the date?"), Some("date"));
        assert_eq!(name("What is the total amount?"), Some("amount"));
        assert_eq!(name("What time was it paid?"), Some("time"));
        assert_eq!(name("What is the company name?"), Some("company"));
        assert_eq!(name("What is the name of the store?"), Some("company"));
        assert_eq!(name("What is the store's address?"), Some("address"));
        assert_eq!(name("What is the store's phone number?"), None);
        assert_eq!(name("Where is the dog?"), None);
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
    fn an_address_is_not_a_date_line_or_an_amount() {
        let shapes = embedded();
        let address = shapes.iter().find(|s| s.name == "address").unwrap();
        let found = find_in(
            address,
            &[
                "25/12/2018 8:13:39 PM",
                "",
                "9.00",
                "",
                "NO.5: 55,57 & 59, JALAN SAGU 18",
                "TAMAN DAYA.",
            ],
        );
        assert_eq!(
            texts(&found),
            [
                "NO.5: 55,57 & 59, JALAN SAGU 18",
                "NO.5: 55,57 & 59, JALAN SAGU 18 TAMAN DAYA."
            ]
        );
    }

    #[test]
    fn line_spans_are_runs_of_whole_lines() {
        let address = &parse_shapes(
            "[[shape]]\nname = \"a\"\nquestion = \"address\"\nanswer = '.*\\d.*'\nunit = \"lines\"\nmax_lines = 5\n",
        )
        .unwrap()[0];
        let found = find_in(
            address,
            &[
                "ACME SDN BHD",
                "NO. 5, JALAN SAGU",
                "TAMAN DAYA",
                "",
                "TOTAL",
            ],
        );
        // Every run of up to five non-empty lines with a digit in it; never a part of a line,
        // never across the empty line.
        assert_eq!(
            texts(&found),
            [
                "ACME SDN BHD NO. 5, JALAN SAGU",
                "ACME SDN BHD NO. 5, JALAN SAGU TAMAN DAYA",
                "NO. 5, JALAN SAGU",
                "NO. 5, JALAN SAGU TAMAN DAYA",
            ]
        );
        assert_eq!(found[1].lines, 0..3);
        let shapes = embedded();
        let company = shapes.iter().find(|s| s.name == "company").unwrap();
        let found = find_in(company, &["ACME SDN BHD", "NO. 5, JALAN SAGU"]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().all(|s| s.lines.len() <= 2));
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
        let words_with_lines =
            "[[shape]]\nname = \"x\"\nquestion = \"a\"\nanswer = \"b\"\nmax_lines = 2\n";
        let err = parse_shapes(words_with_lines).unwrap_err();
        assert!(err.contains("max_lines"), "{err}");
    }
}
