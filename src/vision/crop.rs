//! Rotated crops and packing pixels into model input tensors.
//!
//! Models want a planar float tensor of a fixed height or size; the bilinear sampling here
//! follows OpenCV's `resize`/`warpAffine` conventions (pixel centres at +0.5, edges
//! replicated) because the PaddleOCR models were trained on inputs prepared that way.

use image::RgbImage;

use super::geometry::{dist, Quad};

/// Per-channel normalisation `(v / 255 - mean) / std`, and the channel order the model takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Write channels as B, G, R (PaddleOCR models were trained on OpenCV's BGR images).
    pub bgr: bool,
}

impl Normalize {
    /// ImageNet statistics, as PaddleOCR's detector and orientation classifier use them.
    pub const IMAGENET_BGR: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        bgr: true,
    };
    /// `(v/255 - 0.5) / 0.5`, as PaddleOCR's recogniser uses it.
    pub const HALF_BGR: Self = Self {
        mean: [0.5, 0.5, 0.5],
        std: [0.5, 0.5, 0.5],
        bgr: true,
    };

    /// Lookup tables from byte value to normalised float, one per output channel.
    fn tables(&self) -> [[f32; 256]; 3] {
        let mut t = [[0f32; 256]; 3];
        for (c, table) in t.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        t
    }
}

/// A destination in a planar `[3, height, stride]` float buffer.
pub struct Planes<'a> {
    pub data: &'a mut [f32],
    pub height: usize,
    pub stride: usize,
}

/// A source rectangle `x, y, width, height` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn full(img: &RgbImage) -> Self {
        Self {
            x: 0,
            y: 0,
            width: img.width(),
            height: img.height(),
        }
    }
}

/// Resizes `src[rect]` to `dst_w x dst_h` (bilinear, OpenCV's half-pixel convention) and writes
/// it normalised into the left of `out`. The remaining columns of `out` are left untouched, so
/// a caller can pre-fill padding.
pub fn resize_normalize_into(
    src: &RgbImage,
    rect: Rect,
    dst_w: usize,
    dst_h: usize,
    norm: &Normalize,
    out: &mut Planes<'_>,
) {
    assert!(dst_w <= out.stride && dst_h <= out.height);
    let tables = norm.tables();
    let plane = out.height * out.stride;
    let sx = rect.width as f32 / dst_w as f32;
    let sy = rect.height as f32 / dst_h as f32;
    let max_x = rect.width.saturating_sub(1) as f32;
    let max_y = rect.height.saturating_sub(1) as f32;
    // Horizontal taps are the same for every row: compute them once.
    let xs: Vec<(u32, u32, f32)> = (0..dst_w)
        .map(|dx| {
            let fx = ((dx as f32 + 0.5) * sx - 0.5).clamp(0.0, max_x);
            let x0 = fx.floor();
            let x1 = (x0 + 1.0).min(max_x);
            (rect.x + x0 as u32, rect.x + x1 as u32, fx - x0)
        })
        .collect();
    let raw = src.as_raw();
    let row_len = src.width() as usize * 3;
    let order: [usize; 3] = if norm.bgr { [2, 1, 0] } else { [0, 1, 2] };
    for dy in 0..dst_h {
        let fy = ((dy as f32 + 0.5) * sy - 0.5).clamp(0.0, max_y);
        let y0 = fy.floor();
        let wy = fy - y0;
        let y1 = (y0 + 1.0).min(max_y);
        let r0 = &raw[(rect.y as usize + y0 as usize) * row_len..][..row_len];
        let r1 = &raw[(rect.y as usize + y1 as usize) * row_len..][..row_len];
        for (dx, &(x0, x1, wx)) in xs.iter().enumerate() {
            let (i0, i1) = (x0 as usize * 3, x1 as usize * 3);
            for (oc, &sc) in order.iter().enumerate() {
                let top = f32::from(r0[i0 + sc]) * (1.0 - wx) + f32::from(r0[i1 + sc]) * wx;
                let bot = f32::from(r1[i0 + sc]) * (1.0 - wx) + f32::from(r1[i1 + sc]) * wx;
                let v = top * (1.0 - wy) + bot * wy;
                // Interpolate the byte value, then normalise: identical to OpenCV, which
                // resizes the uint8 image before NormalizeImage (rounding included).
                let idx = (v + 0.5) as usize;
                out.data[oc * plane + dy * out.stride + dx] = tables[oc][idx.min(255)];
            }
        }
    }
}

/// The crop's width and height before any turn: the quad's longer horizontal and vertical edges.
fn crop_sides(quad: &Quad) -> (f32, f32) {
    let [p0, p1, p2, p3] = quad.0;
    let qw = dist(p0, p1).max(dist(p3, p2)).round().max(1.0);
    let qh = dist(p0, p3).max(dist(p1, p2)).round().max(1.0);
    (qw, qh)
}

/// Whether [`crop_quad`] turns this quad's crop by 90°: its text runs steeply (the quad is at
/// least 1.5 times as tall as wide along its own edges). With PaddleOCR's corner order that
/// is exactly a line whose long axis is more than 45° from horizontal, and such a line may
/// read top to bottom or bottom to top: the crop can come out upright or upside down.
pub fn turns_vertical(quad: &Quad) -> bool {
    let (qw, qh) = crop_sides(quad);
    qh / qw >= 1.5
}

/// Cuts the (possibly rotated) quadrilateral out of `src` into an upright image whose width
/// is the quad's longer horizontal edge and height its longer vertical edge — PaddleOCR's
/// `get_rotate_crop_image`. Lines much taller than wide (vertical text) are turned 90°
/// counter-clockwise so the recogniser reads them left to right.
pub fn crop_quad(src: &RgbImage, quad: &Quad) -> RgbImage {
    let [p0, p1, p2, p3] = quad.0;
    let (qw, qh) = crop_sides(quad);
    // Vertical text is turned 90° counter-clockwise (numpy's rot90, as PaddleOCR does): the
    // output's x axis runs down the quad's right edge, its y axis from right to left.
    let vertical = turns_vertical(quad);
    let (origin, along, across, len_along, len_across) = if vertical {
        (
            p1,
            [p2[0] - p1[0], p2[1] - p1[1]],
            [p0[0] - p1[0], p0[1] - p1[1]],
            qh,
            qw,
        )
    } else {
        (
            p0,
            [p1[0] - p0[0], p1[1] - p0[1]],
            [p3[0] - p0[0], p3[1] - p0[1]],
            qw,
            qh,
        )
    };
    let (out_w, out_h) = (len_along as u32, len_across as u32);
    // Corner-aligned like OpenCV's warpPerspective: output pixel (u, v) samples the quad at
    // fractions u / w and v / h.
    let (su, sv) = (1.0 / out_w as f32, 1.0 / out_h as f32);
    let (sw, sh) = (src.width() as f32 - 1.0, src.height() as f32 - 1.0);
    let raw = src.as_raw();
    let stride = src.width() as usize * 3;
    let mut out = RgbImage::new(out_w, out_h);
    for v in 0..out_h {
        let fv = v as f32 * sv;
        for u in 0..out_w {
            let fu = u as f32 * su;
            let x = (origin[0] + along[0] * fu + across[0] * fv).clamp(0.0, sw);
            let y = (origin[1] + along[1] * fu + across[1] * fv).clamp(0.0, sh);
            let (x0, y0) = (x.floor(), y.floor());
            let (wx, wy) = (x - x0, y - y0);
            let x1 = (x0 + 1.0).min(sw) as usize;
            let y1 = (y0 + 1.0).min(sh) as usize;
            let (x0, y0) = (x0 as usize, y0 as usize);
            let px = out.get_pixel_mut(u, v);
            for c in 0..3 {
                let a = f32::from(raw[y0 * stride + x0 * 3 + c]);
                let b = f32::from(raw[y0 * stride + x1 * 3 + c]);
                let d = f32::from(raw[y1 * stride + x0 * 3 + c]);
                let e = f32::from(raw[y1 * stride + x1 * 3 + c]);
                let top = a + (b - a) * wx;
                let bot = d + (e - d) * wx;
                px[c] = (top + (bot - top) * wy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::geometry::BBox;

    #[test]
    fn identity_resize_normalises_in_bgr_order() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([255, 0, 51]));
        let mut buf = vec![0f32; 3 * 2 * 4];
        let mut planes = Planes {
            data: &mut buf,
            height: 2,
            stride: 4,
        };
        resize_normalize_into(
            &img,
            Rect::full(&img),
            4,
            2,
            &Normalize::HALF_BGR,
            &mut planes,
        );
        // Channel 0 is blue (51 -> 0.2 -> -0.6), channel 2 red (255 -> 1.0).
        assert!((buf[0] + 0.6).abs() < 1e-5);
        assert!((buf[2 * 8] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn crop_of_axis_aligned_quad_is_the_sub_image() {
        let mut img = RgbImage::new(20, 10);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([x as u8 * 10, y as u8 * 10, 0]);
        }
        let q = Quad::from_bbox(&BBox::new(5.0, 2.0, 15.0, 6.0));
        let c = crop_quad(&img, &q);
        assert_eq!(c.dimensions(), (10, 4));
        assert_eq!(c.get_pixel(0, 0)[0], 50);
        assert_eq!(c.get_pixel(0, 0)[1], 20);
    }
}
