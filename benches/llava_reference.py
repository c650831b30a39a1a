#!/usr/bin/env python3
"""Numpy reference for a LLaVA-style prompt run through llama.cpp: a GGUF language model
("llama" or "qwen2" architecture) fed a prompt made of text segments and image-embedding
segments, returning the next-token logits after the last position. Written for issue 23
(in-process multimodal controller) and its fixtures tests/fixtures/llava/
(tests/fixtures/make_llava_fixtures.py); reads any F32/F16 (or gguf-py-dequantisable)
GGUF of these two architectures, but only the features listed below.

    python3 benches/llava_reference.py SPEC.json OUT.json [--kv-f16]

SPEC = {"llm": path, "mmproj": path, "image": path,
        "segments": [{"text": "..."} | {"image": "mlp" | "pool:K" | "resampler",
                                         "box": [x1, y1, x2, y2] or null}, ...]}
(paths relative to the spec file). OUT = the spec plus, per segment, "ids" (text) or
"embeddings" (rows, 7 significant digits) and "n_tokens" and "positions" [start, end);
plus "logits" (n_vocab floats, 7 significant digits) after the last position, "top5" ids,
"llm_sha256", "mmproj_sha256", "image_rgb_u8_sha256" and what was derived ("llm_hparams",
per image segment "preprocess").

IMPORTANT: llama.cpp itself was NOT run for this file (llama-cpp-python cannot be installed
here, and no llama.cpp build was made). Every step below is written from llama.cpp's source
semantics, as cited; the image encoders are those of benches/mmproj_reference.py (which was
checked against builds of clip.cpp, see its docstring). Plain float32 numpy math
(RMSNorm sums and softmax sums in float64, like ggml's ggml_float accumulators).

llama.cpp sources followed (https://github.com/ggml-org/llama.cpp; the code index stores one
version per file):
  src/llama-model.cpp     llama_model_rope_type (LLM_ARCH_LLAMA -> LLAMA_ROPE_TYPE_NORM,
                          "a normal RoPE, operating on pairs of consecutive head values";
                          LLM_ARCH_QWEN2 -> LLAMA_ROPE_TYPE_NEOX, "the pairs of head values
                          are offset by n_rot/2"); load_hparams / load_tensors for LLAMA and
                          QWEN2 (output.weight optional: when absent, token_embd.weight is
                          used as the output matrix, TENSOR_DUPLICATED); llm_build_llama and
                          llm_build_qwen2 (graph below).
  src/llama-graph.cpp     build_inp_embd (batch.embd rows used as-is, in place of
                          ggml_get_rows(token_embd, ids); no scaling for these two
                          architectures), build_norm (LLM_NORM_RMS), build_ffn (LLM_FFN_SILU,
                          LLM_FFN_PAR), build_attn / build_attn_mha (kq = K^T Q, soft_max_ext
                          with kq_scale and the causal KQ mask, kqv = V kq; GQA by ggml_mul_mat
                          broadcasting: q head h reads kv head h / (n_head / n_head_kv)).
  ggml/src/ggml-cpu/ops.cpp  ggml_compute_forward_rope_f32 / ggml_rope_cache_init / rope_yarn
                          (theta_scale = powf(freq_base, -2.0f/n_dims); theta starts at the
                          position and is multiplied by theta_scale once per pair, in float;
                          cos/sin via cosf/sinf; ext_factor 0 -> mscale = attn_factor = 1;
                          NORM rotates (x[2i], x[2i+1]), NEOX rotates (x[i], x[i + n_dims/2]),
                          both with theta_i); ggml_compute_forward_rms_norm_f32 (sum of x*x in
                          ggml_float, mean as float, scale = 1.0f/sqrtf(mean + eps));
                          ggml_compute_forward_soft_max_f32 (max-subtracted expf, ggml_float
                          sum); ggml_vec_silu_f32 (x / (1 + exp(-x))).
  src/llama-vocab.cpp     BPE ("gpt2") tokenizer: tokenizer_st_partition splits the text at
                          special tokens (CONTROL / USER_DEFINED tokens, longest text first),
                          the rest goes through the pre-tokenizer regex (tokenizer.ggml.pre =
                          "qwen2") and byte-level BPE (unicode_byte_to_utf8 mapping, merges by
                          rank). add_bos from tokenizer.ggml.add_bos_token (false here).
  tools/mtmd/mtmd.cpp / mtmd-helper.cpp  image chunks are decoded with llama_batch.embd rows
                          at consecutive positions after the preceding text (n_pos = n_tokens
                          for non-M-RoPE models); causal attention stays on for "mlp" and
                          "resampler" (mtmd_decode_use_non_causal is true only for Gemma 3),
                          M-RoPE only for Qwen2-VL-style projectors (not these).

Forward pass (llm_build_llama / llm_build_qwen2), per layer, x = rows of the prompt:
    h  = rms_norm(x) * attn_norm
    q  = h @ Wq^T (+ bq, qwen2) ; k = h @ Wk^T (+ bk) ; v = h @ Wv^T (+ bv)
    q, k = rope(q, pos), rope(k, pos)      (n_rot = rope.dimension_count, default head_dim)
    a  = softmax(q k^T / sqrt(head_dim) + causal mask) v   per head, GQA
    x  = x + a @ Wo^T
    h  = rms_norm(x) * ffn_norm
    x  = x + (silu(h @ Wgate^T) * (h @ Wup^T)) @ Wdown^T
logits(last) = (rms_norm(x_last) * output_norm) @ Wout^T   (Wout = token_embd when tied)
No attention-scale override, rope scaling, YaRN, logit softcapping, sliding window, QK norm:
these keys raise if present.

Tokenizer (text segments): special-token strings (tokens of type CONTROL=3 or
USER_DEFINED=4) are matched literally first (llama.cpp partitions with parse_special = true,
which is what mtmd_tokenize and chat prompts use; with parse_special = false only the
USER_DEFINED ones would match). The rest is byte-level BPE. The fixture vocabulary has the
256 byte tokens (id = byte value) plus a single merge "Ā ā" (bytes 0x00 0x01) that exists
only because llama.cpp refuses a BPE vocabulary without merges; the text is asserted to
contain no "\\x00\\x01", so every remaining UTF-8 byte is its own token. (General BPE with
real merges and the pre-tokenizer regex is NOT implemented: the script refuses vocabularies
whose merges could apply, i.e. any merge other than between two tokens that the text never
contains adjacently.)

Image segments (functions of benches/mmproj_reference.py; its docstring cites clip.cpp /
mtmd-image.cpp for each step):
  "mlp"        mtmd_image_preprocessor_fixed_size: aspect-preserving BICUBIC resize to
               image_size x image_size, centred on pad colour (122,116,104); CLIP tower with
               the CLS row FIRST (mmproj_reference's default), blocks 0..n_layer-2; CLS row
               dropped; mm.0 -> GELU -> mm.2. -> n_patches rows.
  "pool:K"     the "mlp" rows seen as the row-major n x n patch grid (n = image_size /
               patch_size), average-pooled to K x K with PyTorch adaptive_avg_pool2d windows
               (output i covers [floor(i*n/K), ceil((i+1)*n/K)) per axis; sums in float64,
               result cast to float32); output rows row-major. K >= n returns the grid
               unchanged (this script's rule, not adaptive_avg_pool2d's, which would
               replicate cells for K > n). Not a llama.cpp feature: a p2g token-budget
               option.
  "resampler"  MiniCPM-V path for ONE image, no slices: the llava_uhd OVERVIEW only.
               mtmd_image_preprocessor_llava_uhd::get_slice_instructions: if the image fits
               (w <= image_size and h <= image_size) the overview is image_size x image_size;
               otherwise get_best_resize(w, h, image_size, patch, allow_upscale = false)
               (scale to about image_size^2 pixels keeping the aspect ratio, each side rounded
               to a multiple of patch). slice_image resizes to it with image_resize_algo_ov =
               BILINEAR and image_pad_ov = false (a stretch, no padding). Then the SigLIP-style
               tower (bucketed position rows, all blocks, post-LN) and the resampler ->
               query_num rows. (mtmd itself would follow the overview with the slices of the
               refined image when the image is larger than image_size; p2g does not use them.)
  "box"        [x1, y1, x2, y2] in integer pixels of the original image: PIL Image.crop
               (x2, y2 exclusive) of the decoded RGB image before the steps above; must lie
               inside the image.

Known differences from a real llama.cpp run (by design, or guesses)
------------------------------------------------------------------
* llama.cpp's default KV cache type is F16: K (after RoPE) and V are stored as f16, and on
  CPU the K^T Q / V kq products (or flash attention, the default "auto") then also round Q
  and the attention weights to f16. Plain float32 here; --kv-f16 rounds K and V (and Q) to
  f16, which covers the largest part of that. Expect ~1e-3 relative logit differences
  against a real run with the default cache type.
* ggml's matmuls accumulate in float with SIMD partial sums (and convert activations to f16
  for F16 weights); numpy's float32 matmul sums in a different order. ~1e-6 relative.
* Image encoders: see benches/mmproj_reference.py (CLS-first default for "mlp", which
  differs from the current upstream graph; plain float32 GELU).
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mmproj_reference as mr  # noqa: E402

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("needs gguf-py: pip install gguf numpy pillow")

F32 = np.float32
F64 = np.float64

TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4


# --------------------------------------------------------------------------------------
# GGUF language model
# --------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable unicode character table (llama.cpp unicode_byte_to_utf8)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class LLM:
    """Tensors and hparams of a "llama" / "qwen2" GGUF, as llama.cpp's load_hparams /
    load_tensors read them."""

    def __init__(self, path):
        rd = gguf.GGUFReader(path)
        self.path = path
        self.kv = {f.name: mr._field_value(f) for f in rd.fields.values() if not f.name.startswith("GGUF.")}
        self.t = {}
        Q = gguf.GGMLQuantizationType
        for t in rd.tensors:
            shape = tuple(reversed([int(x) for x in t.shape]))
            if t.tensor_type in (Q.F32, Q.F16):
                arr = np.asarray(t.data).astype(F32)
            else:
                arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=F32)
            self.t[t.name] = arr.reshape(shape)
        arch = self.kv["general.architecture"]
        if arch not in ("llama", "qwen2"):
            raise NotImplementedError(f"architecture {arch!r} (only llama, qwen2)")
        self.arch = arch
        k = lambda n, d=None: self.kv.get(f"{arch}.{n}", d)  # noqa: E731
        for unsupported in ("attention.scale", "rope.scaling.type", "rope.scaling.factor",
                            "final_logit_softcapping", "attn_logit_softcapping", "attention.sliding_window"):
            if k(unsupported) is not None:
                raise NotImplementedError(f"{arch}.{unsupported} is not implemented")
        self.n_embd = k("embedding_length")
        self.n_layer = k("block_count")
        self.n_head = k("attention.head_count")
        self.n_head_kv = k("attention.head_count_kv", self.n_head)
        self.n_ff = k("feed_forward_length")
        self.head_dim = k("attention.key_length", self.n_embd // self.n_head)
        if k("attention.value_length", self.head_dim) != self.head_dim:
            raise NotImplementedError("value_length != key_length")
        self.n_rot = k("rope.dimension_count", self.head_dim)
        self.freq_base = float(k("rope.freq_base", 10000.0))
        self.eps = float(k("attention.layer_norm_rms_epsilon"))
        self.rope_type = "norm" if arch == "llama" else "neox"  # llama_model_rope_type
        if self.n_head % self.n_head_kv:
            raise ValueError("n_head is not a multiple of n_head_kv")
        self.tok_embd = self.t["token_embd.weight"]
        self.n_vocab = self.tok_embd.shape[0]
        self.out_norm = self.t["output_norm.weight"]
        self.tied = "output.weight" not in self.t
        self.output = self.tok_embd if self.tied else self.t["output.weight"]
        self.layers = []
        for il in range(self.n_layer):
            g = lambda n, req=True: self._get(f"blk.{il}.{n}", req)  # noqa: E731
            L = {n: g(n) for n in ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                                   "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
                                   "ffn_up.weight", "ffn_down.weight")}
            for n in ("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"):
                L[n] = g(n, arch == "qwen2" and n != "attn_output.bias")
            for n in ("attn_q_norm.weight", "attn_k_norm.weight", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"):
                if g(n, False) is not None:
                    raise NotImplementedError(f"blk.{il}.{n} is not implemented")
            self.layers.append(L)
        if "rope_freqs.weight" in self.t:
            raise NotImplementedError("rope_freqs (llama3 rope scaling) is not implemented")
        self.vocab = Vocab(self.kv)

    def _get(self, name, required):
        if name not in self.t:
            if required:
                raise KeyError(f"{self.path}: missing tensor {name}")
            return None
        return self.t[name]

    def hparams(self):
        return {"arch": self.arch, "n_vocab": self.n_vocab, "n_embd": self.n_embd, "n_layer": self.n_layer,
                "n_head": self.n_head, "n_head_kv": self.n_head_kv, "head_dim": self.head_dim,
                "n_ff": self.n_ff, "n_rot": self.n_rot, "rope_type": self.rope_type,
                "freq_base": self.freq_base, "rms_eps": self.eps, "tied_output": self.tied}


class Vocab:
    """tokenizer.ggml.* of a "gpt2" (byte-level BPE) vocabulary; see the module docstring."""

    def __init__(self, kv):
        if kv.get("tokenizer.ggml.model") != "gpt2":
            raise NotImplementedError("only tokenizer.ggml.model = gpt2 is implemented")
        self.tokens = kv["tokenizer.ggml.tokens"]
        self.types = kv.get("tokenizer.ggml.token_type", [TOKEN_TYPE_NORMAL] * len(self.tokens))
        self.id_of = {t: i for i, t in enumerate(self.tokens)}
        b2u = bytes_to_unicode()
        self.byte_id = [self.id_of[b2u[b]] for b in range(256)]
        # llama_vocab::impl::load: cache_special_tokens, sorted by text length, longest first
        self.special = sorted([(t, i) for i, (t, ty) in enumerate(zip(self.tokens, self.types))
                               if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)],
                              key=lambda p: -len(p[0]))
        self.forbidden_pairs = []
        for m in kv.get("tokenizer.ggml.merges", []):
            a, b = m.split(" ")
            u2b = {u: bb for bb, u in b2u.items()}
            if not all(c in u2b for c in a + b) or len(a) != 1 or len(b) != 1:
                raise NotImplementedError(f"merge {m!r}: general BPE merges are not implemented")
            self.forbidden_pairs.append(bytes([u2b[a], u2b[b]]))
        self.add_bos = bool(kv.get("tokenizer.ggml.add_bos_token", False))

    def tokenize(self, text):
        """tokenizer_st_partition (parse_special = true) + byte fallback for raw fragments."""
        frags = [text]  # str = raw text, int = special token id
        for s, sid in self.special:
            out = []
            for f in frags:
                if not isinstance(f, str):
                    out.append(f)
                    continue
                parts = f.split(s)
                for j, p in enumerate(parts):
                    if j:
                        out.append(sid)
                    if p:
                        out.append(p)
            frags = out
        ids = []
        for f in frags:
            if isinstance(f, int):
                ids.append(f)
                continue
            raw = f.encode("utf-8")
            for pair in self.forbidden_pairs:
                if pair in raw:
                    raise ValueError(f"text contains the merge pair {pair!r}; general BPE is not implemented")
            ids.extend(self.byte_id[b] for b in raw)
        return ids


# --------------------------------------------------------------------------------------
# forward pass
# --------------------------------------------------------------------------------------

def f16(x):
    return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def rms_norm(x, w, eps):
    """ggml_compute_forward_rms_norm_f32 then ggml_mul by the norm weight."""
    x = x.astype(F32)
    s = (x * x).astype(F64).sum(axis=-1, keepdims=True)       # ggml_float sum of float x*x
    mean = (s / x.shape[-1]).astype(F32)                       # const float mean = sum/ne00
    scale = (F32(1.0) / np.sqrt((mean + F32(eps)).astype(F32))).astype(F32)
    return ((x * scale).astype(F32) * w).astype(F32)


def rope_cache(positions, n_dims, freq_base):
    """ggml_rope_cache_init: theta = pos, then theta *= theta_scale per pair (float)."""
    theta_scale = F32(np.power(F32(freq_base), F32(-2.0) / F32(n_dims), dtype=F32))
    n_pairs = n_dims // 2
    theta = np.empty((len(positions), n_pairs), dtype=F32)
    t = np.asarray(positions, dtype=F32)
    for i in range(n_pairs):
        theta[:, i] = t
        t = (t * theta_scale).astype(F32)
    return np.cos(theta).astype(F32), np.sin(theta).astype(F32)


def rope(x, cos, sin, n_dims, mode):
    """ggml_compute_forward_rope_f32 (forward, ext_factor = 0, freq_scale = 1) on
    x[n_tok, n_head, head_dim]; dims >= n_dims pass through."""
    y = x.copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    if mode == "norm":
        x0 = x[:, :, 0:n_dims:2]
        x1 = x[:, :, 1:n_dims:2]
        y[:, :, 0:n_dims:2] = (x0 * c - x1 * s).astype(F32)
        y[:, :, 1:n_dims:2] = (x0 * s + x1 * c).astype(F32)
    else:  # neox
        h = n_dims // 2
        x0 = x[:, :, :h]
        x1 = x[:, :, h:n_dims]
        y[:, :, :h] = (x0 * c - x1 * s).astype(F32)
        y[:, :, h:n_dims] = (x0 * s + x1 * c).astype(F32)
    return y


def linear(x, w, b=None):
    y = (x.astype(F32) @ w.T.astype(F32)).astype(F32)
    if b is not None:
        y = (y + b).astype(F32)
    return y


def forward(m, rows, kv_f16=False):
    """Rows [n_pos, n_embd] (token embeddings or image embeddings, positions 0..n_pos-1,
    one sequence) -> logits of the last position [n_vocab]."""
    x = np.asarray(rows, dtype=F32)
    n = x.shape[0]
    pos = np.arange(n)
    cos, sin = rope_cache(pos, m.n_rot, m.freq_base)
    hd, H, Hkv = m.head_dim, m.n_head, m.n_head_kv
    group = H // Hkv
    scale = F32(1.0 / math.sqrt(hd))
    mask = np.triu(np.full((n, n), -np.inf, dtype=F32), k=1)
    for L in m.layers:
        h = rms_norm(x, L["attn_norm.weight"], m.eps)
        q = linear(h, L["attn_q.weight"], L["attn_q.bias"]).reshape(n, H, hd)
        k = linear(h, L["attn_k.weight"], L["attn_k.bias"]).reshape(n, Hkv, hd)
        v = linear(h, L["attn_v.weight"], L["attn_v.bias"]).reshape(n, Hkv, hd)
        q = rope(q, cos, sin, m.n_rot, m.rope_type)
        k = rope(k, cos, sin, m.n_rot, m.rope_type)
        if kv_f16:
            q, k, v = f16(q), f16(k), f16(v)
        out = np.empty((n, H, hd), dtype=F32)
        for hh in range(H):
            kh = hh // group
            s = ((q[:, hh, :] @ k[:, kh, :].T).astype(F32) * scale + mask).astype(F32)
            s64 = s.astype(F64)
            p = np.exp(s64 - s64.max(axis=-1, keepdims=True))
            p = (p / p.sum(axis=-1, keepdims=True)).astype(F32)
            out[:, hh, :] = (p @ v[:, kh, :]).astype(F32)
        a = linear(out.reshape(n, H * hd), L["attn_output.weight"], L["attn_output.bias"])
        x = (x + a).astype(F32)
        h = rms_norm(x, L["ffn_norm.weight"], m.eps)
        g = linear(h, L["ffn_gate.weight"])
        g = (g / (F32(1.0) + np.exp(-g))).astype(F32)  # silu
        u = linear(h, L["ffn_up.weight"])
        x = (x + linear((g * u).astype(F32), L["ffn_down.weight"])).astype(F32)
    h = rms_norm(x[-1:], m.out_norm, m.eps)
    return linear(h, m.output)[0]


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------

def adaptive_avg_pool_windows(n, k):
    """PyTorch adaptive_avg_pool windows: [floor(i*n/k), ceil((i+1)*n/k))."""
    return [((i * n) // k, -((-(i + 1) * n) // k)) for i in range(k)]


def pool_rows(rows, n, k):
    """Rows of a row-major n x n grid -> k x k adaptive average pool (rows row-major);
    k >= n returns the rows unchanged."""
    rows = np.asarray(rows, dtype=F32)
    assert rows.shape[0] == n * n, (rows.shape, n)
    if k >= n:
        return rows.copy()
    grid = rows.reshape(n, n, -1).astype(F64)
    w = adaptive_avg_pool_windows(n, k)
    out = [grid[y0:y1, x0:x1].reshape(-1, grid.shape[-1]).mean(axis=0) for (y0, y1) in w for (x0, x1) in w]
    return np.stack(out).astype(F32)


def crop(img, box):
    """PIL Image.crop((x1, y1, x2, y2)) of the decoded RGB image; box must lie inside."""
    from PIL import Image
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"box {box} outside the {w}x{h} image")
    return np.asarray(Image.fromarray(img, "RGB").crop((x1, y1, x2, y2)), dtype=np.uint8).copy()


def _fixed_size_geometry(w, h, sz):
    """img_tool::resize with padding: the resized size and offset (as mmproj_reference)."""
    if (w, h) == (sz, sz):
        return (w, h), (0, 0)
    scale = min(F32(sz) / F32(w), F32(sz) / F32(h))
    nw = min(int(np.ceil(F32(F32(w) * scale))), sz)
    nh = min(int(np.ceil(F32(F32(h) * scale))), sz)
    return (nw, nh), ((sz - nw) // 2, (sz - nh) // 2)


def encode_image(mmproj, img, kind):
    """-> (rows [n, n_embd_llm], preprocess info)."""
    m, hp, layers = mmproj
    ops = mr.Ops()
    h, w = img.shape[:2]
    info = {"input_size": [w, h]}
    if kind == "mlp" or kind.startswith("pool:"):
        if hp["proj"] != "mlp":
            raise ValueError(f"image kind {kind!r} needs an 'mlp' mmproj, got {hp['proj']!r}")
        pieces = mr.preprocess_fixed_size(img, hp, "bicubic")
        u8 = pieces[0]["u8"]
        rows = mr.encode_llava(ops, m, hp, layers, mr.img_u8_to_f32(u8, hp["mean"], hp["std"]))
        sz = hp["image_size"]
        (nw, nh), (ox, oy) = _fixed_size_geometry(w, h, sz)
        info.update({"preprocessor": "fixed_size", "resize": "bicubic", "resized_size": [nw, nh],
                     "canvas_size": [sz, sz], "offset": [ox, oy], "pad_color": list(mr.LLAVA_PAD_COLOR)})
        n = sz // hp["patch_size"]
        if kind.startswith("pool:"):
            k = int(kind.split(":", 1)[1])
            if k < 1:
                raise ValueError(kind)
            rows = pool_rows(rows, n, k)
            info["pool"] = {"grid": n, "k": k, "windows": adaptive_avg_pool_windows(n, k) if k < n else None}
    elif kind == "resampler":
        if hp["proj"] != "resampler":
            raise ValueError(f"image kind 'resampler' needs a 'resampler' mmproj, got {hp['proj']!r}")
        inst = mr.llava_uhd_instructions(w, h, hp)
        ov = inst["overview"]
        u8 = mr.img_tool_resize(img, ov[0], ov[1], "bilinear", False, (0, 0, 0))
        rows = mr.encode_minicpmv(ops, m, hp, layers, mr.img_u8_to_f32(u8, hp["mean"], hp["std"]))
        info.update({"preprocessor": "llava_uhd overview", "resize": "bilinear (stretch, no pad)"
                     if (w, h) != tuple(ov) else "none (copy)", "overview_size": list(ov),
                     "has_slices_in_mtmd": bool(inst["slices"])})
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    info["preprocessed_u8_sha256"] = hashlib.sha256(np.ascontiguousarray(u8).tobytes()).hexdigest()
    return rows.astype(F32), info


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def sig7(x):
    return float(f"{float(x):.7g}")


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_spec(spec, base_dir, kv_f16=False):
    """Evaluate a spec dict (paths relative to base_dir) -> output dict."""
    rel = lambda p: p if os.path.isabs(p) else os.path.join(base_dir, p)  # noqa: E731
    llm = LLM(rel(spec["llm"]))
    need_image = any("image" in s for s in spec["segments"])
    mmproj = mr.load_mmproj(rel(spec["mmproj"])) if need_image else None
    img = mr.load_image(rel(spec["image"])) if need_image else None
    if mmproj is not None:
        out_w = mmproj[0].get("mm.2.weight").shape[0] if mmproj[1]["proj"] == "mlp" \
            else mmproj[0].get("resampler.proj.weight").shape[1]
        if out_w != llm.n_embd:
            raise ValueError(f"mmproj output width {out_w} != LLM n_embd {llm.n_embd}")
    out = json.loads(json.dumps(spec))
    rows, segs, p = [], [], 0
    if llm.vocab.add_bos:
        raise NotImplementedError("add_bos_token = true is not handled (put the BOS text in the first segment)")
    for seg in spec["segments"]:
        o = dict(seg)
        if "text" in seg:
            ids = llm.vocab.tokenize(seg["text"])
            r = llm.tok_embd[ids]
            o["ids"] = ids
        else:
            im = img if seg.get("box") is None else crop(img, seg["box"])
            r, info = encode_image(mmproj, im, seg["image"])
            o["embeddings"] = [[sig7(v) for v in row] for row in r]
            o["preprocess"] = info
        o["n_tokens"] = int(r.shape[0])
        o["positions"] = [p, p + int(r.shape[0])]
        p += int(r.shape[0])
        rows.append(r)
        segs.append(o)
    x = np.concatenate(rows, axis=0)
    logits = forward(llm, x, kv_f16)
    out["segments"] = segs
    out["n_positions"] = int(x.shape[0])
    out["llm_sha256"] = sha256_file(rel(spec["llm"]))
    if need_image:
        out["mmproj_sha256"] = sha256_file(rel(spec["mmproj"]))
        out["image_rgb_u8_sha256"] = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
        out["image_size"] = [int(img.shape[1]), int(img.shape[0])]
    out["llm_hparams"] = llm.hparams()
    out["options"] = {"kv_f16": bool(kv_f16), "llava_cls_last": False, "llava_resize": "bicubic"}
    out["logits"] = [sig7(v) for v in logits]
    order = np.argsort(-logits.astype(F64), kind="stable")
    out["top5"] = [int(i) for i in order[:5]]
    out["top5_tokens"] = [llm.vocab.tokens[int(i)] for i in order[:5]]
    return out, logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--kv-f16", action="store_true",
                    help="round Q, K (after RoPE) and V to f16, like llama.cpp's default F16 KV cache")
    args = ap.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    out, logits = run_spec(spec, os.path.dirname(os.path.abspath(args.spec)), args.kv_f16)
    for s in out["segments"]:
        what = "text" if "text" in s else f"image {s['image']} box={s.get('box')}"
        print(f"  {what:32s} {s['n_tokens']:3d} tokens  positions {s['positions']}")
    print(f"  {out['n_positions']} positions; top5 {out['top5']} {out['top5_tokens']}; "
          f"logits mean {logits.mean():.4f} std {logits.std():.4f}")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
