//! The element-wise parts of a forward pass that candle runs through libm's scalar `expf`:
//! the attention softmax and the MLP's SiLU gate.
//!
//! A profile of a 1045-token prefill (BENCHMARKS.md) put 14% of the time in `expf`: the
//! attention of a 512-token chunk takes ~10M exponentials per layer, most of them of the
//! `-inf` entries the causal mask had just written, and the SiLU gate another 2.5M. Here the
//! exponential is a polynomial the compiler vectorises (relative error ~2e-7, below f32's
//! rounding of the softmax sum), the causal mask is applied by never computing the masked
//! entries, and the scale, mask and softmax are one pass over the scores instead of three
//! tensors.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use rayon::prelude::*;

use super::kernels::{isa, Isa};

/// Softmax over the last axis of attention scores `(b, heads, rows, total)`, scaled by `scale`
/// and causally masked: the scores come from `seq` new positions after `pos` cached ones, row
/// `r` belongs to position `pos + r % seq` (the heads that share a key head are stacked along
/// the rows) and sees keys `0..=pos + r % seq`; the masked entries are 0.
#[derive(Debug, Clone, Copy)]
pub struct CausalSoftmax {
    pub scale: f32,
    pub pos: usize,
    pub seq: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let total = l.shape().dims().last().copied().unwrap_or(0);
        if total != self.pos + self.seq || self.seq == 0 {
            candle_core::bail!(
                "causal-softmax: {total} keys for {} new positions after {}",
                self.seq,
                self.pos
            );
        }
        let mut y = x.to_vec();
        y.par_chunks_mut(total).enumerate().for_each(|(r, row)| {
            let visible = self.pos + r % self.seq + 1;
            let (seen, masked) = row.split_at_mut(visible);
            softmax_row(seen, self.scale);
            masked.fill(0.0);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// `silu(gate) * up`, the MLP's gated activation.
#[derive(Debug, Clone, Copy)]
pub struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s1, l1, self.name())?;
        let u = contiguous_f32(s2, l2, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("silu-mul: {:?} against {:?}", l1.shape(), l2.shape());
        }
        let mut y = g.to_vec();
        y.par_chunks_mut(4096)
            .zip(u.par_chunks(4096))
            .for_each(|(y, u)| silu_mul(y, u));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(all) = s else {
        candle_core::bail!("{op} needs f32 input");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} needs contiguous input");
    };
    Ok(&all[start..end])
}

/// `row = softmax(scale * row)`.
fn softmax_row(row: &mut [f32], scale: f32) {
    match isa() {
        // SAFETY: `isa` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { softmax_avx512(row, scale) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_avx2(row, scale) },
        _ => softmax_generic(row, scale),
    }
}

fn silu_mul(y: &mut [f32], u: &[f32]) {
    match isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { silu_mul_avx512(y, u) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { silu_mul_avx2(y, u) },
        _ => silu_mul_generic(y, u),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_avx512(row: &mut [f32], scale: f32) {
    softmax_generic(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32], scale: f32) {
    softmax_generic(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_mul_avx512(y: &mut [f32], u: &[f32]) {
    silu_mul_generic(y, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(y: &mut [f32], u: &[f32]) {
    silu_mul_generic(y, u)
}

/// Lanes of the accumulators below: wide enough for one AVX-512 register, so the reductions
/// vectorise (a single float accumulator would force the additions into order).
const LANES: usize = 16;

#[inline(always)]
fn softmax_generic(row: &mut [f32], scale: f32) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let tail_max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let max = m.iter().fold(tail_max, |a, &x| a.max(x));
    for x in row.iter_mut() {
        *x = exp(scale * (*x - max));
    }
    let mut s = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &x) in s.iter_mut().zip(c) {
            *s += x;
        }
    }
    let sum: f32 = s.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[inline(always)]
fn silu_mul_generic(y: &mut [f32], u: &[f32]) {
    for (g, &u) in y.iter_mut().zip(u) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `e^x` for f32, branch-free so that loops over it vectorise: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, `e^r` by its Taylor polynomial to `r^6` (relative error < 2e-7 on that
/// interval), `2^n` written into the exponent bits. Inputs below -87 give ~1e-38 (not 0),
/// above 88 they saturate at ~1.6e38; a NaN input gives a NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for the n that occur.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 127] after the clamp, so the biased exponent is a normal one.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * two_n
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        // Inside the clamp (beyond it the result saturates, see `exp`).
        for i in -8700..8799 {
            let x = i as f32 * 0.01 + 0.003;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert!(exp(-1e30) > 0.0 && exp(-1e30) < 1e-37);
        assert!(exp(1e30).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    /// Against candle's scale, additive mask and softmax, for a chunk after cached positions
    /// (rows stacked per key head as the attention does) and for one decoded token; row lengths
    /// not a multiple of the lanes so the tails are taken.
    #[test]
    fn causal_softmax_matches_masked_softmax() {
        let dev = Device::Cpu;
        for (pos, seq) in [(0usize, 7usize), (5, 3), (21, 1)] {
            let (heads, group, total) = (2, 2, pos + seq);
            let n = heads * group * seq * total;
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let att = Tensor::from_vec(v, (1, heads, group * seq, total), &dev).unwrap();
            let scale = 0.125f32;
            let got = att
                .apply_op1_no_bwd(&CausalSoftmax { scale, pos, seq })
                .unwrap();
            let mask: Vec<f32> = (0..seq)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (seq, total), &dev).unwrap();
            let want = (att * scale as f64)
                .unwrap()
                .reshape((1, heads, group, seq, total))
                .unwrap()
                .broadcast_add(&mask)
                .unwrap()
                .reshape((1, heads, group * seq, total))
                .unwrap();
            let want = candle_nn::ops::softmax_last_dim(&want).unwrap();
            let (g, w): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for (a, b) in g.iter().zip(&w) {
                assert!((a - b).abs() < 1e-6, "pos {pos} seq {seq}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn silu_mul_matches_candle() {
        let dev = Device::Cpu;
        let g: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.013).sin() * 12.0).collect();
        let u: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.007).cos()).collect();
        let g = Tensor::from_vec(g, (2, 2500), &dev).unwrap();
        let u = Tensor::from_vec(u, (2, 2500), &dev).unwrap();
        let got: Vec<f32> = g
            .apply_op2_no_bwd(&u, &SiluMul)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = (g.silu().unwrap() * u)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
