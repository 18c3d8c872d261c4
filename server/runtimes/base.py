"""The runtime interface: what every backend (ONNX Runtime, Python, PyTorch, TensorRT) implements.

A runtime instance is created per (model version, instance) and driven from that instance's own executor
thread: ``load`` once, ``infer`` per batch, ``close`` once. None of its methods may run on the event loop;
the serving core calls them through ``loop.run_in_executor``. Heavy imports (onnxruntime, torch) happen
inside ``load`` so that importing the server does not import every runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import ModelConfig, TensorConfig

__all__ = ["Runtime", "Signature", "create_runtime"]


@dataclass(frozen=True, slots=True)
class Signature:
    """What a runtime read from its model file: the inputs and outputs with full shapes (batch dim included).

    ``inputs``/``outputs`` dims here are the model file's own: a leading -1 when the model has a dynamic
    batch dimension. The repository reconciles them with the config (``ModelConfig.max_batch_size``).
    """

    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    max_batch_size: int | None = None
    """The largest batch (rows) the model file supports, where the file says (a TensorRT engine's optimization
    profiles); None where it does not. It bounds ``max_batch_size`` and is its default when the config omits it."""


class Runtime(Protocol):
    """One loaded instance of a model version. All methods block; call them from an executor thread."""

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Load the model file and return its signature. Raises on an unreadable or invalid model."""
        ...

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one batch. ``output_names`` is the subset to compute (never empty); returns them by name."""
        ...

    def close(self) -> None:
        """Free the instance's resources. Called once, after the last ``infer`` has returned."""
        ...


def create_runtime(config: ModelConfig) -> Runtime:
    """A new, unloaded runtime instance for the config's backend."""
    if config.backend == "onnxruntime":
        from .onnx import OnnxRuntime

        return OnnxRuntime()
    if config.backend == "python":
        from .python import PythonRuntime

        return PythonRuntime()
    if config.backend == "torch":
        from .torch import TorchRuntime

        return TorchRuntime()
    if config.backend == "tensorrt":
        from .tensorrt import TensorRTRuntime

        return TensorRTRuntime()
    raise ValueError(f"unknown backend {config.backend!r}")  # config validation makes this unreachable
