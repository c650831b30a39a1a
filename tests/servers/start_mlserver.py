#!/usr/bin/env python3
"""Serves a folder of .onnx files over KServe V2 (HTTP/JSON) with Seldon MLServer, on loopback.

Run it with the python that setup_mlserver.sh prints:
    "$py" tests/servers/start_mlserver.py --models ~/.cache/p2g/models/ocr --port 18080
Each model is named after its file stem (ppocrv5_det.onnx -> ppocrv5_det) unless --names
renames it (det=ppocrv5_det.onnx,...). The script writes an MLServer repository, then execs
`mlserver start` in its own process, so killing this pid stops the server. Nothing is fetched
from the network. Ready when GET /v2/health/ready answers 200.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

here = Path(__file__).resolve().parent

ap = argparse.ArgumentParser()
ap.add_argument("--models", required=True, help="folder holding the .onnx files")
ap.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
ap.add_argument("--names", default="", help="name=file.onnx,... (default: every file, by stem)")
ap.add_argument("--grpc-port", type=int, default=0, help="MLServer always opens gRPC; 0 = any free port")
ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per model")
ap.add_argument("--workdir", help="where to write the repository (default: a new temp dir)")
args = ap.parse_args()

models_dir = Path(args.models).expanduser().resolve()
if args.names:
    models = dict(pair.split("=", 1) for pair in args.names.split(","))
else:
    models = {p.stem: p.name for p in sorted(models_dir.glob("*.onnx"))}
if not models:
    sys.exit(f"start_mlserver: no .onnx files in {models_dir}")

repo = Path(args.workdir or tempfile.mkdtemp(prefix="p2g-mlserver-"))
repo.mkdir(parents=True, exist_ok=True)
settings = {
    "host": "127.0.0.1",
    "http_port": args.port,
    "grpc_port": args.grpc_port,
    # No metrics server (it would need a third port); its scratch dir still defaults to cwd.
    "metrics_endpoint": None,
    "metrics_dir": str(repo / ".metrics"),
    "environments_dir": str(repo / ".envs"),
    # 0 = run the models in this process: no worker pool to start, one pid to kill.
    "parallel_workers": 0,
    "load_models_at_startup": True,
    "debug": False,
}
(repo / "settings.json").write_text(json.dumps(settings, indent=2))
for name, file in models.items():
    onnx = (models_dir / file).resolve()
    if not onnx.is_file():
        sys.exit(f"start_mlserver: {onnx} not found")
    (repo / name).mkdir(exist_ok=True)
    (repo / name / "model-settings.json").write_text(json.dumps({
        "name": name,
        "implementation": "mlserver_onnx.runtime.OnnxRuntime",
        "parameters": {"uri": str(onnx), "extra": {"intra_op_threads": args.threads}},
    }, indent=2))

# The runtime is imported as mlserver_onnx.runtime, from the folder holding this script.
env = dict(os.environ)
env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
print(f"start_mlserver: repository {repo}, models {sorted(models)}, http://127.0.0.1:{args.port}",
      file=sys.stderr, flush=True)
mlserver = Path(sys.executable).parent / "mlserver"
os.execve(str(mlserver), [str(mlserver), "start", str(repo)], env)
