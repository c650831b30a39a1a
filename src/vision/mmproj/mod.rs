//! The vision tower and projector of a llama.cpp `mmproj` GGUF file, in candle: the part of
//! a vision-language model that turns pixels into embeddings a language model reads.
//!
//! Users who run vision-language models locally have them as llama.cpp pairs: a language
//! model GGUF plus an `mmproj` GGUF holding a ViT and a projector, tensor by tensor under
//! llama.cpp's names (`v.blk.N.attn_q.weight`, `mm.0.weight`, `resampler.query`, …) with
//! `clip.*` metadata. This module reads exactly those files, so a user's existing pair works
//! as is. Two projector types:
//!
//! - `clip.projector_type = "mlp"` (LLaVA-1.5, BakLLaVA, Obsidian): class embedding first,
//!   learned positions, pre-layernorm, the blocks up to the second-to-last one stored
//!   (llama.cpp's `max_feature_layer` default), the class token dropped, then
//!   `mm.0 → GELU → mm.2`: one token per patch.
//! - `clip.projector_type = "resampler"` (MiniCPM-V): no class token, positions looked up
//!   on a 70x70 bucket grid (so any patch grid works), every block, then the resampler —
//!   learned queries, one cross-attention layer whose keys carry 2-D sin-cos positions —
//!   giving `clip.minicpmv_query_num` tokens whatever the image size ([`resampler`]).
//!
//! The tower's activation is GELU with `clip.use_gelu`, else quick GELU, as in clip.cpp.
//! Legacy converters stored the first FFN layer as `ffn_down`; the swap is detected from the
//! shapes, as clip.cpp does. Other projector types are a clear error naming what is
//! supported.
//!
//! [`Mmproj::preprocess`] does mtmd's preprocessing for the projector to the byte: for "mlp"
//! its bicubic resize, aspect kept, centred on LLaVA's pad colour; for "resampler" the
//! bilinear stretch of llava-uhd's overview image. MiniCPM-V's extra slices of a large image
//! are not cut: in p2g the agents' crops are the closer looks. [`Mmproj::normalise`] makes
//! the planar RGB tensor [`Mmproj::encode`] takes, normalised with the file's mean and std.
//! The reference is `benches/mmproj_reference.py` (numpy, following clip.cpp step by step,
//! itself checked against llama.cpp's clip code); `tests/mmproj.rs` checks this module
//! against its numbers.

mod preprocess;
pub mod resampler;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, D};

/// Why an mmproj file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MmprojError {
    #[error("cannot read the mmproj file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "{path}: projector type {found:?} is not supported (supported: \"mlp\", as LLaVA-1.5 \
         ships it, and \"resampler\", as MiniCPM-V does)"
    )]
    Projector { path: PathBuf, found: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("mmproj inference failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The tower's shape, from the file's `clip.vision.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub blocks: usize,
    pub eps: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// GELU in the tower's FFN; else quick GELU (`x·σ(1.702x)`).
    pub use_gelu: bool,
    pub projector: ProjectorKind,
}

/// The projector an mmproj file holds (`clip.projector_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorKind {
    /// A 2-layer MLP, one token per patch (LLaVA-1.5).
    Mlp,
    /// MiniCPM-V's learned resampler: a fixed number of tokens per image.
    Resampler,
}

impl ProjectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectorKind::Mlp => "mlp",
            ProjectorKind::Resampler => "resampler",
        }
    }
}

pub(crate) struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

pub(crate) struct Norm {
    w: Tensor,
    b: Tensor,
}

struct Block {
    ln1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: Norm,
    up: Linear,
    down: Linear,
}

pub(crate) struct Reader<'a> {
    pub(crate) path: &'a Path,
    pub(crate) content: gguf_file::Content,
    pub(crate) file: std::fs::File,
}

impl Reader<'_> {
    pub(crate) fn invalid(&self, reason: String) -> MmprojError {
        MmprojError::Invalid {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    pub(crate) fn u32(&self, key: &str) -> Result<usize, MmprojError> {
        match self.content.metadata.get(key) {
            Some(v) => v
                .to_u32()
                .map(|x| x as usize)
                .map_err(|_| self.invalid(format!("{key} must be an unsigned integer"))),
            None => Err(self.invalid(format!("metadata {key} is missing"))),
        }
    }

    pub(crate) fn f32s(&self, key: &str, default: [f32; 3]) -> Result<[f32; 3], MmprojError> {
        let Some(v) = self.content.metadata.get(key) else {
            return Ok(default);
        };
        let bad = || self.invalid(format!("{key} must be 3 numbers"));
        let a = v.to_vec().map_err(|_| bad())?;
        let n: Vec<f32> = a.iter().filter_map(|x| x.to_f32().ok()).collect();
        <[f32; 3]>::try_from(n.as_slice()).map_err(|_| bad())
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub(crate) fn tensor(&mut self, name: &str) -> Result<Tensor, MmprojError> {
        if !self.has(name) {
            return Err(self.invalid(format!("tensor {name} is missing")));
        }
        let q = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| self.invalid(format!("tensor {name}: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    pub(crate) fn optional(&mut self, name: &str) -> Result<Option<Tensor>, MmprojError> {
        if self.has(name) {
            self.tensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn linear(
        &mut self,
        name: &str,
        inp: usize,
        out: usize,
    ) -> Result<Linear, MmprojError> {
        let w = self.tensor(&format!("{name}.weight"))?;
        if w.dims() != [out, inp] {
            return Err(self.invalid(format!(
                "{name}.weight is {:?}, expected [{out}, {inp}]",
                w.dims()
            )));
        }
        let b = self.optional(&format!("{name}.bias"))?;
        Ok(Linear { w, b })
    }

    pub(crate) fn norm(&mut self, name: &str) -> Result<Option<Norm>, MmprojError> {
        if !self.has(&format!("{name}.weight")) {
            return Ok(None);
        }
        Ok(Some(Norm {
            w: self.tensor(&format!("{name}.weight"))?,
            b: self.tensor(&format!("{name}.bias"))?,
        }))
    }
}

/// How the tower places its patches: LLaVA's learned row per patch after a class token, or
/// MiniCPM-V's buckets of a 70x70 grid (any grid of patches, no class token).
enum Positions {
    Learned { class: Tensor, table: Tensor },
    Bucketed { table: Tensor },
}

/// MiniCPM-V's position grid (clip.cpp `clip_image_batch_encode`).
const BUCKETS: usize = 70;

enum Projector {
    Mlp { mm0: Linear, mm2: Option<Linear> },
    Resampler(resampler::Resampler),
}

/// An mmproj's vision tower and projector, loaded.
pub struct Mmproj {
    pub config: Config,
    patch_w: Tensor,
    patch_b: Option<Tensor>,
    positions: Positions,
    pre_ln: Option<Norm>,
    post_ln: Option<Norm>,
    blocks: Vec<Block>,
    projector: Projector,
}

impl Mmproj {
    /// Reads an mmproj GGUF: metadata, then every tensor by its llama.cpp name.
    pub fn load(path: &Path) -> Result<Self, MmprojError> {
        let _span = tracing::info_span!("mmproj.load", path = %path.display()).entered();
        let read_err = |reason: String| MmprojError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| read_err(format!("not a GGUF file ({e})")))?;
        // Every tensor's bytes must be there, also those of blocks the tower does not run: a
        // cut-off file is damaged, whichever tensor it cuts into.
        let len = file.metadata().map_err(|e| read_err(e.to_string()))?.len();
        for (name, t) in &content.tensor_infos {
            let bytes = (t.shape.elem_count() / t.ggml_dtype.block_size()
                * t.ggml_dtype.type_size()) as u64;
            let end = content
                .tensor_data_offset
                .saturating_add(t.offset)
                .saturating_add(bytes);
            if end > len {
                return Err(read_err(format!(
                    "the file ends at byte {len} but tensor {name} needs bytes up to {end} (it \
                     is truncated or damaged)"
                )));
            }
        }
        let mut r = Reader {
            path,
            content,
            file,
        };
        let projector = match r.content.metadata.get("clip.projector_type") {
            Some(v) => v
                .to_string()
                .map(|s| s.to_string())
                .map_err(|_| r.invalid("clip.projector_type must be a string".into()))?,
            // clip.cpp's default for files that predate the key.
            None => "mlp".to_string(),
        };
        let projector = match projector.as_str() {
            "mlp" => ProjectorKind::Mlp,
            "resampler" => ProjectorKind::Resampler,
            _ => {
                return Err(MmprojError::Projector {
                    path: path.to_path_buf(),
                    found: projector,
                })
            }
        };
        let config = Self::config(&r, projector)?;
        let c = &config;
        let h = c.hidden;
        let patch_w = r.tensor("v.patch_embd.weight")?;
        if patch_w.dims() != [h, 3, c.patch_size, c.patch_size] {
            return Err(r.invalid(format!(
                "v.patch_embd.weight is {:?}, expected [{h}, 3, {p}, {p}]",
                patch_w.dims(),
                p = c.patch_size
            )));
        }
        let patch_b = r.optional("v.patch_embd.bias")?;
        let table = r.tensor("v.position_embd.weight")?;
        let positions = match projector {
            ProjectorKind::Mlp => {
                let n_pos = (c.image_size / c.patch_size).pow(2) + 1;
                if table.dims() != [n_pos, h] {
                    return Err(r.invalid(format!(
                        "v.position_embd.weight is {:?}, expected [{n_pos}, {h}]",
                        table.dims()
                    )));
                }
                Positions::Learned {
                    class: r.tensor("v.class_embd")?,
                    table,
                }
            }
            ProjectorKind::Resampler => {
                if table.dims() != [BUCKETS * BUCKETS, h] {
                    return Err(r.invalid(format!(
                        "v.position_embd.weight is {:?}, expected [{}, {h}] (MiniCPM-V's \
                         70x70 position grid)",
                        table.dims(),
                        BUCKETS * BUCKETS
                    )));
                }
                Positions::Bucketed { table }
            }
        };
        let pre_ln = r.norm("v.pre_ln")?;
        let post_ln = r.norm("v.post_ln")?;
        // LLaVA projects the second-to-last layer's output (llama.cpp runs the blocks before
        // the last one stored); MiniCPM-V runs them all.
        let run = match projector {
            ProjectorKind::Mlp => c.blocks.saturating_sub(1).max(1),
            ProjectorKind::Resampler => c.blocks,
        };
        let blocks = (0..run)
            .map(|i| Self::load_block(&mut r, c, i))
            .collect::<Result<Vec<_>, _>>()?;
        let projector = match projector {
            ProjectorKind::Mlp => Self::load_mlp(&mut r, h)?,
            ProjectorKind::Resampler => {
                Projector::Resampler(resampler::Resampler::load(&mut r, c)?)
            }
        };
        Ok(Self {
            config,
            patch_w,
            patch_b,
            positions,
            pre_ln,
            post_ln,
            blocks,
            projector,
        })
    }

    fn config(r: &Reader, projector: ProjectorKind) -> Result<Config, MmprojError> {
        let use_gelu = r
            .content
            .metadata
            .get("clip.use_gelu")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let config = Config {
            image_size: r.u32("clip.vision.image_size")?,
            patch_size: r.u32("clip.vision.patch_size")?,
            hidden: r.u32("clip.vision.embedding_length")?,
            ffn: r.u32("clip.vision.feed_forward_length")?,
            heads: r.u32("clip.vision.attention.head_count")?,
            blocks: r.u32("clip.vision.block_count")?,
            eps: r
                .content
                .metadata
                .get("clip.vision.attention.layer_norm_epsilon")
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(1e-5) as f64,
            mean: r.f32s(
                "clip.vision.image_mean",
                [0.48145466, 0.4578275, 0.40821073],
            )?,
            std: r.f32s("clip.vision.image_std", [0.26862954, 0.2613026, 0.2757771])?,
            use_gelu,
            projector,
        };
        let c = &config;
        if c.patch_size == 0
            || !c.image_size.is_multiple_of(c.patch_size)
            || c.heads == 0
            || !c.hidden.is_multiple_of(c.heads)
            || c.blocks == 0
        {
            return Err(r.invalid(format!(
                "inconsistent tower shape: image {} patch {} hidden {} heads {} blocks {}",
                c.image_size, c.patch_size, c.hidden, c.heads, c.blocks
            )));
        }
        Ok(config)
    }

    fn load_block(r: &mut Reader, c: &Config, i: usize) -> Result<Block, MmprojError> {
        let (h, f) = (c.hidden, c.ffn);
        let p = format!("v.blk.{i}");
        // Legacy converters stored fc1 as ffn_down: its input is then the hidden width.
        let down_w = r.tensor(&format!("{p}.ffn_down.weight"))?;
        let swapped = down_w.dims() == [f, h];
        let (up_name, down_name) = if swapped {
            ("ffn_down", "ffn_up")
        } else {
            ("ffn_up", "ffn_down")
        };
        let norm = |r: &mut Reader, n: &str| -> Result<Norm, MmprojError> {
            r.norm(&format!("{p}.{n}"))?
                .ok_or_else(|| r.invalid(format!("tensor {p}.{n}.weight is missing")))
        };
        Ok(Block {
            ln1: norm(r, "ln1")?,
            q: r.linear(&format!("{p}.attn_q"), h, h)?,
            k: r.linear(&format!("{p}.attn_k"), h, h)?,
            v: r.linear(&format!("{p}.attn_v"), h, h)?,
            out: r.linear(&format!("{p}.attn_out"), h, h)?,
            ln2: norm(r, "ln2")?,
            up: r.linear(&format!("{p}.{up_name}"), h, f)?,
            down: r.linear(&format!("{p}.{down_name}"), f, h)?,
        })
    }

    fn load_mlp(r: &mut Reader, h: usize) -> Result<Projector, MmprojError> {
        if r.has("mm.3.weight") {
            return Err(r.invalid(
                "mm.3.* is present: the normalised MLP projector (Yi-VL) is not supported".into(),
            ));
        }
        let mm0_w = r.tensor("mm.0.weight")?;
        let mm0_out = mm0_w.dims()[0];
        if mm0_w.dims() != [mm0_out, h] {
            return Err(r.invalid(format!(
                "mm.0.weight is {:?}, expected [_, {h}]",
                mm0_w.dims()
            )));
        }
        let mm0 = Linear {
            w: mm0_w,
            b: r.optional("mm.0.bias")?,
        };
        let mm2 = if r.has("mm.2.weight") {
            let w = r.tensor("mm.2.weight")?;
            if w.dims().len() != 2 || w.dims()[1] != mm0_out {
                return Err(r.invalid(format!(
                    "mm.2.weight is {:?}, expected [_, {mm0_out}]",
                    w.dims()
                )));
            }
            Some(Linear {
                w,
                b: r.optional("mm.2.bias")?,
            })
        } else {
            None
        };
        Ok(Projector::Mlp { mm0, mm2 })
    }

    /// The width of the embeddings it produces (the language model's hidden size).
    pub fn embedding_width(&self) -> usize {
        match &self.projector {
            Projector::Mlp { mm2: Some(l), .. } => l.w.dims()[0],
            Projector::Mlp { mm0, .. } => mm0.w.dims()[0],
            Projector::Resampler(r) => r.width(),
        }
    }

    /// Tokens per image: one per patch for an MLP, the resampler's queries for a resampler.
    pub fn tokens_per_image(&self) -> usize {
        match &self.projector {
            Projector::Mlp { .. } => (self.config.image_size / self.config.patch_size).pow(2),
            Projector::Resampler(r) => r.queries(),
        }
    }

    /// The patch grid (columns, rows) the tower sees for an image of this preprocessed size.
    pub fn grid(&self, width: usize, height: usize) -> (usize, usize) {
        (
            width / self.config.patch_size,
            height / self.config.patch_size,
        )
    }

    /// Embeds one preprocessed image: `pixels` is planar RGB `[3, H, W]`, already
    /// normalised ([`Mmproj::normalise`]); `image_size` square for an MLP projector, whole
    /// patches for a resampler. Returns `[tokens, embedding_width]`: for an MLP one row per
    /// patch in raster order (the grid is [`Mmproj::grid`]).
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor, MmprojError> {
        let _span = tracing::info_span!("mmproj.encode").entered();
        let c = &self.config;
        let bad = |reason: String| MmprojError::Invalid {
            path: PathBuf::new(),
            reason,
        };
        let (ch, ih, iw) = pixels.dims3().map_err(|_| {
            bad(format!(
                "the image tensor is {:?}, expected [3, H, W]",
                pixels.dims()
            ))
        })?;
        let p = c.patch_size;
        let fits = match self.config.projector {
            ProjectorKind::Mlp => ih == c.image_size && iw == c.image_size,
            ProjectorKind::Resampler => {
                ih >= p && iw >= p && ih.is_multiple_of(p) && iw.is_multiple_of(p)
            }
        };
        if ch != 3 || !fits {
            return Err(bad(format!(
                "the image tensor is {:?}, expected [3, {s}, {s}] ({})",
                pixels.dims(),
                match self.config.projector {
                    ProjectorKind::Mlp => "the tower's square",
                    ProjectorKind::Resampler => "or any whole number of patches",
                },
                s = c.image_size
            )));
        }
        let x = pixels
            .to_dtype(DType::F32)?
            .unsqueeze(0)?
            .conv2d(&self.patch_w, 0, p, 1, 1)?;
        let x = match &self.patch_b {
            Some(b) => x.broadcast_add(&b.reshape((1, c.hidden, 1, 1))?)?,
            None => x,
        };
        let (gw, gh) = (iw / p, ih / p);
        // [1, hidden, gh, gw] -> [patches, hidden], raster order.
        let x = x.flatten_from(2)?.squeeze(0)?.t()?;
        let mut x = match &self.positions {
            Positions::Learned { class, table } => {
                Tensor::cat(&[class.unsqueeze(0)?, x], 0)?.add(table)?
            }
            Positions::Bucketed { table } => {
                let rows: Vec<u32> = (0..gh)
                    .flat_map(|i| {
                        (0..gw)
                            .map(move |j| ((BUCKETS * i / gh) * BUCKETS + BUCKETS * j / gw) as u32)
                    })
                    .collect();
                let idx = Tensor::from_vec(rows, gw * gh, &Device::Cpu)?;
                x.add(&table.index_select(&idx, 0)?)?
            }
        };
        if let Some(n) = &self.pre_ln {
            x = layer_norm(&x, n, c.eps)?;
        }
        for b in &self.blocks {
            x = self.block(b, &x)?;
        }
        if let Some(n) = &self.post_ln {
            x = layer_norm(&x, n, c.eps)?;
        }
        match &self.projector {
            Projector::Mlp { mm0, mm2 } => {
                let patches = x.narrow(0, 1, x.dim(0)? - 1)?;
                let y = gelu(&mm0.forward(&patches)?)?;
                Ok(match mm2 {
                    Some(l) => l.forward(&y)?,
                    None => y,
                })
            }
            Projector::Resampler(r) => Ok(r.forward(&x, gw, gh, c.eps)?),
        }
    }

    fn block(&self, b: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let y = layer_norm(x, &b.ln1, c.eps)?;
        let o = attention(
            &b.q.forward(&y)?,
            &b.k.forward(&y)?,
            &b.v.forward(&y)?,
            c.heads,
        )?;
        let x = x.add(&b.out.forward(&o)?)?;
        let y = layer_norm(&x, &b.ln2, c.eps)?;
        let y = b.up.forward(&y)?;
        let y = if c.use_gelu {
            gelu(&y)?
        } else {
            quick_gelu(&y)?
        };
        x.add(&b.down.forward(&y)?)
    }

    /// An image as mtmd's preprocessing for this projector gives it to the tower. "mlp":
    /// resized bicubically keeping its aspect ratio, centred on an `image_size` square of
    /// LLaVA's pad colour. "resampler": llava-uhd's overview, stretched bilinearly to whole
    /// patches (the `image_size` square for a small image, about as many pixels for a
    /// larger one).
    pub fn preprocess(&self, rgb: &image::RgbImage) -> Result<image::RgbImage, MmprojError> {
        let s = self.config.image_size as u32;
        if rgb.width() == 0 || rgb.height() == 0 {
            return Err(MmprojError::Invalid {
                path: PathBuf::new(),
                reason: "the image has no pixels".into(),
            });
        }
        Ok(match self.config.projector {
            ProjectorKind::Mlp => preprocess::resize_padded(rgb, s, s, preprocess::LLAVA_PAD),
            ProjectorKind::Resampler => {
                let (w, h) = preprocess::overview_size(
                    rgb.width(),
                    rgb.height(),
                    s,
                    self.config.patch_size as u32,
                );
                if (w, h) == rgb.dimensions() {
                    rgb.clone()
                } else {
                    preprocess::resize_bilinear(rgb, w, h)
                }
            }
        })
    }

    /// The tensor [`Mmproj::encode`] takes for a preprocessed RGB image:
    /// `(value / 255 - mean) / std`, planar.
    pub fn normalise(&self, rgb: &image::RgbImage) -> Result<Tensor, MmprojError> {
        let s = self.config.image_size as u32;
        let p = self.config.patch_size as u32;
        let (w, h) = rgb.dimensions();
        let fits = match self.config.projector {
            ProjectorKind::Mlp => (w, h) == (s, s),
            ProjectorKind::Resampler => w >= p && h >= p && w % p == 0 && h % p == 0,
        };
        if !fits {
            return Err(MmprojError::Invalid {
                path: PathBuf::new(),
                reason: format!(
                    "the image is {w}x{h}, not a size the tower takes (preprocess it first)"
                ),
            });
        }
        let n = (w * h) as usize;
        let mut planar = vec![0f32; 3 * n];
        for (i, px) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                planar[ch * n + i] =
                    (px[ch] as f32 / 255.0 - self.config.mean[ch]) / self.config.std[ch];
            }
        }
        Ok(Tensor::from_vec(
            planar,
            (3, h as usize, w as usize),
            &Device::Cpu,
        )?)
    }

    /// Preprocesses, normalises and encodes an RGB image: `[tokens, embedding_width]`, and
    /// the patch grid (columns, rows) the tower saw.
    pub fn embed(&self, rgb: &image::RgbImage) -> Result<(Tensor, (usize, usize)), MmprojError> {
        let ready = self.preprocess(rgb)?;
        let grid = self.grid(ready.width() as usize, ready.height() as usize);
        Ok((self.encode(&self.normalise(&ready)?)?, grid))
    }
}

/// Multi-head scaled dot-product attention of `q` rows over `k`/`v` rows (no mask), the
/// heads split along the width: clip.cpp's `build_attn`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (nq, w) = q.dims2()?;
    let nk = k.dim(0)?;
    let d = w / heads;
    let split = |t: &Tensor, n: usize| t.reshape((n, heads, d))?.transpose(0, 1)?.contiguous();
    let (q, k, v) = (split(q, nq)?, split(k, nk)?, split(v, nk)?);
    let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    att.matmul(&v)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nq, w))
}

pub(crate) fn layer_norm(x: &Tensor, n: &Norm, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    y.broadcast_mul(&n.w)?.broadcast_add(&n.b)
}

/// GELU, tanh form (ggml_gelu).
fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.gelu()
}

/// Quick GELU: `x·σ(1.702x)` (ggml_gelu_quick).
fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.mul(&candle_nn::ops::sigmoid(&(x * 1.702)?)?)
}
