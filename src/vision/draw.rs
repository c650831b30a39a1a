//! Drawing regions onto a copy of the image, for `--draw` and trace rendering.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::geometry::{Point, Quad};
use super::VisionError;

/// A palette that stays readable on paper-white scans and on photos.
pub const PALETTE: [Rgb<u8>; 6] = [
    Rgb([230, 25, 75]),
    Rgb([60, 180, 75]),
    Rgb([0, 130, 200]),
    Rgb([245, 130, 48]),
    Rgb([145, 30, 180]),
    Rgb([0, 128, 128]),
];

/// Draws the outline of `quad` with a line about `thickness` pixels wide.
pub fn draw_quad(img: &mut RgbImage, quad: &Quad, color: Rgb<u8>, thickness: u32) {
    for i in 0..4 {
        draw_line(img, quad.0[i], quad.0[(i + 1) % 4], color, thickness);
    }
}

/// A line stroke made of filled squares along the segment: simple, and thick enough to see on
/// a 4000-pixel photo once scaled to a screen.
pub fn draw_line(img: &mut RgbImage, a: Point, b: Point, color: Rgb<u8>, thickness: u32) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let steps = ((b[0] - a[0]).abs().max((b[1] - a[1]).abs()).ceil() as i64).max(1);
    let r = (thickness as i64 / 2).max(0);
    for s in 0..=steps {
        let t = s as f32 / steps as f32;
        let cx = (a[0] + (b[0] - a[0]) * t).round() as i64;
        let cy = (a[1] + (b[1] - a[1]) * t).round() as i64;
        for y in (cy - r).max(0)..=(cy + r).min(h - 1) {
            for x in (cx - r).max(0)..=(cx + r).min(w - 1) {
                img.put_pixel(x as u32, y as u32, color);
            }
        }
    }
}

/// A stroke width proportional to the image, so boxes stay visible when a large photo is
/// viewed scaled down.
pub fn default_thickness(img: &RgbImage) -> u32 {
    (img.width().max(img.height()) / 800).max(1) + 1
}

/// Saves an image; the format follows the extension (PNG, JPEG, ...).
pub fn save(img: &RgbImage, path: &Path) -> Result<(), VisionError> {
    img.save(path).map_err(|e| VisionError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
