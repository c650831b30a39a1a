#!/usr/bin/env python3
"""Compare p2g's NanoDet outputs with TensorFlow.js's on the same inputs.

    python3 benches/nanodet_compare.py DUMP_DIR [--tol 1e-3]

For every case NAME in DUMP_DIR that has both NAME.p2g.<out>.f32 and NAME.tfjs.<out>.f32
(raw little-endian float32; <out> is cls52 cls26 cls13 reg52 reg26 reg13, written by
`cargo run --release --example nanodet_dump` and benches/nanodet_tfjs.mjs), print the
maximum absolute difference per output and overall, and, so that a reader can see the
outputs are not trivially zero, how many grid cells have a best class score above 0.35 on
each side. Exits 1 if any difference exceeds --tol (or a file is missing / the wrong size),
2 on bad usage, 0 otherwise.
"""
import argparse
import os
import re
import sys

import numpy as np

# output tag -> (cells, channels); cls = class scores after sigmoid, reg = 4 x 11 bins
OUTPUTS = {
    "cls52": (2704, 80), "cls26": (676, 80), "cls13": (169, 80),
    "reg52": (2704, 44), "reg26": (676, 44), "reg13": (169, 44),
}
SCORE_THRESH = 0.35


def load(path, shape):
    a = np.fromfile(path, dtype="<f4")
    if a.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: {a.size} floats, expected {shape[0]}x{shape[1]}")
    return a.reshape(shape).astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump_dir")
    ap.add_argument("--tol", type=float, default=1e-3, help="max allowed abs difference (default 1e-3)")
    args = ap.parse_args()
    if not os.path.isdir(args.dump_dir):
        ap.error(f"{args.dump_dir} is not a folder")

    files = set(os.listdir(args.dump_dir))
    pat = re.compile(r"^(.+)\.(?:p2g|tfjs)\.(?:%s)\.f32$" % "|".join(OUTPUTS))
    names = sorted({m.group(1) for m in map(pat.match, files) if m})
    ok = True
    compared = 0
    overall = 0.0
    for name in names:
        have = [o for o in OUTPUTS if f"{name}.p2g.{o}.f32" in files and f"{name}.tfjs.{o}.f32" in files]
        if not have:
            print(f"{name}: no output present on both sides, skipped")
            continue
        missing = [o for o in OUTPUTS if o not in have]
        if missing:
            print(f"{name}: missing on one or both sides: {' '.join(missing)}")
            ok = False
        diffs = {}
        cells = {"p2g": 0, "tfjs": 0}
        try:
            for o in have:
                a = load(os.path.join(args.dump_dir, f"{name}.p2g.{o}.f32"), OUTPUTS[o])
                b = load(os.path.join(args.dump_dir, f"{name}.tfjs.{o}.f32"), OUTPUTS[o])
                d = np.abs(a - b)
                # NaN anywhere counts as an infinite difference
                diffs[o] = float("inf") if not np.isfinite(d).all() else float(d.max())
                if o.startswith("cls"):
                    cells["p2g"] += int((a.max(axis=1) > SCORE_THRESH).sum())
                    cells["tfjs"] += int((b.max(axis=1) > SCORE_THRESH).sum())
        except ValueError as e:
            print(f"{name}: {e}")
            ok = False
            continue
        worst = max(diffs.values())
        overall = max(overall, worst)
        compared += 1
        bad = worst > args.tol
        ok &= not bad
        per = "  ".join(f"{o} {v:.2e}" for o, v in diffs.items())
        print(f"{name}: max|p2g-tfjs| {worst:.2e} {'FAIL' if bad else 'ok'}  ({per})  "
              f"cells with best score > {SCORE_THRESH}: p2g {cells['p2g']}, tfjs {cells['tfjs']}")
    if compared == 0:
        print(f"no case in {args.dump_dir} has both NAME.p2g.*.f32 and NAME.tfjs.*.f32")
        return 1
    print(f"overall max|p2g-tfjs| {overall:.2e} over {compared} case(s), tolerance {args.tol:g}: "
          f"{'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
