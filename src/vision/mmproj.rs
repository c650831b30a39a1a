//! The vision tower and projector of a llama.cpp `mmproj` GGUF file, in candle: the part of
//! a LLaVA-style model that turns pixels into embeddings a language model reads.
//!
//! Users who run vision-language models locally have them as llama.cpp pairs: a language
//! model GGUF plus an `mmproj` GGUF holding a CLIP ViT and a projector, tensor by tensor
//! under llama.cpp's names (`v.blk.N.attn_q.weight`, `mm.0.weight`, …) with `clip.*`
//! metadata. This module reads exactly those files, so a user's existing pair works as is.
//!
//! Implemented: `clip.projector_type = "mlp"` (LLaVA-1.5, BakLLaVA, Obsidian): class
//! embedding first, learned positions, pre-layernorm, the blocks up to the second-to-last
//! one stored (llama.cpp's `max_feature_layer` default), the class token dropped, then
//! `mm.0 → GELU → mm.2`. The tower's activation is GELU with `clip.use_gelu`, else quick
//! GELU, as in clip.cpp. Legacy converters stored the first FFN layer as `ffn_down`; the
//! swap is detected from the shapes, as clip.cpp does. Other projector types are a clear
//! error naming what is supported.
//!
//! [`Mmproj::preprocess`] does clip.cpp's fixed-size preprocessing for this projector (its
//! own bicubic resize, aspect kept, centred on LLaVA's pad colour) to the byte;
//! [`Mmproj::normalise`] makes the planar RGB tensor `encode` takes, normalised with the
//! file's mean and std. The reference is `benches/mmproj_reference.py`
//! (numpy, following clip.cpp step by step, itself checked against llama.cpp's clip code);
//! `tests/mmproj.rs` checks this module against its numbers.

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
         ships it)"
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
    pub projector: String,
}

struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Norm {
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

/// An mmproj's vision tower and MLP projector, loaded.
pub struct Mmproj {
    pub config: Config,
    patch_w: Tensor,
    patch_b: Option<Tensor>,
    class: Tensor,
    positions: Tensor,
    pre_ln: Option<Norm>,
    post_ln: Option<Norm>,
    blocks: Vec<Block>,
    mm0: Linear,
    mm2: Option<Linear>,
}

struct Reader<'a> {
    path: &'a Path,
    content: gguf_file::Content,
    file: std::fs::File,
}

impl Reader<'_> {
    fn invalid(&self, reason: String) -> MmprojError {
        MmprojError::Invalid {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn u32(&self, key: &str) -> Result<usize, MmprojError> {
        match self.content.metadata.get(key) {
            Some(v) => v
                .to_u32()
                .map(|x| x as usize)
                .map_err(|_| self.invalid(format!("{key} must be an unsigned integer"))),
            None => Err(self.invalid(format!("metadata {key} is missing"))),
        }
    }

    fn f32s(&self, key: &str, default: [f32; 3]) -> Result<[f32; 3], MmprojError> {
        let Some(v) = self.content.metadata.get(key) else {
            return Ok(default);
        };
        let bad = || self.invalid(format!("{key} must be 3 numbers"));
        let a = v.to_vec().map_err(|_| bad())?;
        let n: Vec<f32> = a.iter().filter_map(|x| x.to_f32().ok()).collect();
        <[f32; 3]>::try_from(n.as_slice()).map_err(|_| bad())
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor, MmprojError> {
        if !self.has(name) {
            return Err(self.invalid(format!("tensor {name} is missing")));
        }
        let q = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| self.invalid(format!("tensor {name}: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    fn optional(&mut self, name: &str) -> Result<Option<Tensor>, MmprojError> {
        if self.has(name) {
            self.tensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn linear(&mut self, name: &str, inp: usize, out: usize) -> Result<Linear, MmprojError> {
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

    fn norm(&mut self, name: &str) -> Result<Option<Norm>, MmprojError> {
        if !self.has(&format!("{name}.weight")) {
            return Ok(None);
        }
        Ok(Some(Norm {
            w: self.tensor(&format!("{name}.weight"))?,
            b: self.tensor(&format!("{name}.bias"))?,
        }))
    }
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
        if projector != "mlp" {
            return Err(MmprojError::Projector {
                path: path.to_path_buf(),
                found: projector,
            });
        }
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
        let (h, f) = (c.hidden, c.ffn);
        let patch_w = r.tensor("v.patch_embd.weight")?;
        if patch_w.dims() != [h, 3, c.patch_size, c.patch_size] {
            return Err(r.invalid(format!(
                "v.patch_embd.weight is {:?}, expected [{h}, 3, {p}, {p}]",
                patch_w.dims(),
                p = c.patch_size
            )));
        }
        let patch_b = r.optional("v.patch_embd.bias")?;
        let class = r.tensor("v.class_embd")?;
        let positions = r.tensor("v.position_embd.weight")?;
        let n_pos = (c.image_size / c.patch_size).pow(2) + 1;
        if positions.dims() != [n_pos, h] {
            return Err(r.invalid(format!(
                "v.position_embd.weight is {:?}, expected [{n_pos}, {h}]",
                positions.dims()
            )));
        }
        let pre_ln = r.norm("v.pre_ln")?;
        let post_ln = r.norm("v.post_ln")?;
        // llama.cpp runs the blocks before the last one stored (the second-to-last layer's
        // output is what LLaVA projects).
        let run = c.blocks.saturating_sub(1).max(1);
        let mut blocks = Vec::with_capacity(run);
        for i in 0..run {
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
            blocks.push(Block {
                ln1: norm(&mut r, "ln1")?,
                q: r.linear(&format!("{p}.attn_q"), h, h)?,
                k: r.linear(&format!("{p}.attn_k"), h, h)?,
                v: r.linear(&format!("{p}.attn_v"), h, h)?,
                out: r.linear(&format!("{p}.attn_out"), h, h)?,
                ln2: norm(&mut r, "ln2")?,
                up: r.linear(&format!("{p}.{up_name}"), h, f)?,
                down: r.linear(&format!("{p}.{down_name}"), f, h)?,
            });
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
        Ok(Self {
            config,
            patch_w,
            patch_b,
            class,
            positions,
            pre_ln,
            post_ln,
            blocks,
            mm0,
            mm2,
        })
    }

    /// The width of the embeddings it produces (the language model's hidden size).
    pub fn embedding_width(&self) -> usize {
        match &self.mm2 {
            Some(l) => l.w.dims()[0],
            None => self.mm0.w.dims()[0],
        }
    }

    /// Tokens per image: one per patch.
    pub fn tokens_per_image(&self) -> usize {
        (self.config.image_size / self.config.patch_size).pow(2)
    }

    /// Embeds one preprocessed image: `pixels` is planar RGB `[3, S, S]` (S =
    /// `image_size`), already normalised. Returns `[tokens, embedding_width]`.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor, MmprojError> {
        let _span = tracing::info_span!("mmproj.encode").entered();
        let c = &self.config;
        let s = c.image_size;
        if pixels.dims() != [3, s, s] {
            return Err(MmprojError::Invalid {
                path: PathBuf::new(),
                reason: format!(
                    "the image tensor is {:?}, expected [3, {s}, {s}]",
                    pixels.dims()
                ),
            });
        }
        let x = pixels.to_dtype(DType::F32)?.unsqueeze(0)?.conv2d(
            &self.patch_w,
            0,
            c.patch_size,
            1,
            1,
        )?;
        let x = match &self.patch_b {
            Some(b) => x.broadcast_add(&b.reshape((1, c.hidden, 1, 1))?)?,
            None => x,
        };
        // [1, hidden, gh, gw] -> [patches, hidden], raster order.
        let x = x.flatten_from(2)?.squeeze(0)?.t()?;
        let x = Tensor::cat(&[self.class.unsqueeze(0)?, x], 0)?;
        let mut x = x.add(&self.positions)?;
        if let Some(n) = &self.pre_ln {
            x = layer_norm(&x, n, c.eps)?;
        }
        for b in &self.blocks {
            x = self.block(b, &x)?;
        }
        if let Some(n) = &self.post_ln {
            x = layer_norm(&x, n, c.eps)?;
        }
        let patches = x.narrow(0, 1, x.dim(0)? - 1)?;
        let y = gelu(&self.mm0.forward(&patches)?)?;
        let y = match &self.mm2 {
            Some(l) => l.forward(&y)?,
            None => y,
        };
        Ok(y)
    }

    fn block(&self, b: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (n, h) = x.dims2()?;
        let d = h / c.heads;
        let y = layer_norm(x, &b.ln1, c.eps)?;
        let heads = |t: Tensor| t.reshape((n, c.heads, d))?.transpose(0, 1)?.contiguous();
        let q = heads(b.q.forward(&y)?)?;
        let k = heads(b.k.forward(&y)?)?;
        let v = heads(b.v.forward(&y)?)?;
        let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let o = att
            .matmul(&v)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((n, h))?;
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

    /// An image as clip.cpp's fixed-size preprocessing for this projector gives it to the
    /// tower: resized bicubically keeping its aspect ratio, centred on an `image_size`
    /// square of LLaVA's pad colour.
    pub fn preprocess(&self, rgb: &image::RgbImage) -> Result<image::RgbImage, MmprojError> {
        let s = self.config.image_size as u32;
        if rgb.width() == 0 || rgb.height() == 0 {
            return Err(MmprojError::Invalid {
                path: PathBuf::new(),
                reason: "the image has no pixels".into(),
            });
        }
        Ok(resize_padded(rgb, s, s, LLAVA_PAD))
    }

    /// The preprocessed tensor for an RGB image already `image_size` square:
    /// `(value / 255 - mean) / std`, planar.
    pub fn normalise(&self, rgb: &image::RgbImage) -> Result<Tensor, MmprojError> {
        let s = self.config.image_size as u32;
        if rgb.dimensions() != (s, s) {
            return Err(MmprojError::Invalid {
                path: PathBuf::new(),
                reason: format!(
                    "the image is {:?}, expected {s}x{s} (resize it first)",
                    rgb.dimensions()
                ),
            });
        }
        let n = (s * s) as usize;
        let mut planar = vec![0f32; 3 * n];
        for (i, p) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                planar[ch * n + i] =
                    (p[ch] as f32 / 255.0 - self.config.mean[ch]) / self.config.std[ch];
            }
        }
        Ok(Tensor::from_vec(
            planar,
            (3, s as usize, s as usize),
            &Device::Cpu,
        )?)
    }
}

fn layer_norm(x: &Tensor, n: &Norm, eps: f64) -> candle_core::Result<Tensor> {
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

/// The colour clip.cpp pads LLaVA images with (the CLIP mean, in bytes).
const LLAVA_PAD: [u8; 3] = [122, 116, 104];

/// clip.cpp's `img_tool::resize` with padding: the aspect-preserving size (f32 arithmetic,
/// rounded up, at most the target), resized bicubically, centred on a `pad` canvas.
fn resize_padded(img: &image::RgbImage, tw: u32, th: u32, pad: [u8; 3]) -> image::RgbImage {
    let (nx, ny) = img.dimensions();
    if (nx, ny) == (tw, th) {
        return img.clone();
    }
    let scale = (tw as f32 / nx as f32).min(th as f32 / ny as f32);
    let new_w = ((nx as f32 * scale).ceil() as u32).clamp(1, tw);
    let new_h = ((ny as f32 * scale).ceil() as u32).clamp(1, th);
    let resized = resize_bicubic(img, new_w, new_h);
    let mut out = image::RgbImage::from_pixel(tw, th, image::Rgb(pad));
    let (ox, oy) = ((tw - new_w) / 2, (th - new_h) / 2);
    for (x, y, p) in resized.enumerate_pixels() {
        out.put_pixel(x + ox, y + oy, *p);
    }
    out
}

/// clip.cpp's `img_tool::resize_bicubic`, with its float and double arithmetic, so the
/// bytes match llama.cpp's (the reference's port of it is bit-identical to the C++).
fn resize_bicubic(img: &image::RgbImage, tw: u32, th: u32) -> image::RgbImage {
    let (nx, ny) = (img.width() as i64, img.height() as i64);
    let tx = nx as f32 / tw as f32;
    let ty = ny as f32 / th as f32;
    let coeffs = |d0: f64, d2: f64, d3: f64| -> (f32, f32, f32) {
        (
            (-1.0 / 3.0 * d0 + d2 - 1.0 / 6.0 * d3) as f32,
            (1.0 / 2.0 * d0 + 1.0 / 2.0 * d2) as f32,
            (-1.0 / 6.0 * d0 - 1.0 / 2.0 * d2 + 1.0 / 6.0 * d3) as f32,
        )
    };
    let poly = |a0: f32, (a1, a2, a3): (f32, f32, f32), d: f32| -> f32 {
        ((a0 + a1 * d) + (a2 * d) * d) + ((a3 * d) * d) * d
    };
    let px = |x: i64, y: i64, c: usize| -> i64 {
        img.get_pixel(x.clamp(0, nx - 1) as u32, y.clamp(0, ny - 1) as u32)[c] as i64
    };
    let mut out = image::RgbImage::new(tw, th);
    for i in 0..th {
        let fy = ty * i as f32;
        let y = fy as i64;
        let dy = fy - y as f32;
        for j in 0..tw {
            let fx = tx * j as f32;
            let x = fx as i64;
            let dx = fx - x as f32;
            let mut rgb = [0u8; 3];
            for (k, v) in rgb.iter_mut().enumerate() {
                let mut col = [0f32; 4];
                for (jj, cj) in col.iter_mut().enumerate() {
                    let yy = y - 1 + jj as i64;
                    let p: [i64; 4] = [
                        px(x - 1, yy, k),
                        px(x, yy, k),
                        px(x + 1, yy, k),
                        px(x + 2, yy, k),
                    ];
                    let a = coeffs(
                        (p[0] - p[1]) as f64,
                        (p[2] - p[1]) as f64,
                        (p[3] - p[1]) as f64,
                    );
                    *cj = poly(p[1] as f32, a, dx);
                }
                let a = coeffs(
                    (col[0] - col[1]) as f64,
                    (col[2] - col[1]) as f64,
                    (col[3] - col[1]) as f64,
                );
                let c = poly(col[1], a, dy) as f64;
                // std::round: half away from zero.
                *v = (c.signum() * (c.abs() + 0.5).floor()).clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(j, i, image::Rgb(rgb));
        }
    }
    out
}
