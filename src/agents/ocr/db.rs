//! DB (Differentiable Binarization) post-processing: probability map → rotated text boxes.
//!
//! Follows PaddleOCR's `DBPostProcess.boxes_from_bitmap`: binarise at `thresh`, take each
//! connected region's minimum-area rectangle, score it by the mean probability inside, drop
//! weak or tiny ones, then grow it by `area * unclip_ratio / perimeter` (the shrink the model
//! was trained to undo). Regions come from 8-connected components instead of OpenCV contours:
//! the convex hull, and so the rectangle, is the same.

use crate::vision::geometry::{expand_rect, min_area_rect, Quad};

/// Thresholds of the DB post-processing.
#[derive(Debug, Clone, Copy)]
pub struct DbParams {
    pub thresh: f32,
    pub box_thresh: f32,
    pub unclip_ratio: f32,
    pub max_candidates: usize,
    /// Boxes whose shorter side is below this many map pixels are noise.
    pub min_size: f32,
}

/// A probability map quantised to bytes (`p * 255`): a quarter of the memory of `f32`, which
/// matters for a stitched 12-megapixel map, and finer than any threshold needs.
pub struct ProbMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl ProbMap {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height],
        }
    }

    pub fn quantise(p: f32) -> u8 {
        (p.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
    }
}

/// A probability map over the whole image read, with `sx`, `sy` image pixels per map pixel.
pub struct MapView {
    pub map: ProbMap,
    pub sx: f32,
    pub sy: f32,
}

/// Text boxes in map pixels with their scores.
pub fn boxes(map: &ProbMap, p: &DbParams) -> Vec<(Quad, f32)> {
    let cut = (p.thresh * 255.0).floor() as u8;
    let mut mask: Vec<bool> = map.data.iter().map(|&v| v > cut).collect();
    let mut out = Vec::new();
    let mut candidates = 0usize;
    for_each_component(&mut mask, map.width, map.height, |pixels| {
        candidates += 1;
        if candidates > p.max_candidates {
            tracing::warn!(
                max_candidates = p.max_candidates,
                "more text regions than max_candidates; the rest are ignored"
            );
            return false;
        }
        if let Some(b) = component_box(map, pixels, p) {
            out.push(b);
        }
        true
    });
    out
}

/// Calls `f` with the pixels of each 8-connected component of `mask` (a `w x h` grid, row
/// by row), clearing the mask as it goes; stops early when `f` returns false.
pub fn for_each_component(
    mask: &mut [bool],
    w: usize,
    h: usize,
    mut f: impl FnMut(&[(u32, u32)]) -> bool,
) {
    let mut stack: Vec<usize> = Vec::new();
    let mut pixels: Vec<(u32, u32)> = Vec::new();
    for start in 0..(w * h).min(mask.len()) {
        if !mask[start] {
            continue;
        }
        // Flood fill one 8-connected component, clearing it from the mask as we go.
        pixels.clear();
        mask[start] = false;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            pixels.push((x as u32, y as u32));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] {
                        mask[j] = false;
                        stack.push(j);
                    }
                }
            }
        }
        if !f(&pixels) {
            break;
        }
    }
}

/// Map pixels above `prob` that lie outside every one of `boxes` (in map pixels): text-like
/// evidence no box explains. Pixels inside a (generously unclipped) box are explained; a
/// nearly flat box explains its whole bounding rectangle.
pub fn unexplained_mask(map: &ProbMap, boxes: &[Quad], prob: f32) -> Vec<bool> {
    let cut = ProbMap::quantise(prob);
    let mut mask: Vec<bool> = map.data.iter().map(|&v| v > cut).collect();
    if map.width == 0 || map.height == 0 {
        return mask;
    }
    for q in boxes {
        let b = q.bbox();
        let x0 = (b.x1.floor() as i64 - 1).max(0) as usize;
        let y0 = (b.y1.floor() as i64 - 1).max(0) as usize;
        let x1 = ((b.x2.ceil() as i64 + 1).max(0) as usize).min(map.width - 1);
        let y1 = ((b.y2.ceil() as i64 + 1).max(0) as usize).min(map.height - 1);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if q.contains([x as f32, y as f32]) || b.width() < 3.0 || b.height() < 3.0 {
                    mask[y * map.width + x] = false;
                }
            }
        }
    }
    mask
}

/// The convex-hull candidates of a component: each row's leftmost and rightmost pixel (only
/// those can be on the hull).
pub fn row_extremes(pixels: &[(u32, u32)]) -> Vec<[f32; 2]> {
    let (Some(y0), Some(y1)) = (
        pixels.iter().map(|q| q.1).min(),
        pixels.iter().map(|q| q.1).max(),
    ) else {
        return Vec::new();
    };
    let mut rows = vec![(u32::MAX, 0u32); (y1 - y0 + 1) as usize];
    for &(x, y) in pixels {
        let r = &mut rows[(y - y0) as usize];
        r.0 = r.0.min(x);
        r.1 = r.1.max(x);
    }
    let mut pts = Vec::with_capacity(rows.len() * 2);
    for (i, &(a, b)) in rows.iter().enumerate() {
        if a <= b {
            let y = (y0 as usize + i) as f32;
            pts.push([a as f32, y]);
            pts.push([b as f32, y]);
        }
    }
    pts
}

fn component_box(map: &ProbMap, pixels: &[(u32, u32)], p: &DbParams) -> Option<(Quad, f32)> {
    let pts = row_extremes(pixels);
    if pts.is_empty() {
        return None;
    }
    let (quad, short) = min_area_rect(&pts);
    if short < p.min_size {
        return None;
    }
    let score = mean_inside(map, &quad);
    if score < p.box_thresh {
        return None;
    }
    let (w, h) = quad.side_lengths();
    let (area, perimeter) = (w * h, 2.0 * (w + h));
    if perimeter <= 0.0 {
        return None;
    }
    let grown = expand_rect(&quad, area * p.unclip_ratio / perimeter);
    let (gw, gh) = grown.side_lengths();
    if gw.min(gh) < p.min_size + 2.0 {
        return None;
    }
    Some((grown, score))
}

/// Mean probability of the map pixels inside `quad` (PaddleOCR's `box_score_fast`).
fn mean_inside(map: &ProbMap, quad: &Quad) -> f32 {
    let b = quad.bbox();
    let clampx = |v: f32| v.clamp(0.0, (map.width - 1) as f32) as usize;
    let clampy = |v: f32| v.clamp(0.0, (map.height - 1) as f32) as usize;
    let (x0, x1) = (clampx(b.x1.floor()), clampx(b.x2.ceil()));
    let (y0, y1) = (clampy(b.y1.floor()), clampy(b.y2.ceil()));
    let (mut sum, mut n) = (0u64, 0u64);
    for y in y0..=y1 {
        let row = &map.data[y * map.width..(y + 1) * map.width];
        for (x, &v) in row.iter().enumerate().take(x1 + 1).skip(x0) {
            if quad.contains([x as f32, y as f32]) {
                sum += u64::from(v);
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        sum as f32 / n as f32 / 255.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bright_bar_gives_one_unclipped_box() {
        let mut map = ProbMap::new(100, 40);
        for y in 15..25 {
            for x in 10..90 {
                map.data[y * 100 + x] = 230;
            }
        }
        let p = DbParams {
            thresh: 0.3,
            box_thresh: 0.6,
            unclip_ratio: 1.5,
            max_candidates: 100,
            min_size: 3.0,
        };
        let b = boxes(&map, &p);
        assert_eq!(b.len(), 1);
        let bb = b[0].0.bbox();
        // 79x9 pixel-centre rectangle grown by 79*9*1.5/(2*88) = 6.06 on each side.
        assert!((bb.x1 - (10.0 - 6.06)).abs() < 0.05, "{bb:?}");
        assert!((bb.y2 - (24.0 + 6.06)).abs() < 0.05, "{bb:?}");
        assert!((b[0].1 - 230.0 / 255.0).abs() < 1e-3);
    }
}
