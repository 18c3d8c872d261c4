#!/usr/bin/env bash
# One GPU check for a machine with an H100/H200 and no network (the device tool's machine):
#   bash bench/gpu/run.sh            (from the repository root; carries .whl/ and .cache/perf_analyzer if present)
# Installs only what travels with it: our package (--no-deps --no-index) and the wheels in .whl/
# (grpcio-health-checking, grpcio-reflection, pytest-asyncio: see bench/gpu/README.md), runs the GPU
# tests, then prints one table (bench/gpu/bench_torch.py). Dry-runs on a CPU machine: tests skip, no table.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/surge-gpu-out}
mkdir -p "$OUT"
started=$(date +%s)
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# our package: the wheel built beside the others (pip wheel --no-deps . -w .whl), else an editable install
compgen -G ".whl/surge-*.whl" >/dev/null || $PY -m pip install -q --no-deps --no-index --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, grpc, google.protobuf as p, pytest, numpy, surge.server; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'grpc', grpc.__version__, 'protobuf', p.__version__, 'pytest', pytest.__version__, 'numpy', numpy.__version__, 'surge from', surge.server.__file__)"
echo "== GPU tests"
$PY -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rs -W "ignore::DeprecationWarning" 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
echo "== benchmark"
$PY -m bench.gpu.bench_torch --json "$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.log"
bench=${PIPESTATUS[0]}
echo "== done in $(( $(date +%s) - started )) s: tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && { [ "$bench" -eq 0 ] || [ "$bench" -eq 2 ]; }
