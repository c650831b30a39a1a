//! Grounded answers: an answer that quotes the image is taken from the regions it cites.
//!
//! A small controller misreads digits it has to repeat ("9.00" comes out "9.80"). So when an
//! answer cites regions, p2g looks for the span of the cited regions' text (whole words) that
//! matches the answer best and, if it is close enough, answers with that span, copied from the
//! image. The answer then carries each cited region as structured data and as Kosmos-2-style
//! inline links, `[phrase](x1,y1,x2,y2)`.

use serde::{Deserialize, Serialize};

use crate::controller::Citation;
use crate::orchestrator::evidence::{Evidence, Region};
use crate::vision::BBox;

/// A region an answer relies on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grounding {
    /// The part of the answer the region supports (the region's text if the answer does not
    /// quote it).
    pub phrase: String,
    pub bbox: BBox,
    pub region: String,
}

/// The answer after grounding.
#[derive(Debug, Clone, PartialEq)]
pub struct Grounded {
    pub text: String,
    pub grounding: Vec<Grounding>,
    /// Whether the text was replaced by a span copied from the cited regions.
    pub copied: bool,
    /// Cited ids that name no region (dropped).
    pub unknown: Vec<String>,
    /// The controller cited nothing and p2g found the region the text was quoted from.
    pub located: bool,
}

/// Minimum similarity for p2g to attribute an answer that cites nothing to a region.
pub const LOCATE_MIN_SIMILARITY: f32 = 0.8;

/// Minimum similarity (1 - edit distance / longer length, case-insensitive) for a span to
/// replace the controller's text.
pub const COPY_MIN_SIMILARITY: f32 = 0.5;

/// Grounds `text` in the cited regions of `evidence`. A `quoted` text (the controller copied
/// it whole from a span of those regions) is kept as it is wherever it occurs in them, even
/// inside a word: the date "10/03/2018" of the OCR's "10/03/20185:41:06".
pub fn ground(text: &str, citations: &[Citation], evidence: &Evidence, quoted: bool) -> Grounded {
    let (drawn, cited): (Vec<Citation>, Vec<Citation>) = citations
        .iter()
        .map(|c| snapped(c, evidence))
        .partition(|c| c.bbox.is_some());
    let mut g = ground_regions(text, &cited, evidence, quoted);
    // Boxes the controller drew where no region was found: its own claim, kept as drawn.
    for c in drawn {
        if let Some(bbox) = c.bbox {
            g.grounding.push(Grounding {
                phrase: c.phrase.unwrap_or_else(|| g.text.clone()),
                bbox,
                region: c.region,
            });
        }
    }
    g
}

/// Overlap (IoU) over which a box the controller drew is taken as the region it covers.
pub const SNAP_MIN_IOU: f32 = 0.5;

/// A drawn box that covers an evidence region cites that region (its text can then be copied);
/// a citation of a known region drops any box.
fn snapped(c: &Citation, evidence: &Evidence) -> Citation {
    let Some(b) = c.bbox else {
        return c.clone();
    };
    if evidence.get(&c.region).is_some() {
        return Citation {
            bbox: None,
            ..c.clone()
        };
    }
    let best = evidence
        .regions()
        .iter()
        .map(|r| (r, r.bbox.iou(&b)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((r, iou)) if iou >= SNAP_MIN_IOU => Citation {
            region: r.id.clone(),
            phrase: c.phrase.clone(),
            bbox: None,
        },
        _ => c.clone(),
    }
}

fn ground_regions(
    text: &str,
    citations: &[Citation],
    evidence: &Evidence,
    quoted: bool,
) -> Grounded {
    let mut unknown = Vec::new();
    let mut cited = Vec::new();
    for c in citations {
        match evidence.get(&c.region) {
            Some(r) if !cited.iter().any(|x: &&Region| x.id == r.id) => cited.push(r),
            Some(_) => {}
            None => unknown.push(c.region.clone()),
        }
    }
    if cited.is_empty() {
        // An answer citing nothing may still quote the evidence: attribute it to the region
        // it matches best, if the match is close (an explanation matches nothing).
        if let Some(r) = locate(text, evidence) {
            return located(text, r, evidence, quoted, unknown);
        }
        return Grounded {
            text: text.to_string(),
            grounding: Vec::new(),
            copied: false,
            unknown,
            located: false,
        };
    }
    // The cited texts joined, remembering which bytes belong to which region.
    let mut joined = String::new();
    let mut owners: Vec<(usize, usize, usize)> = Vec::new();
    for (i, r) in cited.iter().enumerate() {
        if !joined.is_empty() {
            joined.push(' ');
        }
        let start = joined.len();
        joined.push_str(&r.text);
        owners.push((start, joined.len(), i));
    }
    let best = exact_quote(text, &joined, quoted).or_else(|| best_span(text, &joined));
    match best {
        Some((s, e, sim)) if sim >= COPY_MIN_SIMILARITY && !text.trim().is_empty() => {
            let span = joined[s..e].to_string();
            let grounding = owners
                .iter()
                .filter(|(a, b, _)| *a < e && s < *b)
                .map(|&(a, b, i)| Grounding {
                    phrase: joined[a.max(s)..b.min(e)].trim().to_string(),
                    bbox: cited[i].bbox,
                    region: cited[i].id.clone(),
                })
                .collect();
            Grounded {
                text: span,
                grounding,
                copied: true,
                unknown,
                located: false,
            }
        }
        _ => {
            // The cited regions do not hold the answer but another one does (a model that
            // read "9.00" in the evidence and cited the header): that one grounds it.
            if let Some(r) = locate(text, evidence).filter(|r| !cited.iter().any(|c| c.id == r.id))
            {
                return located(text, r, evidence, quoted, unknown);
            }
            Grounded {
                text: text.to_string(),
                grounding: cited
                    .iter()
                    .map(|r| Grounding {
                        phrase: r.text.clone(),
                        bbox: r.bbox,
                        region: r.id.clone(),
                    })
                    .collect(),
                copied: false,
                unknown,
                located: false,
            }
        }
    }
}

/// `text` grounded in the region it was found in.
fn located(
    text: &str,
    r: &Region,
    evidence: &Evidence,
    quoted: bool,
    unknown: Vec<String>,
) -> Grounded {
    let cite = [Citation {
        region: r.id.clone(),
        phrase: None,
        bbox: None,
    }];
    let mut g = ground_regions(text, &cite, evidence, quoted);
    g.located = true;
    g.unknown = unknown;
    g
}

/// The region whose text holds `text` most closely, if close enough to be where it was read.
fn locate<'e>(text: &str, evidence: &'e Evidence) -> Option<&'e Region> {
    evidence
        .regions()
        .iter()
        .filter_map(|r| best_span(text, &r.text).map(|(_, _, sim)| (r, sim)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, sim)| *sim >= LOCATE_MIN_SIMILARITY)
        .map(|(r, _)| r)
}

/// The answer with Kosmos-2-style links: each grounded phrase written `[phrase](x1,y1,x2,y2)`.
pub fn linked_text(text: &str, grounding: &[Grounding]) -> String {
    let link = |g: &Grounding| {
        let b = g.bbox.rounded();
        format!(
            "[{}]({},{},{},{})",
            g.phrase, b.x1 as i64, b.y1 as i64, b.x2 as i64, b.y2 as i64
        )
    };
    let mut out = text.to_string();
    let mut unplaced = Vec::new();
    for g in grounding {
        // Link the phrase where the answer contains it; otherwise list the region after.
        match (!g.phrase.is_empty())
            .then(|| out.find(&g.phrase))
            .flatten()
        {
            Some(at) if !out[..at].ends_with('[') => {
                out.replace_range(at..at + g.phrase.len(), &link(g));
            }
            _ => unplaced.push(link(g)),
        }
    }
    if !unplaced.is_empty() {
        out.push_str(" (");
        out.push_str(&unplaced.join(", "));
        out.push(')');
    }
    out
}

/// Word boundaries of `s` (byte offsets where words start and end). `:` splits words too,
/// so "DATE:25/12/2018" yields the date alone.
fn words(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        let sep = c.is_whitespace() || c == ':';
        match (sep, start) {
            (true, Some(st)) => {
                out.push((st, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        out.push((st, s.len()));
    }
    out
}

/// Where `needle` (trimmed) occurs in `hay` exactly and ends where a word ends (before a space,
/// the end, or trailing `.,:;` and then one of those): (start, end, 1.0). A `quoted` needle
/// (copied whole from a span of `hay`) may also end inside a word: its first occurrence.
///
/// Why: an answer copied from part of a word is already grounded and must stay as copied —
/// the amount "8.20" out of the OCR's "S8.20" (a misread "$8.20"), the date out of
/// "Date:25/12/2018". Widening it to whole words would undo the copy. An answer that stops
/// inside a word ("9.0" of "9.00") is not a quote of it, unless `quoted`, and goes to
/// [`best_span`].
fn exact_quote(needle: &str, hay: &str, quoted: bool) -> Option<(usize, usize, f32)> {
    let n = needle.trim();
    if n.is_empty() {
        return None;
    }
    let ends_word = |&s: &usize| {
        let rest = hay[s + n.len()..].trim_start_matches(['.', ',', ':', ';']);
        rest.is_empty() || rest.starts_with(char::is_whitespace)
    };
    let mut at = hay.match_indices(n).map(|(s, _)| s);
    let s = at
        .clone()
        .find(ends_word)
        .or_else(|| at.next().filter(|_| quoted))?;
    Some((s, s + n.len(), 1.0))
}

/// The span of whole words of `hay` most similar to `needle`: (start, end, similarity).
pub fn best_span(needle: &str, hay: &str) -> Option<(usize, usize, f32)> {
    let n: Vec<char> = needle.trim().to_lowercase().chars().collect();
    if n.is_empty() {
        return None;
    }
    let w = words(hay);
    let mut best: Option<(usize, usize, f32)> = None;
    for i in 0..w.len() {
        for j in i..w.len() {
            let (s, e) = (w[i].0, w[j].1);
            let span: Vec<char> = hay[s..e].to_lowercase().chars().collect();
            // Spans much longer than the answer cannot win; stop growing.
            if span.len() > 2 * n.len() + 8 {
                break;
            }
            let d = levenshtein(&n, &span);
            let sim = 1.0 - d as f32 / n.len().max(span.len()) as f32;
            if best.is_none_or(|b| sim > b.2) {
                best = Some((s, e, sim));
            }
        }
    }
    best
}

pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{Finding, FindingKind};

    fn evidence() -> Evidence {
        let mut e = Evidence::default();
        for (t, y) in [
            ("SYARIKAT PERNIAGAAN GIN KEE", 10.0),
            ("DATE:25/12/2018 8:13:39 PM", 50.0),
            ("TOTAL : 9.00", 90.0),
        ] {
            e.add(
                "ocr",
                &Finding {
                    bbox: BBox::new(5.0, y, 300.0, y + 20.0),
                    text: t.into(),
                    kind: FindingKind::Text,
                    score: 0.9,
                    quad: None,
                },
            );
        }
        e
    }

    fn cite(ids: &[&str]) -> Vec<Citation> {
        ids.iter()
            .map(|r| Citation {
                region: r.to_string(),
                phrase: None,
                bbox: None,
            })
            .collect()
    }

    #[test]
    fn an_answer_citing_regions_that_do_not_hold_it_is_grounded_where_it_was_read() {
        let e = evidence();
        let g = ground("9.00", &cite(&["r1"]), &e, false);
        assert_eq!(g.text, "9.00");
        assert!(g.located);
        assert_eq!(g.grounding.len(), 1);
        assert_eq!(g.grounding[0].region, "r3");
        // Text found nowhere keeps the regions it cites.
        let g = ground("a blue mug", &cite(&["r1"]), &e, false);
        assert!(!g.located);
        assert_eq!(g.grounding[0].region, "r1");
    }

    #[test]
    fn drawn_boxes_snap_to_regions_or_stay_as_drawn() {
        let e = evidence();
        let r3 = e.get("r3").unwrap().bbox;
        let on_r3 = Citation {
            region: "box1".into(),
            phrase: Some("total".into()),
            bbox: Some(BBox::new(r3.x1 + 2.0, r3.y1, r3.x2, r3.y2 + 1.0)),
        };
        let g = ground("9.80", &[on_r3], &e, false);
        assert_eq!(
            g.text, "9.00",
            "a box on r3 cites r3, so its text is copied"
        );
        assert_eq!(g.grounding[0].region, "r3");
        let elsewhere = Citation {
            region: "box1".into(),
            phrase: Some("a cup".into()),
            bbox: Some(BBox::new(400.0, 400.0, 480.0, 470.0)),
        };
        let g = ground("a cup", &[elsewhere], &e, false);
        assert_eq!(g.text, "a cup");
        assert!(g.unknown.is_empty());
        assert_eq!(g.grounding.len(), 1);
        assert_eq!(g.grounding[0].region, "box1");
        assert_eq!(g.grounding[0].bbox, BBox::new(400.0, 400.0, 480.0, 470.0));
    }

    #[test]
    fn misread_digits_are_copied_from_the_cited_region() {
        let e = evidence();
        let g = ground("9.80", &cite(&["r3"]), &e, false);
        assert_eq!(g.text, "9.00");
        assert!(g.copied);
        assert_eq!(g.grounding[0].region, "r3");
        assert_eq!(g.grounding[0].phrase, "9.00");
        let g = ground("25/12/2019", &cite(&["r2"]), &e, false);
        assert_eq!(g.text, "25/12/2018");
        assert_eq!(
            linked_text(&g.text, &g.grounding),
            "[25/12/2018](5,50,300,70)"
        );
    }

    #[test]
    fn exact_quotes_stay_as_copied() {
        let mut e = Evidence::default();
        e.add(
            "ocr",
            &Finding {
                bbox: BBox::new(5.0, 10.0, 300.0, 30.0),
                text: "Total Amount: S8.20".into(),
                kind: FindingKind::Text,
                score: 0.9,
                quad: None,
            },
        );
        // The amount out of the misread "$8.20" stays the amount, not the whole word.
        let g = ground("8.20", &cite(&["r1"]), &e, false);
        assert_eq!(g.text, "8.20");
        assert_eq!(g.grounding[0].phrase, "8.20");
        // A quote that stops inside a word is widened to it, as before.
        let g = ground("9.0", &cite(&["r3"]), &evidence(), false);
        assert_eq!(g.text, "9.00");
        let g = ground("25/12/2018", &cite(&["r2"]), &evidence(), false);
        assert_eq!(g.text, "25/12/2018");
    }

    #[test]
    fn a_shaped_copy_inside_a_word_stays_as_copied() {
        let mut e = Evidence::default();
        e.add(
            "ocr",
            &Finding {
                bbox: BBox::new(5.0, 10.0, 300.0, 30.0),
                text: "Date: 10/03/20185:41:06".into(),
                kind: FindingKind::Text,
                score: 0.9,
                quad: None,
            },
        );
        // Receipt 037 of SROIE: the time glued to the year. Copied whole from a date span,
        // the date is kept; a free answer stopping there would be widened to the word.
        let g = ground("10/03/2018", &cite(&["r1"]), &e, true);
        assert_eq!(g.text, "10/03/2018");
        assert!(g.copied);
        assert_eq!(g.grounding[0].phrase, "10/03/2018");
        let g = ground("10/03/2018", &cite(&["r1"]), &e, false);
        assert_eq!(g.text, "10/03/20185");
    }

    #[test]
    fn answers_that_do_not_quote_keep_their_text() {
        let e = evidence();
        let g = ground("It cannot be told from the text", &cite(&["r1"]), &e, false);
        assert!(!g.copied);
        assert_eq!(g.text, "It cannot be told from the text");
        assert_eq!(g.grounding[0].phrase, "SYARIKAT PERNIAGAAN GIN KEE");
        let g = ground("9.00", &cite(&["r9"]), &e, false);
        assert_eq!(g.unknown, vec!["r9".to_string()]);
        // Cited nothing that exists, but the text is quoted from r3: p2g finds it.
        assert!(g.located);
        assert_eq!(g.grounding[0].region, "r3");
        let g = ground("It is blue", &[], &e, false);
        assert!(g.grounding.is_empty() && !g.located);
    }
}
