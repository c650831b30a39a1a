//! What a controller that sees ([`crate::controller::Controller::accepts_images`]) is
//! shown: the whole image, and crops of the regions the agents found.
//!
//! The crops are the answerable regions in view (already narrowed to what the question points
//! at), objects first — they are what P²G re-encodes — then text lines, in the order found,
//! at most [`super::LoopConfig::max_crops`]. Each is cut with a margin (a tight box loses the
//! context that tells a logo from a label) and, like the whole image, shrunk to at most
//! [`SHOWN_SIDE`] pixels a side: the tower resizes to its few hundred pixels anyway, and a
//! 12-megapixel photo need not be copied per step. How they are encoded (MLP or resampler)
//! is the controller's policy.

use std::sync::OnceLock;

use crate::agents::FindingKind;
use crate::controller::{RegionText, VisualInput};
use crate::vision::{BBox, Image};

use super::Session;

/// Longest side of an image handed to a vision-language controller.
pub const SHOWN_SIDE: u32 = 1024;

/// The margin around a crop, as a share of its box's larger side.
const CROP_MARGIN: f32 = 0.1;

impl Session<'_> {
    /// The whole image and the crops of `regions` (those the controller is given).
    pub(super) fn visual_inputs(&self, regions: &[RegionText]) -> Vec<VisualInput> {
        let (w, h) = (self.image.width(), self.image.height());
        let whole = BBox::new(0.0, 0.0, w as f32, h as f32);
        let global = self
            .shown_whole
            .get_or_init(|| shrunk(self.image.rgb().clone()))
            .clone();
        let mut inputs = vec![VisualInput {
            region: None,
            bbox: whole,
            window: whole,
            image: global,
        }];
        let kind = |r: &RegionText| self.evidence.get(&r.id).map(|e| e.kind);
        let objects = regions
            .iter()
            .filter(|r| kind(r) == Some(FindingKind::Object));
        let texts = regions
            .iter()
            .filter(|r| kind(r) != Some(FindingKind::Object));
        for r in objects.chain(texts).take(self.orch.cfg.max_crops) {
            let margin = r.bbox.width().max(r.bbox.height()) * CROP_MARGIN;
            let b = BBox::new(
                r.bbox.x1 - margin,
                r.bbox.y1 - margin,
                r.bbox.x2 + margin,
                r.bbox.y2 + margin,
            )
            .clamp(w as f32, h as f32)
            .rounded();
            let (cw, ch) = (b.width() as u32, b.height() as u32);
            if cw == 0 || ch == 0 {
                continue;
            }
            let cut = image::imageops::crop_imm(self.image.rgb(), b.x1 as u32, b.y1 as u32, cw, ch)
                .to_image();
            inputs.push(VisualInput {
                region: Some(r.id.clone()),
                bbox: r.bbox,
                window: b,
                image: shrunk(cut),
            });
        }
        inputs
    }
}

/// The image, at most [`SHOWN_SIDE`] a side.
fn shrunk(rgb: image::RgbImage) -> Image {
    let side = rgb.width().max(rgb.height());
    if side <= SHOWN_SIDE {
        return Image::from_rgb(rgb);
    }
    let scale = SHOWN_SIDE as f32 / side as f32;
    let (w, h) = (
        ((rgb.width() as f32 * scale).round() as u32).max(1),
        ((rgb.height() as f32 * scale).round() as u32).max(1),
    );
    Image::from_rgb(image::imageops::resize(
        &rgb,
        w,
        h,
        image::imageops::FilterType::Triangle,
    ))
}

/// A cell for the whole image as shown, made once per session.
pub(super) type ShownWhole = OnceLock<Image>;
