//! Text detection: a global pass over the whole image plus, for large images, overlapping
//! native-resolution tiles whose probability maps are stitched into one.

use std::sync::Mutex;

use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;

use super::db::{self, DbParams, ProbMap};
use super::OcrOptions;
use crate::agents::AgentError;
use crate::vision::crop::{resize_normalize_into, Normalize, Planes, Rect};
use crate::vision::geometry::Quad;
use crate::vision::tiling;

/// A detected text line in original-image pixels.
#[derive(Debug, Clone, Copy)]
pub struct DetBox {
    pub quad: Quad,
}

pub struct Detector {
    session: Mutex<Session>,
}

fn inference_err(reason: impl ToString) -> AgentError {
    AgentError::Inference {
        agent: "ocr (detection)".into(),
        reason: reason.to_string(),
    }
}

impl Detector {
    pub fn new(session: Session) -> Self {
        Self {
            session: Mutex::new(session),
        }
    }

    /// Detects text lines; boxes are in `img` pixels.
    pub fn detect(&self, img: &RgbImage, opts: &OcrOptions) -> Result<Vec<DetBox>, AgentError> {
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

        let global = {
            let _s = tracing::debug_span!("ocr.detect.global", scale = global_scale).entered();
            let full = Rect::full(img);
            let map = self.prob_map(img, full, global_scale)?;
            let (sx, sy) = (w as f32 / map.width as f32, h as f32 / map.height as f32);
            db::boxes(&map, &params)
                .into_iter()
                .map(|(q, _score)| DetBox {
                    quad: q.map(|p| {
                        [
                            (p[0] * sx).clamp(0.0, w as f32),
                            (p[1] * sy).clamp(0.0, h as f32),
                        ]
                    }),
                })
                .collect::<Vec<_>>()
        };
        if global_scale >= 1.0 || !opts.tiling {
            return Ok(global);
        }
        let tiled = self.detect_tiled(img, opts, &params)?;
        Ok(merge_global_into_tiled(tiled, global))
    }

    fn detect_tiled(
        &self,
        img: &RgbImage,
        opts: &OcrOptions,
        params: &DbParams,
    ) -> Result<Vec<DetBox>, AgentError> {
        let (w, h) = img.dimensions();
        let tile = opts.tile_size.max(64);
        let overlap = opts.tile_overlap.min(tile / 2);
        // Too many native tiles: read the tiled pass at a reduced scale instead.
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
        let _s = tracing::debug_span!("ocr.detect.tiles", tiles = layout.len(), scale).entered();
        let (mw, mh) = (
            ((w as f32 * scale).round() as usize).max(1),
            ((h as f32 * scale).round() as usize).max(1),
        );
        let mut stitched = ProbMap::new(mw, mh);
        let to_map = |v: u32, max: usize| ((v as f32 * scale).round() as usize).min(max);
        for t in &layout {
            let map = self.prob_map(img, t.rect, scale)?;
            let (ox, oy) = (to_map(t.rect.x, mw), to_map(t.rect.y, mh));
            let [cx0, cy0, cx1, cy1] = t.core;
            let (cx0, cx1) = (to_map(cx0, mw), to_map(cx1, mw));
            let (cy0, cy1) = (to_map(cy0, mh), to_map(cy1, mh));
            for y in cy0..cy1 {
                let ty = y - oy;
                if ty >= map.height {
                    break;
                }
                let src = &map.data[ty * map.width..(ty + 1) * map.width];
                let x_end = cx1.min(ox + map.width);
                if x_end <= cx0 {
                    continue;
                }
                stitched.data[y * mw + cx0..y * mw + x_end]
                    .copy_from_slice(&src[cx0 - ox..x_end - ox]);
            }
        }
        let inv = 1.0 / scale;
        Ok(db::boxes(&stitched, params)
            .into_iter()
            .map(|(q, _score)| DetBox {
                quad: q.map(|p| {
                    [
                        (p[0] * inv).clamp(0.0, w as f32),
                        (p[1] * inv).clamp(0.0, h as f32),
                    ]
                }),
            })
            .collect())
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
        let tensor = TensorRef::from_array_view(([1usize, 3, ph, pw], input.as_slice()))
            .map_err(inference_err)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| inference_err("session poisoned"))?;
        let outputs = session.run(ort::inputs![tensor]).map_err(inference_err)?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(inference_err)?;
        let dims: Vec<i64> = shape.iter().copied().collect();
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
    }
}

/// Keeps every tile box, and adds a global box only where the tiles did not already cover it.
/// Text larger than the tile overlap can be cut into fragments by tiles; where the global pass
/// saw such a line whole (the fragments cover little of it), the line replaces its fragments.
fn merge_global_into_tiled(mut tiled: Vec<DetBox>, global: Vec<DetBox>) -> Vec<DetBox> {
    for g in global {
        let gb = g.quad.bbox();
        if gb.area() <= 0.0 {
            continue;
        }
        let covered: f32 = tiled.iter().map(|t| t.quad.bbox().intersection(&gb)).sum();
        if covered >= 0.5 * gb.area() {
            continue;
        }
        tiled.retain(|t| {
            let tb = t.quad.bbox();
            tb.area() <= 0.0 || tb.intersection(&gb) < 0.8 * tb.area()
        });
        tiled.push(g);
    }
    tiled
}
