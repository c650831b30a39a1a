//! The Grounding DINO ONNX session: resolving the export's input and output names, and
//! feeding each text input in the element type the export declares.
//!
//! Exports differ in small ways: the image input is `img`, `samples` or `images`; outputs are
//! `logits`/`boxes` or `pred_logits`/`pred_boxes`; masks are `bool` in the common export but
//! `int64` in some others; some fix the image size. The names come from the agent manifest
//! (first one the model has wins) and the rest is read from the model itself, so a new export
//! needs a manifest edit, not a code change.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::SessionInputValue;
use ort::value::{Tensor, TensorElementType, TensorRef};

use super::text::TextInputs;
use super::DetectOptions;
use crate::agents::AgentError;
use crate::models::runtime::{self, SessionOptions};
use crate::models::ModelError;

/// The element type an integer-valued input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntKind {
    Bool,
    I64,
    I32,
}

/// Raw outputs of one pass, owned.
pub struct Outputs {
    pub logits: Vec<f32>,
    pub boxes: Vec<f32>,
    pub queries: usize,
    /// Text positions per query in `logits` (256 in the official model).
    pub stride: usize,
}

pub struct DinoModel {
    model: runtime::OnnxModel,
    path: PathBuf,
    image: String,
    /// input_ids, attention_mask, position_ids, token_type_ids, text_token_mask.
    text: [(String, IntKind); 5],
    logits: String,
    boxes: String,
    /// `(width, height)` when the export has a fixed image size.
    fixed_size: Option<(u32, u32)>,
}

const TEXT_INPUTS: [&str; 5] = [
    "input_ids",
    "attention_mask",
    "position_ids",
    "token_type_ids",
    "text_token_mask",
];

impl DinoModel {
    pub fn open(
        env: &Environment,
        path: &Path,
        session: &SessionOptions,
        opts: &DetectOptions,
    ) -> Result<Self, AgentError> {
        let model = runtime::OnnxModel::open(env, path, session)?;
        type Inputs = Vec<(String, Option<TensorElementType>, Vec<i64>)>;
        let (inputs, outputs): (Inputs, Vec<String>) = model.with_session(
            |reason| ModelError::Session {
                path: path.to_path_buf(),
                reason,
            },
            |s, _| {
                let inputs = s
                    .inputs()
                    .iter()
                    .map(|o| {
                        let shape = o.dtype().tensor_shape();
                        (
                            o.name().to_string(),
                            o.dtype().tensor_type(),
                            shape
                                .map(|d| d.iter().copied().collect())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                let outputs = s.outputs().iter().map(|o| o.name().to_string()).collect();
                Ok((inputs, outputs))
            },
        )?;
        let have: Vec<&str> = inputs.iter().map(|i| i.0.as_str()).collect();
        let bad = |reason: String| {
            AgentError::Model(ModelError::BadFormat {
                path: path.to_path_buf(),
                kind: "Grounding DINO ONNX export".into(),
                reason: format!(
                    "{reason} (inputs: {}; outputs: {}). Input and output names are set in the \
                     detect manifest's [options] (image_input, logits_output, boxes_output)",
                    have.join(", "),
                    outputs.join(", ")
                ),
            })
        };
        let pick = |choices: &[String], among: &[&str], what: &str| {
            choices
                .iter()
                .find(|c| among.contains(&c.as_str()))
                .cloned()
                .ok_or_else(|| bad(format!("it has no {what} named {}", choices.join(" or "))))
        };
        let image = pick(&opts.image_input, &have, "image input")?;
        let out_names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let logits = pick(&opts.logits_output, &out_names, "logits output")?;
        let boxes = pick(&opts.boxes_output, &out_names, "boxes output")?;
        let mut text = Vec::with_capacity(5);
        for name in TEXT_INPUTS {
            let Some((_, ty, _)) = inputs.iter().find(|i| i.0 == name) else {
                return Err(bad(format!(
                    "it has no `{name}` input: p2g drives exports that take the tokenised caption \
                     with Grounding DINO's sub-sentence inputs (input_ids, attention_mask, \
                     position_ids, token_type_ids, text_token_mask), as the README's export does"
                )));
            };
            let kind = match ty {
                Some(TensorElementType::Bool) => IntKind::Bool,
                Some(TensorElementType::Int64) => IntKind::I64,
                Some(TensorElementType::Int32) => IntKind::I32,
                other => {
                    return Err(bad(format!(
                        "input `{name}` has element type {other:?}; expected bool or an integer"
                    )))
                }
            };
            text.push((name.to_string(), kind));
        }
        let img = inputs.iter().find(|i| i.0 == image);
        if let Some((_, ty, _)) = img.filter(|i| i.1 != Some(TensorElementType::Float32)) {
            return Err(bad(format!("image input `{image}` is {ty:?}, not float32")));
        }
        let fixed_size = img.and_then(|(_, _, d)| match d.as_slice() {
            [_, _, h, w] if *h > 0 && *w > 0 => Some((*w as u32, *h as u32)),
            _ => None,
        });
        let text: [(String, IntKind); 5] = text
            .try_into()
            .map_err(|_| bad("text inputs could not be resolved".into()))?;
        Ok(Self {
            model,
            path: path.to_path_buf(),
            image,
            text,
            logits,
            boxes,
            fixed_size,
        })
    }

    /// The image size the export is fixed to, if any.
    pub fn fixed_size(&self) -> Option<(u32, u32)> {
        self.fixed_size
    }

    /// Runs one pass: `pixels` is the normalised `1 x 3 x height x width` image.
    pub fn run(
        &self,
        pixels: &[f32],
        (width, height): (u32, u32),
        text: &TextInputs,
    ) -> Result<Outputs, AgentError> {
        let err = |reason: String| AgentError::Inference {
            agent: "detect".into(),
            reason: format!("{}: {reason}", self.path.display()),
        };
        let n = text.len();
        let image =
            TensorRef::from_array_view(([1usize, 3, height as usize, width as usize], pixels))
                .map_err(|e| err(e.to_string()))?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            vec![(Cow::from(self.image.as_str()), image.into())];
        let mask: Vec<i64> = text.text_token_mask.iter().map(|&b| i64::from(b)).collect();
        let attention: Vec<i64> = text.attention_mask.iter().map(|&b| i64::from(b)).collect();
        let values: [(&[i64], Vec<usize>); 5] = [
            (&text.input_ids, vec![1, n]),
            (&attention, vec![1, n]),
            (&text.position_ids, vec![1, n]),
            (&text.token_type_ids, vec![1, n]),
            (&mask, vec![1, n, n]),
        ];
        for ((name, kind), (data, shape)) in self.text.iter().zip(values) {
            let value: SessionInputValue<'_> = match kind {
                IntKind::Bool => {
                    let v: Vec<bool> = data.iter().map(|&x| x != 0).collect();
                    Tensor::from_array((shape, v))
                        .map_err(|e| err(e.to_string()))?
                        .into()
                }
                IntKind::I64 => Tensor::from_array((shape, data.to_vec()))
                    .map_err(|e| err(e.to_string()))?
                    .into(),
                IntKind::I32 => {
                    let v: Vec<i32> = data.iter().map(|&x| x as i32).collect();
                    Tensor::from_array((shape, v))
                        .map_err(|e| err(e.to_string()))?
                        .into()
                }
            };
            inputs.push((Cow::from(name.as_str()), value));
        }
        self.model.with_session(err, |session, run_opts| {
            let outputs = session
                .run_with_options(inputs, run_opts)
                .map_err(|e| err(e.to_string()))?;
            let take = |name: &str| -> Result<(Vec<i64>, Vec<f32>), AgentError> {
                let v = outputs
                    .get(name)
                    .ok_or_else(|| err(format!("no output `{name}`")))?;
                let (shape, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| err(format!("output `{name}`: {e}")))?;
                Ok((shape.iter().copied().collect(), data.to_vec()))
            };
            let (lshape, logits) = take(&self.logits)?;
            let (bshape, boxes) = take(&self.boxes)?;
            // [1, queries, stride] and [1, queries, 4]; a batch dimension may be missing.
            let last2 = |s: &[i64]| match s {
                [1, q, k] | [q, k] => Some((*q as usize, *k as usize)),
                _ => None,
            };
            match (last2(&lshape), last2(&bshape)) {
                (Some((q, stride)), Some((qb, 4))) if q == qb && stride > 0 => Ok(Outputs {
                    logits,
                    boxes,
                    queries: q,
                    stride,
                }),
                _ => Err(err(format!(
                "outputs have shapes {lshape:?} ({}) and {bshape:?} ({}); expected [1, queries, \
                 256] and [1, queries, 4]",
                self.logits, self.boxes
            ))),
            }
        })
    }
}
