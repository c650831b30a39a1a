#!/usr/bin/env python3
"""Run RapidOCR (rapidocr_onnxruntime 1.4.4) on one or more images with the
PP-OCRv5 ONNX models that p2g uses, and print one JSON line per image, in
argument order:

  {"image": PATH, "width": W, "height": H, "elapsed_ms": T,
   "lines": [{"text": .., "confidence": .., "bbox": [x1,y1,x2,y2],
              "quad": [[x,y],[x,y],[x,y],[x,y]]}, ...]}

An image that fails prints {"image": PATH, "error": MESSAGE} in its place (and
the error on stderr); the others still run, and the exit status is 1.

The models are loaded once for all images. With one image per process (how
ocr_vs_rapidocr.sh runs it by default) the peak RSS measured around this
process is the peak for that image; with several (MODE=one) it is the peak
over all of them. elapsed_ms covers only the `engine(image_path)` call
(image decode + det + cls + rec + post-processing), after the models are
loaded; there is no warm-up run.

How the configuration reaches RapidOCR 1.4.4 (verified in its source):

* `RapidOCR(**kwargs)` -> `UpdateParameters.parse_kwargs`: keys starting with
  "det" lose the "det_" prefix and go to config["Det"] (det_model_path ->
  model_path, det_thresh -> thresh, det_box_thresh -> box_thresh,
  det_unclip_ratio -> unclip_ratio); keys starting with "cls"/"rec" go to
  config["Cls"]/config["Rec"] with only cls_model_path/rec_model_path having
  their prefix removed (so cls_image_shape and rec_keys_path keep their names,
  which are exactly the names TextClassifier / TextRecognizer read); anything
  else (text_score, intra_op_num_threads, inter_op_num_threads) goes to
  config["Global"], and the two thread counts are then copied from Global into
  Det, Cls and Rec (`update_global_to_module`). OrtInferSession only applies a
  thread count when 1 <= n <= os.cpu_count().
* Thresholds must NOT be passed to `engine(...)`: `RapidOCR.__call__` with any
  kwargs resets box_thresh/unclip_ratio/text_score to its own defaults
  (0.5/1.6/0.5) for those not given. We pass nothing there.
* Keys: `CTCLabelDecode.get_character` reads the keys file line by line
  (only "\\n"/"\\r" stripped), then appends " " at the END and inserts
  "blank" at index 0. The bundled ppocr_keys_v5.txt is already the
  index-aligned form (line 0 = "blank", last line = " ", 18385 lines), so we
  write a derived file with its first and last lines dropped (18383 lines);
  RapidOCR's final list is then identical to the bundled file, i.e.
  index-aligned with the rec model's 18385 output classes. Asserted below.
  A keys file (rec_keys_path) takes precedence over any character list in
  the model's metadata (the bundled rec model has none anyway).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

N_CLASSES = 18385  # rec model output width (PP-OCRv5 mobile rec)


def derive_keys(src: Path, out_dir: Path) -> Path:
    raw = src.read_bytes().decode("utf-8")
    lines = raw.split("\n")
    if lines and lines[-1] == "":  # trailing newline
        lines.pop()
    lines = [l[:-1] if l.endswith("\r") else l for l in lines]
    if len(lines) != N_CLASSES:
        sys.exit(f"rapidocr_run: {src} has {len(lines)} lines, expected {N_CLASSES}")
    if lines[0] != "blank" or lines[-1] != " ":
        sys.exit(
            f"rapidocr_run: {src}: expected first line 'blank' and last line ' ', "
            f"got {lines[0]!r} / {lines[-1]!r}"
        )
    dst = out_dir / "ppocr_keys_v5_rapidocr.txt"
    dst.write_bytes(("\n".join(lines[1:-1]) + "\n").encode("utf-8"))
    return dst, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", metavar="IMAGE")
    ap.add_argument("--models", required=True, help="folder with ppocrv5_{det,rec,cls}.onnx and ppocr_keys_v5.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--det-thresh", type=float, default=0.3)
    ap.add_argument("--box-thresh", type=float, default=0.6)
    ap.add_argument("--unclip-ratio", type=float, default=1.5)
    ap.add_argument("--text-score", type=float, default=0.5)
    args = ap.parse_args()

    models = Path(args.models)
    for name in ("ppocrv5_det.onnx", "ppocrv5_rec.onnx", "ppocrv5_cls.onnx", "ppocr_keys_v5.txt"):
        if not (models / name).is_file():
            sys.exit(f"rapidocr_run: missing {models / name}")
    if len(args.images) == 1 and not Path(args.images[0]).is_file():
        sys.exit(f"rapidocr_run: no such image {args.images[0]}")

    from PIL import Image  # RapidOCR itself decodes with PIL
    from rapidocr_onnxruntime import RapidOCR

    with tempfile.TemporaryDirectory(prefix="rapidocr_keys_") as tmp:
        keys_path, model_keys = derive_keys(models / "ppocr_keys_v5.txt", Path(tmp))
        engine = RapidOCR(
            det_model_path=str(models / "ppocrv5_det.onnx"),
            rec_model_path=str(models / "ppocrv5_rec.onnx"),
            cls_model_path=str(models / "ppocrv5_cls.onnx"),
            rec_keys_path=str(keys_path),
            cls_image_shape=[3, 80, 160],
            det_thresh=args.det_thresh,
            det_box_thresh=args.box_thresh,
            det_unclip_ratio=args.unclip_ratio,
            text_score=args.text_score,
            intra_op_num_threads=args.threads,
            inter_op_num_threads=1,
        )

    # Verify that the configuration really landed where intended.
    chars = engine.text_rec.postprocess_op.character
    assert len(chars) == N_CLASSES, f"RapidOCR character list has {len(chars)} entries, want {N_CLASSES}"
    assert chars == model_keys, "RapidOCR character list is not index-aligned with ppocr_keys_v5.txt"
    pp = engine.text_det.postprocess_op
    assert (pp.thresh, pp.box_thresh, pp.unclip_ratio) == (args.det_thresh, args.box_thresh, args.unclip_ratio)
    assert engine.text_score == args.text_score
    assert list(engine.text_cls.cls_image_shape) == [3, 80, 160]
    for sess in (engine.text_det.infer.session, engine.text_cls.infer.session, engine.text_rec.session.session):
        opts = sess.get_session_options()
        if 1 <= args.threads <= (os.cpu_count() or 1):
            assert opts.intra_op_num_threads == args.threads, opts.intra_op_num_threads
            assert opts.inter_op_num_threads == 1, opts.inter_op_num_threads

    failures = 0
    for path in args.images:
        try:
            out = read_one(engine, path, Image)
        except Exception as e:  # noqa: BLE001 -- report it and go on with the next image
            failures += 1
            print(f"rapidocr_run: error: {path}: {e}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            out = {"image": path, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 1 if failures else 0


def read_one(engine, path, Image):
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such image {path}")
    with Image.open(path) as im:  # header only, no decode
        width, height = im.size

    t0 = time.perf_counter()
    result, _elapse = engine(path)
    elapsed_ms = (time.perf_counter() - t0) * 1000.0

    lines = []
    for box, text, score in result or []:
        quad = [[float(x), float(y)] for x, y in box]
        xs = [p[0] for p in quad]
        ys = [p[1] for p in quad]
        lines.append(
            {
                "text": text,
                "confidence": float(score),
                "bbox": [min(xs), min(ys), max(xs), max(ys)],
                "quad": quad,
            }
        )
    return {
        "image": path,
        "width": width,
        "height": height,
        "elapsed_ms": round(elapsed_ms, 3),
        "lines": lines,
    }


if __name__ == "__main__":
    sys.exit(main())
