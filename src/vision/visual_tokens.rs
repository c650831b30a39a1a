//! The visual tokenizer: P²G's re-encoding of the global image and the agents' crops into
//! embeddings a vision-language controller reads.
//!
//! The policy, as the P²G paper states it: "if only the global image is needed, an MLP aligns
//! its vision embedding; with 1-4 extra objects, the objects go through the MLP and the global
//! image is downsampled by the resampler; with more than 4 objects, the resampler handles all
//! of them". The MLP keeps every patch (detail, many tokens); the resampler gives a fixed,
//! small number per image, so the context keeps its size however many regions the agents
//! return. [`plan`] is that rule; [`VisualTokenizer`] carries it out with the model at hand:
//!
//! - an MLP-only mmproj (LLaVA-1.5) resamples with parameter-free pooling
//!   ([`resampler::pool`]) of its projected patch grid to k x k tokens;
//! - a resampler-only mmproj (MiniCPM-V) has no MLP: its learned resampler encodes every
//!   image, and the plan only decides how many images there are.
//!
//! Each encoding says which of the three ran ([`Encoder`]), for the trace.

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::mmproj::{resampler, Mmproj, MmprojError, ProjectorKind};

/// Object crops up to which the global image is resampled and the crops keep every patch.
pub const FEW_CROPS: usize = 4;

/// How the plan wants one image encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every patch, through the MLP.
    Full,
    /// Downsampled to a few tokens by a resampler.
    Resampled,
}

/// P²G's rule: the detail of the global image and of each crop, for `crops` crops.
pub fn plan(crops: usize) -> (Detail, Detail) {
    match crops {
        0 => (Detail::Full, Detail::Full),
        1..=FEW_CROPS => (Detail::Resampled, Detail::Full),
        _ => (Detail::Resampled, Detail::Resampled),
    }
}

/// What encoded one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoder {
    /// The MLP projector: one token per patch.
    Mlp,
    /// The mmproj's learned resampler (MiniCPM-V): its queries' worth of tokens.
    LearnedResampler,
    /// Parameter-free: the MLP's projected grid average-pooled to `k x k`.
    PooledResampler { k: usize },
    /// Sent to a remote model as its own image part, at native resolution (P²G's MLP path
    /// over an API: all the crop's pixels).
    ImagePart { width: u32, height: u32 },
    /// Tiled with other crops into one Set-of-Mark image of a fixed size (the resampler over
    /// an API: a budget that does not grow with the crops).
    SetOfMark {
        width: u32,
        height: u32,
        crops: usize,
    },
}

impl std::fmt::Display for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encoder::Mlp => write!(f, "mlp"),
            Encoder::LearnedResampler => write!(f, "resampler (learned)"),
            Encoder::PooledResampler { k } => write!(f, "resampler (pooled {k}x{k})"),
            Encoder::ImagePart { width, height } => write!(f, "image part {width}x{height}"),
            Encoder::SetOfMark {
                width,
                height,
                crops,
            } => write!(f, "set-of-mark {width}x{height} ({crops} crops)"),
        }
    }
}

/// A vision tower and projector with the pooling size for MLP-only models.
pub struct VisualTokenizer {
    mmproj: Mmproj,
    /// Side of the pooled grid (k x k tokens) when an MLP-only model resamples.
    pool: usize,
    /// The projector's output per image (keyed by its pixels' hash), so an image the policy
    /// moves from the MLP to pooling (the first crop arrived) is pooled, not run again.
    projected: std::sync::Mutex<Vec<Projected>>,
}

/// One image's projector output: its key, rows and patch grid (columns, rows).
type Projected = (String, Tensor, (usize, usize));

/// Images whose projected grids are kept.
const PROJECTED_KEPT: usize = 16;

impl VisualTokenizer {
    /// Reads an mmproj file; `pool` is k of the parameter-free resampler (tokens k x k).
    pub fn load(path: &Path, pool: usize) -> Result<Self, MmprojError> {
        Ok(Self::new(Mmproj::load(path)?, pool))
    }

    pub fn new(mmproj: Mmproj, pool: usize) -> Self {
        Self {
            mmproj,
            pool: pool.max(1),
            projected: Default::default(),
        }
    }

    pub fn mmproj(&self) -> &Mmproj {
        &self.mmproj
    }

    /// The width of the embeddings (the language model's must match).
    pub fn embedding_width(&self) -> usize {
        self.mmproj.embedding_width()
    }

    /// The encoder that gives `detail` with this model.
    pub fn encoder(&self, detail: Detail) -> Encoder {
        match (self.mmproj.config.projector, detail) {
            (ProjectorKind::Resampler, _) => Encoder::LearnedResampler,
            (ProjectorKind::Mlp, Detail::Full) => Encoder::Mlp,
            (ProjectorKind::Mlp, Detail::Resampled) => Encoder::PooledResampler { k: self.pool },
        }
    }

    /// The encoders for the global image and each of `crops` crops, by [`plan`].
    pub fn encoders(&self, crops: usize) -> (Encoder, Encoder) {
        let (global, crop) = plan(crops);
        (self.encoder(global), self.encoder(crop))
    }

    /// Tokens an image gets from `encoder` (for an MLP, the tower's fixed square grid).
    pub fn tokens(&self, encoder: Encoder) -> usize {
        let c = &self.mmproj.config;
        let side = c.image_size / c.patch_size;
        match encoder {
            Encoder::Mlp => side * side,
            Encoder::LearnedResampler => self.mmproj.tokens_per_image(),
            Encoder::PooledResampler { k } => k.min(side).pow(2),
            // A remote model's server encodes these; it does not say how many tokens.
            Encoder::ImagePart { .. } | Encoder::SetOfMark { .. } => 0,
        }
    }

    /// Encodes one RGB image (the whole picture or a crop): `[tokens, width]`. The image
    /// is preprocessed as the tower expects (padded to its square for an MLP).
    pub fn encode(&self, rgb: &image::RgbImage, encoder: Encoder) -> Result<Tensor, MmprojError> {
        let _span =
            tracing::info_span!("visual_tokens", %encoder, w = rgb.width(), h = rgb.height())
                .entered();
        let (rows, grid) = self.projected(rgb)?;
        Ok(match encoder {
            Encoder::PooledResampler { k } => resampler::pool(&rows, grid, k)?,
            // The remote encoders are never planned for a local tower; every row is the
            // honest fallback.
            Encoder::Mlp
            | Encoder::LearnedResampler
            | Encoder::ImagePart { .. }
            | Encoder::SetOfMark { .. } => rows,
        })
    }
}

impl VisualTokenizer {
    /// The tower and projector's output for an image, from the cache when it was seen.
    fn projected(&self, rgb: &image::RgbImage) -> Result<(Tensor, (usize, usize)), MmprojError> {
        use sha2::Digest;
        let key = format!("{:x}", sha2::Sha256::digest(rgb.as_raw()));
        let key = format!("{key}:{}x{}", rgb.width(), rgb.height());
        if let Ok(kept) = self.projected.lock() {
            if let Some((_, rows, grid)) = kept.iter().find(|(k, ..)| *k == key) {
                return Ok((rows.clone(), *grid));
            }
        }
        let (rows, grid) = self.mmproj.embed(rgb)?;
        if let Ok(mut kept) = self.projected.lock() {
            if kept.len() >= PROJECTED_KEPT {
                kept.remove(0);
            }
            kept.push((key, rows.clone(), grid));
        }
        Ok((rows, grid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_p2gs_rule() {
        assert_eq!(plan(0), (Detail::Full, Detail::Full));
        assert_eq!(plan(1), (Detail::Resampled, Detail::Full));
        assert_eq!(plan(4), (Detail::Resampled, Detail::Full));
        assert_eq!(plan(5), (Detail::Resampled, Detail::Resampled));
        assert_eq!(plan(12), (Detail::Resampled, Detail::Resampled));
    }
}
