"""Triton's model_analyzer profiles Surge's demo ``mlp`` in remote launch mode, with no adapter and no config.pbtxt.

model_analyzer reads Surge's ModelConfig, loads its variants through RepositoryModelLoad with config JSON
(instance counts, max batch sizes, dynamic batching), measures each with perf_analyzer and Surge's server-side
statistics, and writes its reports. This script starts ``surge serve`` in explicit mode on the demo repository,
runs ``model-analyzer profile`` against it with a small search, and checks that the results list the variants it
measured and that the summary report exists.

Setup (model_analyzer in a venv of its own, perf_analyzer from bench/perf_analyzer/setup.sh)::

    python3 -m venv .cache/model_analyzer/venv
    .cache/model_analyzer/venv/bin/pip install triton-model-analyzer==1.58.0
    bash bench/perf_analyzer/setup.sh

Run: ``.venv/bin/python -m bench.scenarios.model_analyzer [--keep DIR] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from surge.server.demo import write_demo_repository

from .servers import free_port, running

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_ANALYZER = REPO_ROOT / ".cache" / "model_analyzer" / "venv" / "bin" / "model-analyzer"
PERF_ANALYZER = REPO_ROOT / "bench" / "perf_analyzer" / "run.sh"
#: A search small enough for a shared 2-core machine: instance counts 1-2, batch sizes 1-4, concurrency 1-2.
CONFIG = """\
profile_models:
  mlp:
    cpu_only: true
run_config_search_max_concurrency: 2
run_config_search_max_instance_count: 2
run_config_search_max_model_batch_size: 4
perf_analyzer_max_auto_adjusts: 2
"""
# A variant perf_analyzer cannot stabilise within those adjustments on a busy machine is reported by
# model_analyzer ("no valid requests recorded") and left out of the results; the check needs at least one.


def profile(work: Path) -> dict:
    """Run the profile; returns the measured variants and where the reports are. Raises RuntimeError on failure."""
    if not MODEL_ANALYZER.is_file():
        raise RuntimeError(f"model_analyzer is not installed at {MODEL_ANALYZER} (see this module's docstring)")
    repo = write_demo_repository(work / "repo")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    serve = [sys.executable, "-m", "surge.server.cli", "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
             "--load-model", "mlp", "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
             "--metrics-port", str(metrics_port), "--log-level", "warning"]  # fmt: skip
    (work / "config.yaml").write_text(CONFIG)
    export = work / "export"
    command = [str(MODEL_ANALYZER), "profile", "-f", str(work / "config.yaml"), "--model-repository", str(repo),
               "--triton-launch-mode", "remote", "--triton-grpc-endpoint", f"127.0.0.1:{grpc_port}",
               "--triton-http-endpoint", f"127.0.0.1:{http_port}", "--triton-metrics-url", f"http://127.0.0.1:{metrics_port}/metrics",
               "--client-protocol", "grpc", "--perf-analyzer-path", str(PERF_ANALYZER), "--export-path", str(export),
               "--output-model-repository-path", str(work / "variants"), "--override-output-model-repository"]  # fmt: skip
    export.mkdir(parents=True, exist_ok=True)
    with running(serve, log=work / "surge.log", address=f"127.0.0.1:{grpc_port}", models=["mlp"]):
        run = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=work)  # its checkpoints/ land in work
    (work / "model_analyzer.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise RuntimeError(f"model-analyzer exited {run.returncode}:\n{(run.stdout + run.stderr)[-3000:]}")
    results = export / "results" / "metrics-model-inference.csv"
    if not results.is_file():
        raise RuntimeError(f"model-analyzer wrote no {results.relative_to(work)}:\n{run.stdout[-3000:]}")
    with results.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    header, body = rows[0], rows[1:]
    variants = sorted({row[header.index("Model Config Path")] for row in body if "Model Config Path" in header} or {row[1] for row in body})
    summaries = sorted(str(p.relative_to(export)) for p in (export / "reports" / "summaries").rglob("*") if p.is_file())
    if not variants or not summaries:
        raise RuntimeError(f"model-analyzer measured {len(variants)} variant(s) and wrote summaries {summaries}")
    return {"variants": variants, "measurements": len(body), "summaries": summaries, "header": header, "rows": body}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work here (and keep the reports) instead of a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="surge-model-analyzer-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = profile(work)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}: model_analyzer measured "
          f"{len(result['variants'])} variant(s) in {result['measurements']} measurement(s): {', '.join(result['variants'])}")
    print("summaries:", ", ".join(result["summaries"]))
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
