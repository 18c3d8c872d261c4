"""Which engine process owns which model: one engine for CPU models, one for GPU models.

A model belongs to the ``gpu`` engine when its ``instance_group.kind`` is ``gpu``, its backend is TensorRT, or
its kind is ``auto`` and a CUDA device is visible; every other model (and any model whose config does not parse:
its engine reports the error as it loads it) to the ``cpu`` engine. The supervisor starts the engines the
repository needs (always ``cpu``, so models added later have a home); every engine scans the same folder and
serves only its own models, so a front end asks the engine that owns a model for it.

Not built yet: one engine per GPU (the ``gpu`` engine spreads a model's instances over the GPUs its
``instance_group.gpus`` lists, within one process), and a model split across engines.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ["CPU", "GPU", "device_of", "devices_for"]

CPU = "cpu"
GPU = "gpu"


@functools.cache
def _cuda_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def device_of(repository: Path, name: str) -> str:
    """The engine (``cpu`` or ``gpu``) that serves model ``name`` of ``repository``."""
    from ..config import load_model_config

    try:
        config = load_model_config(repository / name)
    except (ConfigError, OSError):
        return CPU
    kind = config.instance_group.kind
    if kind == "gpu" or config.backend == "tensorrt" or (kind == "auto" and _cuda_visible()):
        return GPU
    return CPU


def devices_for(repository: Path) -> list[str]:
    """The engines to start for ``repository``: ``cpu``, and ``gpu`` when a model there needs one."""
    names = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")) if repository.is_dir() else []
    return [CPU, GPU] if any(device_of(repository, n) == GPU for n in names) else [CPU]
