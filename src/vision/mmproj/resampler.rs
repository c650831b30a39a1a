//! Resamplers: what turns a tower's patch grid into a fixed, smaller number of tokens.
//!
//! P²G re-encodes the global image with a resampler when crops join it, so the context keeps
//! its size however many regions the agents return. Two kinds:
//!
//! - [`Resampler`], MiniCPM-V's learned one (`clip.projector_type = "resampler"`): learned
//!   queries attend, in one cross-attention layer, to the patches, whose keys carry 2-D
//!   sin-cos positions — `clip.minicpmv_query_num` tokens for any image size. It follows
//!   llama.cpp's `clip_graph_minicpmv::build` (d_head fixed at 128, as there).
//! - [`pool`], the parameter-free one for models that only have an MLP: adaptive average
//!   pooling of the projected patch grid to k x k tokens (PyTorch's `adaptive_avg_pool2d`
//!   windows). Pooling after the projection keeps each token in the language model's space:
//!   an average of embeddings the model was trained to read.

use candle_core::{Device, Tensor};

use super::{attention, layer_norm, Config, Linear, MmprojError, Norm, Reader};

/// The width of one attention head in MiniCPM-V's resampler (clip.cpp hard-codes it).
const D_HEAD: usize = 128;

/// MiniCPM-V's learned resampler.
pub struct Resampler {
    query: Tensor,
    kv: Linear,
    ln_q: Norm,
    ln_kv: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln_post: Norm,
    proj: Linear,
}

impl Resampler {
    pub(crate) fn load(r: &mut Reader, c: &Config) -> Result<Self, MmprojError> {
        let proj = r.tensor("resampler.proj.weight")?;
        let (_, width) = proj
            .dims2()
            .map_err(|_| r.invalid(format!("resampler.proj.weight is {:?}", proj.dims())))?;
        if width == 0 || !width.is_multiple_of(D_HEAD) {
            return Err(r.invalid(format!(
                "the resampler is {width} wide; llama.cpp's resampler needs a multiple of \
                 {D_HEAD}"
            )));
        }
        let version = r
            .content
            .metadata
            .get("clip.minicpmv_version")
            .and_then(|v| {
                v.to_i32()
                    .ok()
                    .or_else(|| v.to_u32().ok().map(|x| x as i32))
            })
            .filter(|&v| v != 0)
            .unwrap_or(2);
        let queries = match r.content.metadata.get("clip.minicpmv_query_num") {
            Some(v) => v.to_u32().map_err(|_| {
                r.invalid("clip.minicpmv_query_num must be an unsigned integer".into())
            })? as usize,
            // clip.cpp's defaults by MiniCPM-V version.
            None if version == 2 => 96,
            None => 64,
        };
        let query = r.tensor("resampler.query")?;
        if query.dims() != [queries, width] {
            return Err(r.invalid(format!(
                "resampler.query is {:?}, expected [{queries}, {width}]",
                query.dims()
            )));
        }
        let kv_w = r.tensor("resampler.kv.weight")?;
        if kv_w.dims() != [width, c.hidden] {
            return Err(r.invalid(format!(
                "resampler.kv.weight is {:?}, expected [{width}, {}]",
                kv_w.dims(),
                c.hidden
            )));
        }
        let norm = |r: &mut Reader, n: &str| -> Result<Norm, MmprojError> {
            r.norm(&format!("resampler.{n}"))?
                .ok_or_else(|| r.invalid(format!("tensor resampler.{n}.weight is missing")))
        };
        Ok(Self {
            query,
            kv: Linear { w: kv_w, b: None },
            ln_q: norm(r, "ln_q")?,
            ln_kv: norm(r, "ln_kv")?,
            q: r.linear("resampler.attn.q", width, width)?,
            k: r.linear("resampler.attn.k", width, width)?,
            v: r.linear("resampler.attn.v", width, width)?,
            out: r.linear("resampler.attn.out", width, width)?,
            ln_post: norm(r, "ln_post")?,
            proj: Linear { w: proj, b: None },
        })
    }

    /// Tokens it gives per image.
    pub fn queries(&self) -> usize {
        self.query.dims()[0]
    }

    /// The width of its tokens (the language model's).
    pub fn width(&self) -> usize {
        self.proj.w.dims()[0]
    }

    /// `x`: the tower's output, `[gw * gh, hidden]` in raster order.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        gw: usize,
        gh: usize,
        eps: f64,
    ) -> candle_core::Result<Tensor> {
        let width = self.query.dims()[1];
        let v = layer_norm(&self.kv.forward(x)?, &self.ln_kv, eps)?;
        let q = layer_norm(&self.query, &self.ln_q, eps)?;
        let k = v.add(&sincos_2d(width, gw, gh)?)?;
        let o = attention(
            &self.q.forward(&q)?,
            &self.k.forward(&k)?,
            &self.v.forward(&v)?,
            width / D_HEAD,
        )?;
        let o = layer_norm(&self.out.forward(&o)?, &self.ln_post, eps)?;
        self.proj.forward(&o)
    }
}

/// The resampler keys' positions: per patch `[sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]` with
/// `ω_i = 10000^(-i / (width/4))` (clip.cpp's `omega`, `pos_w`, `pos_h` inputs).
fn sincos_2d(width: usize, gw: usize, gh: usize) -> candle_core::Result<Tensor> {
    let q = width / 4;
    let omega: Vec<f32> = (0..q)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / q as f32))
        .collect();
    let mut out = Vec::with_capacity(gw * gh * width);
    for idx in 0..gw * gh {
        let (x, y) = ((idx % gw) as f32, (idx / gw) as f32);
        out.extend(omega.iter().map(|o| (x * o).sin()));
        out.extend(omega.iter().map(|o| (x * o).cos()));
        out.extend(omega.iter().map(|o| (y * o).sin()));
        out.extend(omega.iter().map(|o| (y * o).cos()));
    }
    Tensor::from_vec(out, (gw * gh, width), &Device::Cpu)
}

/// Adaptive average pooling of a projected patch grid (`rows`: `[gw * gh, width]`, raster
/// order) to at most `k x k` tokens, raster order: output cell `i` of `n` averages input
/// rows `floor(i·N/n) .. ceil((i+1)·N/n)` along each axis, as PyTorch's
/// `adaptive_avg_pool2d`. A grid already no larger than `k` on a side is kept as it is.
pub fn pool(rows: &Tensor, grid: (usize, usize), k: usize) -> candle_core::Result<Tensor> {
    let (gw, gh) = grid;
    let (n, width) = rows.dims2()?;
    if n != gw * gh {
        candle_core::bail!("{n} rows are not a {gw}x{gh} grid");
    }
    let k = k.max(1);
    let (kw, kh) = (k.min(gw), k.min(gh));
    if (kw, kh) == (gw, gh) {
        return Ok(rows.clone());
    }
    let data: Vec<f32> = rows.flatten_all()?.to_vec1()?;
    let window =
        |i: usize, cells: usize, full: usize| (i * full / cells, ((i + 1) * full).div_ceil(cells));
    let mut out = Vec::with_capacity(kw * kh * width);
    for oy in 0..kh {
        let (y0, y1) = window(oy, kh, gh);
        for ox in 0..kw {
            let (x0, x1) = window(ox, kw, gw);
            let mut acc = vec![0f64; width];
            for y in y0..y1 {
                for x in x0..x1 {
                    let row = &data[(y * gw + x) * width..(y * gw + x + 1) * width];
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += *v as f64;
                    }
                }
            }
            let count = ((y1 - y0) * (x1 - x0)) as f64;
            out.extend(acc.iter().map(|a| (a / count) as f32));
        }
    }
    Tensor::from_vec(out, (kw * kh, width), rows.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_uses_adaptive_windows() {
        // A 3x3 grid of one-wide rows 0..9 pooled to 2x2: windows [0,2) and [1,3) per axis.
        let rows = Tensor::from_vec(
            (0..9).map(|v| v as f32).collect::<Vec<_>>(),
            (9, 1),
            &Device::Cpu,
        )
        .unwrap();
        let got: Vec<f32> = pool(&rows, (3, 3), 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, vec![2.0, 3.0, 5.0, 6.0]);
        let same = pool(&rows, (3, 3), 5).unwrap();
        assert_eq!(same.dims(), [9, 1]);
        assert!(pool(&rows, (2, 3), 1).is_err());
    }
}
