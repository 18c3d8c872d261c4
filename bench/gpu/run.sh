#!/usr/bin/env bash
# One GPU check for a machine with an H100/H200 and no network (the device tool's machine):
#   bash bench/gpu/run.sh            (from the repository root; carries .whl/ and .cache/perf_analyzer if present)
# Narrower runs (device time is scarce): GPU_TESTS="tests/gpu/test_kernels_cuda.py ..." picks the test files,
# TORCH_BENCH=0 skips bench/gpu/bench_torch.py, WORKERS="1,4,8" adds bench/scenarios/workers.py (perf_analyzer),
# TORCH_WORKERS="1,4" (default; "" skips) sets bench_torch's perf_analyzer 64-row cells into surge serve --workers N,
# PROFILE=1 adds py-spy profiles of the Surge server (mlp, 1x1 and 64x8; carry py-spy's wheel in .whl/) to $OUT.
# REAL_BENCH=0 skips bench/gpu/bench_real.py (ResNet-50 JPEG -> top-5 and BERT-base, in process vs through Surge with
# perf_analyzer at concurrency 1, 8, 64, 256; REAL_WORKERS="1,4" its front-end counts); without a GPU it runs as
# --cpu-dry-run (the small CI models on the CPU) and prints its table.
# Installs only what travels with it: our package (--no-deps --no-index) and the wheels in .whl/
# (grpcio-health-checking, grpcio-reflection, pytest-asyncio, py-spy: see bench/gpu/README.md; for the Numba CUDA kernels
# also numba, llvmlite and numpy cp312 wheels), runs the GPU tests, then prints the tables (bench/gpu/bench_torch.py,
# bench/gpu/bench_kernels.py). Dry-runs on a CPU machine: tests skip, no table.
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
echo "== numba (CUDA kernels, issue 8)"
$PY - <<'PYEOF' 2>&1 | tee "$OUT/numba-cuda.log"
import numba, numpy
from numba import cuda
print("numba", numba.__version__, "numpy", numpy.__version__, "numba.cuda", getattr(cuda, "implementation", "?"), "available", cuda.is_available())
try:
    cuda.detect()
except Exception as exc:
    print("numba.cuda.detect failed:", type(exc).__name__, exc)
from surge.kernels import cuda as kc
print("surge CUDA kernels:", kc.why_unavailable() or "available")  # the reason the CUDA kernel tests would skip
PYEOF
echo "== GPU tests"
$PY -m pytest ${GPU_TESTS:-tests/gpu} -m gpu -q -p no:cacheprovider -rs -W "ignore::DeprecationWarning" 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
bench=0
if [ "${TORCH_BENCH:-1}" != 0 ]; then
  echo "== benchmark"
  profile=(); [ "${PROFILE:-0}" != 0 ] && profile=(--profile-dir "$OUT")
  $PY -m bench.gpu.bench_torch --json "$OUT/gpu-bench.json" --workers "${TORCH_WORKERS-1,4}" --switch-interval-ms "${SWITCH_MS:-0}" "${profile[@]}" 2>&1 | tee "$OUT/gpu-bench.log"
  bench=${PIPESTATUS[0]}
fi
real=0
if [ "${REAL_BENCH:-1}" != 0 ]; then
  echo "== real models: ResNet-50 (JPEG -> top-5) and BERT-base, in process vs through Surge"
  dry=(); $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || dry=(--cpu-dry-run)
  $PY -m bench.gpu.bench_real --json "$OUT/gpu-real.json" ${REAL_WORKERS:+--workers "$REAL_WORKERS"} "${dry[@]}" 2>&1 | tee "$OUT/gpu-real.log"
  real=${PIPESTATUS[0]}
fi
echo "== CUDA kernels: achieved bandwidth vs device-to-device copy"
$PY -m bench.gpu.bench_kernels --json "$OUT/gpu-kernels.json" 2>&1 | tee "$OUT/gpu-kernels.log"
kernels=${PIPESTATUS[0]}
if [ -n "${WORKERS:-}" ]; then
  echo "== worker scaling (perf_analyzer, tiny)"
  $PY -m bench.scenarios.workers --workers "$WORKERS" --repeats 1 --interval-ms 1500 --wait-idle-s 0 --out "$OUT/workers.json" 2>&1 | tee "$OUT/workers.log"
fi
echo "== done in $(( $(date +%s) - started )) s: tests exit $tests, benchmark exit $bench, real models exit $real, kernels exit $kernels"
[ "$tests" -eq 0 ] && { [ "$bench" -eq 0 ] || [ "$bench" -eq 2 ]; } && [ "$real" -eq 0 ] && { [ "$kernels" -eq 0 ] || [ "$kernels" -eq 2 ]; }
