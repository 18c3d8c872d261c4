"""Numba settings that must be in place before the first kernel compiles.

``cache=True`` writes compiled code next to the source (``__pycache__``). In a read-only install (a container
image's site-packages) Numba falls back to a per-user cache folder, and when that is not writable either it
refuses to compile (``RuntimeError: cannot cache function``). We check first: when the package folder is not
writable and ``NUMBA_CACHE_DIR`` is unset, the cache goes to ``$XDG_CACHE_HOME/surge/numba`` (or
``~/.cache/surge/numba``), else to a folder under the system temp dir. An explicit ``NUMBA_CACHE_DIR`` always wins.

Parallel kernels need a thread-safe threading layer (TBB or OpenMP): unless ``NUMBA_THREADING_LAYER`` is set, we
ask for ``threadsafe``. Unless ``OMP_WAIT_POLICY`` is set, OpenMP workers sleep between parallel regions
(``passive``) instead of spinning: in a server the runtime runs right after a kernel, and spinning workers take its
cores (measured: about 2x on the demo classifier on a 2-core box). Set both before the first parallel launch.
Numba's CUDA low-occupancy warning is off unless ``NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS`` is set: a server launches
kernels on small batches all the time, and the warning would fill the log.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["cache_dir_for", "configure"]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".surge-probe-"):
            return True
    except OSError:
        return False


def cache_dir_for(package_dir: Path) -> str | None:
    """The cache folder to use, or None when Numba's own choice (next to the source) works."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    if _writable(package_dir / "__pycache__"):
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for candidate in (Path(cache) / "surge" / "numba", Path(tempfile.gettempdir()) / f"surge-numba-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        if _writable(candidate):
            return str(candidate)
    return None  # nothing writable: Numba will say so when it compiles


def configure() -> None:
    """Set the cache folder and threading layer for this process (environment, and Numba's config if loaded)."""
    folder = cache_dir_for(Path(__file__).resolve().parent)
    if folder is not None:
        os.environ.setdefault("NUMBA_CACHE_DIR", folder)
    os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
    numba = sys.modules.get("numba")
    if numba is not None:  # numba was imported first: its config has read the environment already
        if folder is not None and not numba.config.CACHE_DIR:
            numba.config.CACHE_DIR = folder
        if numba.config.THREADING_LAYER == "default" and os.environ.get("NUMBA_THREADING_LAYER") == "threadsafe":
            numba.config.THREADING_LAYER = "threadsafe"
        if os.environ.get("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS") == "0":
            numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
