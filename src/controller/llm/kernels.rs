//! Matrix-vector kernels for the weight formats that dominate a decode step: Q5_0 (most
//! layers of the shipped Qwen GGUF) and Q8_0 (its 136M-weight output projection and half the
//! value projections).
//!
//! Decoding one token reads every weight once, so the speed is bounded by how many weights a
//! core turns into products per second. candle has only a scalar Q5_0 kernel (about 4
//! tokens/s here), and its Q8_0 kernel converts each block's f16 scale through a function call
//! and runs on candle's own thread pool, which on two cores competes with rayon's. So both
//! formats get kernels here, run on the rayon pool: activations are quantised once to 8-bit
//! blocks, each block of 32 weights becomes one integer dot product (`maddubs`/`madd`) and
//! one float multiply-add. With AVX-512 (BW/DQ) two blocks go through one 512-bit register
//! and Q5_0's fifth bits are applied with a mask register instead of being spread into bytes
//! (on Q5_0 here 1.5x the first AVX2 kernel, 1.15x the AVX2 one with inline scales; see
//! BENCHMARKS.md); AVX2 is the fallback, then scalar.
//!
//! The K-quants (Q4_K, Q5_K, Q6_K: the shipped GGUF's `ffn_down`) keep candle's block dot
//! products, but [`KMatrix`] runs them row by row on the rayon pool too, so a decode step
//! never wakes candle's second pool (its spinning worker competed with rayon's for the two
//! cores: a few percent of a token here).

use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// A quantised weight format with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    /// f16 scale, 32 fifth bits, 16 bytes of nibbles; weights are `(nibble | bit << 4) - 16`.
    Q5_0,
    /// f16 scale, 32 signed bytes.
    Q8_0,
}

impl QFormat {
    fn block_bytes(self) -> usize {
        match self {
            QFormat::Q5_0 => 22,
            QFormat::Q8_0 => 34,
        }
    }
}

/// The best instruction set this CPU has for the kernels, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512 with VNNI: `vpdpbusd` does `maddubs` + `madd` in one instruction.
    Avx512Vnni,
    Avx512,
    Avx2,
    Scalar,
}

pub(super) fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") {
                if has!("avx512vnni") {
                    return Isa::Avx512Vnni;
                }
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// A quantised matrix (rows x cols), as stored in GGUF.
#[derive(Debug)]
pub struct QMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// One activation row in 8-bit blocks of 32 with an f32 scale each (ggml's Q8_0, scale kept
/// in f32), plus `16 * sum(block) * scale` per block for Q5_0's unsigned-weight kernel.
struct QuantRow {
    q: Vec<i8>,
    d: Vec<f32>,
    corr: Vec<f32>,
}

impl QMatrix {
    /// `data` is `rows * cols / 32` blocks of `format`; `cols` must be a multiple of 32.
    pub fn new(format: QFormat, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        (cols.is_multiple_of(QK) && data.len() == rows * cols / QK * format.block_bytes())
            .then_some(Self {
                format,
                rows,
                cols,
                data,
            })
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.cols / QK * self.format.block_bytes();
        &self.data[r * n..(r + 1) * n]
    }
}

/// Fills `y[r] = f(r)` on the rayon pool, 64 rows per task.
fn par_rows(y: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    y.par_chunks_mut(64).enumerate().for_each(|(c, out)| {
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(c * 64 + i);
        }
    });
}

/// A weight matrix with a matrix-vector kernel on the rayon pool and an f32 expansion for the
/// GEMM path of long prefills.
pub trait RowMatrix: std::fmt::Debug + Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The matrix in f32 (rows x cols).
    fn dequantize(&self) -> Vec<f32>;
    /// y = W x for one activation row.
    fn matvec(&self, x: &[f32], y: &mut [f32]);
    fn name(&self) -> &'static str;
}

impl RowMatrix for QMatrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let bb = self.format.block_bytes();
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, o)| {
                for (blk, ob) in self.row(r).chunks_exact(bb).zip(o.chunks_exact_mut(QK)) {
                    let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                    match self.format {
                        QFormat::Q5_0 => {
                            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                            for (j, &q) in blk[6..22].iter().enumerate() {
                                let lo = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                                let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                                ob[j] = (lo as i32 - 16) as f32 * d;
                                ob[j + 16] = (hi as i32 - 16) as f32 * d;
                            }
                        }
                        QFormat::Q8_0 => {
                            for (o, &q) in ob.iter_mut().zip(&blk[2..]) {
                                *o = q as i8 as f32 * d;
                            }
                        }
                    }
                }
            });
        out
    }

    fn matvec(&self, x: &[f32], y: &mut [f32]) {
        let xr = quantize_row(x);
        let (format, isa) = (self.format, isa());
        par_rows(y, |r| dot(format, isa, self.row(r), &xr));
    }

    fn name(&self) -> &'static str {
        match self.format {
            QFormat::Q5_0 => "q5_0-matvec",
            QFormat::Q8_0 => "q8_0-matvec",
        }
    }
}

/// A K-quant matrix (`T` = candle's block type), multiplied with candle's block dot products
/// on the rayon pool.
pub struct KMatrix<T: GgmlType> {
    rows: usize,
    cols: usize,
    blocks: Vec<T>,
}

impl<T: GgmlType> std::fmt::Debug for KMatrix<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KMatrix<{:?}>({}x{})", T::DTYPE, self.rows, self.cols)
    }
}

impl<T: GgmlType> KMatrix<T> {
    /// `data` is the GGUF bytes of `rows * cols / T::BLCK_SIZE` blocks.
    pub fn new(rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        if !cols.is_multiple_of(T::BLCK_SIZE) {
            return None;
        }
        let n = rows * cols / T::BLCK_SIZE;
        if data.len() != n * std::mem::size_of::<T>() {
            return None;
        }
        let mut blocks = vec![T::zeros(); n];
        // SAFETY: candle's K-quant blocks are `repr(C)` plain data (f16 and byte arrays) laid
        // out as in GGUF, and the length was checked; the copy goes into properly aligned
        // blocks, so the unaligned byte buffer is never read as `T`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                blocks.as_mut_ptr() as *mut u8,
                data.len(),
            );
        }
        Some(Self { rows, cols, blocks })
    }

    fn row(&self, r: usize) -> &[T] {
        let n = self.cols / T::BLCK_SIZE;
        &self.blocks[r * n..(r + 1) * n]
    }
}

impl<T: GgmlType + std::fmt::Debug> RowMatrix for KMatrix<T>
where
    T::VecDotType: Send + Sync,
{
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, o)| T::to_float(self.row(r), o));
        out
    }

    fn matvec(&self, x: &[f32], y: &mut [f32]) {
        let mut xq = vec![T::VecDotType::zeros(); self.cols / T::VecDotType::BLCK_SIZE];
        T::VecDotType::from_float(x, &mut xq);
        par_rows(y, |r| T::vec_dot(self.cols, self.row(r), &xq));
    }

    fn name(&self) -> &'static str {
        "k-quant-matvec"
    }
}

/// The kernel for a `rows x cols` GGUF weight matrix given as its file bytes (kept, not
/// copied, for Q5_0/Q8_0), or `Err(bytes)` for formats left to candle.
#[allow(clippy::type_complexity)]
pub fn row_matrix_from_bytes(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
) -> candle_core::Result<Result<Arc<dyn RowMatrix>, Vec<u8>>> {
    let m: Option<Arc<dyn RowMatrix>> = match dtype {
        GgmlDType::Q5_0 => QMatrix::new(QFormat::Q5_0, rows, cols, data).map(|m| Arc::new(m) as _),
        GgmlDType::Q8_0 => QMatrix::new(QFormat::Q8_0, rows, cols, data).map(|m| Arc::new(m) as _),
        GgmlDType::Q4K => KMatrix::<BlockQ4K>::new(rows, cols, &data).map(|m| Arc::new(m) as _),
        GgmlDType::Q5K => KMatrix::<BlockQ5K>::new(rows, cols, &data).map(|m| Arc::new(m) as _),
        GgmlDType::Q6K => KMatrix::<BlockQ6K>::new(rows, cols, &data).map(|m| Arc::new(m) as _),
        _ => return Ok(Err(data)),
    };
    match m {
        Some(m) => Ok(Ok(m)),
        None => candle_core::bail!("a {dtype:?} matrix of {rows}x{cols} has the wrong size"),
    }
}

/// The kernel for a GGUF weight matrix, or `None` for formats left to candle (f32, the rarer
/// quantisations).
pub fn row_matrix(t: &QTensor) -> candle_core::Result<Option<Arc<dyn RowMatrix>>> {
    let &[rows, cols] = t.shape().dims() else {
        return Ok(None);
    };
    let data = || t.data();
    let m: Option<Arc<dyn RowMatrix>> = match t.dtype() {
        GgmlDType::Q5_0 => {
            QMatrix::new(QFormat::Q5_0, rows, cols, data()?.into_owned()).map(|m| Arc::new(m) as _)
        }
        GgmlDType::Q8_0 => {
            QMatrix::new(QFormat::Q8_0, rows, cols, data()?.into_owned()).map(|m| Arc::new(m) as _)
        }
        GgmlDType::Q4K => KMatrix::<BlockQ4K>::new(rows, cols, &data()?).map(|m| Arc::new(m) as _),
        GgmlDType::Q5K => KMatrix::<BlockQ5K>::new(rows, cols, &data()?).map(|m| Arc::new(m) as _),
        GgmlDType::Q6K => KMatrix::<BlockQ6K>::new(rows, cols, &data()?).map(|m| Arc::new(m) as _),
        _ => return Ok(None),
    };
    match m {
        Some(m) => Ok(Some(m)),
        None => candle_core::bail!(
            "a {:?} matrix of {rows}x{cols} has the wrong size",
            t.dtype()
        ),
    }
}

/// Runs a [`RowMatrix`] as a candle op on every row of the input's last dimension.
pub struct MatVec<'a>(pub &'a dyn RowMatrix);

fn dot(format: QFormat, isa: Isa, row: &[u8], x: &QuantRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the instruction sets were detected at run time (`isa`); every block read is
    // inside `row` (whole blocks, checked in `QMatrix::new`) and `x` has one block per block.
    unsafe {
        match (format, isa) {
            (QFormat::Q5_0, Isa::Avx512Vnni) => return x86::q5_avx512_vnni(row, x),
            (QFormat::Q8_0, Isa::Avx512Vnni) => return x86::q8_avx512_vnni(row, x),
            (QFormat::Q5_0, Isa::Avx512) => return x86::q5_avx512(row, x),
            (QFormat::Q5_0, Isa::Avx2) => return x86::q5_avx2(row, &x.q, &x.d),
            (QFormat::Q8_0, Isa::Avx512) => return x86::q8_avx512(row, x),
            (QFormat::Q8_0, Isa::Avx2) => return x86::q8_avx2(row, &x.q, &x.d),
            _ => {}
        }
    }
    let _ = isa;
    dot_scalar(format, row, &x.q, &x.d)
}

fn quantize_row(x: &[f32]) -> QuantRow {
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(x.len() / QK);
    let mut corr = Vec::with_capacity(x.len() / QK);
    for (xb, qb) in x.chunks(QK).zip(q.chunks_mut(QK)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (v, o) in xb.iter().zip(qb.iter_mut()) {
            // Within -127..=127: the kernels' sign trick cannot negate -128.
            *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
            sum += *o as i32;
        }
        d.push(scale);
        corr.push(16.0 * sum as f32 * scale);
    }
    QuantRow { q, d, corr }
}

/// Weight `j` (0..32) of a Q5_0 block: low nibbles hold 0..16, high nibbles 16..32; bit `j`
/// of the 32-bit field is the fifth bit; values are offset by -16.
fn q5_weight(blk: &[u8], j: usize) -> i32 {
    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
    let nibble = if j < 16 {
        blk[6 + j] & 0x0F
    } else {
        blk[6 + j - 16] >> 4
    };
    (nibble | ((((qh >> j) & 1) as u8) << 4)) as i32 - 16
}

fn dot_scalar(format: QFormat, row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, blk) in row.chunks_exact(format.block_bytes()).enumerate() {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let y = &xq[b * QK..(b + 1) * QK];
        let acc: i32 = match format {
            QFormat::Q5_0 => (0..QK).map(|j| q5_weight(blk, j) * y[j] as i32).sum(),
            QFormat::Q8_0 => blk[2..]
                .iter()
                .zip(y)
                .map(|(&w, &v)| w as i8 as i32 * v as i32)
                .sum(),
        };
        sum += d * xd[b] * acc as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD dot products. Callers guarantee the instruction sets (see `isa`) and that
    //! `row` holds whole blocks matching the activation blocks.
    use super::{QuantRow, QK};
    use std::arch::x86_64::*;

    const Q5: usize = 22;
    const Q8: usize = 34;

    /// A block's f16 scale, converted inline (F16C) rather than through a call per block.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> f32 {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline(always)]
    unsafe fn hsum256(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Q5_0 with AVX2 (llama.cpp's unpacking): the fifth bits are spread into bytes, weights
    /// made signed, and the sign trick feeds `maddubs`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_avx2(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let nb = row.len() / Q5;
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
            let blk = row.as_ptr().add(b * Q5);
            let d = scale(blk);
            let qh = (blk.add(2) as *const u32).read_unaligned();
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
            let s = _mm256_set1_ps(d * *xd.get_unchecked(b));
            acc = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(dot), acc);
        }
        hsum256(acc)
    }

    /// Two Q5_0 blocks' weights as unsigned bytes (`nibble + 16 * bit`), in weight order:
    /// block 0's 16 low then 16 high nibbles, then block 1's. The fifth bits are added under a
    /// mask built straight from the two 32-bit fields.
    #[inline(always)]
    unsafe fn q5_pair(p0: *const u8, p1: *const u8) -> __m512i {
        let low = _mm256_set1_epi8(0x0F);
        let qh0 = (p0.add(2) as *const u32).read_unaligned() as u64;
        let qh1 = (p1.add(2) as *const u32).read_unaligned() as u64;
        let qs = _mm256_set_m128i(
            _mm_loadu_si128(p1.add(6) as *const __m128i),
            _mm_loadu_si128(p0.add(6) as *const __m128i),
        );
        let lo = _mm256_and_si256(qs, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), low);
        let nib = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_permute2x128_si256(lo, hi, 0x20)),
            _mm256_permute2x128_si256(lo, hi, 0x31),
            1,
        );
        _mm512_mask_add_epi8(nib, qh0 | (qh1 << 32), nib, _mm512_set1_epi8(16))
    }

    /// Two Q8_0 blocks' signed weights in one register.
    #[inline(always)]
    unsafe fn q8_pair(p0: *const u8, p1: *const u8) -> __m512i {
        _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2) as *const __m256i)),
            _mm256_loadu_si256(p1.add(2) as *const __m256i),
            1,
        )
    }

    /// Eight lanes of `s0` then eight of `s1`: the two blocks' combined scales.
    #[inline(always)]
    unsafe fn pair_scales(s0: f32, s1: f32) -> __m512 {
        _mm512_insertf32x8(
            _mm512_castps256_ps512(_mm256_set1_ps(s0)),
            _mm256_set1_ps(s1),
            1,
        )
    }

    /// Q5_0 with AVX-512, two blocks per step. The weights stay unsigned (`nibble + 16 *
    /// bit`, added under a mask built straight from the two 32-bit fields), so `maddubs`
    /// takes them as they are; the `-16` offset is subtracted once per block through
    /// `x.corr`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx2,fma,f16c")]
    pub unsafe fn q5_avx512(row: &[u8], x: &QuantRow) -> f32 {
        let nb = row.len() / Q5;
        let (xq, xd, corr) = (&x.q, &x.d, &x.corr);
        let mut acc = _mm512_setzero_ps();
        let mut offset = 0f32;
        let ones = _mm512_set1_epi16(1);
        let mut b = 0;
        while b + 1 < nb {
            let p0 = row.as_ptr().add(b * Q5);
            let p1 = p0.add(Q5);
            let (d0, d1) = (scale(p0), scale(p1));
            let qx = q5_pair(p0, p1);
            let qy = _mm512_loadu_si512(xq.as_ptr().add(b * QK) as *const _);
            let dot = _mm512_madd_epi16(_mm512_maddubs_epi16(qx, qy), ones);
            let s = pair_scales(d0 * *xd.get_unchecked(b), d1 * *xd.get_unchecked(b + 1));
            acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dot), acc);
            offset += d0 * *corr.get_unchecked(b) + d1 * *corr.get_unchecked(b + 1);
            b += 2;
        }
        let mut sum = _mm512_reduce_add_ps(acc) - offset;
        if b < nb {
            sum += q5_avx2(&row[b * Q5..], &xq[b * QK..], &xd[b..]);
        }
        sum
    }

    /// [`q5_avx512`] with VNNI: one `vpdpbusd` per two blocks (unsigned weights, signed
    /// activations) where `maddubs` + `madd` took two instructions.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q5_avx512_vnni(row: &[u8], x: &QuantRow) -> f32 {
        let nb = row.len() / Q5;
        let (xq, xd, corr) = (&x.q, &x.d, &x.corr);
        let mut acc = _mm512_setzero_ps();
        let mut offset = 0f32;
        let zero = _mm512_setzero_si512();
        let mut b = 0;
        while b + 1 < nb {
            let p0 = row.as_ptr().add(b * Q5);
            let p1 = p0.add(Q5);
            let (d0, d1) = (scale(p0), scale(p1));
            let qx = q5_pair(p0, p1);
            let qy = _mm512_loadu_si512(xq.as_ptr().add(b * QK) as *const _);
            let dot = _mm512_dpbusd_epi32(zero, qx, qy);
            let s = pair_scales(d0 * *xd.get_unchecked(b), d1 * *xd.get_unchecked(b + 1));
            acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dot), acc);
            offset += d0 * *corr.get_unchecked(b) + d1 * *corr.get_unchecked(b + 1);
            b += 2;
        }
        let mut sum = _mm512_reduce_add_ps(acc) - offset;
        if b < nb {
            sum += q5_avx2(&row[b * Q5..], &xq[b * QK..], &xd[b..]);
        }
        sum
    }

    /// [`q8_avx512`] with VNNI: the weights made unsigned (`w + 128`, a flipped sign bit)
    /// feed one `vpdpbusd`; `128 * Σa` per block is taken off after (`x.corr` holds
    /// `16 * Σa * scale`).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q8_avx512_vnni(row: &[u8], x: &QuantRow) -> f32 {
        let nb = row.len() / Q8;
        let (xq, xd, corr) = (&x.q, &x.d, &x.corr);
        let mut acc = _mm512_setzero_ps();
        let mut offset = 0f32;
        let flip = _mm512_set1_epi8(0x80u8 as i8);
        let zero = _mm512_setzero_si512();
        let mut b = 0;
        while b + 1 < nb {
            let p0 = row.as_ptr().add(b * Q8);
            let p1 = p0.add(Q8);
            let (d0, d1) = (scale(p0), scale(p1));
            let qx = q8_pair(p0, p1);
            let qy = _mm512_loadu_si512(xq.as_ptr().add(b * QK) as *const _);
            let dot = _mm512_dpbusd_epi32(zero, _mm512_xor_si512(qx, flip), qy);
            let s = pair_scales(d0 * *xd.get_unchecked(b), d1 * *xd.get_unchecked(b + 1));
            acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dot), acc);
            offset += d0 * *corr.get_unchecked(b) + d1 * *corr.get_unchecked(b + 1);
            b += 2;
        }
        // corr is 16·Σa·scale; the offset here is 128·Σa·scale per block.
        let mut sum = _mm512_reduce_add_ps(acc) - 8.0 * offset;
        if b < nb {
            sum += q8_avx2(&row[b * Q8..], &xq[b * QK..], &xd[b..]);
        }
        sum
    }

    /// Q8_0 with AVX2: the sign trick feeds `maddubs` (|w| is read unsigned, so even -128
    /// weights are exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_avx2(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let nb = row.len() / Q8;
        let mut acc = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let blk = row.as_ptr().add(b * Q8);
            let qx = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(xq.as_ptr().add(b * QK) as *const __m256i);
            let ax = _mm256_sign_epi8(qx, qx);
            let sy = _mm256_sign_epi8(qy, qx);
            let dot = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy));
            let s = _mm256_set1_ps(scale(blk) * *xd.get_unchecked(b));
            acc = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(dot), acc);
        }
        hsum256(acc)
    }

    /// Q8_0 with AVX-512, two blocks per step; AVX-512 has no `sign`, so |w| and a masked
    /// negation of the activations stand in for it.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx2,fma,f16c")]
    pub unsafe fn q8_avx512(row: &[u8], x: &QuantRow) -> f32 {
        let nb = row.len() / Q8;
        let (xq, xd) = (&x.q, &x.d);
        let mut acc = _mm512_setzero_ps();
        let ones = _mm512_set1_epi16(1);
        let zero = _mm512_setzero_si512();
        let mut b = 0;
        while b + 1 < nb {
            let p0 = row.as_ptr().add(b * Q8);
            let p1 = p0.add(Q8);
            let qx = q8_pair(p0, p1);
            let qy = _mm512_loadu_si512(xq.as_ptr().add(b * QK) as *const _);
            let negative = _mm512_movepi8_mask(qx);
            let sy = _mm512_mask_sub_epi8(qy, negative, zero, qy);
            let dot = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(qx), sy), ones);
            let s = pair_scales(
                scale(p0) * *xd.get_unchecked(b),
                scale(p1) * *xd.get_unchecked(b + 1),
            );
            acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dot), acc);
            b += 2;
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if b < nb {
            sum += q8_avx2(&row[b * Q8..], &xq[b * QK..], &xd[b..]);
        }
        sum
    }
}

impl CustomOp1 for MatVec<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (name, rows, cols) = (self.0.name(), self.0.rows(), self.0.cols());
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("{name} needs f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{name} needs contiguous activations");
        };
        let x = &all[start..end];
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&cols) {
            candle_core::bail!("{name}: input {dims:?} against a {rows}x{cols} matrix");
        }
        let m = x.len() / cols;
        let mut y = vec![0f32; m * rows];
        for (xr, yr) in x.chunks(cols).zip(y.chunks_mut(rows)) {
            self.0.matvec(xr, yr);
        }
        if let Some(last) = dims.last_mut() {
            *last = rows;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A deterministic weight matrix and activation row.
    fn fixture(rows: usize, cols: usize) -> (Tensor, Vec<f32>) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let wt = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        (wt, (0..cols).map(|i| (i as f32 * 0.37).sin()).collect())
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Every kernel this CPU can run agrees with the scalar reference and with f32 products
    /// of candle's dequantised weights; 7 blocks per row so the two-block kernels take their
    /// odd tail too.
    #[test]
    fn kernels_match_dequantised_weights() {
        let dev = Device::Cpu;
        let (rows, cols) = (70, 7 * QK);
        let (wt, x) = fixture(rows, cols);
        for (ggml, format) in [
            (GgmlDType::Q5_0, QFormat::Q5_0),
            (GgmlDType::Q8_0, QFormat::Q8_0),
        ] {
            let q = QTensor::quantize(&wt, ggml).unwrap();
            let deq = flat(&q.dequantize(&dev).unwrap());
            let m = QMatrix::new(format, rows, cols, q.data().unwrap().into_owned()).unwrap();
            assert_eq!(m.dequantize(), deq, "{format:?}");
            let mut y = vec![0f32; rows];
            m.matvec(&x, &mut y);
            let xr = quantize_row(&x);
            for r in 0..rows {
                let exact: f32 = (0..cols).map(|c| deq[r * cols + c] * x[c]).sum();
                assert!(
                    (y[r] - exact).abs() < 0.02 * (1.0 + exact.abs()),
                    "{format:?} row {r}: {} vs {exact}",
                    y[r]
                );
                let scalar = dot_scalar(format, m.row(r), &xr.q, &xr.d);
                let have = super::isa();
                for isa in [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2, Isa::Scalar] {
                    let runs = match isa {
                        Isa::Avx512Vnni => have == Isa::Avx512Vnni,
                        Isa::Avx512 => matches!(have, Isa::Avx512 | Isa::Avx512Vnni),
                        Isa::Avx2 => have != Isa::Scalar,
                        Isa::Scalar => true,
                    };
                    if !runs {
                        continue;
                    }
                    let v = dot(format, isa, m.row(r), &xr);
                    assert!(
                        (v - scalar).abs() < 1e-3 * (1.0 + scalar.abs()),
                        "{format:?} {isa:?} row {r}: {v} vs scalar {scalar}"
                    );
                }
            }
        }
    }

    /// The K-quant wrapper gives candle's own quantised product, row for row.
    #[test]
    fn k_quants_match_candle() {
        use candle_core::quantized::QMatMul;
        use candle_core::Module;
        let dev = Device::Cpu;
        let (rows, cols) = (40, 512);
        let (wt, x) = fixture(rows, cols);
        let xt = Tensor::from_vec(x.clone(), (1, cols), &dev).unwrap();
        for ggml in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = QTensor::quantize(&wt, ggml).unwrap();
            let bytes = q.data().unwrap().into_owned();
            let m: Box<dyn RowMatrix> = match ggml {
                GgmlDType::Q4K => Box::new(KMatrix::<BlockQ4K>::new(rows, cols, &bytes).unwrap()),
                _ => Box::new(KMatrix::<BlockQ6K>::new(rows, cols, &bytes).unwrap()),
            };
            let deq = flat(&q.dequantize(&dev).unwrap());
            assert_eq!(m.dequantize(), deq, "{ggml:?}");
            let want = flat(&QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap());
            let got = flat(&xt.apply_op1_no_bwd(&MatVec(m.as_ref())).unwrap());
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-3 * (1.0 + w.abs()),
                    "{ggml:?} row {r}: {g} vs {w}"
                );
            }
        }
        assert!(KMatrix::<BlockQ6K>::new(2, 256, &[0; 10]).is_none());
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(QMatrix::new(QFormat::Q5_0, 2, 33, vec![0; 44]).is_none());
        assert!(QMatrix::new(QFormat::Q8_0, 2, 32, vec![0; 44]).is_none());
        assert!(QMatrix::new(QFormat::Q8_0, 2, 32, vec![0; 68]).is_some());
    }
}
