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
        restore_spaces: bool,
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
            let decoded = self.run_batch(crops, &widths, batch, batch_w, restore_spaces)?;
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
        restore_spaces: bool,
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
                    ctc_greedy(probs, steps, classes, used, &self.keys, restore_spaces)
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
/// (`JALANSAGU18`) although the gap is plainly visible in its alignment.
pub fn ctc_greedy(
    probs: &[f32],
    steps: usize,
    classes: usize,
    used: usize,
    keys: &[String],
    restore_spaces: bool,
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
    let split_after = if restore_spaces {
        space_gaps(&chars, probs, classes, keys)
    } else {
        vec![false; chars.len()]
    };
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
