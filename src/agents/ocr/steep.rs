//! Steep lines: a word running down (or up) the image, such as a team's name down a flag.
//!
//! DB, trained mostly on horizontal text, often cuts such a word where two letters sit
//! apart: read magnified 2.35-3.25x, an eight-letter word down a flag came out in two pieces
//! split after its fifth, sixth or seventh letter depending on the scale, while each reading
//! of the whole word was right. A piece that continues a steep line along its own axis is
//! joined to it before the line is cut out and read.

use crate::vision::geometry::{min_area_rect, Quad};

/// A line joins others only when it is this many times as long as thick: a word of a few
/// letters, not one tall character ("1" in a receipt's column of figures, whose neighbours
/// above and below are other lines).
const MIN_ASPECT: f32 = 3.0;
/// A piece continues the line when its centre is this close to the line's axis...
const MAX_OFFSET: f32 = 0.5;
/// ...it is no thicker across the axis than this...
const MAX_THICKNESS: f32 = 1.5;
/// ...and the gap between them along the axis is at most this, all in the line's thickness.
const MAX_GAP: f32 = 0.8;

/// A quad's centre, the unit vector of its long axis, its half length and its thickness.
fn axis(q: &Quad) -> ([f32; 2], [f32; 2], f32, f32) {
    let [p0, p1, _, p3] = q.0;
    let c =
        q.0.iter()
            .fold([0.0, 0.0], |a, p| [a[0] + p[0] / 4.0, a[1] + p[1] / 4.0]);
    let e1 = [p1[0] - p0[0], p1[1] - p0[1]];
    let e2 = [p3[0] - p0[0], p3[1] - p0[1]];
    let len = |e: [f32; 2]| (e[0] * e[0] + e[1] * e[1]).sqrt();
    let (long, short) = if len(e1) >= len(e2) {
        (e1, e2)
    } else {
        (e2, e1)
    };
    let l = len(long).max(1e-6);
    (c, [long[0] / l, long[1] / l], l / 2.0, len(short))
}

/// Whether the steep, long `line` is continued by `piece` along its axis.
fn continues(line: &Quad, piece: &Quad) -> bool {
    let (c, u, half, thick) = axis(line);
    if thick <= 0.0 || 2.0 * half < MIN_ASPECT * thick || u[1].abs() < u[0].abs() {
        return false;
    }
    let d = |p: [f32; 2]| [p[0] - c[0], p[1] - c[1]];
    let along = |p: [f32; 2]| d(p)[0] * u[0] + d(p)[1] * u[1];
    let across = |p: [f32; 2]| d(p)[0] * -u[1] + d(p)[1] * u[0];
    let (pc, ..) = axis(piece);
    if across(pc).abs() > MAX_OFFSET * thick {
        return false;
    }
    let spread = |f: &dyn Fn([f32; 2]) -> f32| {
        let v = piece.0.map(f);
        let lo = v.iter().copied().fold(f32::MAX, f32::min);
        let hi = v.iter().copied().fold(f32::MIN, f32::max);
        (lo, hi)
    };
    let (a0, a1) = spread(&across);
    let (l0, l1) = spread(&along);
    let gap = (l0 - half).max(-half - l1);
    a1 - a0 <= MAX_THICKNESS * thick && gap <= MAX_GAP * thick
}

/// Joins the pieces of steep lines ([`continues`]) into one quad each; other quads are
/// returned unchanged and in their order.
pub fn join_pieces(mut quads: Vec<Quad>) -> Vec<Quad> {
    'search: loop {
        for i in 0..quads.len() {
            for j in 0..quads.len() {
                if i != j && continues(&quads[i], &quads[j]) {
                    let pts: Vec<[f32; 2]> =
                        quads[i].0.iter().chain(&quads[j].0).copied().collect();
                    let (joined, _) = min_area_rect(&pts);
                    tracing::debug!(?joined, "ocr: pieces of a steep line joined");
                    quads[i] = joined;
                    quads.remove(j);
                    continue 'search;
                }
            }
        }
        return quads;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::BBox;

    fn rect(x1: f32, y1: f32, x2: f32, y2: f32) -> Quad {
        Quad::from_bbox(&BBox::new(x1, y1, x2, y2))
    }

    #[test]
    fn a_vertical_word_cut_in_two_is_joined() {
        // "WARRIO" and "RS" one above the other, 5 px apart, 30 px thick.
        let out = join_pieces(vec![
            rect(100.0, 0.0, 130.0, 130.0),
            rect(102.0, 135.0, 130.0, 180.0),
        ]);
        assert_eq!(out.len(), 1);
        let b = out[0].bbox().rounded();
        assert_eq!(b, BBox::new(100.0, 0.0, 130.0, 180.0));
    }

    #[test]
    fn a_slanted_vertical_word_is_joined_along_its_slope() {
        // Tilted by about 14 degrees: the second piece sits further right, on the axis.
        let tilt = |y0: f32, y1: f32| {
            let x = |y: f32| 100.0 + 0.25 * y;
            Quad([
                [x(y0), y0],
                [x(y0) + 30.0, y0],
                [x(y1) + 30.0, y1],
                [x(y1), y1],
            ])
        };
        let out = join_pieces(vec![tilt(0.0, 120.0), tilt(126.0, 170.0)]);
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn horizontal_lines_short_marks_and_neighbours_are_left_alone() {
        // Two words on a row: not steep.
        let row = vec![rect(0.0, 0.0, 100.0, 20.0), rect(104.0, 0.0, 200.0, 20.0)];
        assert_eq!(join_pieces(row.clone()), row);
        // Tall single characters stacked (a column of figures): too short to be a word.
        let column = vec![rect(0.0, 0.0, 15.0, 30.0), rect(0.0, 32.0, 15.0, 62.0)];
        assert_eq!(join_pieces(column.clone()), column);
        // A vertical word and a wide line under it: the line is no piece of the word.
        let under = vec![
            rect(0.0, 0.0, 30.0, 130.0),
            rect(-50.0, 134.0, 150.0, 164.0),
        ];
        assert_eq!(join_pieces(under.clone()), under);
        // A vertical word and another beside it: off its axis.
        let beside = vec![rect(0.0, 0.0, 30.0, 130.0), rect(40.0, 135.0, 70.0, 200.0)];
        assert_eq!(join_pieces(beside.clone()), beside);
    }
}
