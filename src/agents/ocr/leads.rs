//! Leads: places where the OCR agent saw text but could not read it well, so that a caller
//! (the orchestrator's zoom policy) knows where a closer look could pay off.
//!
//! Two kinds. Text-like evidence no line explains: connected regions of the detector's
//! probability maps above `lead_prob` (half the DB threshold, so also evidence too weak to
//! become a box), outside every line read. And lines read with low confidence, kept or
//! dropped. Each lead carries the height of its text, which a zoom is sized from.

use crate::agents::{Lead, LeadKind};
use crate::vision::geometry::min_area_rect;
use crate::vision::{BBox, Quad};

use super::db::{self, MapView};
use super::zoom::line_height;

/// How text-like evidence becomes [`Blob`]s.
#[derive(Debug, Clone, Copy)]
pub struct BlobParams {
    /// Map pixels above this probability are text-like.
    pub prob: f32,
    /// Components smaller than this many map pixels are specks.
    pub min_area: usize,
    /// DB's unclip ratio: the text around a component is this much larger (see [`db`]).
    pub unclip_ratio: f32,
}

/// A connected region of text-like probability, in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub bbox: BBox,
    /// The height of the text it would be, grown as DB grows a box.
    pub text_height: f32,
    /// Its area in image pixels, and its probability summed over that area: how large and
    /// how certain it is.
    pub area: f32,
    pub mass: f32,
}

impl Blob {
    /// How much a blob looks like text worth reading: its mass weighted by its mean
    /// probability, so a large faint smear (cloud, foliage) ranks below a small sharp word.
    fn rank(&self) -> f32 {
        self.mass * self.mass / self.area.max(1e-6)
    }
}

impl Blob {
    /// The same blob in the pixels of an image this one was magnified from: divided by
    /// `scale` (per axis) and moved by `offset`.
    pub fn shrunk(&self, scale: [f32; 2], offset: [f32; 2]) -> Self {
        let b = self.bbox;
        Self {
            bbox: BBox::new(
                b.x1 / scale[0] + offset[0],
                b.y1 / scale[1] + offset[1],
                b.x2 / scale[0] + offset[0],
                b.y2 / scale[1] + offset[1],
            ),
            text_height: self.text_height / (scale[0] + scale[1]) * 2.0,
            area: self.area / (scale[0] * scale[1]),
            mass: self.mass / (scale[0] * scale[1]),
        }
    }
}

/// The text-like components of `view` outside every quad of `explained` (image pixels).
pub fn blobs(view: &MapView, explained: &[Quad], p: &BlobParams) -> Vec<Blob> {
    let map = &view.map;
    let in_map: Vec<Quad> = explained
        .iter()
        .map(|q| q.map(|pt| [pt[0] / view.sx, pt[1] / view.sy]))
        .collect();
    let mut mask = db::unexplained_mask(map, &in_map, p.prob);
    let mut out = Vec::new();
    let per_pixel = (view.sx + view.sy) / 2.0;
    db::for_each_component(&mut mask, map.width, map.height, |pixels| {
        if pixels.len() < p.min_area.max(1) {
            return true;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        let mut mass = 0u64;
        for &(x, y) in pixels {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            mass += u64::from(map.data[y as usize * map.width + x as usize]);
        }
        let (rect, _) = min_area_rect(&db::row_extremes(pixels));
        out.push(Blob {
            bbox: BBox::new(
                x0 as f32 * view.sx,
                y0 as f32 * view.sy,
                (x1 + 1) as f32 * view.sx,
                (y1 + 1) as f32 * view.sy,
            ),
            text_height: unclipped_height(&rect, p.unclip_ratio) * per_pixel,
            area: pixels.len() as f32 * view.sx * view.sy,
            mass: mass as f32 / 255.0 * view.sx * view.sy,
        });
        true
    });
    out
}

/// The shorter side of `rect` grown as DB grows its boxes (`area * ratio / perimeter` on
/// every side), so a blob's text height compares with the heights of boxes. Sides are
/// counted in whole pixels: a one-pixel-thick component is one pixel thick, not zero.
fn unclipped_height(rect: &Quad, ratio: f32) -> f32 {
    let (w, h) = rect.side_lengths();
    let (w, h) = (w + 1.0, h + 1.0);
    let grow = w * h * ratio / (2.0 * (w + h));
    w.min(h) + 2.0 * grow
}

/// How far an unread-text lead's box reaches past its blob, in text heights: a blob is DB's
/// shrunk kernel of the text, and DB grows a box by `area * unclip_ratio / perimeter` a side,
/// which for a line is about 0.3 of the grown height. So a lead's box is where the text is
/// (as a line's box is), and a caller adds the context a zoom needs: the detector often sees
/// only part of a word (on a flag the map covered six of eight letters and stopped 2.2 text
/// heights short of the word's end; a brand on a panel was boxed as its first half).
const LEAD_MARGIN: f32 = 0.3;

/// Blobs whose boxes come within this many text heights of each other are one lead: the
/// letters of a word, or the lines of one sign, read by one zoom.
const MERGE_REACH: f32 = 0.5;

/// At most this many blobs are merged: the rest are specks after the largest.
const MAX_BLOBS: usize = 512;

/// Merges nearby blobs into at most `max` [`LeadKind::UnreadText`] leads, most text-like first,
/// their boxes padded and clamped to the `width x height` image.
pub fn unread_leads(mut blobs: Vec<Blob>, width: f32, height: f32, max: usize) -> Vec<Lead> {
    blobs.sort_by(|a, b| b.rank().total_cmp(&a.rank()));
    blobs.truncate(MAX_BLOBS);
    let mut groups: Vec<Blob> = Vec::new();
    for b in blobs {
        groups.push(b);
        // Merging may make a group reach another: repeat until nothing touches.
        while let Some((i, j)) = touching_pair(&groups) {
            let g = groups.swap_remove(j);
            groups[i] = joined(&groups[i], &g);
        }
    }
    groups.sort_by(|a, b| b.rank().total_cmp(&a.rank()));
    groups
        .into_iter()
        .take(max)
        .map(|g| Lead {
            bbox: padded(&g.bbox, LEAD_MARGIN * g.text_height, width, height),
            kind: LeadKind::UnreadText,
            text_height: Some(round1(g.text_height)),
            text: None,
            score: 0.0,
        })
        .collect()
}

/// The first two groups (`i < j`) close enough to merge.
fn touching_pair(groups: &[Blob]) -> Option<(usize, usize)> {
    for j in 1..groups.len() {
        for i in 0..j {
            let (a, b) = (&groups[i], &groups[j]);
            let reach = MERGE_REACH * a.text_height.max(b.text_height);
            let grown = padded(&a.bbox, reach, f32::MAX, f32::MAX);
            if grown.intersection(&b.bbox) > 0.0 {
                return Some((i, j));
            }
        }
    }
    None
}

fn joined(a: &Blob, b: &Blob) -> Blob {
    let mass = a.mass + b.mass;
    Blob {
        bbox: BBox::new(
            a.bbox.x1.min(b.bbox.x1),
            a.bbox.y1.min(b.bbox.y1),
            a.bbox.x2.max(b.bbox.x2),
            a.bbox.y2.max(b.bbox.y2),
        ),
        // The text of the larger part sets the height.
        text_height: (a.text_height * a.mass + b.text_height * b.mass) / mass.max(1e-6),
        area: a.area + b.area,
        mass,
    }
}

/// A line read with low confidence (`text` at `score`) as a [`LeadKind::LowConfidence`]
/// lead: the line's box, clamped to the `width x height` image.
pub fn low_confidence_lead(quad: &Quad, text: &str, score: f32, width: f32, height: f32) -> Lead {
    let h = line_height(quad);
    Lead {
        bbox: padded(&quad.bbox(), 0.0, width, height),
        kind: LeadKind::LowConfidence,
        text_height: Some(round1(h)),
        text: Some(text.to_string()),
        score,
    }
}

fn padded(b: &BBox, by: f32, width: f32, height: f32) -> BBox {
    BBox::new(b.x1 - by, b.y1 - by, b.x2 + by, b.y2 + by)
        .clamp(width, height)
        .rounded()
}

fn round1(v: f32) -> f32 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::ocr::db::ProbMap;

    fn params() -> BlobParams {
        BlobParams {
            prob: 0.15,
            min_area: 6,
            unclip_ratio: 1.5,
        }
    }

    /// A 200x100 map at scale 2 (image 400x200) with a bright bar, a faint bar (below DB's
    /// threshold, above the lead threshold) and a speck.
    fn map() -> MapView {
        let mut map = ProbMap::new(200, 100);
        let mut fill = |x0: usize, y0: usize, x1: usize, y1: usize, v: u8| {
            for y in y0..y1 {
                for x in x0..x1 {
                    map.data[y * 200 + x] = v;
                }
            }
        };
        fill(10, 10, 90, 16, 230); // a read line
        fill(20, 60, 80, 64, 50); // faint: p = 0.2
        fill(150, 80, 152, 82, 200); // a 2x2 speck
        MapView {
            map,
            sx: 2.0,
            sy: 2.0,
        }
    }

    #[test]
    fn unexplained_evidence_becomes_blobs_in_image_pixels() {
        let line = Quad::from_bbox(&BBox::new(10.0, 10.0, 190.0, 40.0));
        let b = blobs(&map(), &[line], &params());
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(b[0].bbox, BBox::new(40.0, 120.0, 160.0, 128.0));
        // 60x4 map pixels: grown by 60*4*1.5/128 = 2.8 a side, so (4 + 5.6) * 2 image px.
        assert!(
            (b[0].text_height - 19.25).abs() < 0.1,
            "{}",
            b[0].text_height
        );
        // In image pixels: 240 map pixels of 2x2.
        assert_eq!(b[0].area, 960.0);
        assert!((b[0].mass - 960.0 * 50.0 / 255.0).abs() < 0.1);
        // Nothing explained: the read line is a blob too, the speck still is not.
        assert_eq!(blobs(&map(), &[], &params()).len(), 2);
    }

    #[test]
    fn nearby_blobs_merge_and_leads_are_padded_and_capped() {
        let blob = |x: f32, mass: f32| Blob {
            bbox: BBox::new(x, 100.0, x + 20.0, 110.0),
            text_height: 10.0,
            area: 100.0,
            mass,
        };
        // Two letters 4 px apart merge; one 100 px away stays apart.
        let leads = unread_leads(
            vec![blob(100.0, 5.0), blob(124.0, 5.0), blob(250.0, 20.0)],
            300.0,
            300.0,
            8,
        );
        assert_eq!(leads.len(), 2);
        // The larger first, grown by 0.3 text heights as DB grows a box.
        assert_eq!(leads[0].bbox, BBox::new(247.0, 97.0, 273.0, 113.0));
        assert_eq!(leads[1].bbox, BBox::new(97.0, 97.0, 147.0, 113.0));
        assert!(leads.iter().all(|l| l.kind == LeadKind::UnreadText
            && l.score == 0.0
            && l.text_height == Some(10.0)));
        let capped = unread_leads(vec![blob(0.0, 1.0), blob(200.0, 2.0)], 300.0, 300.0, 1);
        assert_eq!(capped.len(), 1);
        assert_eq!(capped[0].bbox.x1, 197.0);
    }

    #[test]
    fn blobs_map_back_from_a_magnified_crop() {
        let b = Blob {
            bbox: BBox::new(100.0, 40.0, 300.0, 80.0),
            text_height: 30.0,
            area: 400.0,
            mass: 200.0,
        }
        .shrunk([2.0, 2.0], [1000.0, 500.0]);
        assert_eq!(b.bbox, BBox::new(1050.0, 520.0, 1150.0, 540.0));
        assert_eq!(b.text_height, 15.0);
        assert_eq!((b.area, b.mass), (100.0, 50.0));
    }

    #[test]
    fn a_low_confidence_line_is_a_lead_with_its_text() {
        let q = Quad::from_bbox(&BBox::new(10.0, 10.0, 110.0, 30.0));
        let l = low_confidence_lead(&q, "NARRI", 0.6, 100.0, 100.0);
        assert_eq!(l.kind, LeadKind::LowConfidence);
        // The line's box, clamped to the 100x100 image.
        assert_eq!(l.bbox, BBox::new(10.0, 10.0, 100.0, 30.0));
        assert_eq!(l.text_height, Some(20.0));
        assert_eq!(l.text.as_deref(), Some("NARRI"));
    }
}
