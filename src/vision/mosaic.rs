//! Set-of-Mark images: many region crops shown to a vision-language model as one picture.
//!
//! Set-of-Mark prompting (Yang et al. 2023, "Set-of-Mark Prompting Unleashes Extraordinary
//! Visual Grounding in GPT-4V") draws a visible id on each region so a model can both see the
//! regions and name them in its answer. P²G feeds its controller the crops its agents found
//! through a learned resampler with a fixed number of visual tokens; over an OpenAI-compatible
//! API the nearest equivalent is a fixed pixel budget for one image. So when there are more
//! crops than are worth sending one by one, they go as one image whose longer side is the
//! budget: either the crops tiled into a labelled mosaic ([`MarkStyle::Mosaic`]) or the whole
//! image with numbered boxes ([`MarkStyle::Marks`]).
//!
//! Layout and pixels are kept apart: a [`Layout`] is small, serialisable and enough to render
//! the same image again from the original, which is how `p2g trace draw` shows what the model
//! saw without storing it. Everything a render depends on — the label scale and where each
//! label goes — is derived from the layout alone, so a layout read back from a trace renders
//! pixel for pixel the same.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::font::{draw_label, fill_rect, text_size};
use super::BBox;

/// Budgets below this leave no room for a readable label next to any crop.
const MIN_SIDE: u32 = 64;
/// Far beyond any API's image limit; keeps a corrupt trace from allocating gigabytes.
const MAX_SIDE: u32 = 8192;
/// Dark gap between mosaic cells, so neighbouring crops do not read as one picture.
const SEP: u32 = 2;
/// A label drawn over a crop may take at most this fraction of the cell's width and height;
/// beyond that it would hide what the crop is about (the start of a text line), so the
/// layout reserves a strip above the cells instead.
const OVERLAY_FRACTION: u32 = 4;
/// Region ids are short; a longer one is cut so one odd id cannot widen every cell.
const MAX_LABEL_CHARS: usize = 24;

const BACKGROUND: Rgb<u8> = Rgb([0, 0, 0]);
const MOSAIC_FG: Rgb<u8> = Rgb([255, 255, 255]);
const MOSAIC_BG: Rgb<u8> = Rgb([0, 0, 0]);
/// Yellow reads on nearly every photo, and black on yellow is as legible as text gets.
const MARK: Rgb<u8> = Rgb([255, 221, 0]);
const MARK_FG: Rgb<u8> = Rgb([0, 0, 0]);

/// How many crops go into one Set-of-Mark image, and how it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkStyle {
    /// The crops tiled into one image, each cell labelled with its region id.
    Mosaic,
    /// The whole image, each region outlined and labelled where it is.
    Marks,
}

/// One labelled cell: the region, where it is in the original image, and where it sits in
/// the mosaic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub region: String,
    /// In original-image pixels, on whole pixels: exactly the pixels that were resampled.
    pub source: BBox,
    /// In Set-of-Mark image pixels.
    pub cell: BBox,
}

/// A Set-of-Mark image's layout: enough to render it again from the original image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub style: MarkStyle,
    pub width: u32,
    pub height: u32,
    pub cells: Vec<Cell>,
}

/// A crop being laid out: its whole-pixel source and its size in "fair share" units.
struct Item {
    region: String,
    source: BBox,
    /// Size with unit area (so every crop gets the same share of the canvas), the longer side
    /// capped so one very elongated crop cannot shrink all the others.
    norm: (f64, f64),
    /// Label size in pixels at the layout's label scale.
    label: (u32, u32),
}

/// Cells packed at one scale: `(x, y, width, height)` each, and the canvas size.
struct Packed {
    rects: Vec<[u32; 4]>,
    width: u32,
    height: u32,
}

impl Layout {
    /// Lays out crops `(region id, source box in image pixels)` of an image of size `image`
    /// into one image whose longer side is at most `max_side` (the budget).
    ///
    /// Mosaic: each crop keeps its aspect ratio and is scaled to about the same area as every
    /// other — a text line gets as many pixels as an object ten times its area, which is the
    /// point: it is the one a model cannot read when small. Crops go in the given order, in
    /// rows left to right (a short crop stacking under the one before when the row is tall
    /// enough), so ids read in order; the common scale is the largest at which the rows fit
    /// the budget. A label goes over its crop's top-left corner when it is small next to the
    /// crop (at most a quarter of its width and height), otherwise every cell gets a strip
    /// above it. The longer side is padded to exactly the budget, because the render reads
    /// the label scale from it. When not every crop fits with a readable label (thousands of
    /// crops in a small budget), the first ones that do are kept and the rest left out.
    ///
    /// Marks: the whole image scaled down (never up) to fit the budget, each cell the source
    /// box scaled.
    ///
    /// Boxes are clamped to the image and rounded outward to whole pixels; empty or
    /// non-finite ones are skipped. `max_side` is clamped to 64..=8192. An empty layout is
    /// 1x1; callers should check `cells.is_empty()`.
    pub fn new(
        style: MarkStyle,
        image: (u32, u32),
        crops: &[(String, BBox)],
        max_side: u32,
    ) -> Layout {
        let budget = max_side.clamp(MIN_SIDE, MAX_SIDE);
        let items = sanitize(image, crops);
        match style {
            MarkStyle::Mosaic => mosaic_layout(items, budget),
            MarkStyle::Marks => marks_layout(image, items, budget),
        }
    }

    /// Renders the layout from the original image: each crop resampled (CatmullRom) into its
    /// cell on a black background, and each region id drawn as a label, white on black, in
    /// the strip above the cell or over its top-left corner (Mosaic); or the image resampled
    /// (Triangle) with each box outlined in yellow and its id in black on yellow at its
    /// top-left, moved below or inside the box where an earlier label is in the way (Marks).
    /// Deterministic: the same layout and image give the same pixels. A source box outside
    /// `image` (the wrong image) leaves its cell black.
    pub fn render(&self, image: &RgbImage) -> RgbImage {
        match self.style {
            MarkStyle::Mosaic => self.render_with(|cell| source_pixels(image, &cell.source)),
            MarkStyle::Marks => {
                let (w, h) = self.canvas_size();
                let mut canvas = scaled_whole(image, w, h);
                self.draw_marks(&mut canvas);
                canvas
            }
        }
    }

    /// Renders a mosaic from each cell's crop as the caller already holds it (`crop` gives the
    /// pixels of the cell's source box, at any resolution; None leaves the cell black), so a
    /// caller holding the crops need not keep the whole image. Given the source boxes' own
    /// pixels it draws exactly what [`Layout::render`] does. A Marks layout has no crops:
    /// its marks are drawn on black.
    pub fn render_with(&self, mut crop: impl FnMut(&Cell) -> Option<RgbImage>) -> RgbImage {
        let (w, h) = self.canvas_size();
        let mut canvas = RgbImage::from_pixel(w, h, BACKGROUND);
        match self.style {
            MarkStyle::Mosaic => {
                for cell in &self.cells {
                    if let Some(pixels) = crop(cell) {
                        paint_cell(&mut canvas, &pixels, &cell.cell);
                    }
                }
                self.draw_mosaic_labels(&mut canvas);
            }
            MarkStyle::Marks => self.draw_marks(&mut canvas),
        }
        canvas
    }

    /// Maps a point of the mosaic back to the original image (the cell it falls in, scaled),
    /// or None if it is in no cell — so a box a model draws on the mosaic can be grounded.
    ///
    /// Where marks overlap, the smallest one holding the point is the one meant.
    pub fn to_image(&self, x: f32, y: f32) -> Option<(String, [f32; 2])> {
        let cell = self.cell_at(x, y)?;
        Some((cell.region.clone(), map_point(cell, x, y)))
    }

    /// Maps a whole box drawn on the mosaic back to image pixels: the cell holding the box's
    /// centre; the box clipped to that cell and scaled; None when the centre is in no cell.
    ///
    /// With Marks the whole image is visible, so a box reaching past the mark it was centred
    /// in is only clipped to the image.
    pub fn box_to_image(&self, b: &BBox) -> Option<(String, BBox)> {
        let (x1, x2) = (b.x1.min(b.x2), b.x1.max(b.x2));
        let (y1, y2) = (b.y1.min(b.y2), b.y1.max(b.y2));
        let cell = self.cell_at((x1 + x2) / 2.0, (y1 + y2) / 2.0)?;
        let clip = match self.style {
            MarkStyle::Mosaic => cell.cell,
            MarkStyle::Marks => BBox::new(0.0, 0.0, self.width as f32, self.height as f32),
        };
        let within = |v: f32, lo: f32, hi: f32| v.max(lo).min(hi);
        let a = map_point(
            cell,
            within(x1, clip.x1, clip.x2),
            within(y1, clip.y1, clip.y2),
        );
        let b = map_point(
            cell,
            within(x2, clip.x1, clip.x2),
            within(y2, clip.y1, clip.y2),
        );
        Some((cell.region.clone(), BBox::new(a[0], a[1], b[0], b[1])))
    }

    /// The canvas size, bounded so a layout from a damaged trace cannot exhaust memory.
    fn canvas_size(&self) -> (u32, u32) {
        (
            self.width.clamp(1, MAX_SIDE),
            self.height.clamp(1, MAX_SIDE),
        )
    }

    /// The label scale, from what the layout itself records, so a re-render matches.
    fn label_scale(&self) -> u32 {
        let (w, h) = self.canvas_size();
        label_scale(w.max(h), self.cells.len())
    }

    fn cell_at(&self, x: f32, y: f32) -> Option<&Cell> {
        if !(x.is_finite() && y.is_finite()) {
            return None;
        }
        let inside =
            |c: &&Cell| c.cell.x1 <= x && x <= c.cell.x2 && c.cell.y1 <= y && y <= c.cell.y2;
        let area = |c: &Cell| c.cell.width() * c.cell.height();
        self.cells
            .iter()
            .filter(inside)
            .min_by(|a, b| area(a).total_cmp(&area(b)))
    }

    /// Labels go in the strip above a cell when the layout left one free there, otherwise
    /// over the cell's top-left corner; deciding from the geometry keeps the render in step
    /// with whichever choice the layout made.
    fn draw_mosaic_labels(&self, canvas: &mut RgbImage) {
        let scale = self.label_scale();
        let occupied = Occupancy::new(canvas.width(), canvas.height(), &self.cells);
        for cell in &self.cells {
            let text = label_text(&cell.region);
            let (lw, lh) = text_size(&text, scale);
            let (x, y) = (cell.cell.x1.round() as i64, cell.cell.y1.round() as i64);
            let above = y.saturating_sub(i64::from(lh));
            let y = if occupied.is_free(x, above, lw, lh) {
                above
            } else {
                y
            };
            draw_label(canvas, &text, x, y, scale, MOSAIC_FG, MOSAIC_BG);
        }
    }

    /// Outlines first and labels after, so no outline crosses another region's label.
    fn draw_marks(&self, canvas: &mut RgbImage) {
        let scale = self.label_scale();
        let thickness = (canvas.width().max(canvas.height()) / 512).max(2);
        for cell in &self.cells {
            draw_outline(canvas, &cell.cell, thickness);
        }
        for (cell, [x, y, _, _]) in self.cells.iter().zip(self.mark_label_spots()) {
            draw_label(
                canvas,
                &label_text(&cell.region),
                x,
                y,
                scale,
                MARK_FG,
                MARK,
            );
        }
    }

    /// Each mark's label as `[x, y, width, height]`, placed in order so that a later label
    /// avoids the earlier ones: neighbouring boxes (a row of windows, words on a sign) would
    /// otherwise pile their ids on top of each other into something unreadable.
    fn mark_label_spots(&self) -> Vec<[i64; 4]> {
        let scale = self.label_scale();
        let (w, h) = self.canvas_size();
        let mut placed: Vec<[i64; 4]> = Vec::with_capacity(self.cells.len());
        for cell in &self.cells {
            let (lw, lh) = text_size(&label_text(&cell.region), scale);
            let spot = mark_label_spot(&cell.cell, (lw, lh), (w, h), &placed);
            placed.push(spot);
        }
        placed
    }
}

/// Where one mark's label goes: outside the box first (above, then below) so the region
/// itself stays visible, then inside it, at its left and then its right edge; the first spot
/// no earlier label covers, else the least covered. Labels shift left rather than run off the
/// right edge, since a cut-off id names the wrong region.
fn mark_label_spot(
    b: &BBox,
    (lw, lh): (u32, u32),
    (w, h): (u32, u32),
    placed: &[[i64; 4]],
) -> [i64; 4] {
    let (lw, lh, w, h) = (i64::from(lw), i64::from(lh), i64::from(w), i64::from(h));
    let [x1, y1, x2, y2] = [b.x1, b.y1, b.x2, b.y2].map(|v| v.round() as i64);
    let left = x1.min(w - lw).max(0);
    let right = x2.saturating_sub(lw).min(w - lw).max(0);
    let candidates = [
        (left, y1.saturating_sub(lh)),
        (left, y2),
        (left, y1),
        (right, y1.saturating_sub(lh)),
        (right, y2),
        (right, y2.saturating_sub(lh)),
    ];
    let covered = |&(x, y): &(i64, i64)| -> i64 {
        placed
            .iter()
            .map(|p| {
                let dx = (x + lw).min(p[0] + p[2]) - x.max(p[0]);
                let dy = (y + lh).min(p[1] + p[3]) - y.max(p[1]);
                dx.max(0) * dy.max(0)
            })
            .sum()
    };
    let (x, y) = candidates
        .into_iter()
        .filter(|&(_, y)| y >= 0 && y.saturating_add(lh) <= h)
        .min_by_key(covered)
        .unwrap_or((left, y1.clamp(0, h)));
    [x, y, lw, lh]
}

/// Upscales `img` so its shorter side is at least `min_side` (Lanczos3), and downscales so
/// its longer side is at most `max_side` (CatmullRom); returns it unchanged when within
/// both. Aspect kept; never returns a 0-sized image.
///
/// The upper bound wins when both cannot hold (a very long, thin crop). `max_side` is
/// clamped to 1..=8192; an empty image comes back as one black pixel.
pub fn fit_side(img: &RgbImage, min_side: u32, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return RgbImage::from_pixel(1, 1, BACKGROUND);
    }
    let max_side = max_side.clamp(1, MAX_SIDE);
    let min_side = min_side.min(max_side);
    let (short, long) = (w.min(h) as f64, w.max(h) as f64);
    let factor = if long > f64::from(max_side) {
        f64::from(max_side) / long
    } else if short < f64::from(min_side) {
        (f64::from(min_side) / short).min(f64::from(max_side) / long)
    } else {
        return img.clone();
    };
    let side = |v: u32| ((f64::from(v) * factor).round() as u32).clamp(1, max_side);
    let (nw, nh) = (side(w), side(h));
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    // Lanczos keeps the strokes of upscaled small text sharp; CatmullRom antialiases when
    // shrinking without Lanczos' ringing on hard edges.
    let filter = if factor > 1.0 {
        FilterType::Lanczos3
    } else {
        FilterType::CatmullRom
    };
    imageops::resize(img, nw, nh, filter)
}

/// Label scale from the canvas's longer side and the number of regions: about 3 at a
/// 1024-pixel budget (glyphs 21 pixels high, comfortably above a VLM's 14-pixel patches),
/// smaller when many regions crowd the image, never below 1.
fn label_scale(longer: u32, regions: usize) -> u32 {
    let by_size = (longer.saturating_add(200)) / 400;
    let by_crowding = f64::from(longer) / ((regions.max(1) as f64).sqrt() * 48.0);
    by_size.min(by_crowding as u32).clamp(1, 8)
}

fn label_text(region: &str) -> String {
    region.chars().take(MAX_LABEL_CHARS).collect()
}

/// Clamps each box to the image and rounds it outward, so the source is exactly the pixels
/// that get resampled and mapping back is exact; drops boxes with nothing in them.
fn sanitize(image: (u32, u32), crops: &[(String, BBox)]) -> Vec<Item> {
    let (iw, ih) = (image.0 as f32, image.1 as f32);
    crops
        .iter()
        .filter_map(|(region, b)| {
            let finite = [b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite());
            if !finite {
                return None;
            }
            let (x1, x2) = (b.x1.min(b.x2).floor(), b.x1.max(b.x2).ceil());
            let (y1, y2) = (b.y1.min(b.y2).floor(), b.y1.max(b.y2).ceil());
            let source = BBox::new(x1, y1, x2, y2).clamp(iw, ih);
            (source.width() >= 1.0 && source.height() >= 1.0).then(|| Item {
                region: region.clone(),
                source,
                norm: (1.0, 1.0),
                label: (0, 0),
            })
        })
        .collect()
}

fn mosaic_layout(mut items: Vec<Item>, budget: u32) -> Layout {
    let keep = labelled_capacity(&mut items, budget);
    items.truncate(keep);
    if items.is_empty() {
        return empty_layout(MarkStyle::Mosaic);
    }
    let scale = label_scale(budget, items.len());
    normalise(&mut items, scale);
    let overlaid = best_pack(&items, budget, 0);
    let strip = items.iter().map(|i| i.label.1).max().unwrap_or(0);
    let packed = match overlaid {
        Some(p) if labels_fit_over(&items, &p) => p,
        // The strip layout exists: `labelled_capacity` kept only crops it has room for.
        overlaid => best_pack(&items, budget, strip)
            .or(overlaid)
            .unwrap_or(Packed {
                rects: Vec::new(),
                width: 1,
                height: 1,
            }),
    };
    // The render reads the label scale from the longer side, so it must be the budget.
    let (mut width, mut height) = (packed.width.max(1), packed.height.max(1));
    if width >= height {
        width = budget;
    } else {
        height = budget;
    }
    let cells = items
        .into_iter()
        .zip(packed.rects)
        .map(|(item, [x, y, w, h])| Cell {
            region: item.region,
            source: item.source,
            cell: BBox::new(x as f32, y as f32, (x + w) as f32, (y + h) as f32),
        })
        .collect();
    Layout {
        style: MarkStyle::Mosaic,
        width,
        height,
        cells,
    }
}

/// How many crops, from the first, the budget can show with every label beside its crop
/// (in strips, at one pixel per crop). A crop whose id cannot be read is of no use in a
/// Set-of-Mark image, so the rest are left out: the ids shown are still the first ones, in
/// order, and the caller sees in `cells` which made it.
fn labelled_capacity(items: &mut [Item], budget: u32) -> usize {
    let all = items.len();
    let mut fits = |n: usize| {
        let prefix = &mut items[..n];
        normalise(prefix, label_scale(budget, n));
        let strip = prefix.iter().map(|i| i.label.1).max().unwrap_or(0);
        pack(prefix, 0.0, budget, strip).is_some()
    };
    if fits(all) {
        return all;
    }
    let (mut lo, mut hi) = (0, all);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn marks_layout(image: (u32, u32), items: Vec<Item>, budget: u32) -> Layout {
    let (iw, ih) = (image.0.max(1), image.1.max(1));
    // Only ever shrink: enlarging the whole image adds no detail, only cost.
    let factor = (f64::from(budget) / f64::from(iw.max(ih))).min(1.0);
    let width = ((f64::from(iw) * factor).round() as u32).clamp(1, budget);
    let height = ((f64::from(ih) * factor).round() as u32).clamp(1, budget);
    let (fx, fy) = (width as f32 / iw as f32, height as f32 / ih as f32);
    let cells = items
        .into_iter()
        .map(|item| {
            let s = item.source;
            Cell {
                region: item.region,
                source: s,
                cell: BBox::new(s.x1 * fx, s.y1 * fy, s.x2 * fx, s.y2 * fy),
            }
        })
        .collect();
    Layout {
        style: MarkStyle::Marks,
        width,
        height,
        cells,
    }
}

fn empty_layout(style: MarkStyle) -> Layout {
    Layout {
        style,
        width: 1,
        height: 1,
        cells: Vec::new(),
    }
}

/// Gives every crop unit area, keeping its aspect ratio. A crop more elongated than the
/// number of crops could not get its fair area inside a square canvas anyway, so its longer
/// side is capped at what a fair share allows.
fn normalise(items: &mut [Item], label_scale: u32) {
    let cap = (items.len().max(1) as f64).sqrt();
    for item in items {
        let aspect = f64::from(item.source.width()) / f64::from(item.source.height());
        let (mut w, mut h) = (aspect.sqrt(), 1.0 / aspect.sqrt());
        if w > cap {
            (w, h) = (cap, cap / aspect);
        } else if h > cap {
            (w, h) = (cap * aspect, cap);
        }
        item.norm = (w, h);
        item.label = text_size(&label_text(&item.region), label_scale);
    }
}

/// The largest common scale at which the rows fit the budget, by bisection (packing is
/// monotone in the scale but for rounding, which bisection tolerates).
fn best_pack(items: &[Item], budget: u32, strip: u32) -> Option<Packed> {
    pack(items, 0.0, budget, strip)?;
    let longest = items
        .iter()
        .map(|i| i.norm.0.max(i.norm.1))
        .fold(1.0, f64::max);
    let (mut lo, mut hi) = (0.0, f64::from(budget) / longest + 1.0);
    for _ in 0..48 {
        let mid = (lo + hi) / 2.0;
        if pack(items, mid, budget, strip).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    pack(items, lo, budget, strip)
}

/// A crop's cell at scale `t`: the longer side rounded, the shorter derived from the crop's
/// own pixel aspect, which keeps every cell within a pixel of its crop's shape.
fn cell_size(item: &Item, t: f64) -> (u32, u32) {
    let (sw, sh) = (
        f64::from(item.source.width()),
        f64::from(item.source.height()),
    );
    let px = |v: f64| (v.round().max(1.0)).min(f64::from(MAX_SIDE)) as u32;
    if sw >= sh {
        let w = px(item.norm.0 * t);
        (w, px(f64::from(w) * sh / sw))
    } else {
        let h = px(item.norm.1 * t);
        (px(f64::from(h) * sw / sh), h)
    }
}

/// Next-fit rows in the given order: a crop starts a new row when it would pass the budget's
/// width. A crop short enough to fit under the previous one within the row's height so far
/// stacks there instead, so text lines following a tall object fill the space beside it
/// rather than widening the row; the order still reads top to bottom, then left to right.
/// With a `strip`, each cell has that many pixels above it for its label and is at least as
/// wide as its label, so no two labels collide.
fn pack(items: &[Item], t: f64, budget: u32, strip: u32) -> Option<Packed> {
    let (budget, sep, strip) = (u64::from(budget), u64::from(SEP), u64::from(strip));
    let mut rects = Vec::with_capacity(items.len());
    let (mut row_y, mut row_h, mut width) = (0u64, 0u64, 0u64);
    // The current column: its left edge, width and bottom.
    let (mut col_x, mut col_w, mut col_bottom) = (0u64, 0u64, 0u64);
    for (i, item) in items.iter().enumerate() {
        let (w, h) = cell_size(item, t);
        let slot = u64::from(if strip > 0 { w.max(item.label.0) } else { w });
        let h = u64::from(h);
        let stacks = i > 0
            && col_bottom + sep + strip + h <= row_y + row_h
            && col_x + col_w.max(slot) <= budget;
        let top = if stacks {
            col_w = col_w.max(slot);
            col_bottom + sep
        } else {
            let next_x = if i == 0 { 0 } else { col_x + col_w + sep };
            if i > 0 && next_x + slot > budget {
                row_y += row_h + sep;
                (row_h, col_x) = (0, 0);
            } else {
                col_x = next_x;
            }
            col_w = slot;
            row_y
        };
        col_bottom = top + strip + h;
        row_h = row_h.max(col_bottom - row_y);
        width = width.max(col_x + col_w);
        if width > budget || row_y + row_h > budget {
            return None;
        }
        rects.push([col_x as u32, (top + strip) as u32, w, h as u32]);
    }
    Some(Packed {
        rects,
        width: width as u32,
        height: (row_y + row_h) as u32,
    })
}

/// Whether every label is small next to its crop, so drawing it over the corner hides
/// little of the crop.
fn labels_fit_over(items: &[Item], packed: &Packed) -> bool {
    items.iter().zip(&packed.rects).all(|(item, r)| {
        let (lw, lh) = item.label;
        lw.saturating_mul(OVERLAY_FRACTION) <= r[2] && lh.saturating_mul(OVERLAY_FRACTION) <= r[3]
    })
}

/// Which canvas pixels belong to a cell, to find where a label has room without a cell
/// under it.
struct Occupancy {
    width: u32,
    height: u32,
    taken: Vec<bool>,
}

impl Occupancy {
    fn new(width: u32, height: u32, cells: &[Cell]) -> Self {
        let mut taken = vec![false; width as usize * height as usize];
        for c in cells {
            let Some([x0, y0, x1, y1]) = pixel_rect(&c.cell, width, height) else {
                continue;
            };
            for y in y0..y1 {
                let row = y as usize * width as usize;
                taken[row + x0 as usize..row + x1 as usize].fill(true);
            }
        }
        Self {
            width,
            height,
            taken,
        }
    }

    fn is_free(&self, x: i64, y: i64, w: u32, h: u32) -> bool {
        let (x1, y1) = (
            x.saturating_add(i64::from(w)),
            y.saturating_add(i64::from(h)),
        );
        if x < 0 || y < 0 || x1 > i64::from(self.width) || y1 > i64::from(self.height) {
            return false;
        }
        (y..y1).all(|py| {
            let row = py as usize * self.width as usize;
            !self.taken[row + x as usize..row + x1 as usize]
                .iter()
                .any(|t| *t)
        })
    }
}

/// A box as whole pixels `[x0, y0, x1, y1)` clamped to `width` x `height`; None when empty.
fn pixel_rect(b: &BBox, width: u32, height: u32) -> Option<[u32; 4]> {
    let px = |v: f32, max: u32| (v.round().max(0.0) as u32).min(max);
    let (x0, x1) = (px(b.x1, width), px(b.x2, width));
    let (y0, y1) = (px(b.y1, height), px(b.y2, height));
    (x0 < x1 && y0 < y1).then_some([x0, y0, x1, y1])
}

/// The pixels of a source box; None when it lies outside the image (a layout rendered
/// against the wrong image), which leaves its cell dark rather than failing.
fn source_pixels(image: &RgbImage, source: &BBox) -> Option<RgbImage> {
    let [x0, y0, x1, y1] = pixel_rect(source, image.width(), image.height())?;
    Some(imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image())
}

/// Resamples a crop into its cell of the canvas.
fn paint_cell(canvas: &mut RgbImage, crop: &RgbImage, cell: &BBox) {
    let Some([x0, y0, x1, y1]) = pixel_rect(cell, canvas.width(), canvas.height()) else {
        return;
    };
    if crop.width() == 0 || crop.height() == 0 {
        return;
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let resized;
    let tile = if crop.dimensions() == (w, h) {
        crop
    } else {
        resized = imageops::resize(crop, w, h, FilterType::CatmullRom);
        &resized
    };
    imageops::replace(canvas, tile, i64::from(x0), i64::from(y0));
}

fn scaled_whole(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.width() == 0 || image.height() == 0 {
        RgbImage::from_pixel(width, height, BACKGROUND)
    } else if image.dimensions() == (width, height) {
        image.clone()
    } else {
        imageops::resize(image, width, height, FilterType::Triangle)
    }
}

/// The outline lies just inside the box, so it never covers the pixels around the region
/// the box leaves out, and a box at the image edge keeps all four sides.
fn draw_outline(canvas: &mut RgbImage, b: &BBox, thickness: u32) {
    let Some([x0, y0, x1, y1]) = pixel_rect(b, canvas.width(), canvas.height()) else {
        return;
    };
    let (x0, y0, x1, y1) = (i64::from(x0), i64::from(y0), i64::from(x1), i64::from(y1));
    let t = i64::from(thickness).min((x1 - x0).min(y1 - y0)).max(1);
    fill_rect(canvas, x0, y0, x1 - x0, t, MARK);
    fill_rect(canvas, x0, y1 - t, x1 - x0, t, MARK);
    fill_rect(canvas, x0, y0, t, y1 - y0, MARK);
    fill_rect(canvas, x1 - t, y0, t, y1 - y0, MARK);
}

/// A point of a cell mapped affinely onto the cell's source box.
fn map_point(cell: &Cell, x: f32, y: f32) -> [f32; 2] {
    let (c, s) = (&cell.cell, &cell.source);
    let along = |v: f32, c0: f32, c_len: f32, s0: f32, s_len: f32| {
        if c_len > 0.0 {
            s0 + (v - c0) * s_len / c_len
        } else {
            s0
        }
    };
    [
        along(x, c.x1, c.width(), s.x1, s.width()),
        along(y, c.y1, c.height(), s.y1, s.height()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine distinct colours, none of them the label colours.
    fn colour(i: usize) -> Rgb<u8> {
        let i = i as u32;
        Rgb([40 + i * 23, 200 - i * 17, 60 + (i * 47) % 150].map(|v| v as u8))
    }

    /// A grey image with each box painted a solid colour of its own.
    fn synthetic(size: (u32, u32), boxes: &[BBox]) -> RgbImage {
        let mut img = RgbImage::from_pixel(size.0, size.1, Rgb([128, 128, 128]));
        for (i, b) in boxes.iter().enumerate() {
            for y in b.y1 as u32..b.y2 as u32 {
                for x in b.x1 as u32..b.x2 as u32 {
                    img.put_pixel(x, y, colour(i));
                }
            }
        }
        img
    }

    /// Objects and wide, short text lines, as the agents report them.
    fn mixed_boxes() -> Vec<BBox> {
        vec![
            BBox::new(10.0, 10.0, 210.0, 160.0),
            BBox::new(250.0, 20.0, 570.0, 44.0),
            BBox::new(250.0, 60.0, 480.0, 80.0),
            BBox::new(600.0, 10.0, 700.0, 300.0),
            BBox::new(20.0, 200.0, 420.0, 230.0),
            BBox::new(450.0, 320.0, 560.0, 420.0),
            BBox::new(20.0, 260.0, 140.0, 280.0),
            BBox::new(150.0, 300.0, 400.0, 470.0),
            BBox::new(720.0, 400.0, 790.0, 590.0),
        ]
    }

    fn crops(boxes: &[BBox]) -> Vec<(String, BBox)> {
        boxes
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("r{}", i + 1), *b))
            .collect()
    }

    fn overlap(a: &BBox, b: &BBox) -> bool {
        a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2
    }

    /// Where the render put a cell's label: the strip above when free, else the corner.
    fn label_rect(layout: &Layout, cell: &Cell) -> BBox {
        let (w, h) = text_size(&cell.region, layout.label_scale());
        let (w, h) = (w as f32, h as f32);
        let above = BBox::new(
            cell.cell.x1,
            cell.cell.y1 - h,
            cell.cell.x1 + w,
            cell.cell.y1,
        );
        let free = above.y1 >= 0.0 && !layout.cells.iter().any(|c| overlap(&c.cell, &above));
        if free {
            above
        } else {
            BBox::new(
                cell.cell.x1,
                cell.cell.y1,
                cell.cell.x1 + w,
                cell.cell.y1 + h,
            )
        }
    }

    #[test]
    fn layout_keeps_order_fits_budget_and_does_not_overlap() {
        let boxes = mixed_boxes();
        for budget in [256, 768, 1024, 2000] {
            let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), budget);
            assert_eq!(layout.width.max(layout.height), budget);
            assert!(layout.width <= budget && layout.height <= budget);
            let ids: Vec<_> = layout.cells.iter().map(|c| c.region.as_str()).collect();
            assert_eq!(ids, ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"]);
            for (i, a) in layout.cells.iter().enumerate() {
                assert!(a.cell.x1 >= 0.0 && a.cell.y1 >= 0.0);
                assert!(a.cell.x2 <= layout.width as f32 && a.cell.y2 <= layout.height as f32);
                for b in &layout.cells[i + 1..] {
                    assert!(!overlap(&a.cell, &b.cell), "{a:?} overlaps {b:?}");
                }
            }
            // Reading order: the next cell is stacked under the previous one, in a column
            // further right, or in a row below everything so far.
            for (i, pair) in layout.cells.windows(2).enumerate() {
                let (a, b) = (&pair[0].cell, &pair[1].cell);
                let bottom = layout.cells[..=i]
                    .iter()
                    .map(|c| c.cell.y2)
                    .fold(0.0, f32::max);
                let stacked = b.x1 == a.x1 && b.y1 > a.y2;
                assert!(
                    stacked || b.x1 > a.x2 || b.y1 > bottom,
                    "{b:?} is before {a:?}"
                );
            }
        }
    }

    #[test]
    fn cells_keep_the_crop_aspect_within_a_pixel() {
        let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&mixed_boxes()), 1024);
        for c in &layout.cells {
            let (sw, sh) = (c.source.width(), c.source.height());
            let (cw, ch) = (c.cell.width(), c.cell.height());
            if sw >= sh {
                assert!((ch - cw * sh / sw).abs() <= 1.0, "{c:?}");
            } else {
                assert!((cw - ch * sw / sh).abs() <= 1.0, "{c:?}");
            }
        }
    }

    #[test]
    fn small_crops_get_a_fair_share() {
        // A text line and a large object: the line must come out big enough to read.
        let boxes = [
            BBox::new(0.0, 0.0, 1600.0, 1600.0),
            BBox::new(0.0, 1700.0, 300.0, 1720.0),
        ];
        let layout = Layout::new(MarkStyle::Mosaic, (2000, 2000), &crops(&boxes), 1024);
        let line = &layout.cells[1].cell;
        assert!(line.height() >= 40.0, "text line only {line:?}");
        let object = &layout.cells[0].cell;
        assert!(object.width() >= 200.0, "object only {object:?}");
    }

    #[test]
    fn render_paints_each_crop_into_its_cell() {
        let boxes = mixed_boxes();
        let image = synthetic((800, 600), &boxes);
        let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), 1024);
        let out = layout.render(&image);
        assert_eq!(out.dimensions(), (layout.width, layout.height));
        for (i, c) in layout.cells.iter().enumerate() {
            // The bottom-right quarter is clear of the corner label.
            let x = (c.cell.x1 + c.cell.width() * 0.75) as u32;
            let y = (c.cell.y1 + c.cell.height() * 0.75) as u32;
            let got = out.get_pixel(x, y).0;
            let want = colour(i).0;
            let close = got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 2);
            assert!(
                close,
                "cell {} at ({x},{y}) is {got:?}, want {want:?}",
                c.region
            );
        }
        assert_eq!(layout.render(&image), out, "render is deterministic");
    }

    #[test]
    fn render_with_held_crops_matches_render() {
        let boxes = mixed_boxes();
        let image = synthetic((800, 600), &boxes);
        let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), 768);
        let held = layout.render_with(|cell| source_pixels(&image, &cell.source));
        assert_eq!(held, layout.render(&image));
        // A crop held at another resolution still fills its cell; a missing one stays black.
        let out = layout.render_with(|cell| {
            let c = source_pixels(&image, &cell.source)?;
            let small = imageops::resize(
                &c,
                c.width() / 2 + 1,
                c.height() / 2 + 1,
                FilterType::Nearest,
            );
            (cell.region != "r2").then_some(small)
        });
        for (i, c) in layout.cells.iter().enumerate() {
            let (x, y) = (
                (c.cell.x1 + c.cell.width() * 0.75) as u32,
                (c.cell.y1 + c.cell.height() * 0.75) as u32,
            );
            let want = if c.region == "r2" {
                BACKGROUND
            } else {
                colour(i)
            };
            let got = out.get_pixel(x, y).0;
            assert!(
                got.iter().zip(want.0).all(|(g, w)| g.abs_diff(w) <= 2),
                "{}",
                c.region
            );
        }
        let _ = layout.render_with(|_| Some(RgbImage::new(0, 0)));
        let marks = Layout::new(MarkStyle::Marks, (800, 600), &crops(&boxes), 400);
        assert!(marks.render_with(|_| None).pixels().any(|p| *p == MARK));
    }

    #[test]
    fn render_draws_every_label() {
        let boxes = mixed_boxes();
        let image = synthetic((800, 600), &boxes);
        for budget in [256, 1024] {
            let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), budget);
            let out = layout.render(&image);
            for c in &layout.cells {
                let r = label_rect(&layout, c);
                let mut fg = 0;
                let mut bg = 0;
                for y in r.y1 as u32..r.y2 as u32 {
                    for x in r.x1 as u32..(r.x2 as u32).min(out.width()) {
                        match *out.get_pixel(x, y) {
                            MOSAIC_FG => fg += 1,
                            MOSAIC_BG => bg += 1,
                            _ => {}
                        }
                    }
                }
                assert!(
                    fg > 10 && bg > fg,
                    "label of {} at {r:?}: {fg} fg, {bg} bg",
                    c.region
                );
            }
        }
    }

    #[test]
    fn labels_too_big_for_their_cells_go_in_a_strip_above() {
        // Many text lines: the cells are short, so corner labels would hide the text.
        let boxes: Vec<_> = (0..12)
            .map(|i| BBox::new(10.0, 10.0 + 40.0 * i as f32, 600.0, 34.0 + 40.0 * i as f32))
            .collect();
        let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), 1024);
        for c in &layout.cells {
            let r = label_rect(&layout, c);
            assert!(r.y2 <= c.cell.y1, "label of {} is on its cell", c.region);
            assert!(!layout.cells.iter().any(|o| overlap(&o.cell, &r)));
        }
        // And big square crops keep their labels over the corner, spending no strip.
        let squares: Vec<_> = (0..9)
            .map(|i| BBox::new(60.0 * i as f32, 0.0, 60.0 * i as f32 + 50.0, 50.0))
            .collect();
        let layout = Layout::new(MarkStyle::Mosaic, (600, 60), &crops(&squares), 1024);
        assert_eq!(
            label_rect(&layout, &layout.cells[4]).y1,
            layout.cells[4].cell.y1
        );
    }

    #[test]
    fn labels_never_hide_much_of_a_crop() {
        let all = mixed_boxes();
        for n in [1, 2, 5, 9, 30, 200] {
            let boxes: Vec<_> = all.iter().cycle().take(n).copied().collect();
            for budget in [64, 512, 1024] {
                let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), budget);
                assert!(layout.label_scale() >= 1);
                for c in &layout.cells {
                    let r = label_rect(&layout, c);
                    if r.y1 >= c.cell.y1 {
                        assert!(r.width() * 4.0 <= c.cell.width(), "{n} {budget} {c:?}");
                        assert!(r.height() * 4.0 <= c.cell.height(), "{n} {budget} {c:?}");
                    }
                    let others = layout.cells.iter().filter(|o| o.region != c.region);
                    assert!(
                        !others.clone().any(|o| overlap(&o.cell, &r)),
                        "{n} {budget}"
                    );
                }
            }
        }
    }

    #[test]
    fn points_and_boxes_map_back_to_the_image() {
        let boxes = mixed_boxes();
        let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&boxes), 1024);
        for c in &layout.cells {
            let centre = ((c.cell.x1 + c.cell.x2) / 2.0, (c.cell.y1 + c.cell.y2) / 2.0);
            let (id, p) = layout.to_image(centre.0, centre.1).unwrap();
            assert_eq!(id, c.region);
            assert!((p[0] - (c.source.x1 + c.source.x2) / 2.0).abs() < 0.5);
            assert!((p[1] - (c.source.y1 + c.source.y2) / 2.0).abs() < 0.5);
            // A box spilling over the cell edge is clipped to the cell, so to the source.
            let spill = BBox::new(
                c.cell.x1 - 30.0,
                c.cell.y1 - 3.0,
                c.cell.x2 + 1.0,
                c.cell.y2,
            );
            let (id, b) = layout.box_to_image(&spill).unwrap();
            assert_eq!(id, c.region);
            for (got, want) in <[f32; 4]>::from(b).iter().zip(<[f32; 4]>::from(c.source)) {
                assert!((got - want).abs() < 0.01, "{b:?} vs {:?}", c.source);
            }
        }
        let last = layout.cells.last().unwrap().cell;
        assert_eq!(layout.to_image(last.x2 + 1.0, last.y2 + 1.0), None);
        assert_eq!(layout.to_image(f32::NAN, 3.0), None);
        let nowhere = BBox::new(-50.0, -50.0, -10.0, -10.0);
        assert_eq!(layout.box_to_image(&nowhere), None);
    }

    #[test]
    fn marks_outline_each_scaled_box() {
        let boxes = mixed_boxes();
        let image = synthetic((800, 600), &boxes);
        let layout = Layout::new(MarkStyle::Marks, (800, 600), &crops(&boxes), 400);
        assert_eq!((layout.width, layout.height), (400, 300));
        let out = layout.render(&image);
        assert_eq!(out.dimensions(), (400, 300));
        for (c, b) in layout.cells.iter().zip(&boxes) {
            assert_eq!(
                c.cell,
                BBox::new(b.x1 / 2.0, b.y1 / 2.0, b.x2 / 2.0, b.y2 / 2.0)
            );
            let (x, y) = (c.cell.x1 as u32, ((c.cell.y1 + c.cell.y2) / 2.0) as u32);
            assert_eq!(*out.get_pixel(x, y), MARK, "left edge of {}", c.region);
            let (x, y) = (((c.cell.x1 + c.cell.x2) / 2.0) as u32, c.cell.y2 as u32 - 1);
            assert_eq!(*out.get_pixel(x, y), MARK, "bottom edge of {}", c.region);
        }
        let scale = layout.label_scale();
        for c in &layout.cells {
            let (lw, lh) = text_size(&c.region, scale);
            let near = BBox::new(
                c.cell.x1,
                c.cell.y1 - lh as f32,
                c.cell.x1 + lw as f32,
                c.cell.y2 + lh as f32,
            )
            .clamp(400.0, 300.0)
            .rounded();
            let ink = (near.y1 as u32..near.y2 as u32)
                .flat_map(|y| (near.x1 as u32..near.x2 as u32).map(move |x| (x, y)))
                .filter(|&(x, y)| *out.get_pixel(x, y) == MARK_FG)
                .count();
            assert!(ink > 10, "no label for {}", c.region);
        }
        // Whole-image boxes map back at the image's scale, clipped only to the image.
        let (id, b) = layout
            .box_to_image(&BBox::new(4.0, 4.0, 90.0, 70.0))
            .unwrap();
        assert_eq!(id, "r1");
        assert_eq!(b, BBox::new(8.0, 8.0, 180.0, 140.0));
        // A small image is not enlarged.
        let small = Layout::new(MarkStyle::Marks, (300, 200), &crops(&boxes[..1]), 1024);
        assert_eq!((small.width, small.height), (300, 200));
    }

    #[test]
    fn neighbouring_marks_do_not_stack_their_labels() {
        let boxes: Vec<_> = (0..6)
            .map(|i| {
                BBox::new(
                    100.0 + 12.0 * i as f32,
                    100.0,
                    110.0 + 12.0 * i as f32,
                    150.0,
                )
            })
            .collect();
        let layout = Layout::new(MarkStyle::Marks, (400, 300), &crops(&boxes), 400);
        let spots = layout.mark_label_spots();
        for (i, a) in spots.iter().enumerate() {
            for b in &spots[i + 1..] {
                let apart = a[0] + a[2] <= b[0]
                    || b[0] + b[2] <= a[0]
                    || a[1] + a[3] <= b[1]
                    || b[1] + b[3] <= a[1];
                assert!(apart, "labels {a:?} and {b:?} overlap");
            }
        }
        // The first label sits right above its box.
        assert_eq!(spots[0][..2], [100, 100 - spots[0][3]]);
    }

    #[test]
    fn nested_marks_resolve_to_the_smallest() {
        let boxes = [
            BBox::new(0.0, 0.0, 400.0, 400.0),
            BBox::new(100.0, 100.0, 150.0, 150.0),
        ];
        let layout = Layout::new(MarkStyle::Marks, (400, 400), &crops(&boxes), 400);
        assert_eq!(layout.to_image(120.0, 120.0).unwrap().0, "r2");
        assert_eq!(layout.to_image(20.0, 20.0).unwrap().0, "r1");
    }

    #[test]
    fn fit_side_scales_up_and_down() {
        let line = RgbImage::from_pixel(200, 20, Rgb([1, 2, 3]));
        assert_eq!(fit_side(&line, 64, 2048).dimensions(), (640, 64));
        assert_eq!(fit_side(&line, 10, 2048).dimensions(), (200, 20));
        assert_eq!(fit_side(&line, 64, 100).dimensions(), (100, 10));
        // The upper bound wins a conflict.
        assert_eq!(fit_side(&line, 200, 1000).dimensions(), (1000, 100));
        let big = RgbImage::new(3000, 1000);
        assert_eq!(fit_side(&big, 448, 1500).dimensions(), (1500, 500));
        assert_eq!(fit_side(&RgbImage::new(0, 5), 64, 64).dimensions(), (1, 1));
        assert_eq!(
            fit_side(&RgbImage::new(5000, 1), 64, 0).dimensions(),
            (1, 1)
        );
        let solid = fit_side(&line, 64, 2048);
        assert!(solid.pixels().all(|p| *p == Rgb([1, 2, 3])));
    }

    #[test]
    fn garbage_does_not_panic() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let junk = vec![
            ("nan".to_string(), BBox::new(nan, 0.0, 10.0, 10.0)),
            ("inf".to_string(), BBox::new(0.0, 0.0, inf, 10.0)),
            ("flipped".to_string(), BBox::new(50.0, 50.0, 10.0, 10.0)),
            (
                "outside".to_string(),
                BBox::new(-500.0, -500.0, -100.0, -100.0),
            ),
            ("empty".to_string(), BBox::new(5.0, 5.0, 5.0, 9.0)),
            (String::new(), BBox::new(0.0, 0.0, 1e30, 1e30)),
            ("ünïcode-🙂".repeat(20), BBox::new(1.0, 1.0, 2.0, 2.0)),
            ("sliver".to_string(), BBox::new(0.0, 0.0, 4000.0, 1.0)),
        ];
        let image = RgbImage::from_pixel(100, 80, Rgb([7, 8, 9]));
        for style in [MarkStyle::Mosaic, MarkStyle::Marks] {
            for size in [(100, 80), (0, 0), (1, 1), (100_000, 3)] {
                let huge = Layout::new(style, size, &junk, u32::MAX);
                assert!(huge.width.max(huge.height) <= MAX_SIDE);
                for max_side in [0, 1, 64, 1000] {
                    let layout = Layout::new(style, size, &junk, max_side);
                    assert!(layout.width.max(layout.height) <= max_side.max(64));
                    let out = layout.render(&image);
                    assert!(out.width() >= 1 && out.height() >= 1);
                    let _ = layout.render(&RgbImage::new(0, 0));
                    let _ = layout.box_to_image(&BBox::new(nan, nan, inf, -inf));
                    let _ = layout.to_image(1e30, -1e30);
                }
            }
        }
        let valid = Layout::new(MarkStyle::Mosaic, (100, 80), &junk, 256);
        let ids: Vec<_> = valid.cells.iter().map(|c| c.region.clone()).collect();
        assert_eq!(ids[0], "flipped");
        assert!(!ids.contains(&"nan".to_string()) && !ids.contains(&"empty".to_string()));
    }

    #[test]
    fn damaged_layouts_render_without_panicking() {
        // As a corrupt or hand-edited trace might hold: absurd sizes and inverted cells.
        let image = RgbImage::from_pixel(100, 80, Rgb([7, 8, 9]));
        let damaged = Layout {
            style: MarkStyle::Mosaic,
            width: u32::MAX,
            height: 0,
            cells: vec![Cell {
                region: "x".into(),
                source: BBox::new(90.0, 90.0, -5.0, 1e9),
                cell: BBox::new(30.0, 30.0, 10.0, 10.0),
            }],
        };
        let _ = damaged.render(&image);
        let _ = damaged.box_to_image(&BBox::new(0.0, 0.0, 40.0, 40.0));
        let far = BBox::new(-1e30, -1e30, 1e30, 1e30);
        for style in [MarkStyle::Mosaic, MarkStyle::Marks] {
            let cells = vec![
                Cell {
                    region: "far".into(),
                    source: far,
                    cell: far,
                },
                Cell {
                    region: "off".into(),
                    source: far,
                    cell: BBox::new(1e30, 1e30, 2e30, 2e30),
                },
                Cell {
                    region: "neg".into(),
                    source: far,
                    cell: BBox::new(-9e20, 5.0, -1e20, 9.0),
                },
            ];
            let damaged = Layout {
                style,
                width: 50,
                height: 40,
                cells,
            };
            let _ = damaged.render(&image);
            let _ = damaged.to_image(3.0, 3.0);
            let _ = damaged.box_to_image(&BBox::new(0.0, 0.0, 4.0, 4.0));
        }
    }

    #[test]
    fn thousands_of_crops_fit_or_are_cut_in_order() {
        let boxes: Vec<_> = (0..5000)
            .map(|i| {
                let (x, y) = ((i % 100) as f32 * 20.0, (i / 100) as f32 * 20.0);
                BBox::new(x, y, x + 15.0 + (i % 7) as f32, y + 12.0)
            })
            .collect();
        let image = RgbImage::new(2000, 1000);
        for (max_side, at_least) in [(64, 4), (1024, 2000), (4096, 5000)] {
            let layout = Layout::new(MarkStyle::Mosaic, (2000, 1000), &crops(&boxes), max_side);
            let kept = layout.cells.len();
            assert!(kept >= at_least, "{max_side}: only {kept}");
            assert!(layout.width.max(layout.height) <= max_side);
            // Whatever is left out is left out from the end.
            let ids: Vec<_> = layout.cells.iter().map(|c| c.region.clone()).collect();
            assert_eq!(
                ids,
                crops(&boxes[..kept])
                    .into_iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>()
            );
            if max_side <= 1024 {
                let out = layout.render(&image);
                assert_eq!(out.dimensions(), (layout.width, layout.height));
            }
        }
    }

    #[test]
    fn layout_round_trips_through_json() {
        let layout = Layout::new(MarkStyle::Mosaic, (800, 600), &crops(&mixed_boxes()), 512);
        let json = serde_json::to_string(&layout).unwrap();
        assert!(json.contains(r#""style":"mosaic""#), "{json}");
        assert!(
            json.contains(r#""source":[10.0,10.0,210.0,160.0]"#),
            "{json}"
        );
        let back: Layout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, layout);
        let image = synthetic((800, 600), &mixed_boxes());
        assert_eq!(back.render(&image), layout.render(&image));
        let marks = Layout::new(MarkStyle::Marks, (800, 600), &crops(&mixed_boxes()), 512);
        let json = serde_json::to_string(&marks).unwrap();
        assert!(json.contains(r#""style":"marks""#));
        assert_eq!(serde_json::from_str::<Layout>(&json).unwrap(), marks);
    }
}
