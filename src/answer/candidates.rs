//! Answer candidates: every span of the evidence an answer may be copied from.
//!
//! Why enumerate them: a small controller asked "which shop's name is on the sign?" writes
//! whatever it likes — another region's coordinates, a word of its system prompt — unless
//! the answer is held to the evidence. The candidates are the evidence's own words: runs of
//! words inside one region, whole regions, and regions that continue each other — along a
//! row ("SAM SAM TRADING" | "CO") or down a column (a sign's "OFFICE" over "FOR RENT"). The
//! controller's likelihood then chooses among them ([`super::rank`]), against saying that
//! the evidence does not hold the answer.

use crate::controller::RegionText;
use crate::vision::BBox;

/// A span of the evidence an answer may be.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The text, as the regions read it (words joined with one space).
    pub text: String,
    /// The regions it is copied from, in order.
    pub regions: Vec<String>,
    /// How surely those regions were read: the sum of the log of each one's confidence
    /// (the probability that every read is right), the best over the places the text occurs.
    pub read: f64,
}

/// The log of a reading confidence, floored: a confidence of 0 (an agent that gives none
/// useful) must lower a span, not rule it out.
fn read_logprob(score: f32) -> f64 {
    f64::from(score).clamp(0.05, 1.0).ln()
}

/// How long candidates may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Words in a span taken from inside a region (a whole region is always a candidate).
    pub max_words: usize,
    /// Regions joined along a row or down a column.
    pub max_regions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_words: 6,
            max_regions: 3,
        }
    }
}

/// Whether a span can be an answer at all: it has a digit or two letters (a lone letter is
/// an OCR fragment — the "S" of a clock's face — far more often than an answer), and it is
/// not a box or a region id ([`super::looks_like_box_or_id`]).
fn answerable(text: &str) -> bool {
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    (letters >= 2 || text.chars().any(|c| c.is_numeric())) && !super::looks_like_box_or_id(text)
}

/// What a question asks for, as far as the form of the answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// "What word / name / brand / company / title…": an answer has letters.
    Words,
    /// "What number / how many / how much / what time…": an answer has digits.
    Number,
    Anything,
}

impl Asked {
    /// Read from the question's own words (English).
    pub fn of(question: &str) -> Self {
        let q = question.to_lowercase();
        let words: Vec<&str> = q.split(|c: char| !c.is_alphanumeric()).collect();
        let has = |w: &[&str]| words.iter().any(|x| w.contains(x));
        if has(&[
            "number", "numbers", "many", "much", "time", "price", "cost", "year", "date",
        ]) {
            Asked::Number
        } else if has(&[
            "word", "words", "name", "names", "brand", "company", "title", "called", "spell",
            "spelled", "letters",
        ]) {
            Asked::Words
        } else {
            Asked::Anything
        }
    }

    /// Whether a span has the form asked for.
    pub fn fits(&self, text: &str) -> bool {
        match self {
            Asked::Words => text.chars().filter(|c| c.is_alphabetic()).count() >= 2,
            Asked::Number => text.chars().any(|c| c.is_numeric()),
            Asked::Anything => true,
        }
    }
}

/// The candidates of `regions` (in reading order, as the evidence holds them), each text
/// once, in reading order of its first occurrence; only [`answerable`] ones.
pub fn candidates(regions: &[RegionText], limits: &Limits) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |text: String, ids: &[&RegionText]| {
        if !answerable(&text) {
            return;
        }
        let read: f64 = ids.iter().map(|r| read_logprob(r.score)).sum();
        match out.iter_mut().find(|c| c.text == text) {
            // The same words read again (a zoomed re-read): that they are there at all is
            // as sure as the surest read; the first place stays the one cited.
            Some(c) => c.read = c.read.max(read),
            None => out.push(Candidate {
                text,
                regions: ids.iter().map(|r| r.id.clone()).collect(),
                read,
            }),
        }
    };
    for (i, r) in regions.iter().enumerate() {
        for span in spans_within(&r.text, limits.max_words) {
            push(span, &[r]);
        }
        for run in [
            row_run(regions, i, limits.max_regions),
            column_run(regions, i, limits.max_regions),
        ] {
            for n in 2..=run.len() {
                let texts: Vec<&str> = run[..n].iter().map(|r| r.text.as_str()).collect();
                for span in spans_across(&texts, limits.max_words) {
                    push(span, &run[..n]);
                }
            }
        }
    }
    out
}

/// Runs of up to `max_words` words of `text`, and the whole text, each also without the
/// punctuation around it ("Ave." and "Ave").
fn spans_within(text: &str, max_words: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for a in 0..words.len() {
        for b in a + 1..=words.len() {
            if b - a > max_words && !(a == 0 && b == words.len()) {
                continue;
            }
            with_trimmed(words[a..b].join(" "), &mut out);
        }
    }
    out
}

/// Spans of the joined `texts` that start in the first and end in the last (the spans
/// inside one text come from [`spans_within`]): the first's last words, the middle texts
/// whole, the last's first words, up to `max_words` words (at least the two ends' words).
fn spans_across(texts: &[&str], max_words: usize) -> Vec<String> {
    let (Some(first), Some(last)) = (texts.first(), texts.last()) else {
        return Vec::new();
    };
    let head: Vec<&str> = first.split_whitespace().collect();
    let tail: Vec<&str> = last.split_whitespace().collect();
    let middle: Vec<&str> = texts[1..texts.len() - 1]
        .iter()
        .flat_map(|t| t.split_whitespace())
        .collect();
    let mut out = Vec::new();
    for a in 0..head.len() {
        for b in 1..=tail.len() {
            let n = head.len() - a + middle.len() + b;
            let whole = a == 0 && b == tail.len();
            if n > max_words.max(2) && !whole {
                continue;
            }
            let words: Vec<&str> = head[a..]
                .iter()
                .chain(&middle)
                .chain(&tail[..b])
                .copied()
                .collect();
            with_trimmed(words.join(" "), &mut out);
        }
    }
    out
}

/// Pushes `span` and, when different, `span` without the punctuation around it.
fn with_trimmed(span: String, out: &mut Vec<String>) {
    let trimmed = span
        .trim_start_matches(['(', '[', '"', '\'', '“', '‘'])
        .trim_end_matches(['.', ',', ':', ';', '!', ')', ']', '"', '\'', '”', '’'])
        .trim();
    if !trimmed.is_empty() && trimmed != span {
        out.push(trimmed.to_string());
    }
    out.push(span);
}

/// Region `i` and the regions right after it on its row (at most `max` in all).
fn row_run(regions: &[RegionText], i: usize, max: usize) -> Vec<&RegionText> {
    regions[i..]
        .iter()
        .take(max)
        .take_while(|r| r.row == regions[i].row)
        .collect()
}

/// Region `i` and the regions stacked right under it (at most `max` in all): a sign's lines.
fn column_run(regions: &[RegionText], i: usize, max: usize) -> Vec<&RegionText> {
    let mut run = vec![&regions[i]];
    while run.len() < max {
        let Some(above) = run.last().map(|r| r.bbox) else {
            break;
        };
        let below = regions
            .iter()
            .filter(|r| !run.iter().any(|x| x.id == r.id) && stacked_under(&above, &r.bbox))
            .min_by(|a, b| a.bbox.y1.total_cmp(&b.bbox.y1));
        match below {
            Some(r) => run.push(r),
            None => break,
        }
    }
    if run.len() < 2 {
        run.truncate(1);
    }
    run
}

/// Whether `b` is the next line under `a` in one column: mostly overlapping horizontally,
/// starting below `a`'s middle, within one line height, and of a similar text size.
fn stacked_under(a: &BBox, b: &BBox) -> bool {
    let overlap = a.x2.min(b.x2) - a.x1.max(b.x1);
    let narrower = a.width().min(b.width());
    let (ha, hb) = (a.height(), b.height());
    narrower > 0.0
        && overlap >= 0.5 * narrower
        && b.y1 >= a.y1 + 0.5 * ha
        && b.y1 - a.y2 <= 0.8 * ha.max(hb)
        && ha.max(hb) <= 2.0 * ha.min(hb).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str, text: &str, row: usize, b: [f32; 4]) -> RegionText {
        RegionText {
            id: id.into(),
            text: text.into(),
            row,
            bbox: BBox::from(b),
            score: 0.9,
        }
    }

    fn texts(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn words_of_a_region_and_the_region_whole() {
        let r = [region("r1", "Hollis Ave.", 0, [0.0, 0.0, 100.0, 20.0])];
        let c = candidates(&r, &Limits::default());
        assert_eq!(
            texts(&c),
            ["Hollis", "Hollis Ave", "Hollis Ave.", "Ave", "Ave."]
        );
        assert!(c.iter().all(|c| c.regions == ["r1"]));
    }

    #[test]
    fn lines_stacked_in_a_column_and_regions_of_a_row_join() {
        let r = [
            region("r1", "OFFICE", 0, [1936.0, 837.0, 1989.0, 855.0]),
            region("r2", "FOR RENT", 1, [1925.0, 853.0, 2001.0, 875.0]),
            region("r3", "(408) 391-9081", 2, [1925.0, 872.0, 2000.0, 893.0]),
            region("r4", "SAM SAM TRADING", 3, [10.0, 1000.0, 300.0, 1030.0]),
            region("r5", "CO", 3, [310.0, 1000.0, 350.0, 1030.0]),
        ];
        let c = candidates(&r, &Limits::default());
        let t = texts(&c);
        assert!(t.contains(&"OFFICE FOR RENT"), "{t:?}");
        assert!(t.contains(&"RENT"), "{t:?}");
        assert!(t.contains(&"SAM SAM TRADING CO"), "{t:?}");
        assert!(t.contains(&"TRADING CO"), "{t:?}");
        let office = c.iter().find(|c| c.text == "OFFICE FOR RENT").unwrap();
        assert_eq!(office.regions, ["r1", "r2"]);
        // Not stacked: a line far below, or of another size.
        assert!(!t.contains(&"391-9081 SAM"), "{t:?}");
    }

    #[test]
    fn a_span_carries_how_surely_its_regions_were_read() {
        let mut shaky = region("r1", "XXX QV", 0, [0.0, 0.0, 50.0, 16.0]);
        shaky.score = 0.56;
        let clean = region("r2", "HARBOUR", 1, [0.0, 20.0, 95.0, 50.0]);
        let mut again = region("r3", "QV", 2, [0.0, 200.0, 20.0, 216.0]);
        again.score = 0.95;
        let c = candidates(&[shaky, clean, again], &Limits::default());
        let read = |t: &str| c.iter().find(|c| c.text == t).unwrap().read;
        assert!((read("XXX QV") - 0.56f64.ln()).abs() < 1e-6);
        assert!((read("HARBOUR") - 0.9f64.ln()).abs() < 1e-6);
        // A column span is as sure as both its reads together.
        assert!((read("XXX QV HARBOUR") - (0.56f64.ln() + 0.9f64.ln())).abs() < 1e-6);
        // Read again more surely elsewhere: as sure as the surer read, cited where first read.
        let qv = c.iter().find(|c| c.text == "QV").unwrap();
        assert!((qv.read - 0.95f64.ln()).abs() < 1e-6);
        assert_eq!(qv.regions, ["r1"]);
    }

    #[test]
    fn a_question_asking_for_a_word_wants_letters() {
        assert_eq!(
            Asked::of("What word is printed on the clock?"),
            Asked::Words
        );
        assert_eq!(Asked::of("Which title is shown on the book?"), Asked::Words);
        assert_eq!(
            Asked::of("Tell me the number of that player."),
            Asked::Number
        );
        assert_eq!(Asked::of("How much time is left?"), Asked::Number);
        assert_eq!(Asked::of("What does the sign offer?"), Asked::Anything);
        assert!(!Asked::Words.fits("9") && Asked::Words.fits("MERIDIAN"));
        assert!(Asked::Number.fits("4:51") && !Asked::Number.fits("WELCOME"));
    }

    #[test]
    fn boxes_region_ids_and_lone_letters_are_never_candidates() {
        let r = [
            region("r1", "1070,1359,1144,1381", 0, [0.0, 0.0, 10.0, 10.0]),
            region("r2", "r7", 1, [0.0, 50.0, 10.0, 60.0]),
            region("r3", "---", 2, [0.0, 100.0, 10.0, 110.0]),
            region("r4", "S", 3, [0.0, 150.0, 10.0, 160.0]),
        ];
        assert!(candidates(&r, &Limits::default()).is_empty());
        let r = [region("r1", "8", 0, [0.0, 0.0, 10.0, 10.0])];
        assert_eq!(texts(&candidates(&r, &Limits::default())), ["8"]);
    }
}
