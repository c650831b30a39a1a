#!/usr/bin/env python3
"""Collect and report the p2g vs RapidOCR OCR benchmark (stdlib only).

Two sub-commands, both driven by benches/ocr_vs_rapidocr.sh:

  report.py record --engine NAME --image IMG --stdout FILE --time FILE --rc N --out JSONL
      Turn one engine run (its JSON stdout + the `/usr/bin/time -f '%e %M'`
      output) into one JSONL record appended to --out:
        {"engine", "image", "width", "height", "elapsed_ms", "lines",
         "wall_s", "peak_kib", "rc", "error"?}
      A failed run (non-zero rc, unparsable output) still gets a record with
      empty "lines" and an "error", so images stay aligned.

  report.py table --gt SROIE_DIR --results DIR [--meta meta.json]
      Read DIR/p2g.jsonl and DIR/rapidocr.jsonl, score both with score.py and
      print a markdown report (also written to DIR/report.md).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import score  # noqa: E402

ENGINES = ("p2g", "rapidocr")
LABEL = {"p2g": "p2g", "rapidocr": "RapidOCR"}

# ----------------------------------------------------------------------- record


def parse_time_file(path):
    """GNU time -f '%e %M' output: last non-empty line is 'WALL_S MAXRSS_KIB'.
    (On failure GNU time prepends 'Command exited with non-zero status N'.)"""
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()]
        wall, rss = lines[-1].split()[:2]
        return float(wall), int(rss)
    except Exception:
        return None, None


def parse_engine_stdout(text):
    """The engine prints one JSON object (possibly pretty-printed, possibly
    preceded by log lines). Take the whole text if it parses, else the last
    line that parses as a JSON object."""
    text = text.strip()
    if not text:
        raise ValueError("empty output")
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    if start >= 0:
        try:
            obj = json.loads(text[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object in output")


def cmd_record(a):
    wall_s, peak_kib = parse_time_file(a.time)
    rec = {"engine": a.engine, "image": a.image}
    err = None
    out = {}
    try:
        out = parse_engine_stdout(Path(a.stdout).read_text(encoding="utf-8", errors="replace"))
    except Exception as e:  # noqa: BLE001
        err = f"unparsable output: {e}"
    if a.rc != 0:
        err = f"exit status {a.rc}" + (f"; {err}" if err else "")
    lines = out.get("lines")
    if not isinstance(lines, list):
        lines = []
        if err is None:
            err = "output has no 'lines' list"
    rec.update(
        width=out.get("width"),
        height=out.get("height"),
        elapsed_ms=out.get("elapsed_ms"),
        wall_s=wall_s,
        peak_kib=peak_kib,
        rc=a.rc,
        lines=lines,
    )
    if err:
        rec["error"] = err
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    status = "ok" if not err else f"ERROR ({err})"
    el = rec["elapsed_ms"]
    print(
        f"  {a.engine:<9} {Path(a.image).name:<10} "
        f"elapsed={el if el is None else f'{el:.0f}ms'} wall={wall_s}s "
        f"peak={'?' if peak_kib is None else f'{peak_kib / 1024:.0f}MiB'} lines={len(lines)} {status}",
        file=sys.stderr,
    )


# ------------------------------------------------------------------------ table


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats(vals):
    vals = [v for v in vals if _num(v)]
    if not vals:
        return None, None
    return statistics.median(vals), statistics.fmean(vals)


def _fmt(v, nd=0):
    if not _num(v):
        return "n/a"
    return f"{v:.{nd}f}"


def _ratio(a, b):
    if not _num(a) or not _num(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def load_results(path, gt_dir):
    recs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            name = Path(r["image"]).name
            gp = score.gt_path_for(gt_dir, name)
            s = score.score_image(score.load_gt(gp), r.get("lines") or [])
            s["f1"] = score.prf(s["tp"], s["n_pred"], s["n_gt"])[2]
            r["score"] = s
            r["peak_mib"] = r["peak_kib"] / 1024.0 if _num(r.get("peak_kib")) else None
            recs[name] = r
    return recs


def cmd_table(a):
    res = Path(a.results)
    data = {}
    for e in ENGINES:
        p = res / f"{e}.jsonl"
        if not p.is_file():
            sys.exit(f"report: missing {p}")
        data[e] = load_results(p, a.gt)
    names = sorted(set(data["p2g"]) | set(data["rapidocr"]))

    out = []
    w = out.append
    meta = {}
    if a.meta and Path(a.meta).is_file():
        meta = json.loads(Path(a.meta).read_text())
    w("# OCR benchmark: p2g vs RapidOCR")
    w("")
    if meta:
        for k, v in meta.items():
            w(f"- **{k}**: {v}")
        w("")
    w("Times are per image, one process per image per engine, run sequentially. "
      "`ms` = in-process OCR time reported by the engine (after model load, no warm-up); "
      "`wall s` = whole-process wall time (includes interpreter/binary start-up and model load); "
      "`peak MiB` = process max RSS from GNU time. F1 = word F1 vs SROIE line GT.")
    w("")
    w("| image | p2g ms | RapidOCR ms | p2g peak MiB | RapidOCR peak MiB | p2g F1 | RapidOCR F1 |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        p = data["p2g"].get(n, {})
        r = data["rapidocr"].get(n, {})
        flag = ""
        if p.get("error") or r.get("error"):
            flag = " ⚠"
        w(
            f"| {n}{flag} | {_fmt(p.get('elapsed_ms'))} | {_fmt(r.get('elapsed_ms'))} | "
            f"{_fmt(p.get('peak_mib'))} | {_fmt(r.get('peak_mib'))} | "
            f"{_fmt(p.get('score', {}).get('f1'), 3)} | {_fmt(r.get('score', {}).get('f1'), 3)} |"
        )
    w("")

    # summary
    # Time and memory: only images where BOTH engines succeeded (paired), so a
    # crash that exits early cannot look fast. Accuracy: every image, a failed
    # run counting as empty output.
    paired = [n for n in names
              if all(n in data[e] and not data[e][n].get("error") for e in ENGINES)]
    summ = {}
    for e in ENGINES:
        recs = [data[e][n] for n in names if n in data[e]]
        ok = [data[e][n] for n in paired]
        summ[e] = {
            "elapsed_ms": _stats(r.get("elapsed_ms") for r in ok),
            "wall_s": _stats(r.get("wall_s") for r in ok),
            "peak_mib": _stats(r.get("peak_mib") for r in ok),
            "f1": _stats(r["score"]["f1"] for r in recs),
            "overall": score.summarize([r["score"] for r in recs]),
            "errors": sum(1 for r in recs if r.get("error")),
            "n": len(recs),
        }
    w("## Summary")
    w("")
    w(f"Time and memory rows: the {len(paired)} of {len(names)} images on which both engines succeeded. "
      "F1 row and accuracy table: all images (a failed run counts as empty output). "
      "Ratios < 1 mean p2g is faster / smaller / lower.")
    w("")
    w("| metric | p2g median | p2g mean | RapidOCR median | RapidOCR mean | p2g/RapidOCR (median) | p2g/RapidOCR (mean) |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for key, label, nd in (
        ("elapsed_ms", "in-process OCR time (ms)", 0),
        ("wall_s", "process wall time (s)", 2),
        ("peak_mib", "peak RSS (MiB)", 0),
        ("f1", "per-image word F1", 3),
    ):
        pm, pa = summ["p2g"][key]
        rm, ra = summ["rapidocr"][key]
        w(f"| {label} | {_fmt(pm, nd)} | {_fmt(pa, nd)} | {_fmt(rm, nd)} | {_fmt(ra, nd)} | {_ratio(pm, rm)} | {_ratio(pa, ra)} |")
    w("")
    w("| accuracy (micro over all images) | p2g | RapidOCR |")
    w("|---|---:|---:|")
    po, ro = summ["p2g"]["overall"], summ["rapidocr"]["overall"]
    w(f"| word precision | {po['precision']:.3f} | {ro['precision']:.3f} |")
    w(f"| word recall | {po['recall']:.3f} | {ro['recall']:.3f} |")
    w(f"| **word F1** | **{po['f1']:.3f}** | **{ro['f1']:.3f}** |")
    w(f"| **CER** (line-matched, no spaces) | **{po['cer']:.3f}** | **{ro['cer']:.3f}** |")
    w(f"| tokens tp / pred / gt | {po['tp']} / {po['n_pred']} / {po['n_gt']} | {ro['tp']} / {ro['n_pred']} / {ro['n_gt']} |")
    w(f"| images (failed) | {summ['p2g']['n']} ({summ['p2g']['errors']}) | {summ['rapidocr']['n']} ({summ['rapidocr']['errors']}) |")
    w("")
    errs = [(e, n, data[e][n]["error"]) for e in ENGINES for n in names if n in data[e] and data[e][n].get("error")]
    if errs:
        w("### Failed runs (scored as empty output)")
        w("")
        for e, n, msg in errs:
            w(f"- {LABEL[e]} {n}: {msg}")
        w("")
    text = "\n".join(out)
    print(text)
    (res / "report.md").write_text(text + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--engine", required=True, choices=ENGINES)
    r.add_argument("--image", required=True)
    r.add_argument("--stdout", required=True)
    r.add_argument("--time", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("--gt", required=True)
    t.add_argument("--results", required=True)
    t.add_argument("--meta")
    a = ap.parse_args()
    (cmd_record if a.cmd == "record" else cmd_table)(a)


if __name__ == "__main__":
    main()
