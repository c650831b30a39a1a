//! Boxes and quadrilaterals in original-image pixels.
//!
//! Every agent reports regions in the coordinates of the image the user gave, whatever size
//! the model saw; conversions happen at the model's edge. Text lines are rotated rectangles
//! ([`Quad`]), so the minimum-area rectangle of a point set is computed here too.

use serde::{Deserialize, Serialize};

/// A point `[x, y]` in pixels.
pub type Point = [f32; 2];

/// An axis-aligned box `[x1, y1, x2, y2]` in pixels (x2 > x1, y2 > y1 for a non-empty box).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f32; 4]", into = "[f32; 4]")]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl From<[f32; 4]> for BBox {
    fn from(v: [f32; 4]) -> Self {
        Self::new(v[0], v[1], v[2], v[3])
    }
}

impl From<BBox> for [f32; 4] {
    fn from(b: BBox) -> Self {
        [b.x1, b.y1, b.x2, b.y2]
    }
}

impl BBox {
    /// Parses a region as people write one: `x1,y1,x2,y2`, finite numbers with x2 > x1 and
    /// y2 > y1 (NaN, infinities and inverted or empty boxes are refused, not clamped).
    pub fn parse(s: &str) -> Result<Self, String> {
        let shown: String = s.chars().take(80).collect();
        let v: Vec<f32> = s
            .split(',')
            .map(|p| p.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("expected four numbers x1,y1,x2,y2, got {shown:?}"))?;
        match v.as_slice() {
            [x1, y1, x2, y2] if v.iter().any(|c| !c.is_finite()) => Err(format!(
                "{shown:?}: every coordinate must be a finite number, got {x1},{y1},{x2},{y2}"
            )),
            [x1, y1, x2, y2] if x2 > x1 && y2 > y1 => Ok(Self::new(*x1, *y1, *x2, *y2)),
            [_, _, _, _] => Err(format!(
                "{shown:?}: x2 must exceed x1 and y2 must exceed y1"
            )),
            _ => Err(format!("expected four numbers x1,y1,x2,y2, got {shown:?}")),
        }
    }

    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// The smallest box holding all `points` (empty input gives a zero box at the origin).
    pub fn around(points: &[Point]) -> Self {
        let mut b = Self::new(f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in points {
            b.x1 = b.x1.min(p[0]);
            b.y1 = b.y1.min(p[1]);
            b.x2 = b.x2.max(p[0]);
            b.y2 = b.y2.max(p[1]);
        }
        if points.is_empty() {
            Self::new(0.0, 0.0, 0.0, 0.0)
        } else {
            b
        }
    }

    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    pub fn center(&self) -> Point {
        [(self.x1 + self.x2) * 0.5, (self.y1 + self.y2) * 0.5]
    }

    pub fn intersection(&self, o: &BBox) -> f32 {
        let w = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let h = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        w * h
    }

    /// The box both boxes cover (empty, with x2 < x1 or y2 < y1, when they do not meet).
    pub fn overlap(&self, o: &BBox) -> BBox {
        BBox::new(
            self.x1.max(o.x1),
            self.y1.max(o.y1),
            self.x2.min(o.x2),
            self.y2.min(o.y2),
        )
    }

    /// The smallest box around both.
    pub fn union(&self, o: &BBox) -> BBox {
        BBox::new(
            self.x1.min(o.x1),
            self.y1.min(o.y1),
            self.x2.max(o.x2),
            self.y2.max(o.y2),
        )
    }

    pub fn iou(&self, o: &BBox) -> f32 {
        let inter = self.intersection(o);
        let union = self.area() + o.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }

    /// Length of the overlap of the two boxes' vertical extents.
    pub fn vertical_overlap(&self, o: &BBox) -> f32 {
        (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0)
    }

    /// Clamps the box to an image of the given size.
    pub fn clamp(&self, width: f32, height: f32) -> Self {
        Self::new(
            self.x1.clamp(0.0, width),
            self.y1.clamp(0.0, height),
            self.x2.clamp(0.0, width),
            self.y2.clamp(0.0, height),
        )
    }

    /// Rounds to whole pixels: what users and JSON consumers expect to see.
    pub fn rounded(&self) -> Self {
        Self::new(
            self.x1.round(),
            self.y1.round(),
            self.x2.round(),
            self.y2.round(),
        )
    }
}

/// A quadrilateral, clockwise from the top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quad(pub [Point; 4]);

impl Quad {
    pub fn from_bbox(b: &BBox) -> Self {
        Self([[b.x1, b.y1], [b.x2, b.y1], [b.x2, b.y2], [b.x1, b.y2]])
    }

    pub fn bbox(&self) -> BBox {
        BBox::around(&self.0)
    }

    /// Length of the top edge and of the left edge: the text line's width and height.
    pub fn side_lengths(&self) -> (f32, f32) {
        let [p0, p1, p2, p3] = self.0;
        let w = dist(p0, p1).max(dist(p3, p2));
        let h = dist(p0, p3).max(dist(p1, p2));
        (w, h)
    }

    /// Maps every corner through `f`.
    pub fn map(&self, f: impl Fn(Point) -> Point) -> Self {
        Self(self.0.map(f))
    }

    /// Rounds corners to whole pixels.
    pub fn rounded(&self) -> Self {
        self.map(|p| [p[0].round(), p[1].round()])
    }

    /// The line through the middles of the left and right edges (the text's centre line) and
    /// the text's height (the mean of those edges' lengths).
    fn centre_line(&self) -> (Point, Point, f32) {
        let [p0, p1, p2, p3] = self.0;
        let left = [(p0[0] + p3[0]) / 2.0, (p0[1] + p3[1]) / 2.0];
        let right = [(p1[0] + p2[0]) / 2.0, (p1[1] + p2[1]) / 2.0];
        (left, right, (dist(p0, p3) + dist(p1, p2)) / 2.0)
    }

    /// The vertical extent of the text at `x`: its centre line there (extended past its ends
    /// along its slope) plus and minus half its height.
    fn extent_at(&self, x: f32) -> (f32, f32) {
        let (l, r, h) = self.centre_line();
        let dx = r[0] - l[0];
        let y = if dx.abs() < 1e-3 {
            (l[1] + r[1]) / 2.0
        } else {
            l[1] + (x - l[0]) * (r[1] - l[1]) / dx
        };
        (y - h / 2.0, y + h / 2.0)
    }

    /// Whether two text lines sit on one row: their extents, compared where the two lines
    /// meet (halfway between their centres), overlap by at least half the smaller height.
    /// Axis-aligned boxes, this is the overlap of their vertical extents; on a photo taken at
    /// a slant it follows the lines' slope, where boxes around them would overlap the next
    /// row's ("BANDAR BUKIT RAJA" and "KLANG SELANGOR" are not one row because their tilted
    /// boxes overlap).
    pub fn same_row(&self, o: &Quad) -> bool {
        let x = (self.bbox().center()[0] + o.bbox().center()[0]) / 2.0;
        let (a1, a2) = self.extent_at(x);
        let (b1, b2) = o.extent_at(x);
        let overlap = (a2.min(b2) - a1.max(b1)).max(0.0);
        overlap >= 0.5 * (a2 - a1).min(b2 - b1).max(1.0)
    }

    /// Whether `p` lies inside (or on) this convex quad.
    pub fn contains(&self, p: Point) -> bool {
        let mut sign = 0.0f32;
        for i in 0..4 {
            let a = self.0[i];
            let b = self.0[(i + 1) % 4];
            let c = cross(sub(b, a), sub(p, a));
            if c.abs() < 1e-6 {
                continue;
            }
            if sign == 0.0 {
                sign = c.signum();
            } else if c.signum() != sign {
                return false;
            }
        }
        true
    }
}

pub fn dist(a: Point, b: Point) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn sub(a: Point, b: Point) -> Point {
    [a[0] - b[0], a[1] - b[1]]
}

fn cross(a: Point, b: Point) -> f32 {
    a[0] * b[1] - a[1] * b[0]
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in image coordinates' math sense.
pub fn convex_hull(points: &[Point]) -> Vec<Point> {
    let mut pts: Vec<Point> = points.to_vec();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let mut hull: Vec<Point> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &Point>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2 {
                let a = hull[hull.len() - 2];
                let b = hull[hull.len() - 1];
                if cross(sub(b, a), sub(p, a)) <= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The minimum-area enclosing rectangle of `points`, with its corners ordered as PaddleOCR's
/// `get_mini_boxes` orders them (top-left, top-right, bottom-right, bottom-left, decided by x
/// first), and the length of its shorter side.
pub fn min_area_rect(points: &[Point]) -> (Quad, f32) {
    let hull = convex_hull(points);
    let corners = match hull.len() {
        0 => return (Quad([[0.0; 2]; 4]), 0.0),
        1 | 2 => {
            let b = BBox::around(&hull);
            Quad::from_bbox(&b).0
        }
        _ => rotating_calipers(&hull),
    };
    let quad = order_like_paddle(corners);
    let (w, h) = quad.side_lengths();
    (quad, w.min(h))
}

fn rotating_calipers(hull: &[Point]) -> [Point; 4] {
    let n = hull.len();
    let mut best_area = f32::MAX;
    let mut best = [[0.0f32; 2]; 4];
    for i in 0..n {
        let a = hull[i];
        let b = hull[(i + 1) % n];
        let len = dist(a, b);
        if len < 1e-9 {
            continue;
        }
        let u = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
        let v = [-u[1], u[0]];
        let (mut umin, mut umax, mut vmin, mut vmax) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in hull {
            let d = sub(*p, a);
            let pu = d[0] * u[0] + d[1] * u[1];
            let pv = d[0] * v[0] + d[1] * v[1];
            umin = umin.min(pu);
            umax = umax.max(pu);
            vmin = vmin.min(pv);
            vmax = vmax.max(pv);
        }
        let area = (umax - umin) * (vmax - vmin);
        if area < best_area {
            best_area = area;
            let at =
                |pu: f32, pv: f32| [a[0] + u[0] * pu + v[0] * pv, a[1] + u[1] * pu + v[1] * pv];
            best = [
                at(umin, vmin),
                at(umax, vmin),
                at(umax, vmax),
                at(umin, vmax),
            ];
        }
    }
    best
}

/// PaddleOCR's corner order: sort by x; of the two leftmost the upper is first and the lower
/// last; of the two rightmost the upper is second and the lower third.
fn order_like_paddle(mut pts: [Point; 4]) -> Quad {
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (tl, bl) = if pts[1][1] > pts[0][1] {
        (pts[0], pts[1])
    } else {
        (pts[1], pts[0])
    };
    let (tr, br) = if pts[3][1] > pts[2][1] {
        (pts[2], pts[3])
    } else {
        (pts[3], pts[2])
    };
    Quad([tl, tr, br, bl])
}

/// Grows a rectangle outwards by `distance` on every side, keeping its orientation. For a
/// rectangle this is exactly the minimum-area rectangle of its rounded polygon offset, which
/// is what DB's `unclip` computes with a general polygon clipper.
pub fn expand_rect(q: &Quad, distance: f32) -> Quad {
    let [p0, p1, _, p3] = q.0;
    let (w, h) = (dist(p0, p1), dist(p0, p3));
    if w < 1e-6 || h < 1e-6 {
        let b = q.bbox();
        return Quad::from_bbox(&BBox::new(
            b.x1 - distance,
            b.y1 - distance,
            b.x2 + distance,
            b.y2 + distance,
        ));
    }
    let u = [(p1[0] - p0[0]) / w, (p1[1] - p0[1]) / w];
    let v = [(p3[0] - p0[0]) / h, (p3[1] - p0[1]) / h];
    let origin = [
        p0[0] - (u[0] + v[0]) * distance,
        p0[1] - (u[1] + v[1]) * distance,
    ];
    let (w2, h2) = (w + 2.0 * distance, h + 2.0 * distance);
    let at = |a: f32, b: f32| {
        [
            origin[0] + u[0] * a + v[0] * b,
            origin[1] + u[1] * a + v[1] * b,
        ]
    };
    order_like_paddle([at(0.0, 0.0), at(w2, 0.0), at(w2, h2), at(0.0, h2)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_on_a_slant_are_rows_by_their_slope_not_their_boxes() {
        // Two lines tilted by about 8 degrees, 30 px apart down the page: their bounding
        // boxes overlap by most of their height, their text does not.
        let tilt = |y: f32| {
            Quad([
                [0.0, y],
                [300.0, y + 42.0],
                [300.0, y + 72.0],
                [0.0, y + 30.0],
            ])
        };
        let (a, b) = (tilt(100.0), tilt(130.0));
        assert!(a.bbox().vertical_overlap(&b.bbox()) > 0.5 * a.bbox().height());
        assert!(!a.same_row(&b));
        // A label and its value further right on the same tilted row.
        let value = Quad([
            [400.0, 156.0],
            [460.0, 164.4],
            [460.0, 194.4],
            [400.0, 186.0],
        ]);
        assert!(a.same_row(&value));
        assert!(!b.same_row(&value));
        // Axis-aligned: the overlap of the vertical extents, as before.
        let q = |y1: f32, y2: f32| Quad::from_bbox(&BBox::new(0.0, y1, 100.0, y2));
        assert!(q(10.0, 30.0).same_row(&q(18.0, 38.0)));
        assert!(!q(10.0, 30.0).same_row(&q(21.0, 41.0)));
    }

    #[test]
    fn min_area_rect_of_axis_aligned_points() {
        let pts = [[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0], [3.0, 2.0]];
        let (q, short) = min_area_rect(&pts);
        assert_eq!(
            q.rounded().0,
            [[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0]]
        );
        assert!((short - 2.0).abs() < 1e-4);
    }

    #[test]
    fn min_area_rect_of_rotated_rectangle() {
        // A 10x2 rectangle rotated by 30 degrees.
        let (s, c) = (30f32.to_radians().sin(), 30f32.to_radians().cos());
        let rot = |x: f32, y: f32| [x * c - y * s + 20.0, x * s + y * c + 20.0];
        let pts = [rot(0.0, 0.0), rot(10.0, 0.0), rot(10.0, 2.0), rot(0.0, 2.0)];
        let (q, short) = min_area_rect(&pts);
        let (w, h) = q.side_lengths();
        assert!((w.max(h) - 10.0).abs() < 1e-3 && (short - 2.0).abs() < 1e-3);
    }

    #[test]
    fn expand_rect_grows_each_side() {
        let q = Quad::from_bbox(&BBox::new(10.0, 10.0, 20.0, 14.0));
        let e = expand_rect(&q, 2.0);
        assert_eq!(e.bbox().rounded(), BBox::new(8.0, 8.0, 22.0, 16.0));
    }

    #[test]
    fn bbox_serialises_as_array() {
        let b = BBox::new(1.0, 2.0, 3.0, 4.0);
        assert_eq!(serde_json::to_string(&b).unwrap(), "[1.0,2.0,3.0,4.0]");
    }
}
