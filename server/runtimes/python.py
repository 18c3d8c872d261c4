"""Python backend: a model written as plain Python, in ``<version>/model.py``.

The file defines a class ``Model``::

    class Model:
        def load(self, version_dir: pathlib.Path, config: surge.server.config.ModelConfig) -> None: ...  # optional
        def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]: ...
        def close(self) -> None: ...  # optional

The signature cannot be read from Python code, so the model's config.toml must declare its inputs and
outputs. ``infer`` runs in the instance's executor thread; it may release the GIL (numpy, numba) for
parallel instances. Errors it raises fail only the requests of that call.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, TensorConfig
from ..errors import ConfigError
from .base import Signature

__all__ = ["PythonRuntime"]


class PythonRuntime:
    """Runs a user's ``model.py`` ``Model`` class behind the Runtime interface."""

    def __init__(self) -> None:
        self._model: Any = None

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Import ``model.py`` under a private module name and instantiate its ``Model``."""
        if not config.inputs or not config.outputs:
            raise ConfigError("a python model must declare its [[input]] and [[output]] tensors in config.toml")
        module_name = f"surge_model_{config.name}_{model_path.parent.name}_{instance_index}"
        spec = importlib.util.spec_from_file_location(module_name, model_path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {model_path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        cls = getattr(module, "Model", None)
        if cls is None:
            raise ConfigError(f"{model_path} defines no class Model")
        self._model = cls()
        if hasattr(self._model, "load"):
            self._model.load(model_path.parent, config)
        batch = (-1,) if config.max_batch_size else ()
        return Signature(
            inputs=tuple(TensorConfig(name=t.name, datatype=t.datatype, dims=batch + t.dims, optional=t.optional) for t in config.inputs),
            outputs=tuple(TensorConfig(name=t.name, datatype=t.datatype, dims=batch + t.dims) for t in config.outputs),
        )

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Call the user's ``infer`` and keep the requested outputs."""
        results = self._model.infer(dict(inputs), list(output_names))  # a missing output: the version's output check names it
        return {name: np.asarray(results[name]) for name in output_names if name in results}

    def close(self) -> None:
        """Call the user's ``close`` if it has one."""
        if self._model is not None and hasattr(self._model, "close"):
            self._model.close()
        self._model = None
