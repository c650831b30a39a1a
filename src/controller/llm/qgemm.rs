//! Prefill products in 8-bit integers: Q5_0 and Q8_0 weights repacked once, at load, for
//! AVX-512 VNNI's `vpdpbusd` (64 unsigned-by-signed byte products per instruction).
//!
//! Why: the f32 GEMM path expands every weight matrix to f32 on every prefill chunk (1.4 GB
//! written for Qwen2.5-0.5B) and then runs 16 multiply-adds per instruction; a prompt of a
//! few hundred tokens spent most of a first answer there. Here the activations are quantised
//! to 8-bit blocks of 32 (as the decode kernels and llama.cpp quantise them), and each
//! instruction does 64 products.
//!
//! Layout: rows are grouped in panels of 16 (one 512-bit register of i32 lanes, one lane per
//! row). Per panel and block of 32 columns, eight groups of 64 bytes hold 4 consecutive
//! weights of each of the 16 rows, so one load and one `vpdpbusd` against four broadcast
//! activation bytes advance 16 rows by 4 columns; then one convert and one multiply-add apply
//! the 16 rows' block scales times the token's. The weights are stored unsigned (`w + offset`:
//! Q5_0's 0..31 as stored, Q8_0's byte + 128); the accumulator starts at `-offset * Σa` of the
//! block, which removes the offset without an extra instruction. A panel (16 rows x 896
//! columns = 16 KB) stays in L1 while every token tile passes over it.
//!
//! The K-quants fit the same scheme exactly, with their own sub-block: Q6_K's 6-bit values
//! (offset 32) have a scale per 16 weights, Q4_K's and Q5_K's per 32 with a minimum, which
//! costs one more multiply-add per block (`- min * Σa`).
//!
//! Without AVX-512 VNNI the transformer keeps the f32 GEMM path ([`available`]).

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// Activation block (one scale per 32 values, as ggml's Q8_0).
const QK: usize = 32;
/// Weight rows per panel: one register of 16 i32 lanes.
const PANEL: usize = 16;
/// Tokens per tile: each holds two registers (an integer and a float accumulator).
const TILE: usize = 8;

/// The GGUF weight formats the kernel takes, each as unsigned bytes with a scale per
/// sub-block (and a minimum for Q4_K/Q5_K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q5_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q5K => Format::Q5K,
            GgmlDType::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    /// (weights, bytes) of one GGUF block.
    fn block(self) -> (usize, usize) {
        match self {
            Format::Q5_0 => (32, 22),
            Format::Q8_0 => (32, 34),
            Format::Q4K => (256, 144),
            Format::Q5K => (256, 176),
            Format::Q6K => (256, 210),
        }
    }

    /// Weights per scale.
    fn sub(self) -> usize {
        match self {
            Format::Q6K => 16,
            _ => 32,
        }
    }

    /// Stored bytes are `value + offset`.
    fn offset(self) -> i32 {
        match self {
            Format::Q5_0 => 16,
            Format::Q8_0 => 128,
            Format::Q6K => 32,
            Format::Q4K | Format::Q5K => 0,
        }
    }

    fn has_mins(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K)
    }

    /// One GGUF block as stored bytes `u` (one per weight), a scale per sub-block and, for
    /// Q4_K/Q5_K, a minimum: weight = scale * (u - offset) - min.
    fn unpack(self, blk: &[u8], u: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
        let h = |i: usize| f16::from_bits(u16::from_le_bytes([blk[i], blk[i + 1]])).to_f32();
        match self {
            Format::Q5_0 => {
                scales[0] = h(0);
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for j in 0..16 {
                    u[j] = (blk[6 + j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                    u[j + 16] = (blk[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
            }
            Format::Q8_0 => {
                scales[0] = h(0);
                for (o, &q) in u.iter_mut().zip(&blk[2..34]) {
                    *o = q ^ 0x80;
                }
            }
            Format::Q4K | Format::Q5K => {
                let (d, dmin) = (h(0), h(2));
                let sc = &blk[4..16];
                let (qh, qs) = match self {
                    Format::Q5K => (Some(&blk[16..48]), &blk[48..176]),
                    _ => (None, &blk[16..144]),
                };
                for pair in 0..4 {
                    let q = &qs[pair * 32..pair * 32 + 32];
                    for half in 0..2 {
                        let j = pair * 2 + half;
                        let (s, m) = scale_min_k4(j, sc);
                        scales[j] = d * s as f32;
                        mins[j] = dmin * m as f32;
                        for l in 0..32 {
                            let nib = if half == 0 { q[l] & 0x0F } else { q[l] >> 4 };
                            let hi = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
                            u[j * 32 + l] = nib | hi;
                        }
                    }
                }
            }
            Format::Q6K => {
                let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
                let d = h(208);
                for (j, s) in scales.iter_mut().enumerate().take(16) {
                    *s = d * sc[j] as i8 as f32;
                }
                for n in 0..2 {
                    let (ql, qh, y) = (&ql[64 * n..], &qh[32 * n..], &mut u[128 * n..]);
                    for l in 0..32 {
                        y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                        y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                        y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
        }
    }
}

/// ggml's 6-bit scale and minimum `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Whether this CPU runs the packed kernel (AVX-512 F/BW and VNNI), detected once.
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// A weight matrix repacked for the kernel (see the module docs).
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    panels: usize,
    /// Weights per scale (16 or 32).
    sub: usize,
    /// Stored weights are `w + offset`.
    offset: i32,
    /// Panel-major: panel, sub-block, group of 4 columns, row, 4 bytes.
    weights: Vec<u8>,
    /// Panel-major: panel, sub-block, row.
    scales: Vec<f32>,
    /// As `scales`, for formats with a minimum; empty otherwise.
    mins: Vec<f32>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({}x{})", self.rows, self.cols)
    }
}

/// Activations of `m` tokens in 8-bit blocks of 32: values, scale per block, and the sum of
/// the values per 16 and per 32 (for the weights' offsets and minimums).
struct QuantActs {
    q: Vec<i8>,
    d: Vec<f32>,
    sum16: Vec<i32>,
    sum32: Vec<i32>,
}

fn quantize(x: &[f32]) -> QuantActs {
    let blocks = x.len() / QK;
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; blocks];
    let mut sum16 = vec![0i32; 2 * blocks];
    let mut sum32 = vec![0i32; blocks];
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (v, o) in xb.iter().zip(qb.iter_mut()) {
            // Within -127..=127, as the decode kernels quantise.
            // Rounded half away from zero as `roundf` does, without its library call (this
            // loop runs per token and layer).
            let y = (v * inv).clamp(-127.0, 127.0);
            *o = (y + 0.5f32.copysign(y)) as i8;
        }
        let lo: i32 = qb[..16].iter().map(|&v| v as i32).sum();
        let hi: i32 = qb[16..].iter().map(|&v| v as i32).sum();
        d[b] = scale;
        sum16[2 * b] = lo;
        sum16[2 * b + 1] = hi;
        sum32[b] = lo + hi;
    }
    QuantActs { q, d, sum16, sum32 }
}

impl PackedMatrix {
    /// Repacks `rows x cols` weights given as GGUF blocks of `format`; `None` when the sizes
    /// do not fit (whole blocks per row).
    pub fn new(format: Format, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        let (bw, bb) = format.block();
        if rows == 0 || cols == 0 || !cols.is_multiple_of(bw) || data.len() != rows * cols / bw * bb
        {
            return None;
        }
        let sub = format.sub();
        let subs = cols / sub;
        let panels = rows.div_ceil(PANEL);
        let mut weights = vec![0u8; panels * cols * PANEL];
        let mut scales = vec![0f32; panels * subs * PANEL];
        let mut mins = vec![0f32; if format.has_mins() { scales.len() } else { 0 }];
        let mut mins_chunks: Vec<&mut [f32]> = if mins.is_empty() {
            (0..panels).map(|_| &mut [][..]).collect()
        } else {
            mins.chunks_mut(subs * PANEL).collect()
        };
        // Padding rows (past `rows`) keep zero scales: their lanes add nothing used.
        weights
            .par_chunks_mut(cols * PANEL)
            .zip(scales.par_chunks_mut(subs * PANEL))
            .zip(mins_chunks.par_iter_mut())
            .enumerate()
            .for_each(|(p, ((w, s), mn))| {
                // A row is unpacked whole, then its bytes go out four at a time.
                let (mut u, mut bs, mut bm) = (vec![0u8; cols], vec![0f32; subs], vec![0f32; subs]);
                let per = bw / sub;
                for r in 0..PANEL.min(rows - p * PANEL) {
                    let row = &data[(p * PANEL + r) * cols / bw * bb..][..cols / bw * bb];
                    for (b, blk) in row.chunks_exact(bb).enumerate() {
                        format.unpack(
                            blk,
                            &mut u[b * bw..(b + 1) * bw],
                            &mut bs[b * per..(b + 1) * per],
                            &mut bm[b * per..(b + 1) * per],
                        );
                    }
                    for (sb, block) in u.chunks_exact(sub).enumerate() {
                        let out = &mut w[sb * PANEL * sub + r * 4..];
                        for (g, quad) in block.chunks_exact(4).enumerate() {
                            out[g * 64..g * 64 + 4].copy_from_slice(quad);
                        }
                    }
                    for sb in 0..subs {
                        s[sb * PANEL + r] = bs[sb];
                        if !mn.is_empty() {
                            mn[sb * PANEL + r] = bm[sb];
                        }
                    }
                }
            });
        Some(Self {
            rows,
            cols,
            panels,
            sub,
            offset: format.offset(),
            weights,
            scales,
            mins,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.weights.len() + (self.scales.len() + self.mins.len()) * 4
    }

    /// `y = x W^T` for `m` tokens: `x` is `m x cols`, the result `m x rows`, row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "activations of the wrong size");
        let acts = quantize(x);
        // Each panel writes its own `m x 16` slab; the slabs are interleaved into rows after.
        let mut slabs = vec![0f32; self.panels * m * PANEL];
        let simd = available();
        slabs
            .par_chunks_mut(m * PANEL)
            .enumerate()
            .for_each(|(p, out)| self.panel(p, &acts, m, out, simd));
        let mut y = vec![0f32; m * self.rows];
        for (p, slab) in slabs.chunks_exact(m * PANEL).enumerate() {
            let r0 = p * PANEL;
            let n = PANEL.min(self.rows - r0);
            for (t, lanes) in slab.chunks_exact(PANEL).enumerate() {
                y[t * self.rows + r0..][..n].copy_from_slice(&lanes[..n]);
            }
        }
        y
    }

    fn view(&self, p: usize) -> PanelView<'_> {
        let subs = self.cols / self.sub;
        PanelView {
            w: &self.weights[p * self.cols * PANEL..][..self.cols * PANEL],
            s: &self.scales[p * subs * PANEL..][..subs * PANEL],
            mins: if self.mins.is_empty() {
                &[]
            } else {
                &self.mins[p * subs * PANEL..][..subs * PANEL]
            },
            cols: self.cols,
            sub: self.sub,
            offset: self.offset,
        }
    }

    /// One panel's 16 outputs for every token.
    fn panel(&self, p: usize, acts: &QuantActs, m: usize, out: &mut [f32], simd: bool) {
        let v = self.view(p);
        let mut t0 = 0;
        while t0 < m {
            let n = TILE.min(m - t0);
            let out = &mut out[t0 * PANEL..(t0 + n) * PANEL];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `available` checked AVX-512 F/BW/VNNI; the view holds this panel's
                // sub-blocks, `acts` holds `m` tokens of `cols` values, and `out` holds `n`
                // rows of 16 lanes (the tile reads and writes nothing else).
                unsafe { x86::tile(&v, acts, t0, n, out) };
                t0 += n;
                continue;
            }
            let _ = simd;
            tile_scalar(&v, acts, t0, n, out);
            t0 += n;
        }
    }
}

/// One panel of a [`PackedMatrix`].
struct PanelView<'a> {
    w: &'a [u8],
    s: &'a [f32],
    mins: &'a [f32],
    cols: usize,
    sub: usize,
    offset: i32,
}

impl PanelView<'_> {
    fn sums<'b>(&self, acts: &'b QuantActs) -> &'b [i32] {
        if self.sub == 16 {
            &acts.sum16
        } else {
            &acts.sum32
        }
    }
}

/// The same integer arithmetic as the SIMD tile, one lane at a time (reference and fallback).
fn tile_scalar(v: &PanelView<'_>, acts: &QuantActs, t0: usize, n: usize, out: &mut [f32]) {
    let (cols, sub) = (v.cols, v.sub);
    let subs = cols / sub;
    let sums = v.sums(acts);
    for t in 0..n {
        let tok = t0 + t;
        for r in 0..PANEL {
            let mut acc = 0f32;
            for b in 0..subs {
                let asum = sums[tok * subs + b];
                let mut i = -v.offset * asum;
                for k in 0..sub {
                    let u = v.w[b * PANEL * sub + (k / 4) * 64 + r * 4 + k % 4] as i32;
                    i += u * acts.q[tok * cols + b * sub + k] as i32;
                }
                let da = acts.d[(tok * cols + b * sub) / QK];
                acc += i as f32 * (v.s[b * PANEL + r] * da);
                if !v.mins.is_empty() {
                    acc -= v.mins[b * PANEL + r] * (da * asum as f32);
                }
            }
            out[t * PANEL + r] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PanelView, QuantActs, PANEL, QK};
    use std::arch::x86_64::*;

    /// `n` (1..=8) tokens from `t0` against one panel; callers guarantee AVX-512 F/BW/VNNI
    /// and the sizes (see `PackedMatrix::panel`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(v: &PanelView<'_>, acts: &QuantActs, t0: usize, n: usize, out: &mut [f32]) {
        macro_rules! go {
            ($mt:literal) => {
                match (v.sub, v.mins.is_empty()) {
                    (16, true) => tile_n::<$mt, 16, false>(v, acts, t0, out),
                    (16, false) => tile_n::<$mt, 16, true>(v, acts, t0, out),
                    (_, true) => tile_n::<$mt, 32, false>(v, acts, t0, out),
                    (_, false) => tile_n::<$mt, 32, true>(v, acts, t0, out),
                }
            };
        }
        match n {
            8 => go!(8),
            7 => go!(7),
            6 => go!(6),
            5 => go!(5),
            4 => go!(4),
            3 => go!(3),
            2 => go!(2),
            _ => go!(1),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_n<const MT: usize, const SUB: usize, const MINS: bool>(
        v: &PanelView<'_>,
        acts: &QuantActs,
        t0: usize,
        out: &mut [f32],
    ) {
        let cols = v.cols;
        let subs = cols / SUB;
        let q = acts.q.as_ptr().add(t0 * cols);
        let d = acts.d.as_ptr().add(t0 * cols / QK);
        let sums = v.sums(acts).as_ptr().add(t0 * subs);
        let blocks = cols / QK;
        let mut facc = [_mm512_setzero_ps(); MT];
        for b in 0..subs {
            let wb = v.w.as_ptr().add(b * PANEL * SUB);
            let mut iacc = [_mm512_setzero_si512(); MT];
            for (t, acc) in iacc.iter_mut().enumerate() {
                *acc = _mm512_set1_epi32(-v.offset * *sums.add(t * subs + b));
            }
            for g in 0..SUB / 4 {
                let wv = _mm512_loadu_si512(wb.add(g * 64) as *const _);
                for (t, acc) in iacc.iter_mut().enumerate() {
                    let a = (q.add(t * cols + b * SUB + g * 4) as *const i32).read_unaligned();
                    *acc = _mm512_dpbusd_epi32(*acc, wv, _mm512_set1_epi32(a));
                }
            }
            let sv = _mm512_loadu_ps(v.s.as_ptr().add(b * PANEL));
            let ab = b * SUB / QK;
            for (t, (f, acc)) in facc.iter_mut().zip(&iacc).enumerate() {
                let da = *d.add(t * blocks + ab);
                let sc = _mm512_mul_ps(sv, _mm512_set1_ps(da));
                *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*acc), sc, *f);
                if MINS {
                    let mv = _mm512_loadu_ps(v.mins.as_ptr().add(b * PANEL));
                    let asum = *sums.add(t * subs + b) as f32;
                    *f = _mm512_fnmadd_ps(mv, _mm512_set1_ps(da * asum), *f);
                }
            }
        }
        for (t, f) in facc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(t * PANEL), *f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random GGUF blocks of `format` with sane f16 scales (deterministic).
    fn random_blocks(format: Format, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed | 1);
        let (bw, bb) = format.block();
        let mut out = Vec::with_capacity(rows * cols / bw * bb);
        for _ in 0..rows * cols / bw {
            let mut blk: Vec<u8> = (0..bb).map(|_| rng.next() as u8).collect();
            let mut put = |at: usize, rng: &mut Rng| {
                let d = f16::from_f32(0.001 + (rng.next() % 1000) as f32 * 1e-5);
                blk[at..at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
            };
            match format {
                Format::Q5_0 | Format::Q8_0 => put(0, &mut rng),
                Format::Q4K | Format::Q5K => {
                    put(0, &mut rng);
                    put(2, &mut rng);
                }
                Format::Q6K => put(208, &mut rng),
            }
            if format == Format::Q8_0 {
                for b in &mut blk[2..] {
                    if *b == 0x80 {
                        *b = 0x81; // ggml never writes -128
                    }
                }
            }
            out.extend_from_slice(&blk);
        }
        out
    }

    /// The weights as f32, by candle's (or p2g's decode kernels') dequantisation.
    fn dequantize(format: Format, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
        use super::super::kernels::{KMatrix, QFormat, QMatrix, RowMatrix};
        match format {
            Format::Q5_0 => QMatrix::new(QFormat::Q5_0, rows, cols, data.to_vec())
                .unwrap()
                .dequantize(),
            Format::Q8_0 => QMatrix::new(QFormat::Q8_0, rows, cols, data.to_vec())
                .unwrap()
                .dequantize(),
            Format::Q4K => KMatrix::<BlockQ4K>::new(rows, cols, data)
                .unwrap()
                .dequantize(),
            Format::Q5K => KMatrix::<BlockQ5K>::new(rows, cols, data)
                .unwrap()
                .dequantize(),
            Format::Q6K => KMatrix::<BlockQ6K>::new(rows, cols, data)
                .unwrap()
                .dequantize(),
        }
    }

    #[test]
    fn unpacked_blocks_are_the_dequantised_weights() {
        for format in [
            Format::Q5_0,
            Format::Q8_0,
            Format::Q4K,
            Format::Q5K,
            Format::Q6K,
        ] {
            let (bw, _) = format.block();
            let data = random_blocks(format, 3, bw * 2, 7);
            let want = dequantize(format, 3, bw * 2, &data);
            let (sub, off) = (format.sub(), format.offset());
            let (mut u, mut s, mut m) = (vec![0u8; bw], vec![0f32; bw / sub], vec![0f32; bw / sub]);
            let bb = format.block().1;
            for (b, blk) in data.chunks_exact(bb).enumerate() {
                format.unpack(blk, &mut u, &mut s, &mut m);
                for k in 0..bw {
                    let mut got = s[k / sub] * (u[k] as i32 - off) as f32;
                    if format.has_mins() {
                        got -= m[k / sub];
                    }
                    let w = want[b * bw + k];
                    assert!(
                        (got - w).abs() <= 1e-6 * w.abs().max(1e-3),
                        "{format:?} {b}/{k}: {got} vs {w}"
                    );
                }
            }
        }
    }

    fn check(format: Format, rows: usize, cols: usize, m: usize) {
        let data = random_blocks(format, rows, cols, (rows * 31 + cols * 7 + m) as u64);
        let packed = PackedMatrix::new(format, rows, cols, &data).unwrap();
        let w = dequantize(format, rows, cols, &data);
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 2654435761) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let y = packed.matmul(&x, m);
        for t in 0..m {
            for r in 0..rows {
                let exact: f64 = (0..cols)
                    .map(|k| w[r * cols + k] as f64 * x[t * cols + k] as f64)
                    .sum();
                let norm: f64 = (0..cols)
                    .map(|k| (w[r * cols + k] as f64 * x[t * cols + k] as f64).abs())
                    .sum();
                let got = y[t * rows + r] as f64;
                // 8-bit activations: about 1/254 of each block's largest value per product.
                assert!(
                    (got - exact).abs() <= 0.01 * norm + 1e-6,
                    "{format:?} {rows}x{cols} m={m} t={t} r={r}: {got} vs {exact}"
                );
            }
        }
        // The scalar tile on the same packed data: the same integers, summed in another order.
        let acts = quantize(&x);
        for p in 0..packed.panels {
            let mut out = vec![0f32; m * PANEL];
            tile_scalar(&packed.view(p), &acts, 0, m, &mut out);
            for t in 0..m {
                for r in 0..PANEL.min(rows - p * PANEL) {
                    let (a, b) = (out[t * PANEL + r], y[t * rows + p * PANEL + r]);
                    assert!(
                        (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                        "{format:?} scalar {a} vs kernel {b} (t={t}, row {})",
                        p * PANEL + r
                    );
                }
            }
        }
    }

    #[test]
    fn packed_products_match_the_dequantised_weights() {
        for format in [Format::Q5_0, Format::Q8_0] {
            for (rows, cols, m) in [(16, 32, 1), (37, 96, 5), (64, 256, 8), (48, 128, 19)] {
                check(format, rows, cols, m);
            }
        }
        for format in [Format::Q4K, Format::Q5K, Format::Q6K] {
            for (rows, cols, m) in [(16, 256, 1), (21, 512, 9), (32, 256, 3)] {
                check(format, rows, cols, m);
            }
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(PackedMatrix::new(Format::Q5_0, 2, 33, &[0; 44]).is_none());
        assert!(PackedMatrix::new(Format::Q8_0, 2, 32, &[0; 10]).is_none());
        assert!(PackedMatrix::new(Format::Q8_0, 0, 32, &[]).is_none());
        assert!(PackedMatrix::new(Format::Q6K, 1, 128, &[0; 105]).is_none());
    }
}
