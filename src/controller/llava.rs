//! The vision-language controller: a llama.cpp pair — a language-model GGUF and its `mmproj`
//! GGUF — run in-process, seeing the image and the agents' crops.
//!
//! It is the embedded controller ([`EmbeddedController`]) with eyes: the same constrained tool
//! calls, the same copying and grounding of answers to regions, on a language model that also
//! reads image embeddings spliced into its prompt at the images' places. Because it sees the
//! picture, its first step may answer directly — the first half of P²G's decision — where a
//! text controller must call a tool first.
//!
//! What it is shown follows P²G ([`crate::vision::visual_tokens::plan`]): the whole image
//! alone through the MLP; with 1-4 crops, the crops through the MLP and the whole image
//! resampled; with more, everything resampled. The whole image comes with the first question,
//! the crops after the evidence they were cut for, each introduced by its region id and box
//! (`prompts/image.md`) so an answer can cite it. Each decision's images, encoders and token
//! counts go in the trace.
//!
//! Embeddings are cached in the model session under the image's hash and its encoder, so an
//! image shown again in the next step costs neither the tower nor the prefill of the prompt
//! before it.

use std::path::Path;
use std::sync::Arc;

use super::embedded::{EmbeddedConfig, EmbeddedController};
use super::llm::{LanguageModel, LlmError, Session};
use super::prompt::{CropSlot, ImageSlots};
use super::{ControllerError, Conversation, ShownImage};
use crate::vision::visual_tokens::{Encoder, VisualTokenizer};
use crate::vision::{BBox, Image};

/// LLaVA-1.5's conversation format, for GGUFs without a chat template.
const FALLBACK_TEMPLATE: &str = include_str!("../../prompts/chat_fallback.jinja");

/// Positions a vision-language model's context may hold (capped by the model's own): images
/// take hundreds of positions each.
pub const MAX_CONTEXT: usize = 32_768;

/// Default side of the pooled grid when an MLP-only model resamples (k x k tokens): 8 gives
/// 64 tokens, as many as MiniCPM-V's learned resampler, for LLaVA's 576.
pub const DEFAULT_POOL: usize = 8;

/// Settings of the vision side.
#[derive(Debug, Clone)]
pub struct VisionConfig {
    /// k of the parameter-free resampler of MLP-only models (k x k tokens per image).
    pub pool: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self { pool: DEFAULT_POOL }
    }
}

/// Loads a pair: `llm` (a llama or qwen2 GGUF) and `mmproj` (its vision tower and projector).
/// The embeddings the mmproj makes must be as wide as the language model's.
pub fn load(
    llm: &Path,
    mmproj: &Path,
    mut cfg: EmbeddedConfig,
    vision: VisionConfig,
) -> Result<EmbeddedController, ControllerError> {
    let _span = tracing::info_span!("load_llava", llm = %llm.display(), mmproj = %mmproj.display())
        .entered();
    let tokenizer = VisualTokenizer::load(mmproj, vision.pool)?;
    cfg.max_context = cfg.max_context.max(MAX_CONTEXT);
    let mut lm = LanguageModel::load(llm, cfg.max_context)?;
    let pair = |reason: String| ControllerError::Pair {
        llm: llm.display().to_string(),
        mmproj: mmproj.display().to_string(),
        reason,
    };
    if tokenizer.embedding_width() != lm.config().n_embd {
        return Err(pair(format!(
            "the mmproj makes {}-wide embeddings, the language model reads {}-wide ones",
            tokenizer.embedding_width(),
            lm.config().n_embd
        )));
    }
    if lm.chat_template().is_none() {
        tracing::info!("the language model carries no chat template: using LLaVA-1.5's");
        lm.set_chat_template(FALLBACK_TEMPLATE.to_string());
    }
    let name = format!(
        "{} + {}",
        lm.name(),
        tokenizer.mmproj().config.projector.as_str()
    );
    EmbeddedController::from_model(lm, &name, cfg, Some(Arc::new(Vision { tokenizer })))
}

/// The vision side of a controller: the visual tokenizer and how images enter prompts.
pub struct Vision {
    tokenizer: VisualTokenizer,
}

/// The images of one decision, planned: where each goes and how it is encoded.
pub(crate) struct Shown {
    pub slots: ImageSlots,
    images: Vec<Planned>,
}

struct Planned {
    marker: String,
    /// The session's key for its embeddings: what it shows and how it is encoded.
    key: String,
    encoder: Encoder,
    image: Image,
    region: Option<String>,
    bbox: BBox,
}

impl Vision {
    /// Plans the images of `conv.visual` (the whole image first, then crops) by P²G's rule.
    pub(crate) fn show(&self, conv: &Conversation) -> Shown {
        let nonce = marker_nonce();
        let crops = conv.visual.iter().filter(|v| v.region.is_some()).count();
        let (global, crop) = self.tokenizer.encoders(crops);
        let mut slots = ImageSlots::default();
        let mut images = Vec::with_capacity(conv.visual.len());
        for (i, v) in conv.visual.iter().enumerate() {
            // Private-use characters and a per-prompt nonce: no text read in the image can
            // pose as a marker.
            let marker = format!("\u{E000}image-{nonce:016x}-{i}\u{E001}");
            let encoder = match &v.region {
                None => {
                    if slots.global.is_some() {
                        continue;
                    }
                    slots.global = Some(marker.clone());
                    global
                }
                Some(region) => {
                    let r = v.bbox.rounded();
                    slots.crops.push(CropSlot {
                        region: region.clone(),
                        bbox: [r.x1 as i64, r.y1 as i64, r.x2 as i64, r.y2 as i64],
                        marker: marker.clone(),
                    });
                    crop
                }
            };
            images.push(Planned {
                key: format!("{}:{encoder}", v.image.sha256()),
                marker,
                encoder,
                image: v.image.clone(),
                region: v.region.clone(),
                bbox: v.bbox,
            });
        }
        Shown { slots, images }
    }

    /// The prompt's tokens: `text` tokenised with each image's marker replaced by the ids
    /// of its embeddings, encoded now unless the session holds them already. Also what was
    /// shown, for the trace (images whose marker the templates left out are not).
    pub(crate) fn tokens(
        &self,
        s: &mut Session,
        text: &str,
        shown: &Shown,
    ) -> Result<(Vec<u32>, Vec<ShownImage>), ControllerError> {
        let lm = s.model().clone();
        let mut placed: Vec<(usize, &Planned)> = shown
            .images
            .iter()
            .filter_map(|p| text.find(&p.marker).map(|at| (at, p)))
            .collect();
        placed.sort_by_key(|(at, _)| *at);
        let mut tokens = Vec::new();
        let mut record = Vec::with_capacity(placed.len());
        let mut from = 0;
        for (at, p) in placed {
            tokens.extend(lm.encode(&text[from..at])?);
            let ids = match s.spliced(&p.key) {
                Some(ids) => ids,
                None => {
                    let rows = self.tokenizer.encode(p.image.rgb(), p.encoder)?;
                    let rows: Vec<f32> = rows
                        .flatten_all()
                        .and_then(|t| t.to_vec1())
                        .map_err(LlmError::from)?;
                    s.splice(&p.key, &rows)?
                }
            };
            record.push(ShownImage {
                region: p.region.clone(),
                bbox: p.bbox,
                encoder: p.encoder,
                tokens: ids.len(),
                layout: None,
            });
            tokens.extend(ids);
            from = at + p.marker.len();
        }
        tokens.extend(lm.encode(&text[from..])?);
        Ok((tokens, record))
    }
}

/// A number no image text can predict, to make markers unique to one prompt.
fn marker_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}
