//! PP-PicoDet's decoding, as RapidLayout's `PPPostProcess` does it: Generalized Focal Loss
//! boxes from each level's cells, a per-level cut to the best cells, then hard NMS class by
//! class.
//!
//! For every cell of each level (strides 8, 16, 32, 64 over the input; cell `i` is row
//! `i / cols`, column `i % cols`) the model gives one score per class, already a sigmoid, and
//! for each side of the box (left, top, right, bottom, in that order) logits over `bins`
//! distances. A side is the softmax's expected bin times the stride, measured from the cell's
//! centre `((col + 0.5) * stride, (row + 0.5) * stride)`. No threshold is applied before the
//! per-level cut (the `pre_nms` cells with the best score of any class); then each class on its
//! own keeps the cells scoring above the threshold, its `top_k` best, and hard NMS (IoU with
//! an epsilon and no +1, as the reference) picks at most `keep_per_class`. Boxes are clipped
//! to the input only after NMS, as the reference does.

use crate::agents::detect::nanodet::expected;
use crate::vision::BBox;

/// One level's raw outputs: `cells x classes` scores and `cells x 4 bins` side logits.
#[derive(Debug, Clone)]
pub struct Level {
    pub stride: u32,
    /// Cells per row of the level's grid (`ceil(input width / stride)`).
    pub cols: usize,
    pub scores: Vec<f32>,
    pub dist: Vec<f32>,
}

/// The thresholds and counts of the post-processing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostOptions {
    /// A class's box is a candidate when its score is above this.
    pub score_threshold: f32,
    /// Within a class, a box overlapping a better one by more IoU than this is dropped.
    pub nms_iou: f32,
    /// Cells kept per level, by their best score of any class, before anything else.
    pub pre_nms: usize,
    /// Candidates per class going into NMS (the best).
    pub top_k: usize,
    /// Boxes per class coming out of NMS.
    pub keep_per_class: usize,
}

/// A region in input pixels, clipped to the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawRegion {
    pub class: usize,
    pub score: f32,
    pub bbox: BBox,
}

/// All regions of one pass over a `width x height` input: class ascending, best first within
/// a class (the reference's order).
pub fn decode(
    levels: &[Level],
    classes: usize,
    bins: usize,
    (width, height): (u32, u32),
    o: &PostOptions,
) -> Vec<RawRegion> {
    if classes == 0 || bins == 0 {
        return Vec::new();
    }
    // Every kept cell: its box (unclipped) and its row of class scores.
    let mut cells: Vec<(BBox, &[f32])> = Vec::new();
    for l in levels {
        let n = l.scores.len() / classes;
        if l.cols == 0 || l.dist.len() != n * 4 * bins || l.scores.len() != n * classes {
            continue;
        }
        let row = |i: usize| &l.scores[i * classes..(i + 1) * classes];
        let best = |i: usize| row(i).iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut order: Vec<(usize, f32)> = (0..n).map(|i| (i, best(i))).collect();
        // Stable: equal scores keep the cells in grid order.
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        order.truncate(o.pre_nms);
        let s = l.stride as f32;
        for (i, _) in order {
            let cx = ((i % l.cols) as f32 + 0.5) * s;
            let cy = ((i / l.cols) as f32 + 0.5) * s;
            let d = &l.dist[i * 4 * bins..(i + 1) * 4 * bins];
            let side = |k: usize| expected(&d[k * bins..(k + 1) * bins]) * s;
            let bbox = BBox::new(cx - side(0), cy - side(1), cx + side(2), cy + side(3));
            // A NaN logit (a broken model) is no box.
            if <[f32; 4]>::from(bbox).iter().all(|v| v.is_finite()) {
                cells.push((bbox, row(i)));
            }
        }
    }
    let mut out = Vec::new();
    for c in 0..classes {
        let mut cand: Vec<(BBox, f32)> = cells
            .iter()
            .filter(|(_, s)| s[c] > o.score_threshold)
            .map(|(b, s)| (*b, s[c]))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        cand.truncate(o.top_k);
        for (b, score) in hard_nms(cand, o.nms_iou, o.keep_per_class) {
            out.push(RawRegion {
                class: c,
                score,
                bbox: b.clamp(width as f32, height as f32),
            });
        }
    }
    out
}

/// Greedy NMS over boxes sorted best first: the best is kept, every box overlapping it by IoU
/// above `iou` is dropped, repeat; at most `keep` boxes.
pub fn hard_nms(sorted: Vec<(BBox, f32)>, iou: f32, keep: usize) -> Vec<(BBox, f32)> {
    let mut rest = sorted;
    let mut kept = Vec::new();
    while !rest.is_empty() && kept.len() < keep {
        let best = rest.remove(0);
        rest.retain(|(b, _)| iou_eps(&best.0, b) <= iou);
        kept.push(best);
    }
    kept
}

/// The reference's IoU: `inter / (area0 + area1 - inter + 1e-5)`, sides clipped at 0.
pub fn iou_eps(a: &BBox, b: &BBox) -> f32 {
    let inter = a.intersection(b);
    inter / (a.area() + b.area() - inter + 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: PostOptions = PostOptions {
        score_threshold: 0.5,
        nms_iou: 0.5,
        pre_nms: 1000,
        top_k: 200,
        keep_per_class: 100,
    };

    /// Logits that put all the weight on bin `k` of `bins`.
    fn certain(k: usize, bins: usize) -> Vec<f32> {
        (0..bins)
            .map(|j| if j == k { 30.0 } else { -30.0 })
            .collect()
    }

    /// A 3-wide, 2-high level of stride 8 (input 24x16), 2 classes, 4 bins.
    fn level() -> Level {
        let (cells, classes, bins) = (6, 2, 4);
        let mut scores = vec![0.1; cells * classes];
        let mut dist = vec![0.0; cells * 4 * bins];
        // Cell 4 (column 1, row 1; centre (12, 12)): class 1 at 0.9, sides l 1, t 1, r 2, b
        // 50/50 between bins 0 and 2 (expected 1) -> [4, 4, 28, 20] before clipping.
        scores[4 * classes + 1] = 0.9;
        let mut d = certain(1, bins);
        d.extend(certain(1, bins));
        d.extend(certain(2, bins));
        d.extend([0.0, -1e9, 0.0, -1e9]);
        dist[4 * 4 * bins..5 * 4 * bins].copy_from_slice(&d);
        // Cell 5 (column 2, row 1; centre (20, 12)): both classes; class 1 at 0.8 on nearly
        // the same box as cell 4 (suppressed), class 0 at 0.7 (kept: NMS is per class).
        scores[5 * classes] = 0.7;
        scores[5 * classes + 1] = 0.8;
        let mut d = certain(2, bins);
        d.extend(certain(1, bins));
        d.extend(certain(1, bins));
        d.extend(certain(1, bins));
        dist[5 * 4 * bins..6 * 4 * bins].copy_from_slice(&d);
        Level {
            stride: 8,
            cols: 3,
            scores,
            dist,
        }
    }

    fn close(a: BBox, b: [f32; 4]) -> bool {
        let a: [f32; 4] = a.into();
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
    }

    #[test]
    fn boxes_are_the_expected_distances_from_the_cell_centre() {
        let got = decode(&[level()], 2, 4, (24, 16), &OPTS);
        // Class 0 first, then class 1; clipped to the 24x16 input after NMS.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].class, got[0].score), (0, 0.7));
        assert!(close(got[0].bbox, [4.0, 4.0, 24.0, 16.0]), "{:?}", got[0]);
        assert_eq!((got[1].class, got[1].score), (1, 0.9));
        assert!(close(got[1].bbox, [4.0, 4.0, 24.0, 16.0]), "{:?}", got[1]);
    }

    #[test]
    fn nms_runs_on_the_unclipped_boxes() {
        // Cell 0 (centre (4, 4)): [-20, 4, 12, 12], 0.9; cell 1 (centre (12, 4)): [4, 4, 12,
        // 12], 0.8. Unclipped their IoU is 64 / 256 = 0.25: both stay. (Clipped first, cell 0
        // would be [0, 4, 12, 12] and IoU 0.67 would drop cell 1.)
        let (classes, bins) = (1, 4);
        let mut scores = vec![0.0; 6];
        scores[0] = 0.9;
        scores[1] = 0.8;
        let mut dist = vec![0.0; 6 * 4 * bins];
        let sides = |l: usize, t: usize, r: usize, b: usize| {
            [l, t, r, b]
                .iter()
                .flat_map(|&k| certain(k, bins))
                .collect::<Vec<f32>>()
        };
        dist[..16].copy_from_slice(&sides(3, 0, 1, 1));
        dist[16..32].copy_from_slice(&sides(1, 0, 0, 1));
        let l = Level {
            stride: 8,
            cols: 3,
            scores,
            dist,
        };
        let got = decode(&[l], classes, bins, (24, 16), &OPTS);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(close(got[0].bbox, [0.0, 4.0, 12.0, 12.0]), "{:?}", got[0]);
        assert!(close(got[1].bbox, [4.0, 4.0, 12.0, 12.0]), "{:?}", got[1]);
    }

    #[test]
    fn nms_is_per_class() {
        // Class 1: cell 4's box is [4, 4, 28, 20], cell 5's [4, 4, 28, 20] too: IoU 1, the
        // 0.8 one goes. With NMS off (IoU 1.0 never exceeded) both stay.
        let all = decode(
            &[level()],
            2,
            4,
            (24, 16),
            &PostOptions {
                nms_iou: 1.0,
                ..OPTS
            },
        );
        let class1: Vec<f32> = all
            .iter()
            .filter(|r| r.class == 1)
            .map(|r| r.score)
            .collect();
        assert_eq!(class1, vec![0.9, 0.8]);
    }

    #[test]
    fn the_threshold_is_strict_and_the_cuts_apply() {
        let strict = PostOptions {
            score_threshold: 0.7,
            ..OPTS
        };
        let got = decode(&[level()], 2, 4, (24, 16), &strict);
        assert!(got.iter().all(|r| r.score > 0.7), "{got:?}");
        // Only the best cell of the level survives pre_nms 1: class 1 at 0.9 alone.
        let one = PostOptions { pre_nms: 1, ..OPTS };
        let got = decode(&[level()], 2, 4, (24, 16), &one);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].class, got[0].score), (1, 0.9));
        // keep_per_class 0: nothing.
        let none = PostOptions {
            keep_per_class: 0,
            ..OPTS
        };
        assert!(decode(&[level()], 2, 4, (24, 16), &none).is_empty());
        // A level whose outputs do not fit its sizes is skipped, not indexed out of bounds.
        let mut bad = level();
        bad.dist.pop();
        assert!(decode(&[bad], 2, 4, (24, 16), &OPTS).is_empty());
    }

    #[test]
    fn iou_has_the_reference_epsilon_and_no_plus_one() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        assert!((iou_eps(&a, &b) - 50.0 / (150.0 + 1e-5)).abs() < 1e-7);
        assert_eq!(iou_eps(&a, &BBox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        let kept = hard_nms(
            vec![(a, 0.9), (b, 0.8), (BBox::new(1.0, 0.0, 11.0, 10.0), 0.7)],
            0.5,
            100,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.1).collect();
        // b overlaps a by 1/3 (kept); the third overlaps a by 9/11 (dropped).
        assert_eq!(scores, vec![0.9, 0.8]);
        assert_eq!(expected(&[f32::NEG_INFINITY; 3]), 0.0);
        assert!((expected(&[0.0; 3]) - 1.0).abs() < 1e-6);
    }
}
