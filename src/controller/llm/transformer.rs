//! A decoder-only transformer read from a GGUF file: Qwen2 (biased q/k/v, NeoX rotary) and
//! Llama (SmolLM2: no biases, interleaved rotary as llama.cpp's converter permutes q/k).
//!
//! Shaped like `candle-transformers`' quantized models (`Config`, `load`, `forward`), with three
//! differences that matter for a controller that is called again and again on growing prompts:
//!
//! - the KV cache is a growable buffer that can be cut back to any prefix ([`KvCache::truncate`]),
//!   so a prompt that shares a prefix with the previous one only pays for its new tokens;
//! - the token embedding stays quantised and only the rows a prompt uses are expanded (the
//!   usual full dequantisation costs 544 MB for Qwen2.5's 151936x896 table);
//! - prefill chunks of [`GEMM_MIN_ROWS`] tokens or more expand each weight matrix to f32 for the
//!   duration of one matrix product and use candle's GEMM, which on two cores is several times
//!   faster than the row-by-row quantised dot products; decode stays on the quantised kernels,
//!   which read a quarter of the bytes per token.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use candle_core::quantized::{
    ggml_file::qtensor_from_ggml, gguf_file, GgmlDType, QMatMul, QTensor,
};
use candle_core::{DType, Device, Module, Tensor, D};

use super::kernels::{self, MatVec, RowMatrix};
use super::ops::{CausalSoftmax, SiluMul};
use super::qgemm::{self, PackedMatrix};
use super::LlmError;

/// Prefill chunks with at least this many rows go through the f32 GEMM path.
pub const GEMM_MIN_ROWS: usize = 32;

/// Products of at least this many rows take the packed 8-bit kernel where a weight has one:
/// it reads each weight once per 8 tokens, where the decode kernel reads it once per token.
pub const PACKED_MIN_ROWS: usize = 2;

/// `P2G_INT8_PREFILL=0` keeps the f32 GEMM path (to compare the two in one build).
fn int8_prefill_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("P2G_INT8_PREFILL").map_or(true, |v| v != "0"))
}

/// The model families p2g can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Llama,
}

impl Arch {
    fn key(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }
}

/// Hyper-parameters, read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_length: usize,
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Result<usize, String> {
    ct.metadata
        .get(key)
        .ok_or_else(|| format!("missing metadata `{key}`"))?
        .to_u32()
        .map(|v| v as usize)
        .map_err(|e| format!("metadata `{key}`: {e}"))
}

fn meta_f32(ct: &gguf_file::Content, key: &str) -> Result<f32, String> {
    ct.metadata
        .get(key)
        .ok_or_else(|| format!("missing metadata `{key}`"))?
        .to_f32()
        .map_err(|e| format!("metadata `{key}`: {e}"))
}

impl Config {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, String> {
        let arch = match ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
        {
            Some("qwen2") => Arch::Qwen2,
            Some("llama") => Arch::Llama,
            Some(other) => {
                return Err(format!(
                    "architecture `{other}` is not supported (p2g runs qwen2 and llama GGUFs)"
                ))
            }
            None => return Err("missing metadata `general.architecture`".into()),
        };
        let k = arch.key();
        let n_embd = meta_u32(ct, &format!("{k}.embedding_length"))?;
        let n_head = meta_u32(ct, &format!("{k}.attention.head_count"))?;
        let n_head_kv = meta_u32(ct, &format!("{k}.attention.head_count_kv"))?;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(format!(
                "inconsistent attention shape: {n_embd} wide, {n_head} heads, {n_head_kv} kv heads"
            ));
        }
        let head_dim = n_embd / n_head;
        let rope_base = meta_f32(ct, &format!("{k}.rope.freq_base")).unwrap_or(10_000.0);
        Ok(Self {
            arch,
            n_layer: meta_u32(ct, &format!("{k}.block_count"))?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rope_base,
            rms_eps: meta_f32(ct, &format!("{k}.attention.layer_norm_rms_epsilon"))?,
            context_length: meta_u32(ct, &format!("{k}.context_length"))?,
        })
    }
}

/// A weight matrix with an optional bias. Quantised weights take the quantised kernels for
/// decode and are expanded to f32 per call for large prefill chunks.
#[derive(Debug, Clone)]
struct Linear {
    weight: Weight,
    /// The same weights repacked for the 8-bit prefill kernel ([`qgemm`]), where the CPU runs
    /// it and the format allows.
    packed: Option<Arc<PackedMatrix>>,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// Formats left to candle's kernels (f32, the rarer quantisations).
    Candle(Arc<QTensor>, QMatMul),
    /// Q5_0, Q8_0 and the common K-quants, on the rayon pool (see `kernels`).
    Own(Arc<dyn RowMatrix>),
}

impl Linear {
    /// A layer's weight from its GGUF bytes (`rows x cols`), read once into the buffer its
    /// kernel keeps: candle's reader copies each tensor twice more, a second of a first
    /// answer for a 0.5B model. Where the CPU and the format allow, the weights are also
    /// repacked for the 8-bit prefill kernel ([`qgemm`]).
    fn from_bytes(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
        bias: Option<Tensor>,
    ) -> Result<Self, candle_core::Error> {
        let packed = match qgemm::Format::of(dtype) {
            Some(format) if qgemm::available() && int8_prefill_enabled() => {
                PackedMatrix::new(format, rows, cols, &data).map(Arc::new)
            }
            _ => None,
        };
        let weight = match kernels::row_matrix_from_bytes(dtype, rows, cols, data)? {
            Ok(m) => Weight::Own(m),
            Err(data) => {
                let t = Arc::new(qtensor_from_ggml(
                    dtype,
                    &data,
                    vec![rows, cols],
                    &Device::Cpu,
                )?);
                Weight::Candle(t.clone(), QMatMul::from_arc(t)?)
            }
        };
        Ok(Self {
            weight,
            packed,
            bias,
        })
    }

    /// A weight kept in candle's form (the output projection, which is not packed: only the
    /// last token's logits are usually needed, and its 136M weights would cost 150 MB more).
    fn new(weight: QTensor, bias: Option<Tensor>) -> Result<Self, candle_core::Error> {
        let packed = None;
        let weight = if let Some(m) = kernels::row_matrix(&weight)? {
            Weight::Own(m)
        } else {
            let weight = Arc::new(weight);
            Weight::Candle(weight.clone(), QMatMul::from_arc(weight)?)
        };
        Ok(Self {
            weight,
            packed,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, candle_core::Error> {
        let k = x.dim(D::Minus1)?;
        let rows = x.elem_count() / k;
        let gemm = |w: Tensor| -> Result<Tensor, candle_core::Error> {
            let n = w.dim(0)?;
            let mut dims = x.dims().to_vec();
            let flat = x.reshape((rows, k))?.matmul(&w.t()?)?;
            if let Some(last) = dims.last_mut() {
                *last = n;
            }
            flat.reshape(dims)
        };
        let y = match (&self.weight, &self.packed) {
            // (A width that does not match falls through to the paths that report it.)
            (_, Some(p)) if rows >= PACKED_MIN_ROWS && k == p.cols() => {
                let flat = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = p.rows();
                }
                Tensor::from_vec(p.matmul(&flat, rows), dims, x.device())?
            }
            (Weight::Candle(w, QMatMul::QTensor(_)), _) if rows >= GEMM_MIN_ROWS => {
                gemm(w.dequantize(x.device())?)?
            }
            (Weight::Candle(_, qmm), _) => qmm.forward(x)?,
            (Weight::Own(m), _) if rows >= GEMM_MIN_ROWS => gemm(Tensor::from_vec(
                m.dequantize(),
                (m.rows(), m.cols()),
                x.device(),
            )?)?,
            (Weight::Own(m), _) => x.contiguous()?.apply_op1_no_bwd(&MatVec(m.as_ref()))?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A 2-D tensor's type, rows, columns and GGUF bytes, read straight from the file.
fn raw_matrix<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    end: u64,
    name: &str,
) -> Result<(GgmlDType, usize, usize, Vec<u8>), String> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| "not in the file".to_string())?;
    let (rows, cols) = info.shape.dims2().map_err(|e| e.to_string())?;
    let dtype = info.ggml_dtype;
    let (block, size) = (dtype.block_size(), dtype.type_size());
    if !cols.is_multiple_of(block) {
        return Err(format!("{cols} columns are not whole blocks of {block}"));
    }
    let bytes = rows
        .checked_mul(cols / block)
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| "too large".to_string())?;
    let start = ct.tensor_data_offset.saturating_add(info.offset);
    if start.saturating_add(bytes as u64) > end {
        return Err(format!(
            "needs {bytes} bytes at offset {start}, the file is {end} bytes long"
        ));
    }
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    let mut data = vec![0u8; bytes];
    reader.read_exact(&mut data).map_err(|e| e.to_string())?;
    Ok((dtype, rows, cols, data))
}

/// The token embedding, kept in its quantised form; rows are expanded on lookup.
#[derive(Debug)]
struct Embedding {
    dtype: GgmlDType,
    dim: usize,
    rows: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl Embedding {
    fn new(t: &QTensor) -> Result<Self, candle_core::Error> {
        let (rows, dim) = t.shape().dims2()?;
        let dtype = t.dtype();
        let row_bytes = dim / dtype.block_size() * dtype.type_size();
        Ok(Self {
            dtype,
            dim,
            rows,
            row_bytes,
            data: t.data()?.into_owned(),
        })
    }

    /// Ids past the vocabulary are rows of `spliced` (`[n, dim]`, flat): embeddings made
    /// elsewhere (an image's) standing at those positions, as llama.cpp's `llama_batch.embd`.
    fn forward(
        &self,
        ids: &[u32],
        spliced: &[f32],
        dev: &Device,
    ) -> Result<Tensor, candle_core::Error> {
        let mut out = Vec::with_capacity(ids.len() * self.dim);
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                let at = (id - self.rows) * self.dim;
                match spliced.get(at..at + self.dim) {
                    Some(row) => out.extend_from_slice(row),
                    None => candle_core::bail!(
                        "token id {id} is outside the vocabulary ({}) and the spliced \
                         embeddings ({} rows)",
                        self.rows,
                        spliced.len() / self.dim
                    ),
                }
                continue;
            }
            let row = &self.data[id * self.row_bytes..(id + 1) * self.row_bytes];
            let q = qtensor_from_ggml(self.dtype, row, vec![self.dim], dev)?;
            out.extend(q.dequantize(dev)?.to_vec1::<f32>()?);
        }
        Tensor::from_vec(out, (1, ids.len(), self.dim), dev)
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Keys and values of every position seen so far, per layer, in buffers that grow by doubling.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on; the next forward pass starts there.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * 4)
            .sum()
    }

    /// The keys and values of the first `len` positions, layer by layer (keys then values,
    /// each `n_head_kv x len x head_dim`), to be written out and read back by
    /// [`KvCache::import`].
    pub fn export(&self, len: usize) -> candle_core::Result<Vec<f32>> {
        if len > self.len {
            candle_core::bail!(
                "cannot export {len} positions of a cache holding {}",
                self.len
            );
        }
        let mut out = Vec::new();
        for (k, v) in &self.layers {
            for t in [k, v] {
                out.extend(t.narrow(2, 0, len)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(out)
    }

    /// A cache holding `len` positions read from `data`, laid out as [`KvCache::export`] wrote
    /// it for a model of this configuration.
    pub fn import(
        cfg: &Config,
        len: usize,
        data: &[f32],
        dev: &Device,
    ) -> candle_core::Result<Self> {
        let per = cfg.n_head_kv * len * cfg.head_dim;
        if data.len() != 2 * cfg.n_layer * per {
            candle_core::bail!(
                "a cache of {len} positions holds {} values for this model, not {}",
                2 * cfg.n_layer * per,
                data.len()
            );
        }
        let mut cache = KvCache::default();
        cache.reserve(cfg, len, dev)?;
        for (i, (k, v)) in cache.layers.iter().enumerate() {
            for (j, t) in [k, v].into_iter().enumerate() {
                let at = (2 * i + j) * per;
                let src = Tensor::from_slice(
                    &data[at..at + per],
                    (1, cfg.n_head_kv, len, cfg.head_dim),
                    dev,
                )?;
                t.slice_set(&src, 2, 0)?;
            }
        }
        cache.len = len;
        Ok(cache)
    }

    fn reserve(&mut self, cfg: &Config, needed: usize, dev: &Device) -> candle_core::Result<()> {
        if needed <= self.capacity && self.layers.len() == cfg.n_layer {
            return Ok(());
        }
        let capacity = needed.max(self.capacity * 2).max(512).next_multiple_of(256);
        let shape = (1, cfg.n_head_kv, capacity, cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let k = Tensor::zeros(shape, DType::F32, dev)?;
            let v = Tensor::zeros(shape, DType::F32, dev)?;
            if let Some((ok, ov)) = self.layers.get(i) {
                if self.len > 0 {
                    k.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    v.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            layers.push((k, v));
        }
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }
}

/// A loaded model: weights plus rotary tables. Stateless across calls; state is the [`KvCache`].
#[derive(Debug)]
pub struct Transformer {
    cfg: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Transformer {
    /// Loads the weights named as llama.cpp names them.
    pub fn load<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        cfg: Config,
        max_context: usize,
    ) -> Result<Self, LlmError> {
        let dev = Device::Cpu;
        let get = |reader: &mut R, name: &str| -> Result<QTensor, LlmError> {
            ct.tensor(reader, name, &dev)
                .map_err(|e| LlmError::BadModel(format!("tensor `{name}`: {e}")))
        };
        // The file's length, for the matrices' bounds checks.
        let end = reader
            .seek(SeekFrom::End(0))
            .map_err(|e| LlmError::BadModel(format!("cannot read the file: {e}")))?;
        let matrix = |reader: &mut R, name: &str, bias: Option<Tensor>| {
            let bad = |e: String| LlmError::BadModel(format!("tensor `{name}`: {e}"));
            let (dtype, rows, cols, data) = raw_matrix(ct, reader, end, name).map_err(bad)?;
            Linear::from_bytes(dtype, rows, cols, data, bias).map_err(|e| bad(e.to_string()))
        };
        let token_embd = get(reader, "token_embd.weight")?;
        let embed = Embedding::new(&token_embd)?;
        // Small models tie the output projection to the embedding.
        let output = match get(reader, "output.weight") {
            Ok(w) => w,
            Err(_) => token_embd,
        };
        let output = Linear::new(output, None)?;
        let norm = get(reader, "output_norm.weight")?.dequantize(&dev)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut bias = |name: &str| -> Result<Option<Tensor>, LlmError> {
                match cfg.arch {
                    Arch::Qwen2 => Ok(Some(
                        get(reader, &format!("{p}.{name}.bias"))?.dequantize(&dev)?,
                    )),
                    Arch::Llama => Ok(None),
                }
            };
            let (bq, bk, bv) = (bias("attn_q")?, bias("attn_k")?, bias("attn_v")?);
            layers.push(Layer {
                attn_norm: get(reader, &format!("{p}.attn_norm.weight"))?.dequantize(&dev)?,
                wq: matrix(reader, &format!("{p}.attn_q.weight"), bq)?,
                wk: matrix(reader, &format!("{p}.attn_k.weight"), bk)?,
                wv: matrix(reader, &format!("{p}.attn_v.weight"), bv)?,
                wo: matrix(reader, &format!("{p}.attn_output.weight"), None)?,
                ffn_norm: get(reader, &format!("{p}.ffn_norm.weight"))?.dequantize(&dev)?,
                gate: matrix(reader, &format!("{p}.ffn_gate.weight"), None)?,
                up: matrix(reader, &format!("{p}.ffn_up.weight"), None)?,
                down: matrix(reader, &format!("{p}.ffn_down.weight"), None)?,
            });
        }
        let max_context = max_context.min(cfg.context_length).max(1);
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_context * half);
        let mut sin = Vec::with_capacity(max_context * half);
        for p in 0..max_context {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_context, half), &dev)?,
            sin: Tensor::from_vec(sin, (max_context, half), &dev)?,
            cfg,
            embed,
            layers,
            norm,
            output,
            device: dev,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The longest sequence the rotary tables cover.
    pub fn max_context(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Runs `tokens` after the cache's positions and returns the logits of the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, LlmError> {
        self.forward_from(tokens, cache, tokens.len().saturating_sub(1), &[])
    }

    /// The number of token embeddings; ids from here on are spliced rows.
    pub fn vocab_size(&self) -> usize {
        self.embed.rows
    }

    /// Like [`Transformer::forward`], but returns the logits after each of `tokens[from..]`,
    /// one vocabulary-sized row each (scoring a known continuation in one pass). A token id
    /// `vocab_size() + i` stands for row `i` of `spliced` (flat, `n_embd` wide): an image's
    /// embeddings enter the model at those positions.
    pub fn forward_from(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        from: usize,
        spliced: &[f32],
    ) -> Result<Vec<f32>, LlmError> {
        let seq = tokens.len();
        let pos = cache.len;
        if seq == 0 {
            return Err(LlmError::Internal("forward called with no tokens".into()));
        }
        if pos + seq > self.max_context() {
            return Err(LlmError::ContextFull {
                needed: pos + seq,
                max: self.max_context(),
            });
        }
        cache.reserve(&self.cfg, pos + seq, &self.device)?;
        let mut x = self.embed.forward(tokens, spliced, &self.device)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        for (layer, (kc, vc)) in self.layers.iter().zip(cache.layers.iter()) {
            x = self.layer(layer, &x, pos, kc, vc, &cos, &sin)?;
        }
        cache.len = pos + seq;
        let from = from.min(seq - 1);
        let last = x.narrow(1, from, seq - from)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.cfg.rms_eps)?;
        let logits = self.output.forward(&last)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        pos: usize,
        kc: &Tensor,
        vc: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, seq, _) = x.dims3()?;
        let h = candle_nn::ops::rms_norm(x, &l.attn_norm, c.rms_eps)?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, seq, n, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(l.wq.forward(&h)?, c.n_head)?;
        let k = heads(l.wk.forward(&h)?, c.n_head_kv)?;
        let v = heads(l.wv.forward(&h)?, c.n_head_kv)?;
        let (q, k) = match c.arch {
            Arch::Qwen2 => (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            ),
            Arch::Llama => (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            ),
        };
        kc.slice_set(&k, 2, pos)?;
        vc.slice_set(&v, 2, pos)?;
        let total = pos + seq;
        let k_all = kc.narrow(2, 0, total)?;
        let v_all = vc.narrow(2, 0, total)?;
        // Grouped-query attention without copying keys per head: the heads sharing one kv head
        // are stacked along the row axis of a single product.
        let group = c.n_head / c.n_head_kv;
        let q = q.reshape((b, c.n_head_kv, group * seq, c.head_dim))?;
        let att = q.matmul(&k_all.t()?)?.apply_op1_no_bwd(&CausalSoftmax {
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            pos,
            seq,
        })?;
        let y = att.matmul(&v_all)?;
        let y = y
            .reshape((b, c.n_head, seq, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b, seq, c.n_head * c.head_dim))?;
        let x = (x + l.wo.forward(&y)?)?;
        let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, c.rms_eps)?;
        let g = l.gate.forward(&h)?.contiguous()?;
        let u = l.up.forward(&h)?.contiguous()?;
        x + l.down.forward(&g.apply_op2_no_bwd(&u, &SiluMul)?)?
    }
}
