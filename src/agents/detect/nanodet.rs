//! NanoDet on ONNX Runtime: the session, the letterboxed input, and NanoDet's own decoding.
//!
//! NanoDet is a one-stage anchor-free detector with a Generalized Focal Loss head: for every
//! cell of three grids (strides 8, 16, 32 of a square input) it gives one sigmoid score per
//! class and, for each side of the box, a distribution over `reg_max + 1` distances (in cells).
//! The box side is the distribution's expected value times the stride, measured from the
//! cell's centre (`(i + 0.5) * stride`), as `GFLHead.get_bboxes_single` does; at most
//! `pre_nms` cells per level are kept by their best score, then NMS runs per class. (The
//! @vladmandic/human demo takes the distribution's arg-max and a fixed 2.5x scale instead;
//! the integral is the model's definition.)

use std::path::Path;

use image::RgbImage;
use ort::environment::Environment;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::agents::AgentError;
use crate::models::runtime::{self, SessionOptions};
use crate::models::ModelError;
use crate::vision::crop::Rect;
use crate::vision::BBox;

/// How pixels become the model's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// `"rgb"` or `"bgr"`: the channel order of the input planes.
    pub channels: String,
    /// `(value * scale - mean) / std`, value in 0..=255.
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// What the letterbox's padding holds, before normalisation.
    pub pad_value: f32,
}

/// One level's raw outputs: `cells x classes` scores and `cells x 4 (reg_max + 1)` distances.
#[derive(Debug, Clone)]
pub struct Level {
    pub grid: usize,
    pub stride: f32,
    pub scores: Vec<f32>,
    pub dist: Vec<f32>,
}

/// A box in input pixels with its class and score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawBox {
    pub class: usize,
    pub score: f32,
    pub bbox: BBox,
}

/// The NanoDet session.
pub struct NanoDet {
    model: runtime::OnnxModel,
    input: String,
    /// The square input side (416 for these weights).
    pub size: u32,
    pub classes: usize,
    pub reg_max: usize,
    /// Per level: score output name, distance output name, grid side.
    levels: Vec<(String, String, usize)>,
    path: std::path::PathBuf,
}

impl NanoDet {
    /// Opens the model and finds its outputs by shape: `[1, g*g, classes]` scores and
    /// `[1, g*g, 4 (reg_max + 1)]` distances for each grid `g`.
    pub fn open(
        env: &Environment,
        path: &Path,
        session: &SessionOptions,
        classes: usize,
    ) -> Result<Self, AgentError> {
        let model = runtime::OnnxModel::open(env, path, session)?;
        let bad = |reason: String| {
            AgentError::Model(ModelError::BadFormat {
                path: path.to_path_buf(),
                kind: "NanoDet ONNX model".into(),
                reason,
            })
        };
        let runtime::Signature { inputs, outputs } =
            model.signature().map_err(|reason| ModelError::Session {
                path: path.to_path_buf(),
                reason,
            })?;
        let [(input, ishape)] = inputs.as_slice() else {
            return Err(bad(format!("expected one input, found {}", inputs.len())));
        };
        let size = match ishape.as_slice() {
            [1, 3, h, w] if h == w && *h > 0 => *h as u32,
            other => {
                return Err(bad(format!(
                    "input {input} has shape {other:?}; expected [1, 3, S, S]"
                )))
            }
        };
        let mut levels = Vec::new();
        let mut reg_max = None;
        for (name, shape) in &outputs {
            let [1, cells, k] = shape.as_slice() else {
                continue;
            };
            if *k != classes as i64 {
                continue;
            }
            let grid = (*cells as f64).sqrt().round() as usize;
            let twin = outputs.iter().find(|(n, s)| {
                n != name && s.len() == 3 && s[1] == *cells && s[2] != classes as i64
            });
            let Some((dname, dshape)) = twin else {
                return Err(bad(format!(
                    "no distance output for the {grid}x{grid} grid"
                )));
            };
            if grid * grid != *cells as usize || dshape[2] % 4 != 0 || dshape[2] < 8 {
                return Err(bad(format!(
                    "outputs {name} {shape:?} / {dname} {dshape:?}"
                )));
            }
            reg_max = Some(dshape[2] as usize / 4 - 1);
            levels.push((name.clone(), dname.clone(), grid));
        }
        if levels.is_empty() {
            return Err(bad(format!(
                "no [1, cells, {classes}] score outputs (outputs: {outputs:?}); is this the \
                 NanoDet model of the manifest?"
            )));
        }
        levels.sort_by_key(|l| std::cmp::Reverse(l.2));
        Ok(Self {
            model,
            input: input.clone(),
            size,
            classes,
            reg_max: reg_max.unwrap_or(7),
            levels,
            path: path.to_path_buf(),
        })
    }

    /// One pass over a `[1, 3, size, size]` input.
    pub fn run(&self, input: &[f32]) -> Result<Vec<Level>, AgentError> {
        let s = self.size as usize;
        let err = |reason: String| AgentError::Inference {
            agent: "detect".into(),
            reason: format!("{}: {reason}", self.path.display()),
        };
        let tensor = TensorRef::from_array_view(([1usize, 3, s, s], input))
            .map_err(|e| err(e.to_string()))?;
        self.model.with_session(err, |session, run_opts| {
            let outputs = session
                .run_with_options(ort::inputs![self.input.as_str() => tensor], run_opts)
                .map_err(|e| err(e.to_string()))?;
            let take = |name: &str| -> Result<Vec<f32>, AgentError> {
                let v = outputs
                    .get(name)
                    .ok_or_else(|| err(format!("no output `{name}`")))?;
                let (_, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| err(format!("output `{name}`: {e}")))?;
                Ok(data.to_vec())
            };
            self.levels
                .iter()
                .map(|(sn, dn, grid)| {
                    Ok(Level {
                        grid: *grid,
                        stride: self.size as f32 / *grid as f32,
                        scores: take(sn)?,
                        dist: take(dn)?,
                    })
                })
                .collect()
        })
    }
}

/// Where a view landed in the square input: `input = (view - 0) * scale + pad`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad: [f32; 2],
}

impl Letterbox {
    /// A box in input pixels back in the view's pixels, clipped to the view.
    pub fn unmap(&self, b: BBox, w: f32, h: f32) -> BBox {
        let f = |v: f32, p: f32, max: f32| ((v - p) / self.scale).clamp(0.0, max);
        BBox::new(
            f(b.x1, self.pad[0], w),
            f(b.y1, self.pad[1], h),
            f(b.x2, self.pad[0], w),
            f(b.y2, self.pad[1], h),
        )
    }
}

/// `rect` of `src`, aspect kept, resized (bilinear) into a `size x size` square and centred
/// on the padding; planes in `norm`'s channel order, normalised.
pub fn letterbox(
    src: &RgbImage,
    rect: Rect,
    size: u32,
    norm: &Normalisation,
) -> (Vec<f32>, Letterbox) {
    let scale = (size as f32 / rect.width as f32).min(size as f32 / rect.height as f32);
    let tw = ((rect.width as f32 * scale).round() as u32).clamp(1, size);
    let th = ((rect.height as f32 * scale).round() as u32).clamp(1, size);
    let crop = image::imageops::crop_imm(src, rect.x, rect.y, rect.width, rect.height);
    let resized = image::imageops::resize(&*crop, tw, th, image::imageops::FilterType::Triangle);
    let (px, py) = ((size - tw) / 2, (size - th) / 2);
    let plane = (size * size) as usize;
    let bgr = norm.channels.eq_ignore_ascii_case("bgr");
    let value = |v: f32, c: usize| (v * norm.scale - norm.mean[c]) / norm.std[c];
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        out[c * plane..(c + 1) * plane].fill(value(norm.pad_value, c));
    }
    for (x, y, p) in resized.enumerate_pixels() {
        let at = ((y + py) * size + (x + px)) as usize;
        for c in 0..3 {
            let src_c = if bgr { 2 - c } else { c };
            out[c * plane + at] = value(p.0[src_c] as f32, c);
        }
    }
    // Boxes are mapped back with the scale actually used on each axis's rounded size.
    let lb = Letterbox {
        scale: (tw as f32 / rect.width as f32 + th as f32 / rect.height as f32) / 2.0,
        pad: [px as f32, py as f32],
    };
    (out, lb)
}

/// NanoDet's decoding of one pass: boxes in input pixels, for the classes in `wanted` (all
/// when `None`), before NMS.
pub fn decode(
    levels: &[Level],
    classes: usize,
    reg_max: usize,
    size: f32,
    score_threshold: f32,
    pre_nms: usize,
    wanted: Option<&[usize]>,
) -> Vec<RawBox> {
    let bins = reg_max + 1;
    let mut out = Vec::new();
    for l in levels {
        let cells = l.grid * l.grid;
        if l.scores.len() < cells * classes || l.dist.len() < cells * 4 * bins {
            continue;
        }
        let best = |i: usize| -> (usize, f32) {
            let row = &l.scores[i * classes..(i + 1) * classes];
            let mut b = (0, f32::NEG_INFINITY);
            for (c, &s) in row.iter().enumerate() {
                if wanted.is_none_or(|w| w.contains(&c)) && s > b.1 {
                    b = (c, s);
                }
            }
            b
        };
        // The reference keeps the pre_nms cells with the best score of any class.
        let mut cand: Vec<(usize, f32)> = (0..cells)
            .map(|i| (i, best(i).1))
            .filter(|(_, s)| s.is_finite() && *s > score_threshold)
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        cand.truncate(pre_nms);
        for (i, _) in cand {
            let (cx, cy) = (
                ((i % l.grid) as f32 + 0.5) * l.stride,
                ((i / l.grid) as f32 + 0.5) * l.stride,
            );
            let d = &l.dist[i * 4 * bins..(i + 1) * 4 * bins];
            let side = |k: usize| expected(&d[k * bins..(k + 1) * bins]) * l.stride;
            let bbox = BBox::new(
                (cx - side(0)).clamp(0.0, size),
                (cy - side(1)).clamp(0.0, size),
                (cx + side(2)).clamp(0.0, size),
                (cy + side(3)).clamp(0.0, size),
            );
            if !(bbox.width() > 0.0 && bbox.height() > 0.0) {
                continue;
            }
            // Every class of the cell above the threshold is a candidate (multiclass NMS).
            let row = &l.scores[i * classes..(i + 1) * classes];
            for (c, &s) in row.iter().enumerate() {
                if s > score_threshold && wanted.is_none_or(|w| w.contains(&c)) {
                    out.push(RawBox {
                        class: c,
                        score: s,
                        bbox,
                    });
                }
            }
        }
    }
    out
}

/// The expected value of a softmax over logits `x`, in bins: the distribution integral of a
/// Generalized Focal Loss head (NanoDet's, and PP-PicoDet's in the layout agent). The
/// largest logit's term is 1, so the sum is never 0 once that logit is finite.
pub(crate) fn expected(x: &[f32]) -> f32 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return 0.0;
    }
    let (mut num, mut den) = (0f32, 0f32);
    for (k, &v) in x.iter().enumerate() {
        let e = (v - m).exp();
        num += e * k as f32;
        den += e;
    }
    num / den
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_is_the_expected_distance_from_the_cell_centre() {
        // One 2x2 level of stride 8 (input 16), 2 classes, reg_max 1 (2 bins).
        let mut scores = vec![0.0; 4 * 2];
        scores[3 * 2 + 1] = 0.9; // cell 3 (x 1, y 1), class 1
        let mut dist = vec![0.0; 4 * 4 * 2];
        // Cell 3: left and top certain at 1 bin, right and bottom 50/50 between 0 and 1.
        let d = &mut dist[3 * 8..4 * 8];
        d.copy_from_slice(&[-20.0, 20.0, -20.0, 20.0, 0.0, 0.0, 0.0, 0.0]);
        let level = Level {
            grid: 2,
            stride: 8.0,
            scores,
            dist,
        };
        let got = decode(&[level], 2, 1, 16.0, 0.35, 1000, None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].class, 1);
        // Centre (12, 12): left/top 8 px, right/bottom 4 px (clipped at 16).
        let b = got[0].bbox;
        assert!(
            (b.x1 - 4.0).abs() < 1e-3 && (b.y1 - 4.0).abs() < 1e-3,
            "{b:?}"
        );
        assert!(
            (b.x2 - 16.0).abs() < 1e-3 && (b.y2 - 16.0).abs() < 1e-3,
            "{b:?}"
        );
        assert!(decode(&[], 2, 1, 16.0, 0.35, 1000, Some(&[0])).is_empty());
    }

    #[test]
    fn the_letterbox_maps_back() {
        let img = RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
        let norm = Normalisation {
            channels: "rgb".into(),
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            pad_value: 0.0,
        };
        let (x, lb) = letterbox(&img, Rect::full(&img), 100, &norm);
        assert_eq!(lb.pad, [0.0, 25.0]);
        // Red plane inside, padding above.
        assert_eq!(x[0], 0.0);
        assert!((x[30 * 100 + 10] - 1.0).abs() < 1e-6);
        let back = lb.unmap(BBox::new(10.0, 25.0, 60.0, 75.0), 200.0, 100.0);
        assert_eq!(back, BBox::new(20.0, 0.0, 120.0, 100.0));
    }
}
