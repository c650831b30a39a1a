//! Pixels and geometry, independent of any model.
//!
//! Everything an agent needs before and after inference lives here: decoding an image once
//! into upright RGB ([`Image`]), the box and quadrilateral types every agent reports in
//! original-image pixels ([`BBox`], [`Quad`]), rotated crops and tensor packing ([`crop`]),
//! overlapping tiles for high-resolution inputs ([`tiling`]) and drawing results ([`draw`]).

pub mod colour;
pub mod crop;
pub mod draw;
pub mod font;
pub mod geometry;
mod image;
pub mod mmproj;
pub mod mosaic;
pub mod tiling;
pub mod visual_tokens;

pub use self::image::{Image, LoadOptions, DEFAULT_MAX_PIXELS};
pub use geometry::{BBox, Point, Quad};

use std::path::PathBuf;

/// Errors of the vision layer: reading, decoding and writing images.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("cannot read image {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not an image p2g can read (supported: JPEG, PNG, WebP, TIFF, BMP, GIF)")]
    UnknownFormat { what: String },
    #[error("{what} is empty (0 bytes)")]
    EmptyFile { what: String },
    #[error(
        "{what} declares an image too large to decode ({reason}); p2g reads at most \
         {limit} pixels (--max-pixels), within each format's own size limits"
    )]
    Oversized {
        what: String,
        reason: String,
        limit: u64,
    },
    #[error("cannot decode {what}: {reason} (the file may be truncated or corrupt)")]
    Decode { what: String, reason: String },
    #[error(
        "{what} is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels; \
         raise it with --max-pixels if the image is trusted"
    )]
    TooLarge {
        what: String,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error(
        "{what} has no pixels ({width}x{height}): its header declares an empty or invalid size"
    )]
    Empty {
        what: String,
        width: u32,
        height: u32,
    },
    #[error("cannot write image {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}
