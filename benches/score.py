#!/usr/bin/env python3
"""Score OCR predictions against SROIE line-level ground truth (stdlib only).

Usage:
  python3 benches/score.py --gt ../shared/eval/sroie-dev PRED.jsonl [--images 000.jpg 001.jpg ...]

PRED.jsonl: one JSON object per line,
  {"image": PATH, "lines": [{"text": .., "bbox": [x1,y1,x2,y2], "quad": [[x,y]x4], ..}, ..], ..}
The "image" field may be absent; then --images (names in the same order as
the JSONL lines, or one file listing them one per line) gives the names.
Ground truth for image NNN.jpg is GT/box/NNN.csv with rows
  x1,y1,x2,y2,x3,y3,x4,y4,transcript   (transcript = everything after the 8th comma)
If GT/box/STEM.csv does not exist, a suffix after the last underscore of the
image's stem is dropped: NNN_600dpi.png is scored against GT/box/NNN.csv.
When a record's "width"/"height" differ from the size of the ground truth's own
image (GT/img/NNN.*, e.g. an upscaled scan from benches/make_large_scans.py),
the predicted boxes are scaled back to that image's pixels before scoring
(the CER matches lines by position).

Metrics:
* word F1: both sides upper-cased, tokens = whitespace split of every line,
  multiset intersection; precision = |∩|/|pred tokens|, recall = |∩|/|gt tokens|.
  Overall = micro average (counts summed over images).
* CER (line-matched, case-insensitive, all whitespace removed): each predicted
  line is assigned to the GT line whose bbox overlaps it most (largest
  intersection area > 0) among those with vertical overlap >= 50% of the
  smaller of the two heights. For each GT line its assigned predicted lines,
  sorted by x1, are concatenated and compared by Levenshtein distance with the
  transcript (a GT line with nothing assigned costs its full length);
  unassigned predicted lines add their length as insertions.
  CER = total edits / total GT chars.
"""

import argparse
import json
import struct
import sys
from collections import Counter
from pathlib import Path

# --------------------------------------------------------------------------- GT


def parse_gt_text(text):
    """Parse the text of one SROIE box/NNN.csv -> list of (bbox, transcript)."""
    rows = []
    for raw in text.splitlines():  # handles \n, \r\n, \r
        line = raw.strip("\r\n")
        if not line.strip():
            continue
        parts = line.split(",", 8)
        if len(parts) < 9:
            # malformed row: keep nothing rather than guessing coordinates
            continue
        try:
            coords = [float(v) for v in parts[:8]]
        except ValueError:
            continue
        xs, ys = coords[0::2], coords[1::2]
        rows.append(([min(xs), min(ys), max(xs), max(ys)], parts[8]))
    return rows


def load_gt(path):
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_gt_text(text)


def gt_path_for(gt_dir, image_name):
    return Path(gt_dir) / "box" / (Path(image_name).stem + ".csv")


def find_gt(gt_dir, image_name):
    """The ground-truth csv for an image, or None: box/STEM.csv, else (when the stem
    has an underscore) box/STEM-without-its-last-_suffix.csv, so 024_600dpi.jpg
    is scored against box/024.csv."""
    p = gt_path_for(gt_dir, image_name)
    if p.is_file():
        return p
    stem = Path(image_name).stem
    if "_" in stem:
        p = Path(gt_dir) / "box" / (stem.rsplit("_", 1)[0] + ".csv")
        if p.is_file():
            return p
    return None


# ------------------------------------------------------------- image geometry

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(path):
    """(width, height) from a PNG or JPEG header (stdlib only), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] != b"\xff\xd8":
                return None
            f.seek(2)
            while True:
                b = f.read(1)
                if not b:
                    return None
                if b != b"\xff":
                    continue
                m = f.read(1)
                while m == b"\xff":  # fill bytes
                    m = f.read(1)
                if not m:
                    return None
                m = m[0]
                if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
                    continue
                if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                    return None
                seg = f.read(2)
                if len(seg) < 2:
                    return None
                (n,) = struct.unpack(">H", seg)
                if m in _JPEG_SOF:
                    data = f.read(5)
                    if len(data) < 5:
                        return None
                    h, w = struct.unpack(">HH", data[1:5])
                    return w, h
                f.seek(n - 2, 1)  # APPn (EXIF thumbnails included), DQT, DHT, ...: skip
    except OSError:
        return None


def gt_image_size(gt_dir, gt_path):
    """Size of the image the ground truth was drawn on (GT/img/STEM.*), or None."""
    img = Path(gt_dir) / "img"
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = img / (Path(gt_path).stem + ext)
        if p.is_file():
            return image_size(p)
    return None


def _scale_line(line, sx, sy):
    out = dict(line)
    b = line.get("bbox")
    if b and len(b) == 4:
        out["bbox"] = [float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy]
    q = line.get("quad")
    if q:
        out["quad"] = [[float(p[0]) * sx, float(p[1]) * sy] for p in q]
    return out


def lines_in_gt_pixels(gt_dir, gt_path, rec):
    """The record's predicted lines in the pixels of the ground truth's image.

    Returns (lines, note): note is "" when the record's width/height equal that
    image's size (or either is unknown) and the lines are returned as they are;
    "x0.500" (the factor applied) when they were scaled back; or a warning when the
    aspect ratios differ by more than 2% (then nothing is scaled)."""
    lines = rec.get("lines") or []
    w, h = rec.get("width"), rec.get("height")
    if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0):
        return lines, ""
    size = gt_image_size(gt_dir, gt_path)
    if not size or (int(w), int(h)) == tuple(size):
        return lines, ""
    sx, sy = size[0] / w, size[1] / h
    if abs(sx / sy - 1.0) > 0.02:
        return lines, f"size {int(w)}x{int(h)} is not a rescale of the GT image's {size[0]}x{size[1]}; boxes not scaled"
    return [_scale_line(l, sx, sy) for l in lines], f"x{(sx + sy) / 2:.3f}"


# ------------------------------------------------------------------ predictions


def pred_bbox(line):
    b = line.get("bbox")
    if b and len(b) == 4:
        return [float(v) for v in b]
    q = line.get("quad") or []
    if q:
        xs = [float(p[0]) for p in q]
        ys = [float(p[1]) for p in q]
        return [min(xs), min(ys), max(xs), max(ys)]
    return None


def load_predictions(jsonl_path, images=None):
    """Return a list of (image_name, record) in file order."""
    out = []
    with open(jsonl_path, encoding="utf-8") as f:
        recs = [json.loads(l) for l in f if l.strip()]
    if images is not None and len(images) != len(recs):
        sys.exit(f"score: {jsonl_path} has {len(recs)} records but {len(images)} image names were given")
    for i, rec in enumerate(recs):
        name = images[i] if images is not None else rec.get("image")
        if not name:
            sys.exit(f"score: record {i} of {jsonl_path} has no 'image' and no --images was given")
        out.append((name, rec))
    return out


# --------------------------------------------------------------------- metrics


def levenshtein(a, b):
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _norm_chars(s):
    return "".join(s.upper().split())


def _tokens(texts):
    toks = []
    for t in texts:
        toks.extend(t.upper().split())
    return toks


def assign_lines(gt_rows, pred_lines):
    """Index of the GT row each predicted line is assigned to (or None)."""
    out = []
    for p in pred_lines:
        pb = pred_bbox(p)
        best, best_area = None, 0.0
        if pb is not None:
            ph = max(pb[3] - pb[1], 0.0)
            for gi, (gb, _) in enumerate(gt_rows):
                gh = max(gb[3] - gb[1], 0.0)
                v = min(pb[3], gb[3]) - max(pb[1], gb[1])
                if v <= 0 or v < 0.5 * min(ph, gh):
                    continue
                h = min(pb[2], gb[2]) - max(pb[0], gb[0])
                if h <= 0:
                    continue
                area = v * h
                if area > best_area:
                    best, best_area = gi, area
        out.append(best)
    return out


def score_image(gt_rows, pred_lines):
    """gt_rows: [(bbox, transcript)] from load_gt; pred_lines: the record's "lines".

    Returns dict(tp, n_pred, n_gt, edits, gt_chars)."""
    gt_toks = Counter(_tokens(t for _, t in gt_rows))
    pr_toks = Counter(_tokens(p.get("text", "") for p in pred_lines))
    tp = sum((gt_toks & pr_toks).values())

    assigned = assign_lines(gt_rows, pred_lines)
    per_gt = [[] for _ in gt_rows]
    edits = 0
    for p, gi in zip(pred_lines, assigned):
        if gi is None:
            edits += len(_norm_chars(p.get("text", "")))
        else:
            per_gt[gi].append(p)
    gt_chars = 0
    for (gb, gtext), preds in zip(gt_rows, per_gt):
        g = _norm_chars(gtext)
        gt_chars += len(g)
        preds.sort(key=lambda p: pred_bbox(p)[0])
        h = "".join(_norm_chars(p.get("text", "")) for p in preds)
        edits += levenshtein(h, g)
    return {
        "tp": tp,
        "n_pred": sum(pr_toks.values()),
        "n_gt": sum(gt_toks.values()),
        "edits": edits,
        "gt_chars": gt_chars,
    }


def prf(tp, n_pred, n_gt):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gt if n_gt else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def summarize(scores):
    """Micro-average a list of score_image dicts."""
    tot = {k: sum(s[k] for s in scores) for k in ("tp", "n_pred", "n_gt", "edits", "gt_chars")}
    p, r, f = prf(tot["tp"], tot["n_pred"], tot["n_gt"])
    tot.update(precision=p, recall=r, f1=f, cer=(tot["edits"] / tot["gt_chars"] if tot["gt_chars"] else 0.0))
    return tot


def score_file(gt_dir, jsonl_path, images=None):
    """Return ([(image_name, per-image dict incl. precision/recall/f1/cer)], overall dict)."""
    per = []
    for name, rec in load_predictions(jsonl_path, images):
        gp = find_gt(gt_dir, name)
        if gp is None:
            sys.exit(f"score: no ground truth {gt_path_for(gt_dir, name)} for image {name}")
        lines, _note = lines_in_gt_pixels(gt_dir, gp, rec)
        s = score_image(load_gt(gp), lines)
        p, r, f = prf(s["tp"], s["n_pred"], s["n_gt"])
        s.update(precision=p, recall=r, f1=f, cer=(s["edits"] / s["gt_chars"] if s["gt_chars"] else 0.0))
        per.append((name, s))
    return per, summarize([s for _, s in per])


def _read_images_arg(vals):
    if vals is None:
        return None
    if len(vals) == 1 and Path(vals[0]).suffix.lower() in (".txt", ".lst") and Path(vals[0]).is_file():
        return [l.strip() for l in Path(vals[0]).read_text().splitlines() if l.strip()]
    return vals


def main():
    ap = argparse.ArgumentParser(description="Word F1 and line-matched CER against SROIE box/*.csv")
    ap.add_argument("--gt", required=True, help="SROIE folder holding box/NNN.csv")
    ap.add_argument("pred", help="predictions JSONL")
    ap.add_argument("--images", nargs="+", help="image names in JSONL order (or one .txt file listing them)")
    ap.add_argument("--json", action="store_true", help="print the overall result as JSON")
    args = ap.parse_args()

    per, tot = score_file(args.gt, args.pred, _read_images_arg(args.images))
    if args.json:
        print(json.dumps({"images": {n: s for n, s in per}, "overall": tot}))
        return
    print(f"{'image':<12} {'P':>6} {'R':>6} {'F1':>6} {'CER':>6}")
    for name, s in per:
        print(f"{Path(name).name:<12} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} {s['cer']:6.3f}")
    print(
        f"{'overall':<12} {tot['precision']:6.3f} {tot['recall']:6.3f} {tot['f1']:6.3f} {tot['cer']:6.3f}"
        f"   (tp={tot['tp']} pred={tot['n_pred']} gt={tot['n_gt']} edits={tot['edits']} gt_chars={tot['gt_chars']})"
    )


if __name__ == "__main__":
    main()
