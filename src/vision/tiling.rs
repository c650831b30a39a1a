//! Overlapping tiles for reading a large image at native resolution.
//!
//! Detectors see a few hundred thousand pixels at a time; shrinking a 12 MP photo to fit makes
//! 10-pixel text vanish. Tiles of the detector's size, overlapping by more than the tallest
//! thing we expect to cut, cover the image at full resolution. Each tile also carries a *core*:
//! the part of the image it alone is responsible for (the overlaps split down the middle), so
//! per-pixel outputs can be stitched without seams or double counting.

use super::crop::Rect;

/// One tile: where to read it, and which part of the image it owns when stitching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub rect: Rect,
    /// `[x0, y0, x1, y1)` in image pixels, inside `rect`.
    pub core: [u32; 4],
}

/// Positions of tiles of length `tile` covering `len` with at least `overlap` shared pixels,
/// spread evenly, and the core `[start, end)` of each.
fn axis(len: u32, tile: u32, overlap: u32) -> Vec<(u32, u32, u32)> {
    if len <= tile {
        return vec![(0, 0, len)];
    }
    let step = tile.saturating_sub(overlap).max(1);
    let n = (len - overlap).div_ceil(step).max(2);
    let starts: Vec<u32> = (0..n)
        .map(|i| ((u64::from(i) * u64::from(len - tile)) / u64::from(n - 1)) as u32)
        .collect();
    (0..n as usize)
        .map(|i| {
            let s = starts[i];
            let core_start = if i == 0 {
                0
            } else {
                (starts[i - 1] + tile + s) / 2
            };
            let core_end = if i + 1 == n as usize {
                len
            } else {
                (s + tile + starts[i + 1]) / 2
            };
            (s, core_start, core_end)
        })
        .collect()
}

/// Tiles of at most `tile x tile` pixels covering a `width x height` image, neighbours
/// overlapping by at least `overlap` pixels, in row-major order.
pub fn tiles(width: u32, height: u32, tile: u32, overlap: u32) -> Vec<Tile> {
    let tile = tile.max(1);
    let overlap = overlap.min(tile / 2);
    let xs = axis(width, tile, overlap);
    let ys = axis(height, tile, overlap);
    let mut out = Vec::with_capacity(xs.len() * ys.len());
    for &(y, cy0, cy1) in &ys {
        for &(x, cx0, cx1) in &xs {
            out.push(Tile {
                rect: Rect {
                    x,
                    y,
                    width: tile.min(width),
                    height: tile.min(height),
                },
                core: [cx0, cy0, cx1, cy1],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_image_is_one_tile() {
        let t = tiles(500, 300, 960, 128);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].core, [0, 0, 500, 300]);
    }

    #[test]
    fn cores_partition_the_image_and_tiles_overlap() {
        let (w, h) = (4000u32, 3000u32);
        let t = tiles(w, h, 1024, 160);
        let mut owned = vec![0u8; (w * h) as usize];
        for tile in &t {
            let [x0, y0, x1, y1] = tile.core;
            assert!(x0 >= tile.rect.x && x1 <= tile.rect.x + tile.rect.width);
            assert!(y0 >= tile.rect.y && y1 <= tile.rect.y + tile.rect.height);
            for y in y0..y1 {
                for x in x0..x1 {
                    owned[(y * w + x) as usize] += 1;
                }
            }
        }
        assert!(owned.iter().all(|&c| c == 1));
        // Neighbouring tiles share at least the overlap.
        let xs: Vec<u32> = t
            .iter()
            .filter(|t| t.rect.y == 0)
            .map(|t| t.rect.x)
            .collect();
        for pair in xs.windows(2) {
            assert!(pair[0] + 1024 - pair[1] >= 160);
        }
    }
}
