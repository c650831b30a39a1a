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

  report.py record-one --engine NAME --stdout FILE --time FILE --rc N --out JSONL
                       --process JSON IMG...
      The same for MODE=one: one engine process over all IMGs, whose stdout is
      one JSON line per image in argument order (an {"image", "error"} line for
      an image that failed). Lines are paired with IMGs by order; images after
      the last line (the process died) get an error record. The per-image
      records have wall_s/peak_kib null; the process's own numbers go to --process:
        {"engine", "mode": "one", "images", "outputs", "ok", "failed",
         "wall_s", "peak_kib", "rc"}

  report.py table --gt SROIE_DIR --results DIR [--meta meta.json]
      Read DIR/p2g.jsonl and DIR/rapidocr.jsonl, score both with score.py and
      print a markdown report (also written to DIR/report.md).

  report.py table-one --gt SROIE_DIR --results DIR [--meta meta.json]
      The report for MODE=one: also reads DIR/process-{p2g,rapidocr}.json and
      reports per-engine sum and median of the in-process times, the process
      wall time and peak RSS, and their p2g/RapidOCR ratios.

Ground truth: image STEM.ext is scored against SROIE_DIR/box/STEM.csv, or, if
there is none and STEM has an underscore, against the csv named by STEM minus
its last _suffix (024_600dpi.jpg -> box/024.csv); predicted boxes are scaled
back when the image's size differs from SROIE_DIR/img/STEM.*'s. Images with no
ground truth are timed but not scored (listed at the end of the report).
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


def fill_record(rec, out, err, wall_s, peak_kib, rc):
    """Fills `rec` from an engine's output object; returns the error (a missing `lines`
    list is one)."""
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
        rc=rc,
        lines=lines,
    )
    if err:
        rec["error"] = err
    return err


def cmd_record(a):
    wall_s, peak_kib = parse_time_file(a.time)
    rec = {"engine": a.engine, "image": a.image}
    err = None
    out = {}
    try:
        out = parse_engine_stdout(Path(a.stdout).read_text(encoding="utf-8", errors="replace"))
    except Exception as e:  # noqa: BLE001
        err = f"unparsable output: {e}"
    if out.get("error"):
        err = f"engine error: {out['error']}"
    if a.rc != 0:
        err = f"exit status {a.rc}" + (f"; {err}" if err else "")
    err = fill_record(rec, out, err, wall_s, peak_kib, a.rc)
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


def _json_lines(text):
    """JSON objects, one per line; returns (objects, number of other non-empty lines)."""
    objs, junk = [], 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            junk += 1
            continue
        if isinstance(obj, dict):
            objs.append(obj)
        else:
            junk += 1
    return objs, junk


def cmd_record_one(a):
    wall_s, peak_kib = parse_time_file(a.time)
    text = Path(a.stdout).read_text(encoding="utf-8", errors="replace")
    objs, junk = _json_lines(text)
    n = len(a.images)
    if junk:
        print(f"  warning: {a.engine}: {junk} non-JSON line(s) on stdout ignored", file=sys.stderr)
    if len(objs) > n:
        print(f"  warning: {a.engine}: {len(objs)} JSON lines for {n} images; the extra ones are ignored",
              file=sys.stderr)
    ok = 0
    with open(a.out, "a", encoding="utf-8") as f:
        for i, img in enumerate(a.images):
            rec = {"engine": a.engine, "image": img}
            err = None
            out = {}
            if i < len(objs):
                out = objs[i]
                if out.get("error"):
                    err = f"engine error: {out['error']}"
                elif "image" in out and str(out["image"]) != img:
                    err = f"output line {i + 1} is for {out['image']} (pairing by order broke)"
            else:
                err = (f"no output: the process exited with status {a.rc} "
                       f"after {len(objs)} of {n} image(s)")
            # A failed image keeps no lines: its output is not paired with it.
            if err is not None:
                out = {k: v for k, v in out.items() if k != "lines"}
                out["lines"] = []
            err = fill_record(rec, out, err, None, None, a.rc)
            if not err:
                ok += 1
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            el = rec["elapsed_ms"]
            print(
                f"  {a.engine:<9} {Path(img).name:<16} "
                f"elapsed={el if el is None else f'{el:.0f}ms'} lines={len(rec['lines'])} "
                f"{'ok' if not err else f'ERROR ({err})'}",
                file=sys.stderr,
            )
    proc = {
        "engine": a.engine,
        "mode": "one",
        "images": n,
        "outputs": len(objs),
        "ok": ok,
        "failed": n - ok,
        "wall_s": wall_s,
        "peak_kib": peak_kib,
        "rc": a.rc,
    }
    Path(a.process).write_text(json.dumps(proc, indent=1) + "\n", encoding="utf-8")
    print(
        f"  {a.engine:<9} process: {n} image(s), {ok} ok, wall={wall_s}s "
        f"peak={'?' if peak_kib is None else f'{peak_kib / 1024:.0f}MiB'} exit={a.rc}",
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
            gp = score.find_gt(gt_dir, name)
            if gp is None:  # timed, not scored
                r["score"] = None
                r["gt"] = None
            else:
                lines, note = score.lines_in_gt_pixels(gt_dir, gp, r)
                s = score.score_image(score.load_gt(gp), lines)
                s["f1"] = score.prf(s["tp"], s["n_pred"], s["n_gt"])[2]
                r["score"] = s
                r["gt"] = gp.stem
                r["gt_note"] = note
            r["peak_mib"] = r["peak_kib"] / 1024.0 if _num(r.get("peak_kib")) else None
            recs[name] = r
    return recs


def _load(a):
    """(results dir, {engine: {image name: record}}, sorted names, meta dict)."""
    res = Path(a.results)
    data = {}
    for e in ENGINES:
        p = res / f"{e}.jsonl"
        if not p.is_file():
            sys.exit(f"report: missing {p}")
        data[e] = load_results(p, a.gt)
    names = sorted(set(data["p2g"]) | set(data["rapidocr"]))
    meta = {}
    if a.meta and Path(a.meta).is_file():
        meta = json.loads(Path(a.meta).read_text())
    return res, data, names, meta


def _header(w, meta):
    w("# OCR benchmark: p2g vs RapidOCR")
    w("")
    if meta:
        for k, v in meta.items():
            w(f"- **{k}**: {v}")
        w("")


def _f1(r):
    return (r.get("score") or {}).get("f1")


def _paired(data, names):
    """Images on which both engines succeeded."""
    return [n for n in names
            if all(n in data[e] and not data[e][n].get("error") for e in ENGINES)]


def _accuracy(data, names):
    """Per engine: accuracy over the scored images (a failed run counts as empty output)."""
    acc = {}
    for e in ENGINES:
        recs = [data[e][n] for n in names if n in data[e]]
        scored = [r for r in recs if r.get("score")]
        acc[e] = {
            "f1": _stats(r["score"]["f1"] for r in scored),
            "overall": score.summarize([r["score"] for r in scored]),
            "errors": sum(1 for r in recs if r.get("error")),
            "n": len(recs),
            "scored": len(scored),
        }
    return acc


def _unscored(data, names):
    return [n for n in names if not any((data[e].get(n) or {}).get("score") for e in ENGINES)]


def _accuracy_table(w, acc, unscored):
    if not any(acc[e]["scored"] for e in ENGINES):
        w("No image has ground truth in SROIE_DIR/box: accuracy not scored.")
        w("")
        w("| images (failed) | p2g | RapidOCR |")
        w("|---|---:|---:|")
        w(f"| images (failed) | {acc['p2g']['n']} ({acc['p2g']['errors']}) | "
          f"{acc['rapidocr']['n']} ({acc['rapidocr']['errors']}) |")
        w("")
        return
    w("| accuracy (micro over all images) | p2g | RapidOCR |")
    w("|---|---:|---:|")
    po, ro = acc["p2g"]["overall"], acc["rapidocr"]["overall"]
    w(f"| word precision | {po['precision']:.3f} | {ro['precision']:.3f} |")
    w(f"| word recall | {po['recall']:.3f} | {ro['recall']:.3f} |")
    w(f"| **word F1** | **{po['f1']:.3f}** | **{ro['f1']:.3f}** |")
    w(f"| **CER** (line-matched, no spaces) | **{po['cer']:.3f}** | **{ro['cer']:.3f}** |")
    w(f"| tokens tp / pred / gt | {po['tp']} / {po['n_pred']} / {po['n_gt']} | {ro['tp']} / {ro['n_pred']} / {ro['n_gt']} |")
    w(f"| images (failed) | {acc['p2g']['n']} ({acc['p2g']['errors']}) | {acc['rapidocr']['n']} ({acc['rapidocr']['errors']}) |")
    if unscored:
        w(f"| images scored (with ground truth) | {acc['p2g']['scored']} | {acc['rapidocr']['scored']} |")
    w("")


def _notes(w, data, names, unscored):
    errs = [(e, n, data[e][n]["error"]) for e in ENGINES for n in names if n in data[e] and data[e][n].get("error")]
    if errs:
        w("### Failed runs (scored as empty output)")
        w("")
        for e, n, msg in errs:
            w(f"- {LABEL[e]} {n}: {msg}")
        w("")
    if unscored:
        w("### Not scored (no ground truth in SROIE_DIR/box for these stems)")
        w("")
        w(", ".join(unscored))
        w("")
    scaled = {}
    for e in ENGINES:
        for n in names:
            r = data[e].get(n) or {}
            if r.get("gt_note"):
                scaled.setdefault(n, []).append(f"{LABEL[e]} {r['gt_note']}")
    if scaled:
        w("### Ground truth of another size")
        w("")
        w("Predicted boxes scaled to the pixels of the image the ground truth was drawn on "
          "(SROIE_DIR/img/STEM.*) before scoring:")
        w("")
        for n, notes in scaled.items():
            r = data["p2g"].get(n) or data["rapidocr"].get(n) or {}
            w(f"- {n} (ground truth {r.get('gt')}): {'; '.join(notes)}")
        w("")


def _write(res, out):
    text = "\n".join(out)
    print(text)
    (res / "report.md").write_text(text + "\n", encoding="utf-8")


def cmd_table(a):
    res, data, names, meta = _load(a)
    out = []
    w = out.append
    _header(w, meta)
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
            f"{_fmt(_f1(p), 3)} | {_fmt(_f1(r), 3)} |"
        )
    w("")

    # summary
    # Time and memory: only images where BOTH engines succeeded (paired), so a
    # crash that exits early cannot look fast. Accuracy: every image, a failed
    # run counting as empty output.
    paired = _paired(data, names)
    acc = _accuracy(data, names)
    unscored = _unscored(data, names)
    summ = {}
    for e in ENGINES:
        ok = [data[e][n] for n in paired]
        summ[e] = {
            "elapsed_ms": _stats(r.get("elapsed_ms") for r in ok),
            "wall_s": _stats(r.get("wall_s") for r in ok),
            "peak_mib": _stats(r.get("peak_mib") for r in ok),
            "f1": acc[e]["f1"],
        }
    w("## Summary")
    w("")
    w(f"Time and memory rows: the {len(paired)} of {len(names)} images on which both engines succeeded. "
      "F1 row and accuracy table: all images (a failed run counts as empty output). "
      "Ratios < 1 mean p2g is faster / smaller / lower."
      + (f" The {len(unscored)} image(s) with no ground truth are timed but not scored." if unscored else ""))
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
    _accuracy_table(w, acc, unscored)
    _notes(w, data, names, unscored)
    _write(res, out)


def _load_process(res, engine):
    p = res / f"process-{engine}.json"
    if not p.is_file():
        sys.exit(f"report: missing {p} (written by `report.py record-one` in MODE=one)")
    return json.loads(p.read_text())


def cmd_table_one(a):
    res, data, names, meta = _load(a)
    proc = {e: _load_process(res, e) for e in ENGINES}
    out = []
    w = out.append
    _header(w, meta)
    w("One process per engine over all images (models loaded once), p2g's then RapidOCR's, "
      "never in parallel; the image and model files were read once beforehand so that both "
      "find them in the OS file cache. "
      "`ms` = in-process time per image reported by the engine (decode + OCR, after model load; "
      "no warm-up, so the first image also pays any lazy start-up work). "
      "`process wall` = the whole process (start-up, model load, every image); "
      "`peak RSS` = the process's max RSS over all its images (GNU time). "
      "F1 = word F1 vs SROIE line GT.")
    w("")
    w("| image | size (MP) | p2g ms | RapidOCR ms | p2g/RapidOCR | p2g F1 | RapidOCR F1 |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        p = data["p2g"].get(n, {})
        r = data["rapidocr"].get(n, {})
        flag = " ⚠" if p.get("error") or r.get("error") else ""
        wd = p.get("width") if _num(p.get("width")) else r.get("width")
        ht = p.get("height") if _num(p.get("height")) else r.get("height")
        size = f"{wd}x{ht} ({wd * ht / 1e6:.1f})" if _num(wd) and _num(ht) else "n/a"
        w(
            f"| {n}{flag} | {size} | {_fmt(p.get('elapsed_ms'))} | {_fmt(r.get('elapsed_ms'))} | "
            f"{_ratio(p.get('elapsed_ms'), r.get('elapsed_ms'))} | "
            f"{_fmt(_f1(p), 3)} | {_fmt(_f1(r), 3)} |"
        )
    w("")

    paired = _paired(data, names)
    acc = _accuracy(data, names)
    unscored = _unscored(data, names)
    summ = {}
    for e in ENGINES:
        ok = [data[e][n].get("elapsed_ms") for n in paired]
        ok = [v for v in ok if _num(v)]
        own = [v for v in (data[e][n].get("elapsed_ms") for n in names
                           if n in data[e] and not data[e][n].get("error")) if _num(v)]
        wall = proc[e].get("wall_s")
        peak = proc[e].get("peak_kib")
        summ[e] = {
            "sum_ms": sum(ok) if ok else None,
            "median_ms": statistics.median(ok) if ok else None,
            "wall_s": wall,
            "overhead_s": wall - sum(own) / 1000.0 if _num(wall) and own else None,
            "peak_mib": peak / 1024.0 if _num(peak) else None,
            "f1": acc[e]["f1"][0],
        }
    w("## Summary")
    w("")
    pp, pr = proc["p2g"], proc["rapidocr"]
    w(f"In-process time rows: the {len(paired)} of {len(names)} images on which both engines succeeded. "
      f"Process rows: the whole process (p2g: {pp.get('ok')} of {pp.get('images')} images ok, exit {pp.get('rc')}; "
      f"RapidOCR: {pr.get('ok')} of {pr.get('images')} ok, exit {pr.get('rc')}). "
      "F1 row and accuracy table: all images (a failed run counts as empty output)"
      + (f"; the {len(unscored)} image(s) with no ground truth are timed but not scored" if unscored else "")
      + ". Ratios < 1 mean p2g is faster / smaller / lower.")
    w("")
    w("| metric | p2g | RapidOCR | p2g/RapidOCR |")
    w("|---|---:|---:|---:|")
    for key, label, nd in (
        ("sum_ms", "in-process OCR time, sum over images (ms)", 0),
        ("median_ms", "in-process OCR time, median per image (ms)", 0),
        ("wall_s", "process wall time, total (s)", 2),
        ("overhead_s", "process wall − its own Σ OCR time (s): start-up, model load, the rest", 2),
        ("peak_mib", "process peak RSS (MiB)", 0),
        ("f1", "per-image word F1 (median)", 3),
    ):
        pv, rv = summ["p2g"][key], summ["rapidocr"][key]
        w(f"| {label} | {_fmt(pv, nd)} | {_fmt(rv, nd)} | {_ratio(pv, rv)} |")
    w("")
    _accuracy_table(w, acc, unscored)
    _notes(w, data, names, unscored)
    _write(res, out)


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
    o = sub.add_parser("record-one")
    o.add_argument("--engine", required=True, choices=ENGINES)
    o.add_argument("--stdout", required=True)
    o.add_argument("--time", required=True)
    o.add_argument("--rc", type=int, required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--process", required=True, help="where to write the process's wall time and peak RSS (JSON)")
    o.add_argument("images", nargs="+", metavar="IMG", help="the images, in the order given to the engine")
    for name in ("table", "table-one"):
        t = sub.add_parser(name)
        t.add_argument("--gt", required=True)
        t.add_argument("--results", required=True)
        t.add_argument("--meta")
    a = ap.parse_args()
    {"record": cmd_record, "record-one": cmd_record_one,
     "table": cmd_table, "table-one": cmd_table_one}[a.cmd](a)


if __name__ == "__main__":
    main()
