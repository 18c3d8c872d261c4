"""Numba's on-disk cache: where it goes when the installed package folder is read-only (kernels/_numba_env.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from surge.kernels._numba_env import cache_dir_for


def test_a_writable_package_folder_keeps_numbas_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert cache_dir_for(tmp_path) is None


def test_an_unwritable_package_folder_moves_the_cache_to_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    blocker = tmp_path / "site-packages"
    blocker.write_text("a file where a folder would be: nothing can be created under it, even as root")
    assert cache_dir_for(blocker / "surge" / "kernels") == str(tmp_path / "cache" / "surge" / "numba")


def test_numba_cache_dir_wins_and_numba_writes_there(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    code = "import numpy as np; from surge.kernels import tabular; tabular.clip(np.zeros((2, 2)), 0, 1)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=110)
    assert list((tmp_path / "numba-cache").rglob("*.nbi")), "numba wrote no cache index under NUMBA_CACHE_DIR"
