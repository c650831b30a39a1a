//! From Grounding DINO's raw outputs to boxes with phrases: thresholds, phrase assignment,
//! per-phrase NMS.
//!
//! Each query has one logit per text token (sigmoid → how well the box matches that token)
//! and a normalised `(cx, cy, w, h)` box. As in the reference `predict()`, a query is kept when
//! its best token score passes the box threshold. Rather than the reference's "decode every
//! token above the text threshold" (which glues words of different phrases into a made-up
//! phrase), a box goes to the one phrase whose tokens score highest, and only if that score
//! passes the text threshold.

use serde::{Deserialize, Serialize};

use crate::vision::BBox;

/// One object found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The phrase, as cleaned (lower-case).
    pub phrase: String,
    /// The best score (sigmoid) of the phrase's tokens for this box, 0..1.
    pub score: f32,
    /// In original-image pixels.
    pub bbox: BBox,
}

/// Decoding thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub box_threshold: f32,
    pub text_threshold: f32,
}

/// The outputs of one pass: `logits` is `queries x stride` (stride ≥ tokens; positions past
/// the caption are padding), `boxes` is `queries x 4`.
pub struct RawOutputs<'a> {
    pub logits: &'a [f32],
    pub boxes: &'a [f32],
    pub queries: usize,
    pub stride: usize,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Detections of one pass. `tokens` is the caption's length, `spans` the token range of each
/// phrase in `phrases`; `place` maps a normalised `(cx, cy, w, h)` box to image pixels.
pub fn decode(
    raw: &RawOutputs<'_>,
    tokens: usize,
    spans: &[(usize, usize)],
    phrases: &[String],
    t: Thresholds,
    place: impl Fn([f32; 4]) -> BBox,
) -> Vec<Detection> {
    let valid = tokens.min(raw.stride);
    let mut out = Vec::new();
    for q in 0..raw.queries {
        let row = &raw.logits[q * raw.stride..q * raw.stride + valid];
        let score = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let score = sigmoid(score);
        // A NaN logit (a broken export) is no detection.
        if score.is_nan() || score <= t.box_threshold {
            continue;
        }
        let best = spans
            .iter()
            .enumerate()
            .filter(|(_, &(s, e))| e <= valid && s < e)
            .map(|(i, &(s, e))| {
                let m = row[s..e].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                (i, sigmoid(m))
            })
            // Ties go to the earlier phrase.
            .fold(None::<(usize, f32)>, |acc, (i, s)| match acc {
                Some((_, b)) if b >= s => acc,
                _ => Some((i, s)),
            });
        let Some((phrase, phrase_score)) = best else {
            continue;
        };
        if phrase_score.is_nan() || phrase_score <= t.text_threshold {
            continue;
        }
        let b = &raw.boxes[q * 4..q * 4 + 4];
        if b.iter().any(|v| !v.is_finite()) || b[2] <= 0.0 || b[3] <= 0.0 {
            continue;
        }
        let bbox = place([b[0], b[1], b[2], b[3]]);
        if bbox.width() <= 0.0 || bbox.height() <= 0.0 {
            continue;
        }
        // The score reported (and ranked by NMS) is the phrase's own: the box's best token
        // may belong to another phrase or to a delimiter.
        out.push(Detection {
            phrase: phrases[phrase].clone(),
            score: phrase_score,
            bbox,
        });
    }
    out
}

/// Maps a normalised `(cx, cy, w, h)` box of a view `[x, y, width, height]` (in image pixels)
/// to image pixels, clipped to the view.
pub fn place_in(view: [f32; 4], b: [f32; 4]) -> BBox {
    let [x, y, w, h] = view;
    let (cx, cy, bw, bh) = (b[0] * w, b[1] * h, b[2] * w, b[3] * h);
    BBox::new(
        x + (cx - bw / 2.0).clamp(0.0, w),
        y + (cy - bh / 2.0).clamp(0.0, h),
        x + (cx + bw / 2.0).clamp(0.0, w),
        y + (cy + bh / 2.0).clamp(0.0, h),
    )
}

/// Per-phrase non-maximum suppression: within a phrase, a box overlapping a higher-scoring one
/// by IoU above `iou` is dropped. Equal scores keep the earlier box. The result is sorted by
/// score, best first.
pub fn nms(mut dets: Vec<Detection>, iou: f32) -> Vec<Detection> {
    // A stable sort keeps earlier passes (the whole image) ahead of tiles on ties.
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len());
    for d in dets {
        let dup = kept
            .iter()
            .any(|k| k.phrase == d.phrase && k.bbox.iou(&d.bbox) > iou);
        if !dup {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn boxes_go_to_the_best_phrase_over_thresholds() {
        let phrases = vec!["black mug".to_string(), "red sign".to_string()];
        // [CLS] black mug . red sign . [SEP], padded to 10.
        let spans = [(1, 3), (4, 6)];
        let stride = 10;
        let mut logits = vec![-20.0f32; 3 * stride];
        // Query 0: "mug" 0.9, "sign" 0.5 -> black mug.
        logits[2] = logit(0.9);
        logits[5] = logit(0.5);
        // Query 1: best token 0.3 < box threshold -> dropped.
        logits[stride + 4] = logit(0.3);
        // Query 2: only the "." token scores (0.6): box kept, but no phrase passes the text
        // threshold -> dropped.
        logits[2 * stride + 3] = logit(0.6);
        // Padding would score 1.0 if it were read.
        logits[2 * stride + 9] = 30.0;
        let boxes = [0.5, 0.5, 0.2, 0.4, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5];
        let raw = RawOutputs {
            logits: &logits,
            boxes: &boxes,
            queries: 3,
            stride,
        };
        let t = Thresholds {
            box_threshold: 0.35,
            text_threshold: 0.25,
        };
        let dets = decode(&raw, 8, &spans, &phrases, t, |b| {
            place_in([100.0, 0.0, 1000.0, 500.0], b)
        });
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].phrase, "black mug");
        assert!((dets[0].score - 0.9).abs() < 1e-6);
        // Query 0 again, but a delimiter scores 0.95: the box is "black mug" at 0.9 still.
        let mut logits2 = logits.clone();
        logits2[3] = logit(0.95);
        let raw2 = RawOutputs {
            logits: &logits2,
            boxes: &boxes,
            queries: 3,
            stride,
        };
        let dets2 = decode(&raw2, 8, &spans, &phrases, t, |b| {
            place_in([100.0, 0.0, 1000.0, 500.0], b)
        });
        assert_eq!(dets2[0].phrase, "black mug");
        assert!((dets2[0].score - 0.9).abs() < 1e-6);
        assert_eq!(dets[0].bbox, BBox::new(500.0, 150.0, 700.0, 350.0));
    }

    #[test]
    fn nms_is_per_phrase() {
        let d = |p: &str, s: f32, x: f32| Detection {
            phrase: p.into(),
            score: s,
            bbox: BBox::new(x, 0.0, x + 10.0, 10.0),
        };
        let kept = nms(
            vec![
                d("a", 0.5, 0.0),
                d("a", 0.9, 1.0),
                d("b", 0.4, 0.0),
                d("a", 0.6, 50.0),
            ],
            0.5,
        );
        let got: Vec<(&str, f32)> = kept.iter().map(|k| (k.phrase.as_str(), k.score)).collect();
        assert_eq!(got, vec![("a", 0.9), ("a", 0.6), ("b", 0.4)]);
    }
}
