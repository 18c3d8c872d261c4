"""Model repositories for tests, generated in code (onnx helper API, small Python models; no downloads).

``write_test_repository(root)`` writes every model below; tests pick what they need:

    mlp            the demo classifier (FP32 x[-1,16] -> probabilities[-1,4]), max_batch_size 64
    identity       the demo identity (FP32 input[-1,-1] -> output), max_batch_size 8
    identity_all   one ONNX Identity per datatype (in_<DT> -> out_<DT>), max_batch_size 8
    nobatch        FP32 a[2,3] -> a + 1, no batch dimension (max_batch_size 0)
    versioned      versions 1 and 2 (version_policy all): y = x + version
    echo_py        python backend: echoes FP32 and BF16 inputs
    failing_py     python backend: raises with a secret in the message
    slow_py        python backend: sleeps delay_s (an input) seconds; 1 instance, at most 2 waiting
    broken         a model.onnx that is not ONNX: stays UNAVAILABLE with its reason
    mlp_batched    the demo classifier with dynamic batching (20 ms delay, preferred 8, 2 priority levels)
    mlp_labelled   the demo classifier whose output has a label file (labels.txt: 3 labels for its 4 classes)
    failing_batched_py  python backend, batched (4 rows, 1 s delay): a negative input fails its whole batch

``write_rollout_repository(root, kind)`` writes a two-version model for progressive rollouts (good, slow, wrong, failing).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surge.server.demo import write_demo_repository, write_onnx_model

__all__ = ["ALL_DATATYPES", "MLP_LABELS", "ONNX_DATATYPES", "ROLLOUT_VERSIONS", "top_k_classes", "write_add_model", "write_python_model", "write_rollout_repository", "write_slow_model", "write_test_repository"]

#: Datatypes the identity_all ONNX model carries (ONNX Runtime's Identity supports all of these).
ONNX_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")
ALL_DATATYPES = ONNX_DATATYPES + ("BF16",)


def _onnx_type(datatype: str) -> int:
    from onnx import TensorProto

    return {
        "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16, "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8, "INT16": TensorProto.INT16, "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64, "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }[datatype]


def write_identity_all(folder: Path, datatypes: tuple[str, ...] = ONNX_DATATYPES) -> None:
    from onnx import helper

    nodes = [helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]) for dt in datatypes]
    inputs = [helper.make_tensor_value_info(f"in_{dt}", _onnx_type(dt), ["batch", "n"]) for dt in datatypes]
    outputs = [helper.make_tensor_value_info(f"out_{dt}", _onnx_type(dt), ["batch", "n"]) for dt in datatypes]
    write_onnx_model(folder / "1" / "model.onnx", helper.make_graph(nodes, "identity_all", inputs, outputs))
    (folder / "config.toml").write_text("max_batch_size = 8\n")


def write_add_model(path: Path, constant: float, *, batch: bool = True) -> None:
    """An ONNX model y = x + constant over FP32 x[batch, 4] (or x[2, 3] without a batch dimension)."""
    from onnx import TensorProto, helper, numpy_helper

    shape = ["batch", 4] if batch else [2, 3]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(np.array(constant, dtype=np.float32), "c")],
    )
    write_onnx_model(path, graph)


#: A tensor of a Python model's config: (name, datatype, dims).
Tensor = tuple[str, str, tuple[int, ...]]


def write_python_model(
    model_dir: Path, code: str, *, inputs: Sequence[Tensor], outputs: Sequence[Tensor], max_batch_size: int = 0,
    settings: str = "", tables: str = "", versions: Sequence[int] = (1,),
) -> Path:  # fmt: skip
    """A Python-backend model: ``code`` as ``<version>/model.py`` for each of ``versions`` and its ``config.toml``
    (``max_batch_size``, the ``settings`` lines (top-level keys), the inputs and outputs, then ``tables``: TOML tables
    such as ``[dynamic_batching]``). Returns ``model_dir``."""
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(version) / "model.py").write_text(code)
    lines = ['backend = "python"', f"max_batch_size = {max_batch_size}", *filter(None, [settings.strip()])]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for name, datatype, dims in tensors:
            lines += ["", f"[[{kind}]]", f'name = "{name}"', f'datatype = "{datatype}"', f"dims = {list(dims)}"]
    (model_dir / "config.toml").write_text("\n".join(lines) + "\n" + (f"\n{tables.strip()}\n" if tables.strip() else ""))
    return model_dir


_ECHO_PY = '''
import numpy as np

class Model:
    def infer(self, inputs, output_names):
        return {"y": inputs["x"] * 1, "b_out": inputs["b"].copy()}
'''
_FAILING_PY = '''
class Model:
    def infer(self, inputs, output_names):
        if (inputs["x"] < 0).any():
            raise ValueError("secret internal detail: negative input")
        return {"y": inputs["x"]}
'''
_SLOW_PY = '''
import time

class Model:
    def infer(self, inputs, output_names):
        time.sleep(float(inputs["delay_s"].reshape(-1)[0]))
        return {"delay_s_out": inputs["delay_s"]}
'''


def write_slow_model(model_dir: Path, *, max_queue_size: int = 2, settings: str = "", code: str = _SLOW_PY) -> Path:
    """slow_py: sleeps ``delay_s`` (FP32 [1] input) seconds and echoes it as ``delay_s_out``; one row per batch,
    at most ``max_queue_size`` waiting."""
    return write_python_model(model_dir, code, inputs=[("delay_s", "FP32", (1,))], outputs=[("delay_s_out", "FP32", (1,))], max_batch_size=1,
                              settings=settings, tables=f"[dynamic_batching]\nmax_queue_size = {max_queue_size}")  # fmt: skip


_MLP_BATCHED_CONFIG = """
max_batch_size = 64

[dynamic_batching]
max_queue_delay_s = 0.020
preferred_batch_sizes = [8]
priority_levels = 2
default_priority_level = 2
"""


_MLP_LABELLED_CONFIG = """
max_batch_size = 64

[[output]]
name = "probabilities"
datatype = "FP32"
dims = [4]
label_filename = "labels.txt"
"""
#: mlp_labelled's labels: class 3 has none (a classification names only the index then, as Triton does).
MLP_LABELS = ("setosa", "versicolor", "virginica")


def top_k_classes(values: np.ndarray, k: int, labels: tuple[str, ...] = ()) -> list[list[bytes]]:
    """Triton's classification of each row (first dimension) of ``values``, computed independently of Surge:
    the k highest values, highest first (ties: lower index first), as ``b"value:index[:label]"`` (C's ``%f`` for
    floats, integers as they are)."""
    rows = []
    for row in values.reshape(values.shape[0], -1):
        text = [f"{float(v):f}" if row.dtype.kind == "f" else str(int(v)) for v in row]
        order = sorted(range(row.size), key=lambda i: (-row[i], i))[:k]
        rows.append([(f"{text[i]}:{i}" + (f":{labels[i]}" if i < len(labels) and labels[i] else "")).encode() for i in order])
    return rows


def write_test_repository(root: Path) -> Path:
    """Write every test model under ``root`` (see the module docstring); returns ``root``."""
    write_demo_repository(root)
    write_identity_all(root / "identity_all")
    write_add_model(root / "nobatch" / "1" / "model.onnx", 1.0, batch=False)
    (root / "nobatch" / "config.toml").write_text("max_batch_size = 0\n")
    for version in (1, 2):
        write_add_model(root / "versioned" / str(version) / "model.onnx", float(version))
    (root / "versioned" / "config.toml").write_text("max_batch_size = 16\n\n[version_policy]\nall = true\n")
    write_python_model(root / "echo_py", _ECHO_PY, inputs=[("x", "FP32", (-1,)), ("b", "BF16", (-1,))],
                       outputs=[("y", "FP32", (-1,)), ("b_out", "BF16", (-1,))], max_batch_size=4)  # fmt: skip
    write_python_model(root / "failing_py", _FAILING_PY, inputs=[("x", "FP32", (1,))], outputs=[("y", "FP32", (1,))], max_batch_size=4)
    write_slow_model(root / "slow_py")
    shutil.copytree(root / "mlp" / "1", root / "mlp_batched" / "1", dirs_exist_ok=True)
    (root / "mlp_batched" / "config.toml").write_text(_MLP_BATCHED_CONFIG)
    shutil.copytree(root / "mlp" / "1", root / "mlp_labelled" / "1", dirs_exist_ok=True)
    (root / "mlp_labelled" / "config.toml").write_text(_MLP_LABELLED_CONFIG)
    (root / "mlp_labelled" / "labels.txt").write_text("".join(f"{label}\n" for label in MLP_LABELS))
    write_python_model(root / "failing_batched_py", _FAILING_PY, inputs=[("x", "FP32", (1,))], outputs=[("y", "FP32", (1,))], max_batch_size=4,
                       tables="[dynamic_batching]\nmax_queue_delay_s = 1.0")  # fmt: skip
    (root / "broken" / "1").mkdir(parents=True, exist_ok=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    return root


_ROLLOUT_GOOD = '''
class Model:
    def infer(self, inputs, output_names):
        return {"y": inputs["x"] + 1}
'''
_ROLLOUT_SLOW = '''
import time

class Model:
    def infer(self, inputs, output_names):
        time.sleep(0.03)
        return {"y": inputs["x"] + 1}
'''
_ROLLOUT_WRONG = '''
class Model:
    def infer(self, inputs, output_names):
        return {"y": inputs["x"] + 2}
'''
_ROLLOUT_FAILING = '''
class Model:
    def infer(self, inputs, output_names):
        if (inputs["x"][:, 0] > 1.0).any():
            raise ValueError("cannot score this input")
        return {"y": inputs["x"] + 1}
'''
#: Version 2 of the rollout model, by kind: a good copy, a slow one (sleeps 30 ms), a wrong one (y = x + 2), a failing one
#: (raises when x[0] > 1: about 16% of standard-normal inputs).
ROLLOUT_VERSIONS = {"good": _ROLLOUT_GOOD, "slow": _ROLLOUT_SLOW, "wrong": _ROLLOUT_WRONG, "failing": _ROLLOUT_FAILING}
_ROLLOUT_TABLES = """
[version_policy]
specific = [1, 2]

[routing]
weights = { 1 = 1 }

[routing.shadow]
max_concurrency = 4
max_queue = 256
"""


def write_rollout_repository(root: Path, kind: str, extra_config: str = "") -> Path:
    """Model ``m`` (Python, FP32 x[-1,4] -> y = x + 1) with version 1 good and version 2 of ``kind`` (``ROLLOUT_VERSIONS``),
    every request pinned to version 1 by ``[routing]``; ``extra_config`` is appended to its config.toml."""
    model = write_python_model(root / "m", _ROLLOUT_GOOD, inputs=[("x", "FP32", (4,))], outputs=[("y", "FP32", (4,))], max_batch_size=8,
                               tables=_ROLLOUT_TABLES + extra_config)  # fmt: skip
    (model / "2").mkdir()
    (model / "2" / "model.py").write_text(ROLLOUT_VERSIONS[kind])
    return root
