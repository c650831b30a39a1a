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
//! amount is an "address", and the model's likeliest one (see BENCHMARKS.md). For the same
//! reason a shape can `reject` spans (a phone or registration line has an address's digits
//! and letters) and bound where they start (`first_lines`: a document's name and address are
//! at its top, and the item lines below distract a small model).
//! Shapes live in `prompts/answer_shapes.toml`
//! (embedded, overridable with `--prompts DIR`), so a user can add their own or switch them
//! off with an empty file.

use std::collections::HashMap;
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

/// Where a shape applies (`layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Any image.
    #[default]
    Any,
    /// Only where the text read looks like a document's ([`crate::answer::reads_as_document`]):
    /// the shape's rules are a document's conventions (a name in the first lines), which a
    /// photo's signs do not follow.
    Document,
}

/// How the copies of a shape are ranked against each other (`rank`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    /// The few likeliest first tokens are each continued greedily, and of those copies the one
    /// the model finds likeliest as a whole wins. Each token of a copy is the model's own
    /// choice, including where it ends: a name ends where the model would end it.
    #[default]
    Search,
    /// Every span is scored exactly and the likeliest as a whole wins. For short spans that
    /// differ late ("33.92", "33.90"), which the greedy search never compares: it follows one
    /// path per first token, and after "33.9" takes the digit it prefers in isolation.
    Whole,
    /// The copy that starts with the token the model finds most likely: where the answer
    /// starts is the model's choice, and the span's rules decide where it ends. A summed
    /// log-probability favours short spans and clean OCR; for a span of several lines whose
    /// end is fixed by `ends_before`, that is a bias, not a choice.
    Start,
    /// The first span in reading order; the model is not asked. For a field whose place is a
    /// convention of the document rather than a matter of wording: a letterhead's address is
    /// the first address-shaped block under the name, while the model's favourite first token
    /// is as often an item line or the block's second line.
    First,
}

/// One shape: which questions it applies to and what an answer to them looks like.
#[derive(Debug, Clone)]
pub struct AnswerShape {
    pub name: String,
    question: Regex,
    /// `answer`, anchored at both ends.
    answer: Regex,
    /// `reject`, unanchored: a span where it matches anywhere is not an answer (a phone
    /// number or a date line has an address's digits and letters, but is not one).
    reject: Option<Regex>,
    pub unit: Unit,
    /// Longest span, in units (words or lines).
    pub max_len: usize,
    /// What the controller is told about such answers, after the question (`hint`): what
    /// the likeliest span gets wrong ("not a subtotal"), in words the model can use.
    pub hint: Option<String>,
    /// Spans start within the first this many lines of the evidence (`first_lines`): the
    /// name a document is issued under, and its address, are printed at its top.
    pub first_lines: Option<usize>,
    /// A span does not start right after a line this matches (`not_after`): that line goes on
    /// in the next one ("NO. 53, JALAN BESAR," then "45600 BATANG BERJUNTAI"), so a span
    /// starting there would start in the middle of an address or a name.
    not_after: Option<Regex>,
    /// A span of several lines runs to the end of its block (`ends_before`): it ends before
    /// an empty line, a line this matches (a phone or registration line after an address)
    /// or the end of the evidence, or is `max_lines` long. A small model closes an address
    /// after its first line or two; the block's end is where the page says it ends.
    ends_before: Option<Regex>,
    /// The first line of a span matches this (`first_line`, lines only): an address starts
    /// with its number ("NO. 5, JALAN SAGU", "LEVEL 6, MENARA"), not with the name above it.
    first_line: Option<Regex>,
    /// The row a span starts on (the texts of the regions on that row of the image, " | "
    /// between them) matches this (`row`)...
    row: Option<Regex>,
    /// ...and not this (`row_reject`): a receipt's total is on a row labelled as one, not on
    /// its subtotal, tax or cash rows. Both give way when they leave no span at all.
    row_reject: Option<Regex>,
    /// When some spans start on a row this matches (`row_prefer`), only those are answers
    /// ("TOTAL ROUNDED" over "TOTAL").
    row_prefer: Option<Regex>,
    /// On the rows `row` and `row_prefer` pick, only the row's first region holding a span
    /// has answers (`first_on_row`): the value printed after a label, not the cash paid that
    /// the OCR put on the same row ("TOTAL ROUNDED | 33.90 | RM 50.00").
    first_on_row: bool,
    /// A span may also end before a trailing part this matches whole (`trim_end`): the
    /// registration number printed after a name on its line ("AEON CO. (M) BHD (126926-H)"),
    /// or a time the OCR glued to a date ("10/03/20185:41:06").
    trim_end: Option<Regex>,
    /// A span of lines neither starts nor ends between two regions of one row that both have
    /// the shape (`whole_rows`, lines only): the OCR reads one name in pieces ("SAM SAM
    /// TRADING" | "CO"), and a small model stops after the first.
    whole_rows: bool,
    /// How its copies are ranked (`rank`).
    pub rank: Rank,
    /// Where it applies (`layout`).
    pub layout: Layout,
}

impl PartialEq for AnswerShape {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.question.as_str() == other.question.as_str()
            && self.answer.as_str() == other.answer.as_str()
            && same_pattern(&self.reject, &other.reject)
            && self.unit == other.unit
            && self.max_len == other.max_len
            && self.hint == other.hint
            && self.first_lines == other.first_lines
            && same_pattern(&self.not_after, &other.not_after)
            && same_pattern(&self.ends_before, &other.ends_before)
            && same_pattern(&self.first_line, &other.first_line)
            && same_pattern(&self.row, &other.row)
            && same_pattern(&self.row_reject, &other.row_reject)
            && same_pattern(&self.row_prefer, &other.row_prefer)
            && self.first_on_row == other.first_on_row
            && same_pattern(&self.trim_end, &other.trim_end)
            && self.whole_rows == other.whole_rows
            && self.rank == other.rank
            && self.layout == other.layout
    }
}

fn same_pattern(a: &Option<Regex>, b: &Option<Regex>) -> bool {
    a.as_ref().map(Regex::as_str) == b.as_ref().map(Regex::as_str)
}

/// The row of the image a line of the evidence is on, as the controller is shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOf {
    /// Rows are numbered in reading order; the lines of one row share its number.
    pub number: usize,
    /// The texts of its regions, " | " between them.
    pub text: String,
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
    reject: Option<String>,
    hint: Option<String>,
    first_lines: Option<usize>,
    not_after: Option<String>,
    ends_before: Option<String>,
    first_line: Option<String>,
    row: Option<String>,
    row_reject: Option<String>,
    row_prefer: Option<String>,
    #[serde(default)]
    first_on_row: bool,
    trim_end: Option<String>,
    #[serde(default)]
    whole_rows: bool,
    #[serde(default)]
    rank: Rank,
    #[serde(default)]
    layout: Layout,
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
            for (key, set) in [
                ("not_after", e.not_after.is_some()),
                ("ends_before", e.ends_before.is_some()),
                ("first_line", e.first_line.is_some()),
                ("whole_rows", e.whole_rows),
            ] {
                if set && e.unit != Unit::Lines {
                    return Err(format!(
                        "shape `{}`: {key} applies to unit = \"lines\" only",
                        e.name
                    ));
                }
            }
            if e.first_lines == Some(0) {
                return Err(format!(
                    "shape `{}`: first_lines must be at least 1",
                    e.name
                ));
            }
            let optional = |what: &str, pattern: &Option<String>| {
                pattern.as_deref().map(|p| compile(what, p)).transpose()
            };
            Ok(AnswerShape {
                question: compile("question", &e.question)?,
                answer: compile("answer", &format!("^(?:{})$", e.answer))?,
                reject: optional("reject", &e.reject)?,
                not_after: optional("not_after", &e.not_after)?,
                ends_before: optional("ends_before", &e.ends_before)?,
                first_line: optional("first_line", &e.first_line)?,
                row: optional("row", &e.row)?,
                row_reject: optional("row_reject", &e.row_reject)?,
                row_prefer: optional("row_prefer", &e.row_prefer)?,
                first_on_row: e.first_on_row,
                trim_end: e
                    .trim_end
                    .as_deref()
                    .map(|p| compile("trim_end", &format!("^(?:{p})$")))
                    .transpose()?,
                whole_rows: e.whole_rows,
                name: e.name,
                unit: e.unit,
                max_len,
                hint: e
                    .hint
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty()),
                first_lines: e.first_lines,
                rank: e.rank,
                layout: e.layout,
            })
        })
        .collect()
}

/// The first shape that applies to `question`, about a document or not (`layout`).
pub fn shape_for<'a>(
    shapes: &'a [AnswerShape],
    question: &str,
    document: bool,
) -> Option<&'a AnswerShape> {
    shapes
        .iter()
        .find(|s| s.question.is_match(question) && (document || s.layout == Layout::Any))
}

impl AnswerShape {
    /// Whether `text`, whole, is an answer of this shape.
    fn fits(&self, text: &str) -> bool {
        self.answer.is_match(text) && !self.reject.as_ref().is_some_and(|r| r.is_match(text))
    }

    /// `text` and, with `trim_end`, each beginning of it that is left when a trailing part
    /// the pattern matches whole (and the space before that part) is cut off.
    fn with_trims<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = vec![text];
        if let Some(trim) = &self.trim_end {
            for (p, _) in text.char_indices().skip(1) {
                let head = text[..p].trim_end();
                if !head.is_empty() && !out.contains(&head) && trim.is_match(&text[p..]) {
                    out.push(head);
                }
            }
        }
        out
    }

    /// The spans of `lines` (in reading order) with this shape, each once, first occurrence
    /// first; with `first_lines`, only those that start in the first lines. `rows[i]` is the
    /// row line `i` is on, for the row rules: the preferred rows' spans if there are any,
    /// else the spans `row` and `row_reject` allow, else every span.
    pub fn find(&self, lines: &[String], rows: &[RowOf]) -> Vec<Span> {
        let row_of = |i: usize| rows.get(i).map(|r| r.text.as_str()).unwrap_or("");
        let allowed = |i: usize| {
            self.row.as_ref().is_none_or(|r| r.is_match(row_of(i)))
                && !self
                    .row_reject
                    .as_ref()
                    .is_some_and(|r| r.is_match(row_of(i)))
        };
        let preferred = |i: usize| {
            allowed(i)
                && self
                    .row_prefer
                    .as_ref()
                    .is_some_and(|r| r.is_match(row_of(i)))
        };
        if self.row_prefer.is_some() {
            let spans = self.first_on_rows(self.find_where(lines, rows, preferred), rows);
            if !spans.is_empty() {
                return spans;
            }
        }
        if self.row.is_some() || self.row_reject.is_some() {
            let spans = self.first_on_rows(self.find_where(lines, rows, allowed), rows);
            if !spans.is_empty() {
                return spans;
            }
        }
        self.find_where(lines, rows, |_| true)
    }

    /// With `first_on_row`, only the spans of each row's first line that has any (`spans`
    /// come in reading order, as `find_where` gives them).
    fn first_on_rows(&self, spans: Vec<Span>, rows: &[RowOf]) -> Vec<Span> {
        if !self.first_on_row {
            return spans;
        }
        let mut first: HashMap<usize, usize> = HashMap::new();
        spans
            .into_iter()
            .filter(|s| {
                rows.get(s.lines.start).is_none_or(|r| {
                    *first.entry(r.number).or_insert(s.lines.start) == s.lines.start
                })
            })
            .collect()
    }

    /// The spans whose first line `starts_ok`, each once, first occurrence first.
    fn find_where(
        &self,
        lines: &[String],
        rows: &[RowOf],
        starts_ok: impl Fn(usize) -> bool,
    ) -> Vec<Span> {
        let starts = self.first_lines.unwrap_or(usize::MAX).min(lines.len());
        let mut out: Vec<Span> = Vec::new();
        let mut push = |text: &str, lines: Range<usize>| {
            if starts_ok(lines.start) && !out.iter().any(|s| s.text == text) {
                out.push(Span {
                    text: text.to_string(),
                    lines,
                });
            }
        };
        match self.unit {
            Unit::Words => {
                for (i, line) in lines.iter().enumerate().take(starts) {
                    for (a, b) in self.spans(line) {
                        push(&line[a..b], i..i + 1);
                    }
                }
            }
            Unit::Lines => {
                // With `whole_rows`, lines `a` and `b` are pieces of one row's text: on one
                // row, and each has the shape on its own.
                let pieces = |a: usize, b: usize| {
                    self.whole_rows
                        && rows
                            .get(a)
                            .zip(rows.get(b))
                            .is_some_and(|(x, y)| x.number == y.number)
                        && self.fits(lines[a].trim())
                        && self.fits(lines[b].trim())
                };
                // Not in the line after one that goes on (`not_after`), nor inside a row, and
                // only at a line that may be a first line (`first_line`).
                let may_start = |start: usize| {
                    let goes_on = start > 0
                        && (pieces(start - 1, start)
                            || self
                                .not_after
                                .as_ref()
                                .is_some_and(|r| r.is_match(lines[start - 1].trim_end())));
                    !goes_on
                        && self
                            .first_line
                            .as_ref()
                            .is_none_or(|r| r.is_match(&lines[start]))
                };
                for start in (0..starts).filter(|&s| may_start(s)) {
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
                        let block_ends = end == lines.len()
                            || end - start == self.max_len
                            || lines[end].trim().is_empty()
                            || self
                                .ends_before
                                .as_ref()
                                .is_none_or(|r| r.is_match(&lines[end]));
                        let inside_row = end < lines.len() && pieces(end - 1, end);
                        if block_ends && !inside_row {
                            for t in self.with_trims(&text) {
                                if self.fits(t) {
                                    push(t, start..end);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Byte ranges of `text` that have this shape: up to `max_words` consecutive words,
    /// starting at a word or at its first digit after a prefix ("RM9.00"), ending at a
    /// word's end with or without its trailing `.,:;`, or before a trailing part `trim_end`
    /// matches.
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
                        let Some(t) = text.get(s..e).filter(|t| !t.is_empty()) else {
                            continue;
                        };
                        for t in self.with_trims(t) {
                            let e = s + t.len();
                            if !out.contains(&(s, e)) && self.fits(t) {
                                out.push((s, e));
                            }
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
        let rows: Vec<&[&str]> = lines.iter().map(std::slice::from_ref).collect();
        find_in_rows(shape, &rows)
    }

    /// The spans of `shape` over regions read row by row (`rows[n]`: row n's texts).
    fn find_in_rows(shape: &AnswerShape, rows: &[&[&str]]) -> Vec<Span> {
        let (lines, rows) = lines_and_rows(rows);
        shape.find(&lines, &rows)
    }

    fn lines_and_rows(rows: &[&[&str]]) -> (Vec<String>, Vec<RowOf>) {
        let lines = rows.iter().flat_map(|r| r.iter().map(|t| t.to_string()));
        let of = rows.iter().enumerate().flat_map(|(number, r)| {
            r.iter().map(move |_| RowOf {
                number,
                text: r.join(" | "),
            })
        });
        (lines.collect(), of.collect())
    }

    fn texts(found: &[Span]) -> Vec<&str> {
        found.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn questions_pick_their_shape() {
        let shapes = embedded();
        let name = |q: &str| shape_for(&shapes, q, true).map(|s| s.name.as_str());
        assert_eq!(name("What is the date?"), Some("date"));
        assert_eq!(name("What is the total amount?"), Some("total"));
        assert_eq!(name("What is the total?"), Some("total"));
        assert_eq!(name("What is the total tax?"), Some("amount"));
        assert_eq!(name("What is the subtotal?"), Some("amount"));
        assert_eq!(name("What time was it paid?"), Some("time"));
        assert_eq!(name("What is the company name?"), Some("company"));
        assert_eq!(name("What is the name of the store?"), Some("company"));
        assert_eq!(name("What is the store's address?"), Some("address"));
        assert_eq!(name("What is the store's phone number?"), None);
        assert_eq!(name("Where is the dog?"), None);
        // On a photo, a company's name on a sign is wherever the sign is: the document
        // shapes (a name in the first lines) do not apply; the others do.
        let photo = |q: &str| shape_for(&shapes, q, false).map(|s| s.name.as_str());
        assert_eq!(photo("Which company's name is on the orange sign?"), None);
        assert_eq!(photo("What is the address?"), None);
        assert_eq!(
            photo("How much time is left on the game clock?"),
            Some("time")
        );
        assert_eq!(photo("What is the total?"), Some("total"));
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
            // Not the first line alone: the address goes on in the next.
            ["NO.5: 55,57 & 59, JALAN SAGU 18 TAMAN DAYA."]
        );
    }

    #[test]
    fn rejected_lines_are_neither_addresses_nor_names() {
        let shapes = embedded();
        let get = |n: &str| shapes.iter().find(|s| s.name == n).unwrap();
        let lines = [
            "TEL : 03-3271 9672 FAX:03-3271 9481",
            "Company Reg No. :SA03711S5t-P",
            "HOME MASTER HARDWARE",
            "",
            "05 Mar 2018 18:24",
            "",
            "NO.2&4, JALAN HARMONI 3/2",
        ];
        assert_eq!(
            texts(&find_in(get("address"), &lines)),
            ["NO.2&4, JALAN HARMONI 3/2"]
        );
        assert_eq!(
            texts(&find_in(get("company"), &lines)),
            ["HOME MASTER HARDWARE"]
        );
        // A name printed over two lines is one span: neither of its lines alone.
        assert_eq!(
            texts(&find_in(
                get("company"),
                &["HOME MASTER HARDWARE &", "ELECTRICAL", ""]
            )),
            ["HOME MASTER HARDWARE & ELECTRICAL"]
        );
        // An address starts at its first line, not after a line ending in a comma, and runs
        // to the end of its block (here the empty line).
        assert_eq!(
            texts(&find_in(
                get("address"),
                &["NO. 53, JALAN BESAR,", "45600 BATANG BERJUNTAI", ""]
            )),
            ["NO. 53, JALAN BESAR, 45600 BATANG BERJUNTAI"]
        );
        let err = parse_shapes(
            "[[shape]]\nname = \"x\"\nquestion = \"a\"\nanswer = \"b\"\nreject = \"(\"\n",
        )
        .unwrap_err();
        assert!(err.contains("shape `x`: bad `reject`"), "{err}");
    }

    #[test]
    fn first_lines_bounds_where_a_span_starts_and_hints_are_kept() {
        let shape = &parse_shapes(
            "[[shape]]\nname = \"n\"\nquestion = \"name\"\nanswer = '.*'\nunit = \"lines\"\n\
             max_lines = 2\nfirst_lines = 2\nhint = \" at the top \"\n",
        )
        .unwrap()[0];
        assert_eq!(shape.hint.as_deref(), Some("at the top"));
        let found = find_in(shape, &["A", "B", "C", "D"]);
        // Spans start in the first two lines and may run past them.
        assert_eq!(texts(&found), ["A", "A B", "B", "B C"]);
        assert!(parse_shapes(
            "[[shape]]\nname = \"n\"\nquestion = \"a\"\nanswer = \"b\"\nfirst_lines = 0\n"
        )
        .is_err());
        let shapes = embedded();
        let address = shapes.iter().find(|s| s.name == "address").unwrap();
        let found = find_in(
            address,
            &[
                "ACME HARDWARE",
                "NO. 5 JALAN SAGU",
                "TAMAN DAYA",
                "81100 JOHOR",
                "TEL 07-3523888",
                "9.00",
            ],
        );
        // Each span ends before the phone line, or is four lines long, and starts at a line
        // with a number (not at the name, nor at "TAMAN DAYA").
        assert_eq!(
            texts(&found),
            ["NO. 5 JALAN SAGU TAMAN DAYA 81100 JOHOR", "81100 JOHOR"]
        );
        let err = parse_shapes(
            "[[shape]]\nname = \"n\"\nquestion = \"a\"\nanswer = \"b\"\nnot_after = \",$\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("not_after applies to unit = \"lines\""),
            "{err}"
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
        let found = find_in(company, &["ACME SDN BHD", "HARDWARE STORE"]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().all(|s| s.lines.len() <= 2));
    }

    #[test]
    fn an_address_is_the_first_block_under_the_name() {
        let shapes = embedded();
        let address = shapes.iter().find(|s| s.name == "address").unwrap();
        // Receipt 008 of SROIE (its transcribed lines): the registration number under the
        // name has digits and two letters, not a word.
        let found = find_in(
            address,
            &[
                "PERNIAGAAN ZHENG HUI",
                "JM0325955-V",
                "NO.59 JALAN PERMAS 9/5",
                "BANDAR BARU PERMAS JAYA",
                "81760 JOHOR BAHRU",
                "TEL : 07-386 7524 FAX : 07-386 3793",
            ],
        );
        assert_eq!(
            found[0].text,
            "NO.59 JALAN PERMAS 9/5 BANDAR BARU PERMAS JAYA 81760 JOHOR BAHRU"
        );
        assert_eq!(found[0].lines, 2..5);
    }

    #[test]
    fn a_total_is_taken_from_a_total_row_rounded_if_there_is_one() {
        let shapes = embedded();
        let total = shapes.iter().find(|s| s.name == "total").unwrap();
        // Receipt 002 of SROIE, as the OCR agent reads its rows (label | value): the cash paid
        // is on the rounded total's row, its label "CASH" on a row of its own.
        let rows: [&[&str]; 6] = [
            &["SUB-TOTAL (EX)", "31.98"],
            &["TOTAL", "RM 33.92"],
            &["ROUNDING ADJUSTMENT", "-RM 0.02"],
            &["TOTAL ROUNDED", "33.90", "RM 50.00"],
            &["CASH"],
            &["CHANGE", "RM 16.10"],
        ];
        assert_eq!(texts(&find_in_rows(total, &rows)), ["33.90"]);
        // Without a rounded total, every total row's first amount (but no subtotal or
        // payment).
        let (lines, of) = lines_and_rows(&rows);
        let unrounded: Vec<RowOf> = of
            .iter()
            .map(|r| RowOf {
                number: r.number,
                text: r.text.replace("TOTAL ROUNDED", "TOTAL PAID"),
            })
            .collect();
        assert_eq!(
            texts(&total.find(&lines, &unrounded)),
            ["RM 33.92", "33.92", "33.90"]
        );
        // Rules about rows give way when no row is labelled: every amount is an answer.
        let bare: Vec<RowOf> = (0..lines.len())
            .map(|number| RowOf {
                number,
                text: String::new(),
            })
            .collect();
        assert_eq!(total.find(&lines, &bare).len(), 9);
    }

    #[test]
    fn trailing_registration_numbers_and_glued_times_are_cut_off() {
        let shapes = embedded();
        let get = |n: &str| shapes.iter().find(|s| s.name == n).unwrap();
        // Receipt 031: the name and its registration number are one region.
        let found = find_in(
            get("company"),
            &[
                "AEON CO. （M） BHD （126926-H）",
                "3RD FLR, AEON TAMAN MALURI SC",
            ],
        );
        assert_eq!(texts(&found)[0], "AEON CO. （M） BHD");
        assert_eq!(found[0].lines, 0..1);
        // Receipt 037: the time is read glued to the date's year.
        assert_eq!(
            spans_of(get("date"), "Date: 10/03/20185:41:06"),
            vec!["10/03/2018"]
        );
        // Receipt 019: a slash read as a colon.
        assert_eq!(
            spans_of(get("date"), "18/03:18 15:17 06051 02"),
            vec!["18/03:18"]
        );
        let bad = "[[shape]]\nname = \"x\"\nquestion = \"a\"\nanswer = \"b\"\ntrim_end = \"(\"\n";
        let err = parse_shapes(bad).unwrap_err();
        assert!(err.contains("trim_end"), "{err}");
    }

    #[test]
    fn a_name_read_in_pieces_on_one_row_is_one_name() {
        let shapes = embedded();
        let company = shapes.iter().find(|s| s.name == "company").unwrap();
        // Receipt 010: "CO" is a region of its own on the name's row.
        let rows: [&[&str]; 3] = [
            &["SAM SAM TRADING", "CO"],
            &["(742016-W)"],
            &["67JLN MEUAH 25/63 TMN SRI HUBA"],
        ];
        let spans = find_in_rows(company, &rows);
        // Nor is the street line under it one ("JLN" glued to the number).
        assert_eq!(texts(&spans), ["SAM SAM TRADING CO"]);
        // A number on the name's row is not a piece of it (receipt 009).
        let rows: [&[&str]; 2] = [
            &["Gerbang Alaf Restaurants Sdn Bhd", "0598"],
            &["(65351-M）"],
        ];
        assert_eq!(
            texts(&find_in_rows(company, &rows)),
            ["Gerbang Alaf Restaurants Sdn Bhd"]
        );
        // A logo's letter is no part of a name, an estate line no name (receipt 028).
        let rows: [&[&str]; 3] = [
            &["A"],
            &["99 SPEED MART S/B", "519537-X）"],
            &["TAMAN BERKELEY"],
        ];
        assert_eq!(texts(&find_in_rows(company, &rows)), ["99 SPEED MART S/B"]);
        let lines_only =
            "[[shape]]\nname = \"x\"\nquestion = \"a\"\nanswer = \"b\"\nwhole_rows = true\n";
        let err = parse_shapes(lines_only).unwrap_err();
        assert!(err.contains("whole_rows"), "{err}");
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

    #[test]
    fn copies_are_searched_unless_a_shape_ranks_them_otherwise() {
        let shape = |rank: &str| {
            parse_shapes(&format!(
                "[[shape]]\nname = \"x\"\nquestion = \"a\"\nanswer = \"b\"\n{rank}"
            ))
        };
        assert_eq!(shape("").unwrap()[0].rank, Rank::Search);
        assert_eq!(shape("rank = \"whole\"\n").unwrap()[0].rank, Rank::Whole);
        assert_eq!(shape("rank = \"start\"\n").unwrap()[0].rank, Rank::Start);
        assert_eq!(shape("rank = \"first\"\n").unwrap()[0].rank, Rank::First);
        let err = shape("rank = \"last\"\n").unwrap_err();
        assert!(err.contains("rank"), "{err}");
        let shapes = embedded();
        let rank_of = |name: &str| shapes.iter().find(|s| s.name == name).map(|s| s.rank);
        assert_eq!(rank_of("address"), Some(Rank::First));
        assert_eq!(rank_of("company"), Some(Rank::Search));
        assert_eq!(rank_of("total"), Some(Rank::Whole));
    }
}
