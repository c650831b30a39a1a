#!/usr/bin/env python3
"""Make large "scans" of SROIE dev receipts: 300-600 dpi upscales, for benchmarking OCR on
big images (benches/ocr_vs_rapidocr.sh with MODE=one IMAGES_DIR=...).

  python benches/make_large_scans.py --src ../shared/eval/sroie-dev/img --ids 000,010,024 \\
      --out target/large-scans [--dpi 300 600] [--source-dpi 150] [--max-pixels 40000000] \\
      [--format jpg|png]

Each source receipt (SRC/ID.jpg|.jpeg|.png) is assumed to have been scanned at
--source-dpi (SROIE receipts are roughly 100-200 dpi; the default 150 is what most of the
narrow till receipts' JFIF headers say) and is resampled with Pillow's LANCZOS filter by
DPI / source-dpi to each --dpi, then written as OUT/ID_<DPI>dpi.jpg (JPEG quality 95,
no chroma subsampling) or .png, with that dpi in the file's header. Each output's size in
pixels and megapixels is printed; an output over --max-pixels is skipped with a message.
The pixels are the source's as stored (no EXIF rotation; SROIE files carry none), so the
ground truth box/ID.csv, scaled by the same factor, still applies: ocr_vs_rapidocr.sh's
report scores ID_<DPI>dpi.* against box/ID.csv and scales the predicted boxes back.

Note that some SROIE "receipts" are already full A4 pages at 300 dpi (e.g. 023-025 are
2481x3508): with the default --source-dpi 150 they grow 2x at 300 dpi (~35 MP) and 4x at
600 dpi (~139 MP, skipped under the default --max-pixels). Pillow itself warns on opening
an image over ~89 MP and refuses one over ~179 MP, and so would RapidOCR (it decodes with
Pillow); p2g's `ocr --max-pixels` default is 100 MP.

Needs Pillow. Use the venv /work/scratch/venv-pil/bin/python if it exists; otherwise make
one:  python3 -m venv /tmp/venv-pil && /tmp/venv-pil/bin/python -m pip install pillow
(i.e. `python3 -m pip install pillow` into a venv), and run this script with its python.
"""

import argparse
import sys
import time
from pathlib import Path

SRC_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def die(msg):
    sys.exit(f"make_large_scans: error: {msg}")


def find_source(src: Path, ident: str) -> Path:
    for ext in SRC_EXTS:
        p = src / (ident + ext)
        if p.is_file():
            return p
    return None


def fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="folder of source receipts (e.g. ../shared/eval/sroie-dev/img)")
    ap.add_argument("--ids", help="comma-separated image stems, e.g. 000,010,024 (default: every image in --src)")
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--dpi", type=float, nargs="+", default=[300.0, 600.0], help="target dpi values (default: 300 600)")
    ap.add_argument("--source-dpi", type=float, default=150.0, help="dpi the sources are assumed scanned at (default: 150)")
    ap.add_argument("--max-pixels", type=int, default=40_000_000,
                    help="skip any output with more pixels than this (default: 40000000)")
    ap.add_argument("--format", choices=("jpg", "png"), default="jpg", help="output format (default: jpg, quality 95)")
    args = ap.parse_args()

    if args.source_dpi <= 0 or any(d <= 0 for d in args.dpi):
        die("--source-dpi and --dpi must be positive")
    if args.max_pixels <= 0:
        die("--max-pixels must be positive")

    try:
        from PIL import Image
    except ImportError:
        die(f"Pillow is not installed for {sys.executable}; run with /work/scratch/venv-pil/bin/python, "
            "or: python3 -m venv /tmp/venv-pil && /tmp/venv-pil/bin/python -m pip install pillow")
    lanczos = getattr(Image, "Resampling", Image).LANCZOS

    src = Path(args.src)
    if not src.is_dir():
        die(f"--src folder not found: {src}")
    if args.ids:
        ids = [i.strip() for i in args.ids.split(",") if i.strip()]
        if not ids:
            die("--ids is empty")
    else:
        ids = sorted({p.stem for p in src.iterdir() if p.suffix in SRC_EXTS and p.is_file()})
        if not ids:
            die(f"no .jpg/.jpeg/.png images in {src}")
    sources = {}
    missing = []
    for ident in ids:
        p = find_source(src, ident)
        if p is None:
            missing.append(ident)
        else:
            sources[ident] = p
    if missing:
        die(f"no image for id(s) {', '.join(missing)} in {src} (looked for ID{{{','.join(SRC_EXTS)}}})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    for ident, path in sources.items():
        with Image.open(path) as im:
            w, h = im.size
            planned = []
            for dpi in args.dpi:
                scale = dpi / args.source_dpi
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
                name = f"{ident}_{fmt_num(dpi)}dpi.{args.format}"
                if nw * nh > args.max_pixels:
                    print(f"skip {name}: {nw}x{nh} = {nw * nh / 1e6:.1f} MP is over --max-pixels "
                          f"{args.max_pixels} ({args.max_pixels / 1e6:.1f} MP)  [from {path.name} {w}x{h}, x{scale:.3g}]")
                    skipped += 1
                    continue
                planned.append((dpi, scale, nw, nh, name))
            if not planned:
                continue
            im.load()
            rgb = im if im.mode in ("RGB", "L") else im.convert("RGB")
            for dpi, scale, nw, nh, name in planned:
                t0 = time.perf_counter()
                big = rgb.resize((nw, nh), lanczos)
                dst = out / name
                if args.format == "jpg":
                    big.save(dst, "JPEG", quality=95, subsampling=0, dpi=(dpi, dpi))
                else:
                    big.save(dst, "PNG", dpi=(dpi, dpi))
                big.close()
                secs = time.perf_counter() - t0
                print(f"{name}: {nw}x{nh} pixels, {nw * nh / 1e6:.1f} MP, {dst.stat().st_size / 1e6:.1f} MB  "
                      f"[from {path.name} {w}x{h}, x{scale:.3g}{' (downscale)' if scale < 1 else ''}, {secs:.1f} s]"
                      f"  -> {dst}")
                written += 1
    print(f"{written} written, {skipped} skipped, in {out}")
    made = {f"{i}_{fmt_num(d)}dpi.{args.format}" for i in sources for d in args.dpi}
    others = sorted(p.name for p in out.iterdir()
                    if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.name not in made)
    if others:
        print(f"note: {out} also holds {len(others)} other image(s), which ocr_vs_rapidocr.sh "
              f"(IMAGES_DIR={out}) will benchmark too: {', '.join(others)}")
    if written == 0:
        die("nothing written (every output was over --max-pixels?)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
