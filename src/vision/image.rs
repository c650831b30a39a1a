//! Decoding an image file once into what every agent expects: upright 8-bit RGB.
//!
//! Photos carry their rotation in EXIF, scans come as grayscale or CMYK, screenshots carry
//! alpha and some PNGs are 16-bit; all of that is resolved here so no agent sees it. The pixel
//! limit is checked from the header, before any pixel buffer is allocated, so a decompression
//! bomb costs nothing.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use sha2::{Digest, Sha256};

use super::VisionError;

/// Default pixel limit: 100 megapixels (a 12 MP photo uses an eighth of it).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// How to decode an image.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Refuse images with more pixels than this (checked before decoding).
    pub max_pixels: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// A decoded, upright RGB image with the hash of the bytes it came from.
#[derive(Clone)]
pub struct Image {
    rgb: RgbImage,
    sha256: String,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("width", &self.width())
            .field("height", &self.height())
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Image {
    /// Reads and decodes an image file.
    pub fn open(path: &Path, opts: &LoadOptions) -> Result<Self, VisionError> {
        let bytes = std::fs::read(path).map_err(|source| VisionError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(&bytes, &path.display().to_string(), opts)
    }

    /// Decodes an image from memory; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str, opts: &LoadOptions) -> Result<Self, VisionError> {
        if bytes.is_empty() {
            return Err(VisionError::EmptyFile {
                what: what.to_string(),
            });
        }
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| VisionError::Decode {
                what: what.to_string(),
                reason: e.to_string(),
            })?;
        if reader.format().is_none() {
            return Err(VisionError::UnknownFormat {
                what: what.to_string(),
            });
        }
        let decode_err = |e: image::ImageError| match e {
            image::ImageError::Unsupported(_) => VisionError::UnknownFormat {
                what: what.to_string(),
            },
            // A size the decoder itself refuses (past the format's maximum, or past the
            // memory limit below) is a size problem, not corruption.
            image::ImageError::Limits(l) => VisionError::Oversized {
                what: what.to_string(),
                reason: l.to_string(),
                limit: opts.max_pixels,
            },
            other if other.to_string().to_ascii_lowercase().contains("too large") => {
                VisionError::Oversized {
                    what: what.to_string(),
                    reason: other.to_string(),
                    limit: opts.max_pixels,
                }
            }
            other => VisionError::Decode {
                what: what.to_string(),
                reason: other.to_string(),
            },
        };
        if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
            // The JPEG decoder fills a cut-off scan with grey and reports success; a reader
            // would then silently miss the bottom of the page.
            return Err(VisionError::Decode {
                what: what.to_string(),
                reason: "the JPEG data ends before its end-of-image marker".into(),
            });
        }
        let mut decoder = reader.into_decoder().map_err(decode_err)?;
        let (width, height) = decoder.dimensions();
        let pixels = u64::from(width) * u64::from(height);
        if pixels == 0 {
            return Err(VisionError::Empty {
                what: what.to_string(),
                width,
                height,
            });
        }
        if pixels > opts.max_pixels {
            return Err(VisionError::TooLarge {
                what: what.to_string(),
                width,
                height,
                pixels,
                limit: opts.max_pixels,
            });
        }
        // A broken EXIF block should not cost the user their image: fall back to as-stored.
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
        img.apply_orientation(orientation);
        let rgb = to_rgb_over_white(img);
        let sha256 = format!("{:x}", Sha256::digest(bytes));
        Ok(Self { rgb, sha256 })
    }

    /// Wraps pixels already in memory (tests, crops, synthetic inputs).
    pub fn from_rgb(rgb: RgbImage) -> Self {
        let sha256 = format!("{:x}", Sha256::digest(rgb.as_raw()));
        Self { rgb, sha256 }
    }

    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    pub fn height(&self) -> u32 {
        self.rgb.height()
    }

    pub fn rgb(&self) -> &RgbImage {
        &self.rgb
    }

    /// Hex sha256 of the encoded bytes: a stable key for caching results per image.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Whether a JPEG stream has its end-of-image marker (`FF D9`) after the start of its last
/// scan (`FF DA`). Entropy-coded data stuffs every `FF` byte, so the marker cannot occur
/// inside a scan; an EXIF thumbnail's own markers come before the main scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Converts any decoded layout to 8-bit RGB. Transparent pixels are composited over white,
/// because text in screenshots and logos is drawn on a background that alpha removed, and
/// black (what dropping alpha gives) would hide dark text.
fn to_rgb_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = v as u8;
        }
    }
    out
}
