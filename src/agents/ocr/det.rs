//! Text detection: a global pass over the whole image plus, for large images, overlapping
//! native-resolution tiles whose probability maps are stitched into one.

use image::RgbImage;

use super::db::{self, DbParams, MapView, ProbMap};
use super::OcrOptions;
use crate::agents::AgentError;
use crate::models::runtime::OnnxModel;
use crate::vision::crop::{resize_normalize_into, Normalize, Planes, Rect};
use crate::vision::geometry::Quad;
use crate::vision::tiling::{self, Tile};

/// What detection found: text lines in image pixels, and the probability maps of the passes
/// that ran (the global pass; the tiles, stitched), kept so that text-like evidence no line
/// explains can be reported as a lead.
pub struct Detection {
    pub quads: Vec<Quad>,
    pub maps: Vec<MapView>,
}

pub struct Detector {
    model: OnnxModel,
}

fn inference_err(reason: impl ToString) -> AgentError {
    AgentError::Inference {
        agent: "ocr (detection)".into(),
        reason: reason.to_string(),
    }
}

impl Detector {
    pub fn new(model: OnnxModel) -> Self {
        Self { model }
    }

    /// Detects text lines; quads are in `img` pixels.
    pub fn detect(&self, img: &RgbImage, opts: &OcrOptions) -> Result<Detection, AgentError> {
        let (w, h) = img.dimensions();
        let params = DbParams {
            thresh: opts.det_thresh,
            box_thresh: opts.box_thresh,
            unclip_ratio: opts.unclip_ratio,
            max_candidates: opts.max_candidates,
            min_size: 3.0,
        };
        let longest = w.max(h);
        let limit = opts.det_limit_side.max(32);
        let global_scale = (limit as f32 / longest as f32).min(1.0);
        let _span = tracing::debug_span!("ocr.detect", width = w, height = h).entered();

        let _s = tracing::debug_span!("ocr.detect.global", scale = global_scale).entered();
        let map = self.prob_map(img, Rect::full(img), global_scale)?;
        let quads: Vec<Quad> = db::boxes(&map, &params)
            .into_iter()
            .map(|(q, _)| q)
            .collect();
        drop(_s);
        let (sx, sy) = (w as f32 / map.width as f32, h as f32 / map.height as f32);
        let global: Vec<Quad> = quads.iter().map(|q| to_image(q, sx, sy, w, h)).collect();
        if global_scale >= 1.0 || !opts.tiling {
            return Ok(Detection {
                quads: global,
                maps: vec![MapView { map, sx, sy }],
            });
        }
        if let Some(why) = resolved_document(&quads, map.width, map.height, opts) {
            tracing::debug!(%why, "ocr: no tiles, the global pass resolves this document");
            return Ok(Detection {
                quads: global,
                maps: vec![MapView { map, sx, sy }],
            });
        }
        let unresolved = Unresolved::new(&map, &quads, sx, sy);
        let (tiled, tile_map) = self.detect_tiled(img, opts, &params, &unresolved, global.len())?;
        let mut maps = vec![MapView { map, sx, sy }];
        maps.extend(tile_map);
        Ok(Detection {
            quads: merge_global_into_tiled(tiled, global),
            maps,
        })
    }

    /// The tiled pass: tiles where the global pass saw text it could not resolve are read
    /// for lines. When the whole detection found little (`explore_max_boxes`), the tiles where
    /// the global pass saw nothing at all are read too, but only for their probability map
    /// (leads): the lines read stay those of the gated pass.
    fn detect_tiled(
        &self,
        img: &RgbImage,
        opts: &OcrOptions,
        params: &DbParams,
        unresolved: &Unresolved,
        global_boxes: usize,
    ) -> Result<(Vec<Quad>, Option<MapView>), AgentError> {
        let (w, h) = img.dimensions();
        let (layout, scale) = tile_layout(w, h, opts);
        // Tiles where the global pass saw no text it could not resolve add nothing but time
        // (and, on a 300 dpi scan, fragments of lines it already read whole).
        let run: Vec<&Tile> = layout
            .iter()
            .filter(|t| opts.tile_all || unresolved.count(t.core) >= MIN_UNRESOLVED_PIXELS)
            .collect();
        let _s = tracing::debug_span!(
            "ocr.detect.tiles",
            tiles = layout.len(),
            read = run.len(),
            scale
        )
        .entered();
        let blank = || {
            ProbMap::new(
                ((w as f32 * scale).round() as usize).max(1),
                ((h as f32 * scale).round() as usize).max(1),
            )
        };
        let inv = 1.0 / scale;
        let (mut stitched, mut quads) = (None, Vec::new());
        if !run.is_empty() {
            let mut map = blank();
            self.stitch(img, &run, scale, &mut map, true)?;
            quads = db::boxes(&map, params)
                .into_iter()
                .map(|(q, _)| to_image(&q, inv, inv, w, h))
                .collect();
            stitched = Some(map);
        }
        // A photo in which detection found (almost) nothing may still hold text too small to
        // leave any trace at the global pass's scale: a flag's 20-pixel letters in a
        // 4140-pixel photo. Only there is the cost (a detector pass per tile) paid.
        if opts.explore_tiles && global_boxes + quads.len() <= opts.explore_max_boxes {
            let explore: Vec<&Tile> = layout
                .iter()
                .filter(|t| !run.contains(t) && unresolved.blind(t.core) && has_edges(img, t.rect))
                .collect();
            tracing::debug!(explored = explore.len(), "ocr: tiles explored for leads");
            if !explore.is_empty() {
                let map = stitched.get_or_insert_with(blank);
                self.stitch(img, &explore, scale, map, false)?;
            }
        }
        let view = stitched.map(|map| MapView {
            map,
            sx: inv,
            sy: inv,
        });
        Ok((quads, view))
    }

    /// Reads `tiles` at `scale` into `stitched`. Each tile's whole map is merged in (max), so a
    /// line running into a skipped neighbour stays whole; with `own_cores`, each tile alone
    /// then decides inside its own core, where it had full context.
    fn stitch(
        &self,
        img: &RgbImage,
        tiles: &[&Tile],
        scale: f32,
        stitched: &mut ProbMap,
        own_cores: bool,
    ) -> Result<(), AgentError> {
        let (mw, mh) = (stitched.width, stitched.height);
        let to_map = |v: u32, max: usize| ((v as f32 * scale).round() as usize).min(max);
        let mut cores = Vec::new();
        for t in tiles {
            let map = self.prob_map(img, t.rect, scale)?;
            let (ox, oy) = (to_map(t.rect.x, mw), to_map(t.rect.y, mh));
            paste(stitched, &map, ox, oy, [ox, oy, mw, mh], |dst, src| {
                *dst = (*dst).max(src)
            });
            if own_cores {
                let [cx0, cy0, cx1, cy1] = t.core;
                let core = [
                    to_map(cx0, mw),
                    to_map(cy0, mh),
                    to_map(cx1, mw),
                    to_map(cy1, mh),
                ];
                cores.push((map, ox, oy, core));
            }
        }
        for (map, ox, oy, core) in &cores {
            paste(stitched, map, *ox, *oy, *core, |dst, src| *dst = src);
        }
        Ok(())
    }

    /// Runs the detector on `img[rect]` scaled by `scale`, padded to a multiple of 32, and
    /// returns the probability map of the unpadded part.
    fn prob_map(&self, img: &RgbImage, rect: Rect, scale: f32) -> Result<ProbMap, AgentError> {
        let sw = ((rect.width as f32 * scale).round() as usize).max(1);
        let sh = ((rect.height as f32 * scale).round() as usize).max(1);
        let (pw, ph) = (sw.div_ceil(32) * 32, sh.div_ceil(32) * 32);
        let mut input = vec![0f32; 3 * pw * ph];
        resize_normalize_into(
            img,
            rect,
            sw,
            sh,
            &Normalize::IMAGENET_BGR,
            &mut Planes {
                data: &mut input,
                height: ph,
                stride: pw,
            },
        );
        self.model.run(&[1, 3, ph, pw], &input, inference_err, |dims, data| {
            if dims.len() != 4 || dims[2] as usize != ph || dims[3] as usize != pw {
                return Err(inference_err(format!(
                    "detector output has shape {dims:?}, expected [1, 1, {ph}, {pw}]: is this a DB text detector?"
                )));
            }
            let mut map = ProbMap::new(sw, sh);
            for y in 0..sh {
                for x in 0..sw {
                    map.data[y * sw + x] = ProbMap::quantise(data[y * pw + x]);
                }
            }
            Ok(map)
        })
    }
}

/// Maps a quad from probability-map pixels to image pixels (`sx`, `sy` image pixels per map
/// pixel), clamped to the `w x h` image.
fn to_image(q: &Quad, sx: f32, sy: f32, w: u32, h: u32) -> Quad {
    q.map(|p| {
        [
            (p[0] * sx).clamp(0.0, w as f32),
            (p[1] * sy).clamp(0.0, h as f32),
        ]
    })
}

/// The tiles of the tiled pass and the scale they are read at: native resolution, unless
/// that takes more than `max_tiles`, in which case the tiled pass is read at a reduced scale.
fn tile_layout(w: u32, h: u32, opts: &OcrOptions) -> (Vec<Tile>, f32) {
    let tile = opts.tile_size.max(64);
    let overlap = opts.tile_overlap.min(tile / 2);
    let mut scale = 1.0f32;
    let mut layout = tiling::tiles(w, h, tile, overlap);
    while layout.len() > opts.max_tiles.max(1) && scale > 0.05 {
        scale *= 0.85;
        let (t, o) = (
            (tile as f32 / scale) as u32,
            (overlap as f32 / scale) as u32,
        );
        layout = tiling::tiles(w, h, t, o);
    }
    (layout, scale)
}

/// An explored tile must have at least this share of edge pixels (see [`has_edges`]). Blank
/// paper around a 300 dpi receipt has none (sroie-dev 023 and 024: 0.0-0.3%), while every
/// tile of a street photo has several percent (a house with a flag: 7.6-21%, sky and clouds included).
const EXPLORE_MIN_EDGES: f32 = 0.01;
/// A pixel is an edge when its grey level differs from its right and lower neighbours by
/// this much together.
const EDGE_STEP: i32 = 30;

/// Whether `img[rect]` has enough edges to hold legible text: text is strokes, and a flat
/// tile (blank paper, a clear sky) costs a detector pass for nothing. Every other pixel of
/// every other row is looked at.
fn has_edges(img: &RgbImage, rect: Rect) -> bool {
    let grey = |x: u32, y: u32| {
        let p = img.get_pixel(x, y);
        (i32::from(p[0]) + 2 * i32::from(p[1]) + i32::from(p[2])) / 4
    };
    let (x1, y1) = (
        (rect.x + rect.width).min(img.width()).saturating_sub(1),
        (rect.y + rect.height).min(img.height()).saturating_sub(1),
    );
    let (mut edges, mut seen) = (0usize, 0usize);
    for y in (rect.y..y1).step_by(2) {
        for x in (rect.x..x1).step_by(2) {
            let g = grey(x, y);
            let step = (grey(x + 1, y) - g).abs() + (grey(x, y + 1) - g).abs();
            edges += usize::from(step > EDGE_STEP);
            seen += 1;
        }
    }
    seen > 0 && edges as f32 >= EXPLORE_MIN_EDGES * seen as f32
}

/// Why the global pass alone reads this page (or `None`: tiles may add lines). A large
/// scan is a document read at the global scale with room to spare: its text-like pixels left
/// outside every box are a line's halo, a stamp's speckle or a fold, and reading every tile
/// they touch at native resolution cost a 600-dpi receipt 9 of its 20 tiles and two thirds of
/// its time, for fragments of lines read whole already. So tiles are skipped when the page
/// reads as a document (at least `tile_document_lines` lines covering at least
/// `tile_document_coverage` of it) and even its small text — the 10th percentile of its
/// lines' heights — is at least `tile_resolved_height` global-map pixels tall: text
/// detection finds lines well below that. A photo's few signs never make a document, so its
/// small, far text still gets its tiles.
fn resolved_document(
    quads: &[Quad],
    width: usize,
    height: usize,
    opts: &OcrOptions,
) -> Option<String> {
    if opts.tile_all || opts.tile_resolved_height <= 0.0 || quads.len() < opts.tile_document_lines {
        return None;
    }
    let area = (width * height).max(1) as f32;
    let covered: f32 = quads.iter().map(|q| q.bbox().area()).sum::<f32>() / area;
    if covered < opts.tile_document_coverage {
        return None;
    }
    let mut heights: Vec<f32> = quads
        .iter()
        .map(|q| {
            let (a, b) = q.side_lengths();
            a.min(b)
        })
        .collect();
    heights.sort_by(f32::total_cmp);
    let small = heights[heights.len() / 10];
    (small >= opts.tile_resolved_height).then(|| {
        format!(
            "{} lines cover {:.1}% of the page; 90% of them are at least {small:.0} map pixels tall",
            quads.len(),
            100.0 * covered
        )
    })
}

/// Global-map pixels that look like text (probability above [`UNRESOLVED_PROB`]) but lie
/// outside every box the global pass found: text too small to resolve at that scale.
const UNRESOLVED_PROB: f32 = 0.15;
/// A tile is read when its core holds at least this many unresolved global-map pixels.
const MIN_UNRESOLVED_PIXELS: usize = 6;

/// Where the global pass saw text-like evidence it could not turn into a box, and where it
/// saw none at all.
struct Unresolved {
    mask: Vec<bool>,
    /// Every text-like pixel, inside a box or not.
    seen: Vec<bool>,
    width: usize,
    height: usize,
    /// Image pixels per global-map pixel.
    sx: f32,
    sy: f32,
}

impl Unresolved {
    fn new(map: &ProbMap, boxes: &[Quad], sx: f32, sy: f32) -> Self {
        Self {
            mask: db::unexplained_mask(map, boxes, UNRESOLVED_PROB),
            seen: db::unexplained_mask(map, &[], UNRESOLVED_PROB),
            width: map.width,
            height: map.height,
            sx,
            sy,
        }
    }

    /// Unresolved pixels inside `[x0, y0, x1, y1)` given in image pixels.
    fn count(&self, r: [u32; 4]) -> usize {
        self.count_in(&self.mask, r)
    }

    /// Whether the global pass saw nothing text-like at all inside `r` (image pixels).
    fn blind(&self, r: [u32; 4]) -> bool {
        self.count_in(&self.seen, r) == 0
    }

    fn count_in(&self, mask: &[bool], r: [u32; 4]) -> usize {
        let gx = |v: u32| ((v as f32 / self.sx) as usize).min(self.width);
        let gy = |v: u32| ((v as f32 / self.sy) as usize).min(self.height);
        let (x0, x1, y0, y1) = (gx(r[0]), gx(r[2]), gy(r[1]), gy(r[3]));
        (y0..y1)
            .map(|y| {
                mask[y * self.width + x0..y * self.width + x1]
                    .iter()
                    .filter(|&&m| m)
                    .count()
            })
            .sum()
    }
}

/// Writes `src` (placed at `ox, oy`) into `dst`, limited to the region `[x0, y0, x1, y1)`.
fn paste(
    dst: &mut ProbMap,
    src: &ProbMap,
    ox: usize,
    oy: usize,
    region: [usize; 4],
    f: impl Fn(&mut u8, u8),
) {
    let [x0, y0, x1, y1] = region;
    let xs = x0.max(ox)..x1.min(ox + src.width).min(dst.width);
    let ys = y0.max(oy)..y1.min(oy + src.height).min(dst.height);
    for y in ys {
        let srow = &src.data[(y - oy) * src.width..(y - oy + 1) * src.width];
        let drow = &mut dst.data[y * dst.width..(y + 1) * dst.width];
        for x in xs.clone() {
            f(&mut drow[x], srow[x - ox]);
        }
    }
}

/// Merges the two passes. A global line that tiles read too (their boxes on the same row
/// span at least 80% of its width, whole or as several words) is dropped as a duplicate.
/// Otherwise the global line is kept — tiles missed it (text larger than a tile's overlap, or
/// a tile that was not read) or saw only fragments of it at a tile's edge — and the tile boxes
/// lying inside it are dropped as those fragments. Only same-row boxes count, so the unclipped
/// boxes of the lines above and below never hide a line.
fn merge_global_into_tiled(mut tiled: Vec<Quad>, global: Vec<Quad>) -> Vec<Quad> {
    let tiled_boxes: Vec<_> = tiled.iter().map(Quad::bbox).collect();
    let mut drop_tiled = vec![false; tiled.len()];
    let mut keep_global = Vec::new();
    for g in global {
        let gb = g.bbox();
        if gb.area() <= 0.0 {
            continue;
        }
        let same_row: Vec<usize> = (0..tiled_boxes.len())
            .filter(|&i| {
                let tb = &tiled_boxes[i];
                tb.intersection(&gb) > 0.0
                    && tb.vertical_overlap(&gb) >= 0.5 * tb.height().min(gb.height())
            })
            .collect();
        let mut spans: Vec<(f32, f32)> = same_row
            .iter()
            .map(|&i| (tiled_boxes[i].x1.max(gb.x1), tiled_boxes[i].x2.min(gb.x2)))
            .collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut covered = 0.0;
        let mut end = f32::MIN;
        for (a, b) in spans {
            let a = a.max(end);
            if b > a {
                covered += b - a;
                end = b;
            }
        }
        if covered >= 0.8 * gb.width() {
            continue;
        }
        for &i in &same_row {
            let tb = &tiled_boxes[i];
            if tb.intersection(&gb) >= 0.8 * tb.area() {
                drop_tiled[i] = true;
            }
        }
        keep_global.push(g);
    }
    let mut i = 0;
    tiled.retain(|_| {
        i += 1;
        !drop_tiled[i - 1]
    });
    tiled.extend(keep_global);
    tiled
}
