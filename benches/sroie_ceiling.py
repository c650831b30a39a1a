#!/usr/bin/env python3
"""How many SROIE key fields an answer copied from the evidence could possibly get right.

`p2g eval sroie` scores exact match after normalising case, whitespace and punctuation, and
p2g's answers are copied from the OCR lines. A field is reachable only if its normalised key
is a contiguous part of the normalised OCR text (lines joined in reading order). This counts,
per field, the receipts where it is, for p2g's OCR and for the dataset's own transcripts.

Usage:
  p2g ocr --json ../shared/eval/sroie-dev/img/*.jpg > /tmp/ocr40.jsonl
  python3 benches/sroie_ceiling.py ../shared/eval/sroie-dev /tmp/ocr40.jsonl
"""
import json
import os
import sys

FIELDS = ["company", "date", "address", "total"]


def norm(s):
    return "".join(c.upper() for c in s if c.isalnum())


def main(root, ocr_jsonl):
    imgs = sorted(f for f in os.listdir(os.path.join(root, "img")) if f.endswith(".jpg"))
    ocr = [json.loads(l) for l in open(ocr_jsonl)]
    if len(ocr) != len(imgs):
        sys.exit(f"{ocr_jsonl} has {len(ocr)} results for {len(imgs)} images")
    hit = {"ocr": dict.fromkeys(FIELDS, 0), "transcript": dict.fromkeys(FIELDS, 0)}
    for img, o in zip(imgs, ocr):
        stem = img[:-4]
        key = json.load(open(os.path.join(root, "key", stem + ".json")))
        rows = open(os.path.join(root, "box", stem + ".csv"), errors="ignore").read().splitlines()
        gt = [r.split(",", 8)[8] for r in rows if r.count(",") >= 8]
        text = {"ocr": norm(" ".join(l["text"] for l in o["lines"])), "transcript": norm(" ".join(gt))}
        for src in hit:
            for f in FIELDS:
                k = norm(key.get(f, ""))
                hit[src][f] += bool(k) and k in text[src]
    n = len(imgs)
    for src, h in hit.items():
        per = {f: round(h[f] / n, 3) for f in FIELDS}
        per["overall"] = round(sum(h.values()) / (n * len(FIELDS)), 3)
        print(json.dumps({"source": src, "receipts": n, "ceiling": per}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
