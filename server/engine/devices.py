"""Which engine process owns which model: one engine per GPU (``gpu0``, ``gpu1``, ...), and one for CPU models.

A model is a GPU model when its ``instance_group.kind`` is ``gpu``, its backend is TensorRT, or its kind is
``auto`` and a CUDA device is visible. A GPU model belongs to the engine of the FIRST GPU its
``instance_group.gpus`` lists (``gpu0`` when the list is empty); a model listing several GPUs runs its instances
on all of them (round-robin, as its runtime places them) from that one engine process. A model is never split
across engines. Every other model (and any model whose config does not parse: its engine reports the error as
it loads it) belongs to the ``cpu`` engine.

The supervisor starts the engines the repository needs (always ``cpu``, so models added later have a home, and
one per GPU that some model's first listed GPU names); every engine scans the same folder and serves only its
own models, so a front end asks the engine that owns a model for it. A model added later whose engine was not
started is asked of the ``cpu`` engine, which does not own it (restart the server to start its engine).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ["CPU", "device_of", "devices_for", "gpu_engine"]

CPU = "cpu"


def gpu_engine(gpu: int) -> str:
    """The name of the engine that owns GPU ``gpu``'s models (``gpu0``, ``gpu1``, ...)."""
    return f"gpu{gpu}"


@functools.cache
def _cuda_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def device_of(repository: Path, name: str) -> str:
    """The engine (``cpu``, ``gpu0``, ``gpu1``, ...) that serves model ``name`` of ``repository``."""
    from ..config import load_model_config

    try:
        config = load_model_config(repository / name)
    except (ConfigError, OSError):
        return CPU
    group = config.instance_group
    if group.kind == "gpu" or config.backend == "tensorrt" or (group.kind == "auto" and _cuda_visible()):
        return gpu_engine(group.gpus[0] if group.gpus else 0)
    return CPU


def devices_for(repository: Path) -> list[str]:
    """The engines to start for ``repository``: ``cpu``, then one per GPU that owns a model there (by GPU id)."""
    names = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")) if repository.is_dir() else []
    gpus = {device_of(repository, n) for n in names} - {CPU}
    return [CPU, *sorted(gpus, key=lambda d: int(d.removeprefix("gpu")))]
