//! Text-line orientation: is a cropped line upside down?
//!
//! PP-OCRv5 uses PP-LCNet_x1_0_textline_ori, whose preprocessing differs from the older
//! mobile-v2 angle classifier that most ports copy: a plain resize of the whole line to
//! 160x80 (no aspect-preserving pad) and ImageNet mean/std on BGR channels. With the v2 recipe
//! (pad to 192x48, `(x-0.5)/0.5`) it calls upright lines upside down.

use image::RgbImage;

use crate::agents::AgentError;
use crate::models::runtime::OnnxModel;
use crate::vision::crop::{resize_normalize_into, Normalize, Planes, Rect};

const WIDTH: usize = 160;
const HEIGHT: usize = 80;
const BATCH: usize = 16;

pub struct Orientation {
    model: OnnxModel,
}

fn inference_err(reason: impl ToString) -> AgentError {
    AgentError::Inference {
        agent: "ocr (orientation)".into(),
        reason: reason.to_string(),
    }
}

impl Orientation {
    pub fn new(model: OnnxModel) -> Self {
        Self { model }
    }

    /// Probability that each crop is upside down.
    pub fn upside_down(&self, crops: &[&RgbImage]) -> Result<Vec<f32>, AgentError> {
        let _span = tracing::debug_span!("ocr.orientation", lines = crops.len()).entered();
        let mut out = Vec::with_capacity(crops.len());
        let plane = WIDTH * HEIGHT;
        for chunk in crops.chunks(BATCH) {
            let mut input = vec![0f32; chunk.len() * 3 * plane];
            for (i, crop) in chunk.iter().enumerate() {
                resize_normalize_into(
                    crop,
                    Rect::full(crop),
                    WIDTH,
                    HEIGHT,
                    &Normalize::IMAGENET_BGR,
                    &mut Planes {
                        data: &mut input[i * 3 * plane..(i + 1) * 3 * plane],
                        height: HEIGHT,
                        stride: WIDTH,
                    },
                );
            }
            let shape = [chunk.len(), 3, HEIGHT, WIDTH];
            self.model
                .run(&shape, &input, inference_err, |shape, data| {
                    if shape.len() != 2 || shape[0] as usize != chunk.len() || shape[1] != 2 {
                        return Err(inference_err(format!(
                            "orientation output has shape {shape:?}, expected [{}, 2]",
                            chunk.len()
                        )));
                    }
                    out.extend(data.chunks(2).map(|row| softmax2(row[0], row[1])));
                    Ok(())
                })?;
        }
        Ok(out)
    }
}

/// The second class's probability; the exported model already ends in softmax, in which case
/// this returns `b` unchanged up to rounding.
fn softmax2(a: f32, b: f32) -> f32 {
    let is_prob =
        (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b) && (a + b - 1.0).abs() < 1e-3;
    if is_prob {
        b
    } else {
        1.0 / (1.0 + (a - b).exp())
    }
}
