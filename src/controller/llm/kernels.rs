//! A matrix-vector kernel candle lacks: Q5_0 weights times f32 activations, with AVX2.
//!
//! Decoding one token reads every weight once, so on a machine with ~11 GB/s of memory
//! bandwidth the bytes per weight bound the speed: Q5_0 is 0.69 bytes per weight, Q8_0 1.06.
//! candle only has a scalar Q5_0 kernel (about 4 tokens/s here) — which is why the store also
//! derives a Q8_0 file — so this module gives Q5_0 the kernel llama.cpp uses: activations
//! quantised to 8-bit blocks, 32 weights unpacked to signed bytes per step, integer dot
//! products (`maddubs`/`madd`), one float multiply-add per block. Rows are split across the
//! rayon pool.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

/// Bytes of one Q5_0 block: f16 scale, 32 high bits, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 22;
const QK: usize = 32;

/// A Q5_0 matrix (rows x cols), as stored in GGUF.
#[derive(Debug)]
pub struct Q5Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Q5Matrix {
    /// `data` is `rows * cols / 32` blocks; `cols` must be a multiple of 32.
    pub fn new(rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        (cols.is_multiple_of(QK) && data.len() == rows * cols / QK * BLOCK_BYTES).then_some(Self {
            rows,
            cols,
            data,
        })
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.cols / QK * BLOCK_BYTES;
        &self.data[r * n..(r + 1) * n]
    }

    /// The matrix in f32 (rows x cols), for the GEMM path of long prefills.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, o)| {
                for (b, blk) in self.row(r).chunks_exact(BLOCK_BYTES).enumerate() {
                    let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    for j in 0..16 {
                        let q = blk[6 + j];
                        let lo = ((q & 0x0F) | ((((qh >> j) & 1) as u8) << 4)) as i32 - 16;
                        let hi = ((q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) as i32 - 16;
                        o[b * QK + j] = lo as f32 * d;
                        o[b * QK + j + 16] = hi as f32 * d;
                    }
                }
            });
        out
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// y = W x for one activation row.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        let (xq, xd) = quantize_row(x);
        let avx2 = has_avx2();
        y.par_chunks_mut(64).enumerate().for_each(|(c, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                let row = self.row(c * 64 + i);
                *o = if avx2 {
                    // SAFETY: AVX2 and FMA were detected at run time.
                    unsafe { dot_avx2(row, &xq, &xd) }
                } else {
                    dot_scalar(row, &xq, &xd)
                };
            }
        });
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 8-bit blocks of 32 activations with one scale each (as ggml's Q8_0, scale kept in f32).
fn quantize_row(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(x.len() / QK);
    for (xb, qb) in x.chunks(QK).zip(q.chunks_mut(QK)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (v, o) in xb.iter().zip(qb.iter_mut()) {
            *o = (v * inv).round() as i8;
        }
        d.push(scale);
    }
    (q, d)
}

/// Weight `j` (0..32) of a block: low nibbles hold 0..16, high nibbles 16..32; bit `j` of the
/// 32-bit field is the fifth bit; values are offset by -16.
fn dot_scalar(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let qs = &blk[6..22];
        let y = &xq[b * QK..(b + 1) * QK];
        let mut acc = 0i32;
        for j in 0..16 {
            let lo = ((qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4)) as i32 - 16;
            let hi = ((qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) as i32 - 16;
            acc += lo * y[j] as i32 + hi * y[j + 16] as i32;
        }
        sum += d * xd[b] * acc as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let nb = row.len() / BLOCK_BYTES;
    let mut acc = _mm256_setzero_ps();
    let low = _mm_set1_epi8(0x0F);
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    let all = _mm256_set1_epi64x(-1);
    let f0 = _mm256_set1_epi8(0xF0u8 as i8);
    let ones = _mm256_set1_epi16(1);
    for b in 0..nb {
        let blk = row.as_ptr().add(b * BLOCK_BYTES);
        let d = f16::from_bits(u16::from_le_bytes([*blk, *blk.add(1)])).to_f32();
        let qh = u32::from_le_bytes([*blk.add(2), *blk.add(3), *blk.add(4), *blk.add(5)]);
        let qs = _mm_loadu_si128(blk.add(6) as *const __m128i);
        let lo = _mm_and_si128(qs, low);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low);
        let mut qx = _mm256_set_m128i(hi, lo);
        // 0xFF in byte j where bit j of qh is set.
        let bits = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
        let bits = _mm256_cmpeq_epi8(_mm256_or_si256(bits, bit_mask), all);
        // (nibble | bit << 4) - 16 == nibble | (bit ? 0 : 0xF0) as a signed byte.
        qx = _mm256_or_si256(qx, _mm256_andnot_si256(bits, f0));
        let qy = _mm256_loadu_si256(xq.as_ptr().add(b * QK) as *const __m256i);
        let ax = _mm256_sign_epi8(qx, qx);
        let sy = _mm256_sign_epi8(qy, qx);
        let dot = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy));
        let scale = _mm256_set1_ps(d * *xd.get_unchecked(b));
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc);
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_avx2(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    dot_scalar(row, xq, xd)
}

impl CustomOp1 for Q5Matrix {
    fn name(&self) -> &'static str {
        "q5_0-matvec"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("q5_0 matvec needs f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q5_0 matvec needs contiguous activations");
        };
        let x = &all[start..end];
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!(
                "q5_0 matvec: input {dims:?} against a {}x{} matrix",
                self.rows,
                self.cols
            );
        }
        let m = x.len() / self.cols;
        let mut y = vec![0f32; m * self.rows];
        for (xr, yr) in x.chunks(self.cols).zip(y.chunks_mut(self.rows)) {
            self.matvec(xr, yr);
        }
        if let Some(last) = dims.last_mut() {
            *last = self.rows;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_dequantised_weights() {
        let dev = Device::Cpu;
        let (rows, cols) = (70, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let wt = Tensor::from_vec(w, (rows, cols), &dev).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q5_0).unwrap();
        let deq: Vec<f32> = q
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let m = Q5Matrix::new(rows, cols, q.data().unwrap().into_owned()).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = vec![0f32; rows];
        m.matvec(&x, &mut y);
        let (xq, xd) = quantize_row(&x);
        assert_eq!(m.dequantize(), deq);
        for r in 0..rows {
            let exact: f32 = (0..cols).map(|c| deq[r * cols + c] * x[c]).sum();
            assert!(
                (y[r] - exact).abs() < 0.02 * (1.0 + exact.abs()),
                "row {r}: {} vs {exact}",
                y[r]
            );
            let scalar = dot_scalar(m.row(r), &xq, &xd);
            assert!(
                (y[r] - scalar).abs() < 1e-3,
                "row {r}: simd {} scalar {scalar}",
                y[r]
            );
        }
    }
}
