#!/usr/bin/env python3
"""Load test of a running `p2g serve`, stage by stage at rising concurrency (Python 3 stdlib).

    p2g serve &                                   # or: p2g serve --token s3cret ...
    python3 benches/serve_load.py --url http://127.0.0.1:8080 [--token s3cret] \\
        [--kinds ocr,ask] [--stages 1,2,4,8,16] [--seconds 30 | --requests 40] \\
        [--images a.png b.jpg] [--follow-ups] [--json out.json]

For each kind (OCR requests, then questions) and each stage of N clients, every client sends
requests back to back for `--seconds` (or until the stage has sent `--requests`), rotating
through the images. A 429 is counted and not retried (its Retry-After is recorded). Reported
per stage: requests, ok, 429 share, other HTTP errors, requests with no HTTP answer
(connection error, timeout), throughput (ok/s over the stage's wall time), p50/p99 latency of
the ok responses.

It doubles as a check that nothing is lost or mixed up between concurrent requests:
- every OCR response's width/height are those of the image sent (learnt from the image's
  header, and confirmed by one OCR request per image before the stages, sent alone);
- every question's response carries a `session` never seen before; the session's trace
  (GET /v1/sessions/{id}/trace) names the file that was uploaded (each upload gets a unique
  file name); with --follow-ups, one follow-up per answered question (JSON body
  {"session": S, "question": ...}) must answer for session S.
The server's own counters (GET /metrics, p2g_requests_total) are compared with the client's
after each stage (a warning only: another client may be using the server).

Exit status: 0 when all is well; 1 when any response was mixed up or any request got no HTTP
answer; 2 when the server cannot be reached or the arguments are wrong. With --strict, 5xx
answers fail the run too.
"""

import argparse
import concurrent.futures
import http.client
import json
import mimetypes
import os
import re
import struct
import sys
import threading
import time
import urllib.parse
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IMAGES = [
    os.path.join(ROOT, "tests", "fixtures", "header.png"),
    os.path.join(ROOT, "tests", "fixtures", "receipt.jpg"),
]
DEFAULT_QUESTION = "What is the name of the shop or company at the top?"
DEFAULT_FOLLOW_UP = "What is the total amount or the last number written on it?"
MAX_DETAILS = 50


# ----------------------------------------------------------------------------------------------
# Image sizes from headers (what the server should report, EXIF orientation applied).


def _jpeg_orientation(app1):
    """EXIF orientation (1-8) from an APP1 segment's payload, or None."""
    if not app1.startswith(b"Exif\x00\x00"):
        return None
    t = app1[6:]
    if len(t) < 8:
        return None
    end = {b"II": "<", b"MM": ">"}.get(t[:2])
    if end is None:
        return None
    try:
        (ifd,) = struct.unpack(end + "I", t[4:8])
        (count,) = struct.unpack(end + "H", t[ifd : ifd + 2])
        for i in range(count):
            e = ifd + 2 + 12 * i
            tag, typ, _n = struct.unpack(end + "HHI", t[e : e + 8])
            if tag == 0x0112 and typ == 3:
                (v,) = struct.unpack(end + "H", t[e + 8 : e + 10])
                return v
    except struct.error:
        return None
    return None


def image_size(data):
    """(width, height) as p2g decodes the image (upright), or None if unknown."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return (abs(w), abs(h))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = data[12:16]
            if kind == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return (w & 0x3FFF, h & 0x3FFF)
            if kind == b"VP8L":
                b = int.from_bytes(data[21:25], "little")
                return ((b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1)
            if kind == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return (w, h)
            return None
        if data[:2] == b"\xff\xd8":
            i, orientation, size = 2, None, None
            while i + 4 <= len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    i += 1 if marker == 0xFF else 2
                    continue
                if marker in (0xD9, 0xDA):
                    break
                (length,) = struct.unpack(">H", data[i + 2 : i + 4])
                seg = data[i + 4 : i + 2 + length]
                if marker == 0xE1 and orientation is None:
                    orientation = _jpeg_orientation(seg)
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and size is None:
                    h, w = struct.unpack(">HH", seg[1:5])
                    size = (w, h)
                i += 2 + length
            if size and orientation in (5, 6, 7, 8):
                size = (size[1], size[0])
            return size
    except (struct.error, IndexError):
        return None
    return None


# ----------------------------------------------------------------------------------------------
# HTTP: one fresh connection per request, so a connection error is always a real one.


class NoAnswer(Exception):
    """The request got no HTTP response (connection refused/reset, timeout)."""


class Client:
    def __init__(self, url, token, timeout):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method, path, body=None, headers=None, auth=True):
        """(status, headers (lower-case names), body bytes, seconds); raises NoAnswer."""
        h = {"Connection": "close", "User-Agent": "p2g-serve-load/1"}
        if auth and self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        t0 = time.monotonic()
        try:
            conn.request(method, self.prefix + path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
            took = time.monotonic() - t0
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, took
        except (OSError, http.client.HTTPException) as e:
            raise NoAnswer(f"{method} {path}: {type(e).__name__}: {e}") from e
        finally:
            conn.close()

    def multipart(self, path, fields, file_field, file_name, file_bytes):
        boundary = "p2g-" + uuid.uuid4().hex
        ctype = mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        parts = []
        for k, v in fields.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode()
                + v.encode()
                + b"\r\n"
            )
        parts.append(
            (
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
                f'filename="{file_name}"\r\nContent-Type: {ctype}\r\n\r\n'
            ).encode()
            + file_bytes
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        body = b"".join(parts)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request("POST", path, body, headers)

    def post_json(self, path, obj):
        body = json.dumps(obj).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json"})


def parse_json(body):
    try:
        v = json.loads(body)
        return v if isinstance(v, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None


METRIC = re.compile(r'^p2g_requests_total\{endpoint="([^"]*)",status="(\d+)"\}\s+(\d+)')


def scrape(client):
    """{(endpoint, status): count} from /metrics, or None when it cannot be read."""
    try:
        status, _, body, _ = client.request("GET", "/metrics")
    except NoAnswer:
        return None
    if status != 200:
        return None
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        m = METRIC.match(line)
        if m:
            out[(m.group(1), int(m.group(2)))] = int(m.group(3))
    return out


def gauge(client, name):
    try:
        status, _, body, _ = client.request("GET", "/metrics")
    except NoAnswer:
        return None
    if status != 200:
        return None
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


# ----------------------------------------------------------------------------------------------
# Stages.


class Stats:
    """What one kind of request (ocr, ask, follow-up) saw in one stage."""

    def __init__(self, kind, clients):
        self.kind = kind
        self.clients = clients
        self.requests = 0
        self.ok = 0
        self.rejected = 0  # 429
        self.retry_after = []  # seconds, as given
        self.no_retry_after = 0  # 429s without the header
        self.errors = {}  # other HTTP statuses -> count
        self.no_answer = 0
        self.latencies = []  # seconds, ok responses
        self.mixups = 0
        self.unverified = 0  # ok, but a check could not run (session gone, trace refused)
        self.wall = 0.0

    def merge(self, o):
        self.requests += o.requests
        self.ok += o.ok
        self.rejected += o.rejected
        self.retry_after += o.retry_after
        self.no_retry_after += o.no_retry_after
        for k, v in o.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.no_answer += o.no_answer
        self.latencies += o.latencies
        self.mixups += o.mixups
        self.unverified += o.unverified

    def row(self):
        lat = sorted(self.latencies)
        return {
            "kind": self.kind,
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "rejected_429": self.rejected,
            "share_429": self.rejected / self.requests if self.requests else 0.0,
            "retry_after_s": [min(self.retry_after), max(self.retry_after)]
            if self.retry_after
            else None,
            "429_without_retry_after": self.no_retry_after,
            "other_errors": {str(k): v for k, v in sorted(self.errors.items())},
            "no_answer": self.no_answer,
            "wall_s": round(self.wall, 3),
            "ok_per_s": self.ok / self.wall if self.wall > 0 else 0.0,
            "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
            "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
            "mixed_up": self.mixups,
            "unverified": self.unverified,
        }


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, -(-p * len(sorted_values) // 100) - 1))
    return sorted_values[int(k)]


class Run:
    """State shared by every client of the whole run."""

    def __init__(self, args, client, images):
        self.args = args
        self.client = client
        self.images = images  # [(path, bytes, expected size or None)]
        self.lock = threading.Lock()
        self.sessions = set()
        self.mixup_details = []
        self.no_answer_details = []

    def mixup(self, stats, what):
        stats.mixups += 1
        with self.lock:
            if len(self.mixup_details) < MAX_DETAILS:
                self.mixup_details.append(what)

    def lost(self, stats, what):
        stats.no_answer += 1
        with self.lock:
            if len(self.no_answer_details) < MAX_DETAILS:
                self.no_answer_details.append(what)

    def count(self, stats, status, headers, took):
        """Counts a response; True when it is a 200."""
        stats.requests += 1
        if status == 200:
            stats.ok += 1
            stats.latencies.append(took)
            return True
        if status == 429:
            stats.rejected += 1
            ra = headers.get("retry-after")
            if ra is None:
                stats.no_retry_after += 1
            else:
                try:
                    stats.retry_after.append(float(ra))
                except ValueError:
                    stats.no_retry_after += 1
        else:
            stats.errors[status] = stats.errors.get(status, 0) + 1
        return False

    def upload_name(self, path):
        return f"{uuid.uuid4().hex}-{os.path.basename(path)}"

    def one_ocr(self, stats, image):
        path, data, size = image
        name = self.upload_name(path)
        try:
            status, headers, body, took = self.client.multipart("/v1/ocr", {}, "image", name, data)
        except NoAnswer as e:
            stats.requests += 1
            self.lost(stats, f"ocr {name}: {e}")
            return
        if not self.count(stats, status, headers, took):
            return
        o = parse_json(body)
        got = (o.get("width"), o.get("height")) if o else None
        if size is None:
            stats.unverified += 1
        elif got != tuple(size):
            self.mixup(stats, f"ocr {name}: sent a {size[0]}x{size[1]} image, got {got}")

    def one_ask(self, stats, follow, image):
        path, data, _ = image
        name = self.upload_name(path)
        try:
            status, headers, body, took = self.client.multipart(
                "/v1/ask", {"question": self.args.question}, "image", name, data
            )
        except NoAnswer as e:
            stats.requests += 1
            self.lost(stats, f"ask {name}: {e}")
            return
        if not self.count(stats, status, headers, took):
            return
        o = parse_json(body)
        session = o.get("session") if o else None
        if not isinstance(session, str) or not session:
            self.mixup(stats, f"ask {name}: no session in the answer: {body[:200]!r}")
            return
        with self.lock:
            seen = session in self.sessions
            self.sessions.add(session)
        if seen:
            self.mixup(stats, f"ask {name}: session {session} was already given to another question")
            return
        if self.args.check_traces:
            self.check_trace(stats, session, name)
        if self.args.follow_ups:
            self.one_follow_up(follow, session, name)

    def check_trace(self, stats, session, name):
        try:
            status, _, body, _ = self.client.request(
                "GET", f"/v1/sessions/{urllib.parse.quote(session, safe='')}/trace"
            )
        except NoAnswer as e:
            self.lost(stats, f"trace {session}: {e}")
            return
        if status != 200:
            stats.unverified += 1  # expired or evicted (404), busy (409)
            return
        t = parse_json(body)
        image = t.get("image") if t else None
        if not t or t.get("session") != session or not isinstance(image, str) or not image.endswith(name):
            got = (t.get("session"), image) if t else body[:200]
            self.mixup(stats, f"trace of {session}: expected the upload {name}, got {got!r}")

    def one_follow_up(self, follow, session, name):
        try:
            status, headers, body, took = self.client.post_json(
                "/v1/ask", {"session": session, "question": self.args.follow_up_question}
            )
        except NoAnswer as e:
            follow.requests += 1
            self.lost(follow, f"follow-up {session}: {e}")
            return
        if status == 404:
            # The session was evicted (more sessions than --max-sessions): not a mix-up.
            follow.requests += 1
            follow.unverified += 1
            follow.errors[404] = follow.errors.get(404, 0) + 1
            return
        if not self.count(follow, status, headers, took):
            return
        o = parse_json(body)
        got = o.get("session") if o else None
        if got != session:
            self.mixup(follow, f"follow-up on {session} ({name}) answered for session {got!r}")


def run_stage(run, kind, clients):
    """Runs one stage; returns the Stats of each kind it produced."""
    args = run.args
    deadline = time.monotonic() + args.seconds if args.requests is None else None
    budget = [args.requests if args.requests is not None else 0]
    budget_lock = threading.Lock()
    start = threading.Barrier(clients)

    def take():
        if deadline is not None:
            return time.monotonic() < deadline
        with budget_lock:
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            return True

    def client_loop(i):
        main = Stats(kind, clients)
        follow = Stats("follow-up", clients)
        start.wait()
        n = i
        while take():
            image = run.images[n % len(run.images)]
            n += 1
            if kind == "ocr":
                run.one_ocr(main, image)
            else:
                run.one_ask(main, follow, image)
        return main, follow

    main = Stats(kind, clients)
    follow = Stats("follow-up", clients)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        for m, f in pool.map(client_loop, range(clients)):
            main.merge(m)
            follow.merge(f)
    main.wall = follow.wall = time.monotonic() - t0
    return [main] + ([follow] if args.follow_ups and kind == "ask" else [])


def wait_idle(client, limit=60.0):
    """Waits until the server has nothing in flight or queued (best effort)."""
    t_end = time.monotonic() + limit
    while time.monotonic() < t_end:
        busy = [gauge(client, "p2g_in_flight"), gauge(client, "p2g_queue_depth")]
        if any(b is None for b in busy) or sum(busy) == 0:
            return
        time.sleep(0.25)


ENDPOINT = {"ocr": "ocr", "ask": "ask", "follow-up": "ask"}


def compare_metrics(before, after, stats_list):
    """Warnings where the server's counters moved differently from what this client saw."""
    if before is None or after is None:
        return ["/metrics could not be read: server-side counts not compared"]
    want = {}
    for s in stats_list:
        ep = ENDPOINT[s.kind]
        want[(ep, 200)] = want.get((ep, 200), 0) + s.ok
        want[(ep, 429)] = want.get((ep, 429), 0) + s.rejected
    out = []
    for key, n in sorted(want.items()):
        got = after.get(key, 0) - before.get(key, 0)
        if got != n:
            out.append(
                f"server counted {got} {key[0]} responses with status {key[1]}, this client saw {n}"
                " (another client on the server, or responses lost on the way)"
            )
    return out


# ----------------------------------------------------------------------------------------------


def fmt_ms(v):
    return "-" if v is None else f"{v:.0f}"


def table(rows):
    head = (
        "| kind | clients | requests | ok | 429 | other errors | no answer | ok/s | p50 ms | p99 ms "
        "| mixed up |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["other_errors"].items()) or "0"
        lines.append(
            f"| {r['kind']} | {r['clients']} | {r['requests']} | {r['ok']} "
            f"| {100 * r['share_429']:.1f}% | {errors} | {r['no_answer']} | {r['ok_per_s']:.2f} "
            f"| {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {r['mixed_up']} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 ok; 1 a response mixed up or a request unanswered; 2 setup error.",
    )
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the server (default %(default)s)")
    ap.add_argument("--token", default=os.environ.get("P2G_TOKEN"), help="bearer token (default $P2G_TOKEN)")
    ap.add_argument("--images", nargs="+", default=DEFAULT_IMAGES, metavar="FILE",
                    help="images to send, in rotation (default tests/fixtures/header.png, receipt.jpg)")
    ap.add_argument("--kinds", default="ocr,ask", help="comma-separated: ocr, ask (default %(default)s)")
    ap.add_argument("--stages", default="1,2,4,8,16", help="client counts, one stage each (default %(default)s)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float, default=30.0, help="length of each stage (default %(default)s)")
    g.add_argument("--requests", type=int, default=None, help="requests per stage instead of --seconds")
    ap.add_argument("--question", default=DEFAULT_QUESTION)
    ap.add_argument("--follow-ups", action="store_true", help="one follow-up per answered question")
    ap.add_argument("--follow-up-question", default=DEFAULT_FOLLOW_UP)
    ap.add_argument("--no-check-traces", dest="check_traces", action="store_false",
                    help="do not fetch each new session's trace to check its image")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds a request may take before it counts as unanswered (default %(default)s)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between stages (default %(default)s)")
    ap.add_argument("--strict", action="store_true", help="5xx answers fail the run too")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args()

    try:
        stages = [int(s) for s in args.stages.split(",") if s.strip()]
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    except ValueError:
        ap.error("--stages takes comma-separated integers")
    if not stages or any(s < 1 for s in stages):
        ap.error("--stages needs positive client counts")
    if not kinds or any(k not in ("ocr", "ask") for k in kinds):
        ap.error("--kinds takes ocr and/or ask")
    if args.requests is not None and args.requests < 1:
        ap.error("--requests must be at least 1")

    try:
        client = Client(args.url, args.token, args.timeout)
    except ValueError as e:
        ap.error(str(e))

    images = []
    for path in args.images:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            print(f"error: cannot read {path}: {e}", file=sys.stderr)
            return 2
        images.append([path, data, image_size(data)])

    # The server is there, and what it runs.
    try:
        status, _, body, _ = client.request("GET", "/healthz", auth=False)
    except NoAnswer as e:
        print(f"error: {args.url} does not answer: {e}", file=sys.stderr)
        return 2
    health = parse_json(body) or {}
    print(f"# {args.url}: healthz {status}, controller {health.get('controller')}, "
          f"agents {health.get('agents')}", file=sys.stderr)
    if status != 200:
        print(f"error: /healthz answered {status}: {body[:200]!r}", file=sys.stderr)
        return 2

    run = Run(args, client, images)

    # Each image's size as the server reports it for a request sent alone (nothing to mix up
    # with), checked against the header; this is the size later responses must carry.
    if "ocr" in kinds:
        for img in images:
            path, data, parsed = img
            try:
                status, _, body, _ = client.multipart("/v1/ocr", {}, "image", run.upload_name(path), data)
            except NoAnswer as e:
                print(f"error: the calibration OCR of {path} got no answer: {e}", file=sys.stderr)
                return 2
            o = parse_json(body) if status == 200 else None
            if status == 401:
                print("error: 401 unauthorized: pass --token (or set P2G_TOKEN)", file=sys.stderr)
                return 2
            if o is None:
                print(f"warning: the calibration OCR of {path} answered {status}; its size is taken "
                      f"from its header ({parsed})", file=sys.stderr)
                continue
            got = (o.get("width"), o.get("height"))
            if not all(isinstance(v, int) for v in got):
                print(f"warning: the calibration OCR of {path} gave no width/height; its size is "
                      f"taken from its header ({parsed})", file=sys.stderr)
                continue
            if parsed is not None and tuple(parsed) != got:
                print(f"warning: {path}: header says {parsed[0]}x{parsed[1]}, the server decodes "
                      f"{got[0]}x{got[1]}; using the server's", file=sys.stderr)
            img[2] = got
    for path, _, size in images:
        if size is None:
            print(f"warning: {path}: size unknown, OCR responses for it are not checked", file=sys.stderr)
    images = [tuple(i) for i in images]
    run.images = images

    rows, warnings = [], []
    for kind in kinds:
        for clients in stages:
            wait_idle(client)
            before = scrape(client)
            what = f"{args.requests} requests" if args.requests is not None else f"{args.seconds:g} s"
            print(f"# {kind}: {clients} clients, {what} ...", file=sys.stderr)
            stats = run_stage(run, kind, clients)
            after = scrape(client)
            for w in compare_metrics(before, after, stats):
                warnings.append(f"{kind} x{clients}: {w}")
            for s in stats:
                r = s.row()
                rows.append(r)
                print(f"#   {s.kind}: {r['ok']}/{r['requests']} ok, {r['rejected_429']} x 429, "
                      f"{r['no_answer']} unanswered, {r['mixed_up']} mixed up, "
                      f"{r['ok_per_s']:.2f} ok/s", file=sys.stderr)
            time.sleep(args.pause)

    print(table(rows))
    mixed = sum(r["mixed_up"] for r in rows)
    lost = sum(r["no_answer"] for r in rows)
    server_errors = sum(v for r in rows for k, v in r["other_errors"].items() if k.startswith("5"))
    no_ra = sum(r["429_without_retry_after"] for r in rows)
    unverified = sum(r["unverified"] for r in rows)
    print()
    print(f"sessions: {len(run.sessions)} distinct; mixed up: {mixed}; unanswered: {lost}; "
          f"5xx: {server_errors}; 429 without Retry-After: {no_ra}; not verifiable: {unverified}")
    for w in warnings:
        print(f"warning: {w}")
    for d in run.mixup_details:
        print(f"MIXED UP: {d}")
    for d in run.no_answer_details:
        print(f"NO ANSWER: {d}")

    failed = mixed > 0 or lost > 0 or (args.strict and server_errors > 0)
    if args.json:
        out = {
            "url": args.url,
            "kinds": kinds,
            "stages": stages,
            "seconds": None if args.requests is not None else args.seconds,
            "requests_per_stage": args.requests,
            "follow_ups": args.follow_ups,
            "images": [{"path": p, "bytes": len(d), "size": s} for p, d, s in images],
            "health": health,
            "rows": rows,
            "sessions": len(run.sessions),
            "mixed_up": run.mixup_details,
            "no_answer": run.no_answer_details,
            "warnings": warnings,
            "passed": not failed,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
