"""The benchmark's models and Surge repositories, generated in code (onnx helper API, seeded weights).

    tiny       FP32 x[batch, 16]  -> y = x + 1                            pure serving overhead
    mlp        FP32 x[batch, 256] -> 1024 -> 1024 -> y[batch, 16]          Gemm+Relu, Gemm+Relu, Gemm
    mlp-large  FP32 x[batch, 256] -> 2048 -> 2048 -> y[batch, 16]          compute-bound on a small box

Every model has input ``x`` and output ``y`` with a dynamic batch dimension. ``write_repository`` writes
the ONNX files once (seeded: every machine serves the same weights) and a Surge ``config.toml`` per
model, for one of the configurations in ``SURGE_CONFIGS``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BATCHING", "BATCHING_PER_MODEL", "MAX_BATCH_SIZE", "MODELS", "ModelSpec", "write_onnx_files", "write_repository"]

MAX_BATCH_SIZE = 64
ORT_THREADS = 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    features: int
    """Input row length (FP32)."""
    hidden: tuple[int, ...]
    """Hidden layer widths; empty = the tiny add model."""
    outputs: int = 16


MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", features=16, hidden=(), outputs=16),
    "mlp": ModelSpec("mlp", features=256, hidden=(1024, 1024)),
    "mlp-large": ModelSpec("mlp-large", features=256, hidden=(2048, 2048)),
}

#: Surge's dynamic batching for the "batching on" configuration (the `[dynamic_batching]` table).
BATCHING: dict[str, object] = {"max_queue_delay_s": 0.002, "preferred_batch_sizes": [16, 32, 64]}
#: ...and per model where it differs, as a user tunes each model. mlp-large is compute-bound here: one row costs about
#: 440 us of ORT and a 16-row batch about 120 us per row, while the one shared core decodes a request about every 270 us,
#: so a 2 ms wait gathers about 7 rows; 6 ms reaches the preferred 16 (bench.scenarios.ab --batchings, 2026-11-27:
#: 2,481 vs 2,089 infer/s at c64, 3.14x vs 2.65x no batching). Not for tiny or mlp: a 6 ms wait that never fills 16
#: rows costs concurrency 8 its latency (tiny c8 960 infer/s, p50 8 ms, against 2,270 and 3.3 ms at 2 ms).
BATCHING_PER_MODEL: dict[str, dict[str, object]] = {"mlp-large": {"max_queue_delay_s": 0.006, "preferred_batch_sizes": [16, 32, 64]}}


def _graph(spec: ModelSpec, seed: int) -> object:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", spec.features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", spec.outputs])
    if not spec.hidden:
        one = numpy_helper.from_array(np.ones(spec.features, np.float32), "one")
        return helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], spec.name, [x], [y], initializer=[one])
    rng = np.random.default_rng(seed)
    widths = (spec.features, *spec.hidden, spec.outputs)
    nodes, weights, current = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) / 10).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(widths) - 2
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"]))
            current = f"a{i}"
    return helper.make_graph(nodes, spec.name, [x], [y], initializer=weights)


def write_onnx_files(root: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write ``root/<model>.onnx`` for every model (skipping existing files); returns name -> path."""
    from surge.server.demo import write_onnx_model

    paths = {}
    for index, spec in enumerate(MODELS.values()):
        path = root / f"{spec.name}.onnx"
        if not path.is_file():
            write_onnx_model(path, _graph(spec, seed + index))
        paths[spec.name] = path
    return paths


def _toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float | int) else f'"{value}"'


def surge_config(batching: dict[str, object] | None) -> str:
    """A model's config.toml: batching table present iff ``batching`` is given; one ORT thread."""
    lines = [f"max_batch_size = {MAX_BATCH_SIZE}", ""]
    if batching is not None:
        lines += ["[dynamic_batching]", *(f"{k} = {_toml_value(v)}" for k, v in batching.items()), ""]
    lines += ["[parameters]", f"intra_op_threads = {ORT_THREADS}", ""]
    return "\n".join(lines)


def write_repository(root: Path, onnx_files: dict[str, Path], batching: dict[str, object] | None,
                     per_model: dict[str, dict[str, object]] | None = None) -> Path:  # fmt: skip
    """A Surge model repository (``<model>/config.toml``, ``<model>/1/model.onnx``), written afresh; ``per_model``
    replaces ``batching`` for the models it names (ignored when ``batching`` is None: batching off for all)."""
    if root.exists():
        shutil.rmtree(root)
    for name, source in onnx_files.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copyfile(source, root / name / "1" / "model.onnx")
        table = None if batching is None else (per_model or {}).get(name, batching)
        (root / name / "config.toml").write_text(surge_config(table), encoding="utf-8")
    return root
