//! Text recognition: PP-OCRv5's CRNN/SVTR recogniser with CTC greedy decoding.
//!
//! Lines are resized to height 48 keeping their aspect ratio and batched with lines of similar
//! width, so little compute goes to padding; a batch is also capped by its output size
//! (`lines x time steps x 18385 classes` floats), which dominates both memory and time.

use image::RgbImage;

use crate::agents::AgentError;
use crate::models::runtime::OnnxModel;
use crate::vision::crop::{resize_normalize_into, Normalize, Planes, Rect};

const HEIGHT: usize = 48;
/// PaddleOCR pads every line to at least 320 (the training shape 3x48x320); measured on
/// sroie-dev, padding short lines only to this width reads them as well, for less compute.
const MIN_WIDTH: usize = 32;
/// Very long lines are squeezed to this width rather than allocating huge tensors.
const MAX_WIDTH: usize = 3200;
/// Width of the input per CTC time step.
const STEP: usize = 8;
/// Cap on `lines x time steps` per batch. Small batches are faster here, not just leaner: the
/// output (`steps x 18385` floats) dominates, and on receipt 000 recognition took 980 ms at
/// 400 steps, 780 ms at 200 and 720-740 ms at 60-150 (2 threads). 128 steps is 9.4 MB.
const MAX_STEPS_PER_BATCH: usize = 128;
/// A batch stops growing when a line is this much wider than its first (less padding).
const MAX_WIDTH_GROWTH: f32 = 1.25;

/// How CTC output becomes text, beyond the best class per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoding {
    /// Put back spaces between words from gaps in the alignment ([`ctc_greedy`]).
    pub restore_spaces: bool,
    /// Read a zero among letters as the letter O and an O among digits as a zero, where the
    /// recogniser gave the other reading some probability ([`fix_confusions`]).
    pub fix_confusions: bool,
}

/// One recognised line: text, mean character confidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognised {
    pub text: String,
    pub confidence: f32,
}

pub struct Recognizer {
    model: OnnxModel,
    keys: Vec<String>,
}

fn inference_err(reason: impl ToString) -> AgentError {
    AgentError::Inference {
        agent: "ocr (recognition)".into(),
        reason: reason.to_string(),
    }
}

impl Recognizer {
    /// `keys[i]` is the character of output class `i`; class 0 is the CTC blank.
    pub fn new(model: OnnxModel, keys: Vec<String>) -> Self {
        Self { model, keys }
    }

    pub fn recognise(
        &self,
        crops: &[RgbImage],
        decoding: Decoding,
    ) -> Result<Vec<Recognised>, AgentError> {
        let _span = tracing::debug_span!("ocr.recognise", lines = crops.len()).entered();
        let widths: Vec<usize> = crops
            .iter()
            .map(|c| {
                let ratio = c.width() as f32 / c.height().max(1) as f32;
                ((HEIGHT as f32 * ratio).ceil() as usize).clamp(1, MAX_WIDTH)
            })
            .collect();
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by_key(|&i| widths[i]);
        let mut results = vec![
            Recognised {
                text: String::new(),
                confidence: 0.0
            };
            crops.len()
        ];
        let mut start = 0;
        while start < order.len() {
            // Grow the batch while the padded width's step budget allows (sorted ascending, so
            // the last line sets the batch width).
            let mut end = start + 1;
            let first = widths[order[start]].max(MIN_WIDTH);
            while end < order.len() {
                let w = widths[order[end]].max(MIN_WIDTH);
                if (end + 1 - start) * w.div_ceil(STEP) > MAX_STEPS_PER_BATCH
                    || w as f32 > MAX_WIDTH_GROWTH * first as f32
                {
                    break;
                }
                end += 1;
            }
            let batch = &order[start..end];
            let batch_w = widths[*batch.last().unwrap_or(&order[start])].max(MIN_WIDTH);
            let decoded = self.run_batch(crops, &widths, batch, batch_w, decoding)?;
            for (&i, r) in batch.iter().zip(decoded) {
                results[i] = r;
            }
            start = end;
        }
        Ok(results)
    }

    fn run_batch(
        &self,
        crops: &[RgbImage],
        widths: &[usize],
        batch: &[usize],
        batch_w: usize,
        decoding: Decoding,
    ) -> Result<Vec<Recognised>, AgentError> {
        let plane = HEIGHT * batch_w;
        let mut input = vec![0f32; batch.len() * 3 * plane];
        for (slot, &i) in batch.iter().enumerate() {
            resize_normalize_into(
                &crops[i],
                Rect::full(&crops[i]),
                widths[i].min(batch_w),
                HEIGHT,
                &Normalize::HALF_BGR,
                &mut Planes {
                    data: &mut input[slot * 3 * plane..(slot + 1) * 3 * plane],
                    height: HEIGHT,
                    stride: batch_w,
                },
            );
        }
        let shape = [batch.len(), 3, HEIGHT, batch_w];
        self.model.run(&shape, &input, inference_err, |shape, data| {
            let classes = self.keys.len();
            if shape.len() != 3 || shape[0] as usize != batch.len() || shape[2] as usize != classes {
                return Err(inference_err(format!(
                    "recogniser output has shape {shape:?}, expected [{}, T, {classes}] (one class per line of the keys file)",
                    batch.len(),
                )));
            }
            let steps = shape[1] as usize;
            Ok((0..batch.len())
                .map(|b| {
                    // Only the steps covering the line itself, not its padding.
                    let used = (widths[batch[b]].min(batch_w).div_ceil(STEP) + 1).min(steps);
                    let probs = &data[b * steps * classes..(b + 1) * steps * classes];
                    ctc_greedy(probs, steps, classes, used, &self.keys, decoding)
                })
                .collect())
        })
    }
}

/// Greedy CTC decoding over the first `used` steps: best class per step, repeats collapsed,
/// blanks dropped; confidence is the mean probability of the emitted characters.
///
/// With `restore_spaces`, a space is inserted between two characters whose time steps are
/// unusually far apart for this line. PP-OCRv5 often emits no space between Latin words
/// (`JALANSAGU18`) although the gap is plainly visible in its alignment. With
/// `fix_confusions`, see [`fix_confusions`].
pub fn ctc_greedy(
    probs: &[f32],
    steps: usize,
    classes: usize,
    used: usize,
    keys: &[String],
    decoding: Decoding,
) -> Recognised {
    let mut chars: Vec<(usize, usize, f32)> = Vec::new(); // (class, first step, prob)
    let mut prev = 0usize;
    for t in 0..used.min(steps) {
        let row = &probs[t * classes..(t + 1) * classes];
        let (best, p) =
            row.iter().enumerate().fold(
                (0usize, f32::MIN),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        if best != 0 && best != prev {
            chars.push((best, t, p));
        }
        prev = best;
    }
    if chars.is_empty() {
        return Recognised {
            text: String::new(),
            confidence: 0.0,
        };
    }
    let confidence = chars.iter().map(|c| c.2).sum::<f32>() / chars.len() as f32;
    let is_space = |c: usize| keys.get(c).is_some_and(|k| k == " ");
    let split_after = if decoding.restore_spaces {
        space_gaps(&chars, probs, classes, keys)
    } else {
        vec![false; chars.len()]
    };
    if decoding.fix_confusions {
        fix_confusions(&mut chars, &split_after, probs, classes, keys);
        fix_ampersands(&mut chars, &split_after, probs, classes, keys);
    }
    let mut text = String::new();
    for (i, &(c, _, _)) in chars.iter().enumerate() {
        text.push_str(keys.get(c).map(String::as_str).unwrap_or(""));
        if split_after[i] && !is_space(c) && !chars.get(i + 1).is_some_and(|n| is_space(n.0)) {
            text.push(' ');
        }
    }
    Recognised {
        text: text.trim().to_string(),
        confidence,
    }
}

/// The other reading of a confusable character must have at least this probability in the
/// step it was emitted at. On sroie-dev the zeros read inside words ("CH0PPING", "JOH0R",
/// "INV0ICE") give the letter O 0.01-0.4; a zero that is a zero leaves it far lower.
const CONFUSION_MIN_PROB: f32 = 1e-3;

/// Zero and the letter O look alike in receipt fonts, and PP-OCRv5 reads one for the other:
/// "CH0PPING B0ARD", "JOH0R", "456OO". Within one word (a run of letters and digits, ended
/// by anything else or by a restored space), a zero becomes O when every other character
/// of the word is a letter, at least two of them, and the zero touches one of them; an O
/// becomes a zero when every other character is a digit, at least two of them, and the O
/// (or the run of Os it is in) touches one. Product codes mix letters and digits freely ("EZ10HD05", "WD00" — whose last
/// zero touches no letter), so a word with any other digit, or any other letter, is left
/// alone. The swap also needs the recogniser's own support: the other reading's probability
/// at that step is at least [`CONFUSION_MIN_PROB`]. A case follows its neighbours ("r0ot" →
/// "root").
pub fn fix_confusions(
    chars: &mut [(usize, usize, f32)],
    split_after: &[bool],
    probs: &[f32],
    classes: usize,
    keys: &[String],
) {
    let class_of = |s: &str| keys.iter().position(|k| k == s);
    let (Some(zero), Some(upper_o), lower_o) = (class_of("0"), class_of("O"), class_of("o")) else {
        return;
    };
    let key = |c: usize| key_text(keys, c);
    let is_letter = |c: usize| is_ascii_letter(keys, c);
    let is_digit = |c: usize| {
        let k = key(c);
        k.len() == 1 && k.as_bytes()[0].is_ascii_digit()
    };
    let is_o = |c: usize| c == upper_o || Some(c) == lower_o;
    let mut start = 0;
    while start < chars.len() {
        let mut end = start;
        while end < chars.len() && (is_letter(chars[end].0) || is_digit(chars[end].0)) {
            end += 1;
            if split_after[end - 1] {
                break;
            }
        }
        if end == start {
            start += 1;
            continue;
        }
        let word: Vec<usize> = chars[start..end].iter().map(|c| c.0).collect();
        let touches = |i: usize, f: &dyn Fn(usize) -> bool| {
            (i > 0 && f(word[i - 1])) || word.get(i + 1).is_some_and(|&n| f(n))
        };
        let zeros: Vec<usize> = (0..word.len()).filter(|&i| word[i] == zero).collect();
        let letters = word.iter().filter(|&&c| is_letter(c)).count();
        let digits = word.iter().filter(|&&c| is_digit(c)).count();
        let os: Vec<usize> = (0..word.len()).filter(|&i| is_o(word[i])).collect();
        let swaps: Vec<(usize, usize)> = if !zeros.is_empty()
            && digits == zeros.len()
            && letters >= 2
            && zeros.iter().all(|&i| touches(i, &|c| is_letter(c)))
        {
            zeros
                .iter()
                .map(|&i| {
                    let lower = lower_o.filter(|_| {
                        let next = word.get(i + 1).copied().filter(|&c| is_letter(c));
                        let prev = i.checked_sub(1).map(|p| word[p]).filter(|&c| is_letter(c));
                        next.or(prev)
                            .is_some_and(|c| key(c).chars().all(|ch| ch.is_ascii_lowercase()))
                    });
                    (i, lower.unwrap_or(upper_o))
                })
                .collect()
        } else if !os.is_empty()
            && letters == os.len()
            && digits >= 2
            && os.iter().all(|&i| {
                // A run of Os ("456OO") counts as touching when either end does.
                let (mut a, mut b) = (i, i);
                while a > 0 && is_o(word[a - 1]) {
                    a -= 1;
                }
                while b + 1 < word.len() && is_o(word[b + 1]) {
                    b += 1;
                }
                touches(a, &|c| is_digit(c)) || touches(b, &|c| is_digit(c))
            })
        {
            os.iter().map(|&i| (i, zero)).collect()
        } else {
            Vec::new()
        };
        // O and o are one shape to the recogniser: either lends support.
        let support = |t: usize, to: usize| {
            let twins = if to == zero {
                vec![zero]
            } else {
                std::iter::once(upper_o).chain(lower_o).collect()
            };
            twins
                .iter()
                .filter_map(|&c| probs.get(t * classes + c))
                .sum::<f32>()
        };
        let supported = swaps
            .iter()
            .all(|&(i, to)| support(chars[start + i].1, to) >= CONFUSION_MIN_PROB);
        if supported {
            for (i, to) in swaps {
                tracing::trace!(from = key(word[i]), to = key(to), "ocr confusion fixed");
                chars[start + i].0 = to;
            }
        }
        start = end;
    }
}

/// The text of class `c`, or "" for a class the keys do not name.
fn key_text(keys: &[String], c: usize) -> &str {
    keys.get(c).map(String::as_str).unwrap_or("")
}

/// Whether class `c` is a single ASCII letter.
fn is_ascii_letter(keys: &[String], c: usize) -> bool {
    let mut it = key_text(keys, c).chars();
    matches!((it.next(), it.next()), (Some(ch), None) if ch.is_ascii_alphabetic())
}

/// The ampersand's probability a lone letter needs to be read as "&". PP-OCRv5 reads a
/// printed "&" as "G" or "B" ("TEO HENG STATIONERY G BOOKS"); on sroie-dev those steps give
/// "&" 0.07-0.28, while every lone letter that really is a letter ("A", "S", "X" in
/// "BLK A", "SDN BHD S", sizes) gives it at most 0.0012.
const AMPERSAND_MIN_PROB: f32 = 0.01;

/// A lone letter between two words becomes "&" when the recogniser gives "&" at least
/// [`AMPERSAND_MIN_PROB`] at that step. "Lone" means a space (emitted or restored) on each
/// side; a letter at the start or end of a line is left alone, since "&" rarely starts or
/// ends one and initials ("JOHN A") often do.
pub fn fix_ampersands(
    chars: &mut [(usize, usize, f32)],
    split_after: &[bool],
    probs: &[f32],
    classes: usize,
    keys: &[String],
) {
    let Some(amp) = keys.iter().position(|k| k == "&") else {
        return;
    };
    let is_space = |c: usize| key_text(keys, c) == " ";
    // A word on each side, not just a space at the line's edge.
    let (Some(first), Some(last)) = (
        chars.iter().position(|c| !is_space(c.0)),
        chars.iter().rposition(|c| !is_space(c.0)),
    ) else {
        return;
    };
    for i in first + 1..last {
        let (c, t, _) = chars[i];
        if !is_ascii_letter(keys, c) {
            continue;
        }
        let break_before = split_after[i - 1] || is_space(chars[i - 1].0);
        let break_after = split_after[i] || is_space(chars[i + 1].0);
        if break_before && break_after {
            let p = probs.get(t * classes + amp).copied().unwrap_or(0.0);
            if p >= AMPERSAND_MIN_PROB {
                tracing::trace!(from = key_text(keys, c), p, "ocr ampersand fixed");
                chars[i].0 = amp;
            }
        }
    }
}

/// A word break the recogniser saw but did not emit: between two characters, the space class
/// reaches this probability in some time step. Inside words it stays near 0.001; at real word
/// breaks PP-OCRv5 often gives it 0.1-0.4 and still emits nothing. Both thresholds were chosen
/// on sroie-dev receipts 000-011 (word F1 0.633 without restoration, 0.785 at 0.25/0.08, 0.814
/// at 0.06/0.02, 0.797 at 0.02/0.005).
const SPACE_PROB_STRONG: f32 = 0.06;
/// A weaker space probability counts when the gap is also wider than the line's median.
const SPACE_PROB_WEAK: f32 = 0.02;

/// Marks characters after which a space should be inserted, from the CTC alignment: the
/// probability of the space class in the steps between two emitted characters, and how far
/// apart they are compared with the line's median character pitch.
fn space_gaps(
    chars: &[(usize, usize, f32)],
    probs: &[f32],
    classes: usize,
    keys: &[String],
) -> Vec<bool> {
    let mut out = vec![false; chars.len()];
    let Some(space) = keys.iter().rposition(|k| k == " ") else {
        return out;
    };
    if chars.len() < 2 {
        return out;
    }
    let mut gaps: Vec<usize> = chars.windows(2).map(|w| w[1].1 - w[0].1).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    for (i, w) in chars.windows(2).enumerate() {
        let (a, b) = (w[0].1, w[1].1);
        let p = (a + 1..b)
            .map(|t| probs[t * classes + space])
            .fold(0f32, f32::max);
        if p >= SPACE_PROB_STRONG || (p >= SPACE_PROB_WEAK && b - a > median) {
            out[i] = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "_0123456789OoABCDGHIJNPRTWZrt &";

    fn keys() -> Vec<String> {
        KEYS.chars().map(String::from).collect()
    }

    /// CTC output reading `text`: each character at 0.9 in its own step, then a blank step;
    /// where `alt` names a position, its confusable twin (0 ↔ O) gets probability `alt.1`.
    fn probs_for(text: &str, alt: Option<(usize, f32)>) -> (Vec<f32>, usize) {
        let keys = keys();
        let classes = keys.len();
        let class = |c: char| keys.iter().position(|k| k.starts_with(c)).unwrap();
        let steps = text.chars().count() * 2;
        let mut probs = vec![0.0; steps * classes];
        for (i, c) in text.chars().enumerate() {
            probs[2 * i * classes + class(c)] = 0.9;
            probs[(2 * i + 1) * classes] = 0.9;
            if let Some((_, p)) = alt.filter(|a| a.0 == i) {
                let twin = if c == '0' { 'O' } else { '0' };
                probs[2 * i * classes + class(twin)] = p;
            }
        }
        (probs, steps)
    }

    /// Greedy decoding with confusion fixes on and no space restoration.
    fn decode(probs: &[f32], steps: usize) -> String {
        let decoding = Decoding {
            restore_spaces: false,
            fix_confusions: true,
        };
        ctc_greedy(probs, steps, keys().len(), steps, &keys(), decoding).text
    }

    fn read(text: &str, alt: Option<(usize, f32)>) -> String {
        let (probs, steps) = probs_for(text, alt);
        decode(&probs, steps)
    }

    #[test]
    fn a_zero_among_letters_is_the_letter_o_when_the_recogniser_allows_it() {
        assert_eq!(read("CH0PPING", Some((2, 0.05))), "CHOPPING");
        // Without the recogniser's support the reading stands.
        assert_eq!(read("CH0PPING", None), "CH0PPING");
        assert_eq!(read("r0ot", Some((1, 0.05))), "root");
    }

    #[test]
    fn an_o_among_digits_is_a_zero_and_codes_are_left_alone() {
        assert_eq!(read("456OO", Some((3, 0.05))), "456OO");
        let (mut probs, steps) = probs_for("456OO", Some((3, 0.05)));
        let zero = keys().iter().position(|k| k == "0").unwrap();
        probs[2 * 4 * keys().len() + zero] = 0.05;
        assert_eq!(decode(&probs, steps), "45600");
        // Letters and digits mixed freely are a code: "WD00"'s last zero touches no letter,
        // "PN10D" has another digit, "A0" has one letter only.
        assert_eq!(read("WD00", Some((2, 0.3))), "WD00");
        assert_eq!(read("PN10D", Some((3, 0.3))), "PN10D");
        assert_eq!(read("A0", Some((1, 0.3))), "A0");
        // Words end at anything that is not a letter or a digit.
        assert_eq!(read("20 OZ", Some((3, 0.3))), "20 OZ");
    }

    #[test]
    fn a_lone_letter_between_words_is_an_ampersand_when_the_recogniser_allows_it() {
        let keys = keys();
        let amp = keys.iter().position(|k| k == "&").unwrap();
        let read_amp = |text: &str, at: usize, p: f32| {
            let (mut probs, steps) = probs_for(text, None);
            probs[2 * at * keys.len() + amp] = p;
            decode(&probs, steps)
        };
        assert_eq!(read_amp("TIN G BOOT", 4, 0.2), "TIN & BOOT");
        // A letter that is a letter leaves "&" near zero.
        assert_eq!(read_amp("TIN G BOOT", 4, 0.001), "TIN G BOOT");
        // Not lone: part of a word.
        assert_eq!(read_amp("TING BOOT", 3, 0.2), "TING BOOT");
        // At a line's edge: initials, not an ampersand.
        assert_eq!(read_amp("JOHN A", 5, 0.2), "JOHN A");
        assert_eq!(read_amp("A BOOT", 0, 0.2), "A BOOT");
    }
}
