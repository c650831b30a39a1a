//! Zoom: read a region magnified, for text too small for the detector at its native size.
//!
//! PP-OCRv5's detector finds little below about 20 pixels of text height, and reads a word
//! at that size in pieces (a word down a flag read as its first five letters, one wrong, at
//! 1x, and whole at 3x);
//! the recogniser, which resizes every line to 48 pixels, is helped less. So a zoom crops
//! the region, upsamples it with a bicubic filter and runs the same pipeline on it, then
//! maps every box back to original-image pixels. It is not free: upsampling also blurs, and
//! a seven-segment clock read right at 1x reads a wrong last digit at 2-4x, so zooming is the caller's
//! choice per region, not a default.
//!
//! `auto` picks the scale from the text already there: a 1x detection pass over the region
//! gives the height of its text (boxes, or the text-like blobs no box came out of), and the
//! scale brings that height to `zoom_text_height`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::vision::{BBox, Quad};

/// How much to magnify a region before reading it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zoom {
    /// Bring the text there to the height the models read best.
    Auto,
    /// This factor (1 or more).
    Scale(f32),
}

impl Serialize for Zoom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Zoom::Auto => s.serialize_str("auto"),
            Zoom::Scale(v) => s.serialize_f32(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Zoom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Zoom;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a magnification factor such as 2.5")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Zoom, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Zoom, E> {
                Ok(Zoom::Scale(v as f32))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Zoom, E> {
                Ok(Zoom::Scale(v as f32))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Zoom, E> {
                Ok(Zoom::Scale(v as f32))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl std::str::FromStr for Zoom {
    type Err = String;

    /// `auto` or a number; the range is checked against the options when reading.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Zoom::Auto);
        }
        t.parse::<f32>()
            .map(Zoom::Scale)
            .map_err(|_| format!("zoom {s:?} is neither \"auto\" nor a number such as 2.5"))
    }
}

impl Zoom {
    /// Checks a requested factor: a finite number from 1 to `max_scale`.
    pub fn validate(&self, max_scale: f32) -> Result<(), String> {
        match *self {
            Zoom::Auto => Ok(()),
            Zoom::Scale(s) if s.is_finite() && (1.0..=max_scale).contains(&s) => Ok(()),
            Zoom::Scale(s) => Err(format!(
                "zoom {s} is out of range: use \"auto\" or a factor from 1 to {max_scale} \
                 (zoom_max_scale in agents/ocr.toml)"
            )),
        }
    }
}

/// The zoom a reading was made with: the part of the image read, in image pixels, and the
/// factor it was magnified by (1 when `auto` found the text large enough already, or when
/// the pixel cap left no room).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZoomApplied {
    pub region: BBox,
    pub scale: f32,
}

/// The largest factor at which a `w x h` crop stays within `max_pixels`.
pub fn pixel_cap(w: u32, h: u32, max_pixels: u64) -> f32 {
    let area = f64::from(w.max(1)) * f64::from(h.max(1));
    (max_pixels as f64 / area).sqrt() as f32
}

/// The factor `auto` picks for text `text_height` pixels tall: the one that brings it to
/// `target`, never below 1 (no shrinking) nor above `max_scale`; `default` when no text-like
/// evidence was found at all.
pub fn auto_scale(text_height: Option<f32>, target: f32, max_scale: f32, default: f32) -> f32 {
    let s = match text_height {
        Some(h) if h > 0.0 && h.is_finite() => target / h,
        _ => default,
    };
    s.clamp(1.0, max_scale.max(1.0))
}

/// The median of `values` (`None` when empty).
pub fn median(values: &mut [f32]) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f32::total_cmp);
    Some(values[values.len() / 2])
}

/// The height of a text line's box: its shorter side (vertical lines included).
pub fn line_height(q: &Quad) -> f32 {
    let (w, h) = q.side_lengths();
    w.min(h)
}

/// Maps a point read in a crop magnified by `scale` (per axis: rounding the magnified size
/// makes them differ slightly) whose top-left corner is at `offset` in the image back to
/// image pixels.
pub fn to_image(p: [f32; 2], scale: [f32; 2], offset: [f32; 2]) -> [f32; 2] {
    [p[0] / scale[0] + offset[0], p[1] / scale[1] + offset[1]]
}

/// Upsamples `rgb` by `scale` with a Catmull-Rom (bicubic) filter: sharper than bilinear,
/// without Lanczos's ringing around high-contrast strokes.
pub fn upsample(rgb: &image::RgbImage, scale: f32) -> image::RgbImage {
    let w = ((rgb.width() as f32 * scale).round() as u32).max(1);
    let h = ((rgb.height() as f32 * scale).round() as u32).max(1);
    image::imageops::resize(rgb, w, h, image::imageops::FilterType::CatmullRom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_parses_auto_and_numbers_only() {
        let z: Zoom = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(z, Zoom::Auto);
        let z: Zoom = serde_json::from_str("2.5").unwrap();
        assert_eq!(z, Zoom::Scale(2.5));
        let z: Zoom = serde_json::from_str("3").unwrap();
        assert_eq!(z, Zoom::Scale(3.0));
        let e = serde_json::from_str::<Zoom>("\"big\"").unwrap_err();
        assert!(e.to_string().contains("auto"), "{e}");
        assert!(serde_json::from_str::<Zoom>("[2]").is_err());
        assert_eq!(serde_json::to_string(&Zoom::Auto).unwrap(), "\"auto\"");
        assert_eq!("AUTO".parse::<Zoom>(), Ok(Zoom::Auto));
    }

    #[test]
    fn out_of_range_factors_are_refused() {
        assert!(Zoom::Scale(2.0).validate(4.0).is_ok());
        assert!(Zoom::Scale(1.0).validate(4.0).is_ok());
        assert!(Zoom::Scale(0.5).validate(4.0).is_err());
        assert!(Zoom::Scale(4.5).validate(4.0).is_err());
        assert!(Zoom::Scale(f32::NAN).validate(4.0).is_err());
        assert!(Zoom::Scale(f32::INFINITY).validate(4.0).is_err());
        assert!(Zoom::Auto.validate(4.0).is_ok());
    }

    #[test]
    fn auto_brings_text_to_the_target_within_limits() {
        assert_eq!(auto_scale(Some(20.0), 60.0, 4.0, 2.0), 3.0);
        // Already large: never shrunk.
        assert_eq!(auto_scale(Some(90.0), 60.0, 4.0, 2.0), 1.0);
        // Tiny: capped.
        assert_eq!(auto_scale(Some(5.0), 60.0, 4.0, 2.0), 4.0);
        // Nothing text-like: the default.
        assert_eq!(auto_scale(None, 60.0, 4.0, 2.0), 2.0);
        assert_eq!(auto_scale(Some(0.0), 60.0, 4.0, 2.0), 2.0);
    }

    #[test]
    fn the_pixel_cap_bounds_the_magnified_crop() {
        let s = pixel_cap(1000, 500, 8_000_000);
        assert!((s - 4.0).abs() < 1e-4, "{s}");
        assert!(pixel_cap(4000, 3000, 8_000_000) < 1.0);
    }

    #[test]
    fn points_map_back_to_image_pixels() {
        assert_eq!(
            to_image([200.0, 50.0], [2.0, 2.0], [100.0, 10.0]),
            [200.0, 35.0]
        );
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(median(&mut v), Some(2.0));
        assert_eq!(median(&mut []), None);
    }
}
