//! What a remote vision-language model is sent: P²G's visual budget in image parts.
//!
//! In-process, P²G encodes the whole image and each crop with the MLP (every patch) while
//! crops are few and with a resampler (a fixed, small number of tokens) when they are many.
//! Over an API p2g cannot choose the encoder, only the pixels, so the same rule becomes:
//!
//! - the whole image goes once, with the first question, at most [`ImageBudget::whole_side`]
//!   a side (it then stays the same in every later request, so a server's prompt cache keeps
//!   it);
//! - with 1-[`ImageBudget::separate`] crops, each crop is its own image part at native
//!   resolution, upscaled to [`ImageBudget::crop_min_side`] (a 20-pixel text line is below what
//!   a 336-pixel tower resolves) and labelled with its region id and box;
//! - with more, the crops are tiled into one Set-of-Mark image of at most
//!   [`ImageBudget::mosaic_side`] a side, each cell labelled with its region id (or the ids are
//!   marked on the whole image): a fixed budget however many regions the agents return.

use std::io::Cursor;
use std::sync::Mutex;

use base64::Engine as _;
use image::RgbImage;

use crate::controller::{ShownImage, VisualInput};
use crate::vision::mosaic::{fit_side, Layout, MarkStyle};
use crate::vision::visual_tokens::{Encoder, FEW_CROPS};
use crate::vision::BBox;

/// How many pixels a remote model is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageBudget {
    /// Longest side of the whole image.
    pub whole_side: u32,
    /// Shortest side a crop sent on its own is upscaled to.
    pub crop_min_side: u32,
    /// Longest side of a crop sent on its own.
    pub crop_max_side: u32,
    /// Crops sent as separate image parts; more go into one Set-of-Mark image.
    pub separate: usize,
    /// Longest side of the Set-of-Mark image.
    pub mosaic_side: u32,
    pub style: MarkStyle,
}

impl Default for ImageBudget {
    fn default() -> Self {
        Self {
            whole_side: 1024,
            crop_min_side: 128,
            crop_max_side: 1024,
            separate: FEW_CROPS,
            mosaic_side: 1024,
            style: MarkStyle::Mosaic,
        }
    }
}

/// One image part: a data URL and what it shows.
#[derive(Debug, Clone)]
pub struct Part {
    pub url: String,
    pub width: u32,
    pub height: u32,
}

/// A crop sent on its own, with its label.
#[derive(Debug, Clone)]
pub struct CropPart {
    pub region: String,
    pub bbox: BBox,
    pub part: Part,
}

/// Everything sent for one decision.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub whole: Option<Part>,
    pub crops: Vec<CropPart>,
    /// The Set-of-Mark image and the region ids in it, in order.
    pub mosaic: Option<(Vec<String>, Part)>,
    pub records: Vec<ShownImage>,
}

/// Encodes images once: the whole image is sent again with every request.
#[derive(Default)]
pub struct PartCache {
    kept: Mutex<Vec<(String, Part)>>,
}

/// Parts kept (the whole image of the last few questions, the crops of the last steps).
const KEPT: usize = 32;

impl PartCache {
    fn get_or_encode(&self, key: String, rgb: impl FnOnce() -> RgbImage) -> Part {
        if let Ok(kept) = self.kept.lock() {
            if let Some((_, p)) = kept.iter().find(|(k, _)| *k == key) {
                return p.clone();
            }
        }
        let part = encode(&rgb());
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= KEPT {
                kept.remove(0);
            }
            kept.push((key, part.clone()));
        }
        part
    }
}

/// Plans and encodes the parts for `visual` (the whole image first, then crops).
pub fn prepare(visual: &[VisualInput], budget: &ImageBudget, cache: &PartCache) -> Sent {
    let mut sent = Sent::default();
    let (wholes, crops): (Vec<&VisualInput>, Vec<&VisualInput>) =
        visual.iter().partition(|v| v.region.is_none());
    if let Some(w) = wholes.first() {
        let side = budget.whole_side.max(64);
        let key = format!("whole:{}:{side}", w.image.sha256());
        let part = cache.get_or_encode(key, || fit_side(w.image.rgb(), 1, side));
        sent.records.push(record(None, w.bbox, &part, None));
        sent.whole = Some(part);
    }
    if crops.len() <= budget.separate {
        for c in crops {
            let Some(region) = c.region.clone() else {
                continue;
            };
            let key = format!(
                "crop:{}:{}:{}",
                c.image.sha256(),
                budget.crop_min_side,
                budget.crop_max_side
            );
            let part = cache.get_or_encode(key, || {
                fit_side(c.image.rgb(), budget.crop_min_side, budget.crop_max_side)
            });
            sent.records
                .push(record(Some(region.clone()), c.bbox, &part, None));
            sent.crops.push(CropPart {
                region,
                bbox: c.bbox,
                part,
            });
        }
    } else if let Some((ids, part, layout, union)) = set_of_mark(&crops, wholes.first(), budget) {
        let mut r = record(Some(ids.join(",")), union, &part, Some(layout));
        r.encoder = Encoder::SetOfMark {
            width: part.width,
            height: part.height,
            crops: ids.len(),
        };
        sent.records.push(r);
        sent.mosaic = Some((ids, part));
    }
    sent
}

fn record(region: Option<String>, bbox: BBox, part: &Part, layout: Option<Layout>) -> ShownImage {
    ShownImage {
        region,
        bbox,
        encoder: Encoder::ImagePart {
            width: part.width,
            height: part.height,
        },
        tokens: 0,
        layout,
    }
}

/// The crops in one image: tiled from their own (native) pixels, or marked on the whole image.
fn set_of_mark(
    crops: &[&VisualInput],
    whole: Option<&&VisualInput>,
    budget: &ImageBudget,
) -> Option<(Vec<String>, Part, Layout, BBox)> {
    let image = whole.map(|w| (w.bbox.width() as u32, w.bbox.height() as u32))?;
    let boxes: Vec<(String, BBox)> = crops
        .iter()
        .filter_map(|c| Some((c.region.clone()?, c.window)))
        .collect();
    let style = budget.style;
    let layout = Layout::new(style, image, &boxes, budget.mosaic_side.max(64));
    let rgb = match style {
        MarkStyle::Mosaic => layout.render_with(|cell| {
            crops
                .iter()
                .find(|c| c.region.as_deref() == Some(cell.region.as_str()))
                .map(|c| c.image.rgb().clone())
        }),
        // Marks are drawn on the whole image as shown (already shrunk): the layout scales
        // whatever it is given to its own size.
        MarkStyle::Marks => layout.render(whole?.image.rgb()),
    };
    let ids: Vec<String> = layout.cells.iter().map(|c| c.region.clone()).collect();
    let union = crops
        .iter()
        .map(|c| c.bbox)
        .reduce(|a, b| a.union(&b))
        .unwrap_or(BBox::new(0.0, 0.0, 0.0, 0.0));
    Some((ids, encode(&rgb), layout, union))
}

/// A data URL: PNG for small images (crops of text, where JPEG's ringing blurs strokes), JPEG
/// for photos.
pub fn encode(rgb: &RgbImage) -> Part {
    let mut bytes = Vec::new();
    let small = (rgb.width() as u64) * (rgb.height() as u64) <= 512 * 512;
    let (mime, ok) = if small {
        let enc = image::codecs::png::PngEncoder::new(Cursor::new(&mut bytes));
        ("image/png", rgb.write_with_encoder(enc).is_ok())
    } else {
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut bytes), 90);
        ("image/jpeg", rgb.write_with_encoder(enc).is_ok())
    };
    if !ok {
        // An in-memory encode fails only on a zero-sized image; send a blank pixel instead of
        // nothing so the request stays well-formed.
        tracing::warn!(w = rgb.width(), h = rgb.height(), "image part not encoded");
    }
    Part {
        url: format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        ),
        width: rgb.width(),
        height: rgb.height(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::Image;

    fn visual(crops: usize) -> Vec<VisualInput> {
        let rgb = RgbImage::from_fn(400, 300, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let whole = BBox::new(0.0, 0.0, 400.0, 300.0);
        let mut v = vec![VisualInput {
            region: None,
            bbox: whole,
            window: whole,
            image: Image::from_rgb(rgb.clone()),
        }];
        for i in 0..crops {
            let b = BBox::new(i as f32 * 30.0, 10.0, i as f32 * 30.0 + 60.0, 30.0);
            let cut = image::imageops::crop_imm(&rgb, b.x1 as u32, 10, 60, 20).to_image();
            v.push(VisualInput {
                region: Some(format!("r{}", i + 1)),
                bbox: b,
                window: b,
                image: Image::from_rgb(cut),
            });
        }
        v
    }

    #[test]
    fn few_crops_go_alone_and_upscaled_many_go_into_one_set_of_mark_image() {
        let cache = PartCache::default();
        let budget = ImageBudget::default();
        let few = prepare(&visual(3), &budget, &cache);
        assert!(few.whole.is_some() && few.mosaic.is_none());
        assert_eq!(few.crops.len(), 3);
        // A 60x20 line is brought to a 128-pixel short side, its shape kept.
        assert_eq!(
            (few.crops[0].part.width, few.crops[0].part.height),
            (384, 128)
        );
        assert_eq!(few.records.len(), 4);
        assert_eq!(few.records[1].region.as_deref(), Some("r1"));
        assert!(matches!(
            few.records[1].encoder,
            Encoder::ImagePart {
                width: 384,
                height: 128
            }
        ));
        let many = prepare(&visual(7), &budget, &cache);
        assert!(many.crops.is_empty());
        let (ids, part) = many.mosaic.as_ref().unwrap();
        assert_eq!(ids.len(), 7);
        assert!(part.width.max(part.height) <= budget.mosaic_side);
        assert_eq!(many.records.len(), 2);
        let layout = many.records[1].layout.as_ref().unwrap();
        assert_eq!(layout.cells.len(), 7);
        assert!(matches!(
            many.records[1].encoder,
            Encoder::SetOfMark { crops: 7, .. }
        ));
        assert!(part.url.starts_with("data:image/"));
    }

    #[test]
    fn marks_are_drawn_on_the_whole_image_and_parts_are_cached() {
        let cache = PartCache::default();
        let budget = ImageBudget {
            style: MarkStyle::Marks,
            ..ImageBudget::default()
        };
        let sent = prepare(&visual(6), &budget, &cache);
        let layout = sent.records[1].layout.as_ref().unwrap();
        assert_eq!(layout.style, MarkStyle::Marks);
        let again = prepare(&visual(6), &budget, &cache);
        assert_eq!(again.whole.unwrap().url, sent.whole.unwrap().url);
    }
}
