"""The CUDA kernels' logic on numba's CUDA simulator (a CPU emulation: not a GPU, and not the CUDA compiler).

The simulator must be switched on before numba is imported, hence a subprocess running the cases of
tests/gpu/test_kernels_cuda.py (which run on a real GPU through bench/gpu/run.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_cuda_kernels_on_the_simulator() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tests.gpu.test_kernels_cuda"], cwd=root, env=env, capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA kernel checks passed" in proc.stdout
