#!/usr/bin/env python3
"""Numpy reference for llama.cpp's image encoder (clip.cpp + mtmd preprocessing) for the two
mmproj projector types "mlp" (LLaVA-1.5) and "resampler" (MiniCPM-V): reads the mmproj GGUF
with llama.cpp's gguf-py, preprocesses an image the way mtmd does for that projector,
runs the vision tower and the projector, prints the embedding shape and writes the
embeddings (JSON or .npy). Written for issue 23 (in-process multimodal controller) and its
fixtures tests/fixtures/mmproj/tiny_mmproj_{mlp,resampler}.gguf
(tests/fixtures/make_mmproj_fixtures.py), but reads any F32/F16 (or gguf-py-dequantisable)
mmproj of these two types.

    python3 benches/mmproj_reference.py MMPROJ.gguf [--image IMG | --synthetic 40x30]
        [--write-synthetic OUT.png] [--out OUT.json|OUT.npy] [--llava-cls-last]
        [--llava-resize bicubic|bilinear] [--minicpmv-refined-pad]
        [--emulate-ggml-cpu] [--flash-attn-f16] [--dump-stages DIR]

Needs `pip install gguf numpy pillow` (pillow only for --image / --write-synthetic).
Without --image the deterministic synthetic image below is used (`synthetic_image`).
Output JSON: {"shape": [n_tokens, n_embd], "values": rows rounded to 6 significant digits,
"images": one entry per encoded image (mtmd role, size, token range, sha256 of the
preprocessed uint8 RGB image), ...}. All math is float32 numpy (layer-norm statistics and
softmax sums in float64, like ggml's double accumulators).

llama.cpp sources followed (https://github.com/ggml-org/llama.cpp; the code index stores one
version per file, hence several commits):
  tools/mtmd/clip.cpp              @ 0024aa7417efd50a7c2a79e049dfbbbceb0beaaf
  tools/mtmd/clip-impl.h           @ 0024aa7417efd50a7c2a79e049dfbbbceb0beaaf
  tools/mtmd/clip-model.h          @ 0024aa7417efd50a7c2a79e049dfbbbceb0beaaf
  tools/mtmd/models/llava.cpp      @ 623ea2ba30ac1387d6c6eb2f6a0cf758915aafb7
  tools/mtmd/models/minicpmv.cpp   @ 06575b710a75e4a56fa7395e797fc51b1c5f5634
  tools/mtmd/mtmd-image.cpp / .h   @ 0309b28f9bce9177b0fd08a251b204d5c5e0181d
  tools/mtmd/mtmd.cpp (init_vision / make_image_preprocessor: which preprocessor per type)
  ggml/src/ggml-cpu/vec.h (GELU forms and the GGML_GELU_FP16 / GGML_GELU_QUICK_FP16 tables)
  examples/llava/clip.cpp          @ c392e5094deaf2d1a7c18683214f007fad3fe42b (Feb 2025, for
                                   the pre-refactor CLS ordering)
  tools/mtmd/clip.cpp etc. as vendored by ollama (github.com/ollama/ollama @ f63eea3d,
                                   llama/llama.cpp, upstream ec98e2002 + ollama patches)

Where llama.cpp versions disagree (they do, on three points that change the numbers), the
default is the variant that matches the original model, and a flag selects the other:
  * llava CLS position: default CLS first; --llava-cls-last = current upstream graph.
  * llava-1.5 resize: default bicubic (current upstream mtmd-image.cpp; LLaVA's CLIP image
    processor is bicubic too); --llava-resize bilinear = clip_image_preprocess @ ec98e2002.
    (c392e50 pads to a square at the top-left and uses its own bilinear: not implemented.)
    In current upstream load_hparams the llava-1.5/1.6 branches look swapped (the
    "llava-1.6 default params" sit in the no-pinpoints branch), which is why llava-1.5 gets
    the bicubic default there.
  * MiniCPM-V refined image (the one the slices are cut from): default stretched to the
    refined size (LLaVA-UHD / MiniCPM-V slicing; llava_uhd::slice_instructions defaults @
    ec98e2002); --minicpmv-refined-pad = current upstream (clip-model.h image_pad_rf = true,
    not overridden for MINICPMV), aspect-preserving resize with centred black bars.

Verification done (see the issue-23 report): the resize functions are bit-identical to
the C++ (g++ -O2, no FMA contraction; with -march=native -ffp-contract=fast a few pixels
move by 1 level, none in the fixtures' reference images); a build of c392e50's clip.cpp
encodes tiny_mmproj_mlp.gguf (fed this script's preprocessed image) to within 9e-4 of the
default output and 3.6e-7 with the GELU tables emulated; a build of ec98e2002's clip.cpp
(ollama's vendored copy, CPU, -O1) runs both fixtures end to end, and matches
--llava-cls-last --llava-resize bilinear to 7.5e-4 (1.1e-5 with --emulate-ggml-cpu) and
the resampler default to 1.5e-3 (an all-F32 variant of that file: 5.4e-4, 7.7e-7
emulated; with F16 weights the f16 rounding of activations is discontinuous, so last-bit
f32 differences in the attention sums flip roundings and ~1e-3 remains).

Where each step comes from
--------------------------
GGUF reading      clip.cpp clip_model_loader::load_hparams: projector type from
                  clip.projector_type (else clip.vision.projector_type); required u32 keys
                  clip.vision.{embedding_length, attention.head_count, feed_forward_length,
                  block_count, projection_dim, image_size, patch_size}, f32
                  clip.vision.attention.layer_norm_epsilon, f32 arrays image_mean/image_std;
                  clip.use_gelu / clip.use_silu pick the tower FFN activation (neither ->
                  quick GELU); clip.minicpmv_version (0 -> 2) and clip.minicpmv_query_num
                  (0 -> 64, or 96 for version 2). `load_mmproj`.
                  clip.cpp load_tensors: TN_* names with prefix "v", optional biases/norms,
                  and the `is_ffn_swapped` fix (ffn_down ne[0] == n_embd -> the legacy
                  converters stored fc1 as ffn_down: swap up/down). `load_mmproj`.
Preprocessing     mtmd.cpp: "mlp" without clip.vision.image_grid_pinpoints ->
                  mtmd_image_preprocessor_fixed_size; "resampler" ->
                  mtmd_image_preprocessor_llava_uhd (overview + slices).
                  mtmd-image.cpp: fixed_size::preprocess (img_tool::resize to image_size x
                  image_size with hparams.image_resize_algo = BICUBIC (clip-model.h default),
                  image_resize_pad = true, pad colour {122,116,104} (load_hparams, MLP case));
                  llava_uhd::get_slice_instructions / get_best_resize / ensure_divide /
                  get_best_grid / get_refine_size / slice_image (overview: BILINEAR, no pad;
                  refined image: BICUBIC, stretched by default, see above; slices cropped
                  from it in row-major order);
                  img_tool::resize (aspect-preserving resize + centred composite),
                  img_tool::resize_bicubic, img_tool::resize_bilinear, reproduced with their
                  float32/double arithmetic and rounding; mtmd_image_preprocessor::img_u8_to_f32
                  ((u8 / 255 - mean) / std). `preprocess_*`, `resize_*`.
                  Image decoding: stb_image in llama.cpp, PIL here (identical for PNG;
                  JPEG decoders may differ by a level or two).
Patch embedding   clip.cpp clip_graph::build_inp: conv2d (stride = kernel = patch) + optional
                  v.patch_embd.bias; patches in raster order (index y * n_cols + x).
                  clip_image_batch_encode lays the image out planar RGB ("inp_raw").
"mlp" tower       models/llava.cpp clip_graph_llava::build: class embedding concatenated,
                  learned positions 0..n_pos-1 ("positions" input, clip_image_batch_encode),
                  v.pre_ln, then blocks 0 .. max_feature_layer-1 with max_feature_layer =
                  block_count - 1 when clip.vision.feature_layer is absent (the output of the
                  second-to-last block stored in the file; the last stored block is never
                  run), then v.post_ln if present, then rows "patches" = i + 1 (CLS dropped).
                  Block = pre-norm: ln1 -> q/k/v (+bias) -> softmax(q k^T / sqrt(d_head)) v ->
                  attn_out -> residual -> ln2 -> ffn_up -> act -> ffn_down -> residual
                  (clip_graph::build_norm / build_attn / build_ffn).
  CLS ORDER       The current llava.cpp concatenates the class embedding AFTER the patches
                  (ggml_concat(inp, class_embedding, 1)) while positions and "patches" still
                  assume CLS first, so it adds position row n_patches to CLS, row i to patch
                  i, and hands patches 1..N-1 plus the CLS row to the projector. The older
                  examples/llava/clip.cpp (c392e50) put CLS first (ggml_acc at row 0), which
                  is what LLaVA/HF CLIP do. Default here: CLS FIRST (HF/LLaVA semantics, old
                  clip.cpp). --llava-cls-last reproduces the current upstream graph
                  (confirmed by running ec98e2002's clip.cpp on the fixture). Third-party
                  notes call the upstream order a regression of the graph refactor.
"mlp" projector   llava.cpp (PROJECTOR_TYPE_MLP): mm.0 -> ggml_gelu (tanh form, whatever
                  clip.use_gelu says) -> mm.2 (if present). Output width = mm.2.weight ne[1]
                  (clip_n_mmproj_embd). mm.3 present -> MLP_NORM (Yi), not implemented here.
"resampler"       models/minicpmv.cpp clip_graph_minicpmv::build: no class embedding
  tower           (asserted); position rows from clip_image_batch_encode's bucketing
                  (bucket = floor(70 * i / n) per axis, row = bucket_h * 70 + bucket_w);
                  clip_graph::build_vit: pre_ln if present, ALL block_count blocks, post_ln
                  if present.
"resampler"       minicpmv.cpp: q = ln_q(resampler.query); v = ln_kv(kv.weight @ x);
  projector       k = v + 2-D sin-cos (omega_i = 1 / 10000^(i / (W/4)), i < W/4; per patch
                  [sin(w*om), cos(w*om), sin(h*om), cos(h*om)] with w = i % cols, h = i / cols;
                  inputs omega/pos_h/pos_w from clip_image_batch_encode); attention with
                  d_head = 128 (hard-coded), n_head = W / 128, scale 1/sqrt(128); attn.out;
                  ln_post; resampler.proj.weight (no bias). Output width =
                  resampler.proj.weight ne[0]; tokens per image = minicpmv_query_num
                  (clip_n_output_tokens). resampler.pos_embed_k is required by the loader but
                  unused, and is not read here.
Activations       ggml-cpu vec.h: gelu = 0.5x(1 + tanh(0.7978845608(x + 0.044715x^3))),
                  quick gelu = x * sigmoid(1.702x), silu = x * sigmoid(x).
mtmd output       mtmd encodes each preprocessed image (overview first, then slices row-major)
                  separately and places text tokens between them; this script concatenates
                  the per-image embeddings in that order and lists the token ranges.

Known differences from llama.cpp's actual numbers (by design, or guesses)
------------------------------------------------------------------------
* ggml on CPU evaluates GELU and quick-GELU through fp16 lookup tables (GGML_GELU_FP16,
  GGML_GELU_QUICK_FP16), converts activations to f16 before every matmul/conv whose weight is
  F16 (vec_dot_type), and with flash attention (the default "auto" on CPU) casts K and V
  (and effectively Q) to f16 and accumulates V in f16. Default here is plain float32 math;
  --emulate-ggml-cpu applies the fp16 tables and the f16 rounding of matmul inputs for F16
  weights; --flash-attn-f16 rounds Q/K/V to f16 (not the f16 accumulation). Expect ~1e-3
  absolute differences against a real llama.cpp run without them.
* Bicubic/bilinear resizes reproduce the C++ float arithmetic step by step, assuming no FMA
  contraction (GUESS: llama.cpp builds as ISO C++17, where GCC defaults to
  -ffp-contract=off); a contraction could flip a rounding tie in rare pixels.
* GUESS: get_slice_instructions calls unqualified log(float); taken as float precision.
  It only affects the choice of grid near exact ties.
* Not implemented (raise): image_grid_pinpoints (llava-1.6 "anyres"), clip.vision.
  feature_layer (granite), MLP_NORM/LDP/LDPV2, fused qkv tensors, other projector types,
  files without clip.projector_type (upstream refuses them too; ollama patches them to "mlp").
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("needs gguf-py: pip install gguf numpy pillow")

F32 = np.float32
F64 = np.float64

MINICPMV_POS_GRID = 70   # clip_image_batch_encode, PROJECTOR_TYPE_MINICPMV
MINICPMV_D_HEAD = 128    # clip_graph_minicpmv::build
LLAVA_PAD_COLOR = (122, 116, 104)  # load_hparams, PROJECTOR_TYPE_MLP

# clip.cpp load_tensors: projector types for which the legacy ffn naming is fixed up
FFN_SWAP_TYPES = {"mlp", "mlp_norm", "ldp", "ldpv2", "qwen2vl_merger", "qwen2.5vl_merger",
                  "adapter", "gemma3", "idefics3", "resampler"}


# --------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------

def _field_value(field):
    T = gguf.GGUFValueType
    t0 = field.types[0]
    if t0 == T.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    if t0 == T.ARRAY:
        if field.types[-1] == T.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    v = field.parts[field.data[0]][0].item()
    return bool(v) if t0 == T.BOOL else v


class Mmproj:
    def __init__(self, path):
        rd = gguf.GGUFReader(path)
        self.path = path
        self.kv = {f.name: _field_value(f) for f in rd.fields.values() if not f.name.startswith("GGUF.")}
        self.t = {}      # name -> float32 array in PyTorch layout (numpy shape = reversed ne)
        self.ttype = {}  # name -> GGML type name
        Q = gguf.GGMLQuantizationType
        for t in rd.tensors:
            shape = tuple(reversed([int(x) for x in t.shape]))
            if t.tensor_type in (Q.F32, Q.F16):
                arr = np.asarray(t.data).astype(F32)
            else:
                arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=F32)
            self.t[t.name] = arr.reshape(shape)
            self.ttype[t.name] = t.tensor_type.name

    def get(self, name, required=True):
        if name not in self.t:
            if required:
                raise KeyError(f"{self.path}: unable to find tensor {name}")
            return None
        return self.t[name]

    def key(self, key, default=None, required=True):
        if key in self.kv:
            return self.kv[key]
        if required and default is None:
            raise KeyError(f"{self.path}: key not found: {key}")
        return default


def load_mmproj(path):
    m = Mmproj(path)
    if not m.key("clip.has_vision_encoder", False, required=False):
        raise ValueError("clip.has_vision_encoder is not true")
    proj = m.key("clip.projector_type", "", required=False) or m.key("clip.vision.projector_type", "", required=False)
    hp = {
        "proj": proj,
        "n_embd": m.key("clip.vision.embedding_length"),
        "n_head": m.key("clip.vision.attention.head_count"),
        "n_ff": m.key("clip.vision.feed_forward_length"),
        "n_layer": m.key("clip.vision.block_count"),
        "projection_dim": m.key("clip.vision.projection_dim"),
        "eps": m.key("clip.vision.attention.layer_norm_epsilon"),
        "image_size": m.key("clip.vision.image_size"),
        "patch_size": m.key("clip.vision.patch_size"),
        "mean": [float(x) for x in m.key("clip.vision.image_mean")],
        "std": [float(x) for x in m.key("clip.vision.image_std")],
    }
    use_gelu = m.key("clip.use_gelu", False, required=False)
    use_silu = m.key("clip.use_silu", False, required=False)
    if use_gelu and use_silu:
        raise ValueError("both use_gelu and use_silu are set")
    hp["ffn_op"] = "gelu" if use_gelu else ("silu" if use_silu else "gelu_quick")
    if "clip.vision.feature_layer" in m.kv:
        raise NotImplementedError("clip.vision.feature_layer (granite-style stacking) is not implemented")
    if proj == "mlp":
        if "clip.vision.image_grid_pinpoints" in m.kv:
            raise NotImplementedError("image_grid_pinpoints (llava-1.6 anyres) is not implemented")
        if m.get("mm.3.weight", required=False) is not None:
            raise NotImplementedError("mm.3.* present: Yi-style MLP_NORM projector is not implemented")
    elif proj == "resampler":
        ver = m.key("clip.minicpmv_version", 0, required=False) or 2
        q = m.key("clip.minicpmv_query_num", 0, required=False)
        if q == 0:
            q = 64 if ver in (3, 4, 5, 6, 100045) else 96
        hp["minicpmv_version"] = ver
        hp["query_num"] = q
    else:
        raise NotImplementedError(f"projector type {proj!r} is not implemented (only mlp, resampler)")

    # clip.cpp load_tensors, per layer (with the is_ffn_swapped fix)
    layers = []
    swapped = False
    for il in range(hp["n_layer"]):
        p = f"v.blk.{il}"
        g = lambda n, req=False: m.get(f"{p}.{n}", required=req)  # noqa: E731
        if g("attn_qkv.weight") is not None:
            raise NotImplementedError("fused attn_qkv is not implemented")
        L = {n: g(n) for n in ("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
                                "attn_v.weight", "attn_v.bias", "attn_out.bias", "ln1.weight",
                                "ln1.bias", "ln2.weight", "ln2.bias", "ffn_up.bias", "ffn_down.bias",
                                "ffn_gate.weight", "ffn_gate.bias")}
        L["attn_out.weight"] = g("attn_out.weight", True)
        L["ffn_up.weight"] = g("ffn_up.weight", True)
        L["ffn_down.weight"] = g("ffn_down.weight", True)
        L["_f16"] = {n: m.ttype.get(f"{p}.{n}") == "F16" for n in
                     ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_out.weight",
                      "ffn_up.weight", "ffn_down.weight")}
        # numpy shape is [out, in]; ggml ne[0] == in. Legacy naming: ffn_down holds fc1 (in = n_embd).
        if proj in FFN_SWAP_TYPES and L["ffn_down.weight"].shape[1] == hp["n_embd"]:
            L["ffn_up.weight"], L["ffn_down.weight"] = L["ffn_down.weight"], L["ffn_up.weight"]
            L["ffn_up.bias"], L["ffn_down.bias"] = L["ffn_down.bias"], L["ffn_up.bias"]
            f = L["_f16"]
            f["ffn_up.weight"], f["ffn_down.weight"] = f["ffn_down.weight"], f["ffn_up.weight"]
            swapped = True
        layers.append(L)
    hp["ffn_swapped"] = swapped
    return m, hp, layers


# --------------------------------------------------------------------------------------
# image preprocessing (mtmd-image.cpp)
# --------------------------------------------------------------------------------------

def synthetic_image(w=40, h=30):
    """Deterministic RGB test image: red ramps left->right, green top->bottom, blue a
    diagonal texture."""
    x = np.arange(w)[None, :]
    y = np.arange(h)[:, None]
    r = np.broadcast_to((x * 255) // max(w - 1, 1), (h, w))
    g = np.broadcast_to((y * 255) // max(h - 1, 1), (h, w))
    b = ((x * 7 + y * 13) % 32) * 8
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def load_image(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _round_half_away(x):
    """std::round on float32 values (half away from zero), computed exactly in float64."""
    x = np.asarray(x, dtype=F64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def resize_bicubic(img, tw, th):
    """img_tool::resize_bicubic (stretches to tw x th; float/double arithmetic as in C++)."""
    ny, nx = img.shape[:2]
    src = img.astype(np.int64)
    tx = F32(nx) / F32(tw)
    ty = F32(ny) / F32(th)
    fx = (tx * np.arange(tw, dtype=F32)).astype(F32)
    fy = (ty * np.arange(th, dtype=F32)).astype(F32)
    x = fx.astype(np.int64)
    y = fy.astype(np.int64)
    dx = (fx - x.astype(F32)).astype(F32)[None, :, None]
    dy = (fy - y.astype(F32)).astype(F32)[:, None, None]

    def coeffs(d0, d2, d3):
        d0, d2, d3 = d0.astype(F64), d2.astype(F64), d3.astype(F64)
        a1 = (-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3).astype(F32)
        a2 = (1.0 / 2 * d0 + 1.0 / 2 * d2).astype(F32)
        a3 = (-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3).astype(F32)
        return a1, a2, a3

    def poly(a0, a1, a2, a3, d):
        return (((a0 + a1 * d) + (a2 * d) * d) + ((a3 * d) * d) * d).astype(F32)

    cols = [np.clip(x + o, 0, nx - 1) for o in (-1, 0, 1, 2)]
    C = []
    for jj in range(4):
        rows = np.clip(y - 1 + jj, 0, ny - 1)
        p = [src[rows[:, None], c[None, :], :] for c in cols]  # (th, tw, 3) ints
        a1, a2, a3 = coeffs(p[0] - p[1], p[2] - p[1], p[3] - p[1])
        C.append(poly(p[1].astype(F32), a1, a2, a3, dx))
    a1, a2, a3 = coeffs((C[0] - C[1]).astype(F32), (C[2] - C[1]).astype(F32), (C[3] - C[1]).astype(F32))
    Cc = poly(C[1], a1, a2, a3, dy)
    return np.clip(_round_half_away(Cc), 0, 255).astype(np.uint8)


def resize_bilinear(img, tw, th):
    """img_tool::resize_bilinear (stretch; result truncated to uint8)."""
    ny, nx = img.shape[:2]
    assert nx >= 2 and ny >= 2
    src = img.astype(F32)
    x_ratio = F32(nx - 1) / F32(tw)
    y_ratio = F32(ny - 1) / F32(th)
    px = (x_ratio * np.arange(tw, dtype=F32)).astype(F32)
    py = (y_ratio * np.arange(th, dtype=F32)).astype(F32)
    xf = np.minimum(px.astype(np.int64), nx - 2)
    yf = np.minimum(py.astype(np.int64), ny - 2)
    xl = (px - xf.astype(F32)).astype(F32)[None, :, None]
    yl = (py - yf.astype(F32)).astype(F32)[:, None, None]

    def lerp(s, e, t):
        return (s + (e - s) * t).astype(F32)

    top = lerp(src[yf[:, None], xf[None, :]], src[yf[:, None], xf[None, :] + 1], xl)
    bottom = lerp(src[yf[:, None] + 1, xf[None, :]], src[yf[:, None] + 1, xf[None, :] + 1], xl)
    return lerp(top, bottom, yl).astype(np.uint8)  # static_cast<uint8_t>: truncation (values >= 0)


def img_tool_resize(img, tw, th, algo, add_padding, pad_color=(0, 0, 0)):
    """img_tool::resize: copy if same size; stretch if !add_padding; otherwise resize
    preserving aspect ratio and composite centred onto a pad_color canvas."""
    ny, nx = img.shape[:2]
    rs = resize_bicubic if algo == "bicubic" else resize_bilinear
    if nx == tw and ny == th:
        return img.copy()
    if not add_padding:
        return rs(img, tw, th)
    scale = min(F32(tw) / F32(nx), F32(th) / F32(ny))
    new_w = min(int(np.ceil(F32(F32(nx) * scale))), tw)
    new_h = min(int(np.ceil(F32(F32(ny) * scale))), th)
    resized = rs(img, new_w, new_h)
    out = np.empty((th, tw, 3), dtype=np.uint8)
    out[:, :] = np.array(pad_color, dtype=np.uint8)
    ox = (tw - new_w) // 2
    oy = (th - new_h) // 2
    out[oy:oy + new_h, ox:ox + new_w] = resized
    return out


def img_u8_to_f32(img, mean, std):
    """mtmd_image_preprocessor::img_u8_to_f32: (u8 / 255 - mean[c]) / std[c] in float32."""
    x = img.astype(F32) / F32(255.0)
    return ((x - np.array(mean, dtype=F32)) / np.array(std, dtype=F32)).astype(F32)


def preprocess_fixed_size(img, hp, algo="bicubic"):
    """mtmd_image_preprocessor_fixed_size::preprocess for "mlp": aspect-preserving resize
    padded (centred) with {122,116,104} to image_size x image_size; bicubic in current
    upstream, bilinear in clip_image_preprocess @ ec98e2002."""
    sz = hp["image_size"]
    u8 = img_tool_resize(img, sz, sz, algo, True, LLAVA_PAD_COLOR)
    return [{"role": "image", "u8": u8}]


def _ensure_divide(length, patch):
    return max(int(_round_half_away(F32(length) / F32(patch))) * patch, patch)


def _get_best_resize(w, h, scale_resolution, patch, allow_upscale):
    if w * h > scale_resolution * scale_resolution or allow_upscale:
        r = F32(w) / F32(h)
        h = int(F32(F32(scale_resolution) / np.sqrt(r, dtype=F32)))
        w = int(F32(F32(h) * r))
    return _ensure_divide(w, patch), _ensure_divide(h, patch)


def _get_best_grid(max_slice_nums, multiple, log_ratio):
    cands = [i for i in (multiple - 1, multiple, multiple + 1) if i != 1 and i <= max_slice_nums]
    grids = [(m, n // m) for n in cands for m in range(1, n + 1) if n % m == 0]
    best, min_err = (1, 1), math.inf
    for gw, gh in grids:
        err = abs(float(log_ratio) - math.log(1.0 * gw / gh))
        if err < min_err:
            best, min_err = (gw, gh), err
    return best


def llava_uhd_instructions(w, h, hp):
    """mtmd_image_preprocessor_llava_uhd::get_slice_instructions, no pinpoints (minicpmv)."""
    patch, slice_size = hp["patch_size"], hp["image_size"]
    has_slices = w > slice_size or h > slice_size
    if not has_slices:
        return {"overview": (slice_size, slice_size), "refined": None, "grid": (0, 0), "slices": []}
    overview = _get_best_resize(w, h, slice_size, patch, not has_slices)
    max_slice_nums = 9
    log_ratio = F32(np.log(F32(F32(w) / F32(h)), dtype=F32))  # GUESS: float log
    ratio = F32(F32(F32(w) * F32(h)) / F32(slice_size * slice_size))
    multiple = int(min(math.ceil(float(ratio)), max_slice_nums))
    gw, gh = _get_best_grid(max_slice_nums, multiple, log_ratio)
    # get_refine_size
    rw, rh = _ensure_divide(w, gw), _ensure_divide(h, gh)
    bw, bh = _get_best_resize(rw // gw, rh // gh, slice_size, patch, True)
    refined = (bw * gw, bh * gh)
    sx, sy = refined[0] // gw, refined[1] // gh
    slices = []
    py, ic = 0, 0
    while py < refined[1] and ic < gh:
        px, jc = 0, 0
        while px < refined[0] and jc < gw:
            slices.append((px, py, sx, sy))
            px += sx
            jc += 1
        py += sy
        ic += 1
    return {"overview": overview, "refined": refined, "grid": (gw, gh), "slices": slices}


def preprocess_llava_uhd(img, hp, refined_pad=False):
    """mtmd_image_preprocessor_llava_uhd::preprocess / slice_image, overview first.
    Overview: bilinear stretch. Refined image: bicubic, stretched (MiniCPM-V's own slicing,
    llava_uhd::slice_instructions defaults @ ec98e2002) or, with refined_pad, aspect-
    preserving + centred black padding (current upstream: clip-model.h image_pad_rf = true,
    not overridden for MINICPMV)."""
    h, w = img.shape[:2]
    inst = llava_uhd_instructions(w, h, hp)
    out = [{"role": "overview",
            "u8": img_tool_resize(img, *inst["overview"], "bilinear", False, (0, 0, 0))}]
    if inst["slices"]:
        refined = img_tool_resize(img, *inst["refined"], "bicubic", refined_pad, (0, 0, 0))
        for (x, y, sw, sh) in inst["slices"]:
            out.append({"role": "slice", "crop": [x, y, sw, sh], "u8": refined[y:y + sh, x:x + sw].copy()})
    return out, inst


# --------------------------------------------------------------------------------------
# tower and projectors
# --------------------------------------------------------------------------------------

class Ops:
    def __init__(self, emulate=False, flash_attn_f16=False):
        self.emulate = emulate
        self.flash_attn_f16 = flash_attn_f16

    def f16(self, x):
        return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)

    def linear(self, x, w, b=None, w_is_f16=False):
        if self.emulate and w_is_f16:
            x = self.f16(x)
        y = (x.astype(F32) @ w.T.astype(F32)).astype(F32)
        if b is not None:
            y = (y + b).astype(F32)
        return y

    def layer_norm(self, x, w, b, eps):
        x64 = x.astype(F64)
        mean = x64.mean(axis=-1, keepdims=True)
        var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
        y = ((x64 - mean) / np.sqrt(var + eps)).astype(F32)
        if w is not None:
            y = (y * w).astype(F32)
        if b is not None:
            y = (y + b).astype(F32)
        return y

    @staticmethod
    def _gelu(x):
        x = x.astype(F32)
        return (F32(0.5) * x * (F32(1.0) + np.tanh(F32(0.79788456080286535587989211986876) * x
                                                    * (F32(1.0) + F32(0.044715) * x * x)))).astype(F32)

    @staticmethod
    def _gelu_quick(x):
        x = x.astype(F32)
        return (x * (F32(1.0) / (F32(1.0) + np.exp(F32(-1.702) * x)))).astype(F32)

    def act(self, x, op):
        if op == "gelu":
            if self.emulate:  # GGML_GELU_FP16 table, with the +-10 clamps
                y = self.f16(self._gelu(self.f16(x)))
                return np.where(x <= -10, F32(0), np.where(x >= 10, x, y)).astype(F32)
            return self._gelu(x)
        if op == "gelu_quick":
            if self.emulate:  # GGML_GELU_QUICK_FP16 table
                return self.f16(self._gelu_quick(self.f16(x)))
            return self._gelu_quick(x)
        if op == "silu":
            x = x.astype(F32)
            return (x / (F32(1.0) + np.exp(-x))).astype(F32)
        raise ValueError(op)

    def attention(self, q, k, v, n_head, scale):
        """clip_graph::build_attn: softmax(q k^T * scale) v per head, heads concatenated."""
        if self.flash_attn_f16:
            q, k, v = self.f16(q), self.f16(k), self.f16(v)
        tq, d = q.shape
        tk = k.shape[0]
        dh = d // n_head
        qh = q.reshape(tq, n_head, dh).transpose(1, 0, 2)
        kh = k.reshape(tk, n_head, dh).transpose(1, 0, 2)
        vh = v.reshape(tk, n_head, dh).transpose(1, 0, 2)
        s = (qh @ kh.transpose(0, 2, 1)).astype(F32) * F32(scale)
        s = s.astype(F64)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        p = (s / s.sum(axis=-1, keepdims=True)).astype(F32)
        o = (p @ vh).astype(F32)  # (H, tq, dh)
        return o.transpose(1, 0, 2).reshape(tq, d)


def patch_embed(ops, m, hp, x):
    """clip_graph::build_inp: conv2d(v.patch_embd.weight, stride = patch) + v.patch_embd.bias."""
    P = hp["patch_size"]
    H, W = x.shape[:2]
    gh, gw = H // P, W // P
    patches = x[:gh * P, :gw * P].reshape(gh, P, gw, P, 3).transpose(0, 2, 4, 1, 3).reshape(gh * gw, 3 * P * P)
    k = m.get("v.patch_embd.weight")
    y = ops.linear(patches, k.reshape(k.shape[0], -1), m.get("v.patch_embd.bias", False),
                   m.ttype.get("v.patch_embd.weight") == "F16")
    return y, gw, gh


def vit_block(ops, L, hp, x):
    eps, n_head = hp["eps"], hp["n_head"]
    f = L["_f16"]
    cur = ops.layer_norm(x, L["ln1.weight"], L["ln1.bias"], eps)
    q = ops.linear(cur, L["attn_q.weight"], L["attn_q.bias"], f["attn_q.weight"])
    k = ops.linear(cur, L["attn_k.weight"], L["attn_k.bias"], f["attn_k.weight"])
    v = ops.linear(cur, L["attn_v.weight"], L["attn_v.bias"], f["attn_v.weight"])
    d_head = hp["n_embd"] // n_head
    cur = ops.attention(q, k, v, n_head, 1.0 / math.sqrt(d_head))
    cur = ops.linear(cur, L["attn_out.weight"], L["attn_out.bias"], f["attn_out.weight"])
    x = (cur + x).astype(F32)
    cur = ops.layer_norm(x, L["ln2.weight"], L["ln2.bias"], eps)
    if L["ffn_gate.weight"] is not None:
        raise NotImplementedError("gated FFN is not implemented")
    cur = ops.linear(cur, L["ffn_up.weight"], L["ffn_up.bias"], f["ffn_up.weight"])
    cur = ops.act(cur, hp["ffn_op"])
    cur = ops.linear(cur, L["ffn_down.weight"], L["ffn_down.bias"], f["ffn_down.weight"])
    return (x + cur).astype(F32)


def encode_llava(ops, m, hp, layers, x, cls_last=False, stages=None):
    """models/llava.cpp clip_graph_llava::build + clip_image_batch_encode inputs (MLP)."""
    inp, gw, gh = patch_embed(ops, m, hp, x)
    n_patches = gw * gh
    assert gw == gh, "only square images supported"
    cls = m.get("v.class_embd", False)
    if cls is not None:
        cls = cls.reshape(1, -1)
        inp = np.concatenate([inp, cls] if cls_last else [cls, inp], axis=0)
    n_pos = inp.shape[0]
    x = (inp + m.get("v.position_embd.weight")[np.arange(n_pos)]).astype(F32)
    if m.get("v.pre_ln.weight", False) is not None:
        x = ops.layer_norm(x, m.get("v.pre_ln.weight"), m.get("v.pre_ln.bias", False), hp["eps"])
    max_feature_layer = hp["n_layer"] - 1  # il_last: second-to-last stored block
    for il in range(max_feature_layer):
        x = vit_block(ops, layers[il], hp, x)
    if m.get("v.post_ln.weight", False) is not None:
        x = ops.layer_norm(x, m.get("v.post_ln.weight"), m.get("v.post_ln.bias", False), hp["eps"])
    if stages is not None:
        stages["tower_out"] = x.copy()
    rows = np.arange(n_patches) + (1 if cls is not None else 0)  # the "patches" input
    e = x[rows]
    e = ops.linear(e, m.get("mm.0.weight"), m.get("mm.0.bias", False), m.ttype.get("mm.0.weight") == "F16")
    e = ops.act(e, "gelu")  # ggml_gelu, independent of clip.use_gelu
    if m.get("mm.2.weight", False) is not None:
        e = ops.linear(e, m.get("mm.2.weight"), m.get("mm.2.bias", False), m.ttype.get("mm.2.weight") == "F16")
    return e


def minicpmv_positions(pos_w, pos_h):
    """clip_image_batch_encode, PROJECTOR_TYPE_MINICPMV "positions"."""
    G = MINICPMV_POS_GRID
    bh = [int(math.floor(G * i / pos_h)) for i in range(pos_h)]
    bw = [int(math.floor(G * i / pos_w)) for i in range(pos_w)]
    return np.array([bh[i] * G + bw[j] for i in range(pos_h) for j in range(pos_w)], dtype=np.int64)


def minicpmv_sincos(n_embd_proj, pos_w, pos_h):
    """omega / pos_w / pos_h inputs of clip_image_batch_encode and the concat in
    clip_graph_minicpmv::build: rows [sin(w om), cos(w om), sin(h om), cos(h om)]."""
    q = n_embd_proj // 4
    omega = (F32(1.0) / np.power(F32(10000.0), (np.arange(q, dtype=F32) / F32(q)).astype(F32),
                                 dtype=F32)).astype(F32)
    n_pos = pos_w * pos_h
    idx = np.arange(n_pos)
    pw = (idx % pos_w).astype(F32)[:, None]
    ph = (idx // pos_w).astype(F32)[:, None]
    tx = (omega[None, :] * pw).astype(F32)
    ty = (omega[None, :] * ph).astype(F32)
    return np.concatenate([np.sin(tx), np.cos(tx), np.sin(ty), np.cos(ty)], axis=1).astype(F32)


def encode_minicpmv(ops, m, hp, layers, x, stages=None):
    """models/minicpmv.cpp clip_graph_minicpmv::build + clip_graph::build_vit."""
    assert m.get("v.class_embd", False) is None, "minicpmv has no class embedding"
    inp, gw, gh = patch_embed(ops, m, hp, x)
    x = (inp + m.get("v.position_embd.weight")[minicpmv_positions(gw, gh)]).astype(F32)
    eps = hp["eps"]
    if m.get("v.pre_ln.weight", False) is not None:
        x = ops.layer_norm(x, m.get("v.pre_ln.weight"), m.get("v.pre_ln.bias", False), eps)
    for il in range(hp["n_layer"]):
        x = vit_block(ops, layers[il], hp, x)
    if m.get("v.post_ln.weight", False) is not None:
        x = ops.layer_norm(x, m.get("v.post_ln.weight"), m.get("v.post_ln.bias", False), eps)
    if stages is not None:
        stages["tower_out"] = x.copy()

    f16 = lambda n: m.ttype.get(n) == "F16"  # noqa: E731
    W = m.get("resampler.proj.weight").shape[1]  # ne[0] = clip_n_mmproj_embd
    q = m.get("resampler.query")
    if q.shape != (hp["query_num"], W):
        raise ValueError(f"resampler.query shape {q.shape} != ({hp['query_num']}, {W})")
    v = ops.linear(x, m.get("resampler.kv.weight"), None, f16("resampler.kv.weight"))
    q = ops.layer_norm(q, m.get("resampler.ln_q.weight"), m.get("resampler.ln_q.bias"), eps)
    v = ops.layer_norm(v, m.get("resampler.ln_kv.weight"), m.get("resampler.ln_kv.bias"), eps)
    k = (v + minicpmv_sincos(W, gw, gh)).astype(F32)
    Q = ops.linear(q, m.get("resampler.attn.q.weight"), m.get("resampler.attn.q.bias"), f16("resampler.attn.q.weight"))
    K = ops.linear(k, m.get("resampler.attn.k.weight"), m.get("resampler.attn.k.bias"), f16("resampler.attn.k.weight"))
    V = ops.linear(v, m.get("resampler.attn.v.weight"), m.get("resampler.attn.v.bias"), f16("resampler.attn.v.weight"))
    if W % MINICPMV_D_HEAD:
        raise ValueError(f"resampler width {W} is not a multiple of clip.cpp's d_head {MINICPMV_D_HEAD}")
    e = ops.attention(Q, K, V, W // MINICPMV_D_HEAD, 1.0 / math.sqrt(MINICPMV_D_HEAD))
    e = ops.linear(e, m.get("resampler.attn.out.weight"), m.get("resampler.attn.out.bias"), f16("resampler.attn.out.weight"))
    e = ops.layer_norm(e, m.get("resampler.ln_post.weight"), m.get("resampler.ln_post.bias"), eps)
    e = ops.linear(e, m.get("resampler.proj.weight"), None, f16("resampler.proj.weight"))
    return e


def encode(mmproj_path, img, cls_last=False, emulate=False, dump_dir=None, flash_attn_f16=False,
           llava_resize="bicubic", minicpmv_refined_pad=False):
    m, hp, layers = load_mmproj(mmproj_path)
    ops = Ops(emulate, flash_attn_f16)
    if hp["proj"] == "mlp":
        pieces, inst = preprocess_fixed_size(img, hp, llava_resize), None
    else:
        pieces, inst = preprocess_llava_uhd(img, hp, minicpmv_refined_pad)
    outs, meta, start = [], [], 0
    for i, pc in enumerate(pieces):
        x = img_u8_to_f32(pc["u8"], hp["mean"], hp["std"])
        stages = {} if dump_dir else None
        if hp["proj"] == "mlp":
            e = encode_llava(ops, m, hp, layers, x, cls_last, stages)
        else:
            e = encode_minicpmv(ops, m, hp, layers, x, stages)
        outs.append(e)
        h, w = pc["u8"].shape[:2]
        entry = {"role": pc["role"], "width": w, "height": h, "tokens": [start, start + e.shape[0]],
                 "preprocessed_u8_sha256": hashlib.sha256(np.ascontiguousarray(pc["u8"]).tobytes()).hexdigest()}
        if "crop" in pc:
            entry["crop_xywh_in_refined"] = pc["crop"]
        meta.append(entry)
        start += e.shape[0]
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)
            np.save(os.path.join(dump_dir, f"img{i}_u8.npy"), pc["u8"])
            np.save(os.path.join(dump_dir, f"img{i}_f32.npy"), x)
            np.save(os.path.join(dump_dir, f"img{i}_tower_out.npy"), stages["tower_out"])
            np.save(os.path.join(dump_dir, f"img{i}_embd.npy"), e)
    emb = np.concatenate(outs, axis=0).astype(F32)
    return emb, hp, meta, inst


def sig6(x):
    return float(f"{float(x):.6g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mmproj")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--image", help="PNG/JPEG file (decoded with PIL, converted to RGB)")
    src.add_argument("--synthetic", default="40x30", help="WxH of the synthetic image (default 40x30)")
    ap.add_argument("--write-synthetic", metavar="PNG", help="also write the synthetic image as PNG")
    ap.add_argument("--out", help="write embeddings: .npy (float32 [n_tokens, n_embd]) or .json")
    ap.add_argument("--llava-cls-last", action="store_true",
                    help="mlp: reproduce current upstream llava.cpp (CLS concatenated after the patches)")
    ap.add_argument("--llava-resize", choices=["bicubic", "bilinear"], default="bicubic",
                    help="mlp: resize of the padded image (bicubic: current upstream; bilinear: ec98e2002)")
    ap.add_argument("--minicpmv-refined-pad", action="store_true",
                    help="resampler: pad the refined image instead of stretching it (current upstream)")
    ap.add_argument("--emulate-ggml-cpu", action="store_true",
                    help="ggml CPU rounding: fp16 GELU/quick-GELU tables, f16 matmul inputs for F16 weights")
    ap.add_argument("--flash-attn-f16", action="store_true",
                    help="round attention Q/K/V to f16 as ggml's CPU flash attention does")
    ap.add_argument("--dump-stages", metavar="DIR", help="write per-image intermediates as .npy")
    args = ap.parse_args()

    if args.image:
        img = load_image(args.image)
        source = os.path.basename(args.image)
    else:
        w, h = (int(v) for v in args.synthetic.lower().split("x"))
        img = synthetic_image(w, h)
        source = f"synthetic_image({w}, {h})"
        if args.write_synthetic:
            from PIL import Image
            Image.fromarray(img, "RGB").save(args.write_synthetic, optimize=False)

    emb, hp, meta, inst = encode(args.mmproj, img, args.llava_cls_last, args.emulate_ggml_cpu, args.dump_stages,
                                 args.flash_attn_f16, args.llava_resize, args.minicpmv_refined_pad)
    print(f"{os.path.basename(args.mmproj)}: projector={hp['proj']} image={source} "
          f"{img.shape[1]}x{img.shape[0]} -> {len(meta)} image(s), embeddings shape {list(emb.shape)}")
    for e in meta:
        print(f"  {e['role']:8s} {e['width']}x{e['height']} tokens {e['tokens']}")

    if args.out:
        if args.out.endswith(".npy"):
            np.save(args.out, emb)
        else:
            doc = {
                "mmproj": os.path.basename(args.mmproj),
                "mmproj_sha256": hashlib.sha256(open(args.mmproj, "rb").read()).hexdigest(),
                "projector_type": hp["proj"],
                "image": {"source": source, "width": int(img.shape[1]), "height": int(img.shape[0]),
                          "rgb_u8_sha256": hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()},
                "options": {"llava_cls_last": bool(args.llava_cls_last),
                            "llava_resize": args.llava_resize,
                            "minicpmv_refined_pad": bool(args.minicpmv_refined_pad),
                            "emulate_ggml_cpu": bool(args.emulate_ggml_cpu),
                            "flash_attn_f16": bool(args.flash_attn_f16)},
                "hparams": {k: hp[k] for k in ["n_embd", "n_head", "n_ff", "n_layer", "eps", "image_size",
                                               "patch_size", "ffn_op", "ffn_swapped"]
                            + (["minicpmv_version", "query_num"] if hp["proj"] == "resampler" else [])},
                "images": meta,
                "shape": [int(s) for s in emb.shape],
                "values": [[sig6(v) for v in row] for row in emb],
            }
            if inst is not None:
                doc["llava_uhd"] = {"overview": list(inst["overview"]),
                                    "refined": list(inst["refined"]) if inst["refined"] else None,
                                    "grid": list(inst["grid"])}
            with open(args.out, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
