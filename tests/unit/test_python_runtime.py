"""PythonRuntime against a real child process: the ``infer`` contract through the shared-memory arena (dtypes,
BYTES, BF16, zero-size tensors, outputs that outlive the call), what the model raises, the arena's bound,
kill and close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.protos.datatypes import numpy_dtype
from surge.server.config import parse_model_config
from surge.server.errors import InstanceCrashed, InvalidInput, LimitExceeded
from surge.server.runtimes import python as python_runtime
from surge.server.runtimes.python import PythonRuntime

_MODEL = '''
import numpy as np
from surge.server.errors import InvalidInput

class Custom(Exception):
    pass

class Model:
    def load(self, version_dir, config):
        self.name = config.name
        self.closed_marker = version_dir / "closed"

    def infer(self, inputs, output_names):
        x = inputs["x"]
        if x.size and x.reshape(-1)[0] == -1:
            raise ValueError("negative")
        if x.size and x.reshape(-1)[0] == -2:
            raise Custom("custom")
        if x.size and x.reshape(-1)[0] == -3:
            raise InvalidInput("input 'x': -3 is not allowed")
        if x.size and x.reshape(-1)[0] == -4:
            return {"y": x}
        out = {"y": x.astype(np.float64) * 2, "s": np.array([s.upper() for s in inputs["s"].reshape(-1)], dtype=object)}
        if "b" in inputs:
            out["b"] = inputs["b"]
        return out

    def close(self):
        self.closed_marker.write_text(self.name)
'''


@pytest.fixture
def runtime(tmp_path: Path):
    path = tmp_path / "m" / "1" / "model.py"
    path.parent.mkdir(parents=True)
    path.write_text(_MODEL)
    config = parse_model_config("m", {
        "backend": "python", "max_batch_size": 0,
        "input": [{"name": "x", "datatype": "FP32", "dims": [-1]}, {"name": "s", "datatype": "BYTES", "dims": [-1]}],
        "output": [{"name": "y", "datatype": "FP64", "dims": [-1]}, {"name": "s", "datatype": "BYTES", "dims": [-1]}],
    })  # fmt: skip
    rt = PythonRuntime()
    rt.load(path, config, 0)
    yield rt
    rt.close()


def _inputs(x: list[float], s: list[bytes]) -> dict[str, np.ndarray]:
    return {"x": np.array(x, np.float32), "s": np.array(s, dtype=object)}


def test_infer_round_trips_dtypes_bytes_and_empty_tensors(runtime: PythonRuntime) -> None:
    out = runtime.infer(_inputs([1.5, 2.0, 3.0], [b"a", b"bc", b"\x00\xff"]), ["y", "s"])
    assert out["y"].dtype == np.float64 and out["y"].tolist() == [3.0, 4.0, 6.0]
    assert out["s"].dtype == object and out["s"].tolist() == [b"A", b"BC", b"\x00\xff"]
    first = out["y"]
    again = runtime.infer(_inputs([10.0, 20.0, 30.0], [b"x", b"y", b"z"]), ["y"])
    assert list(again) == ["y"] and again["y"].tolist() == [20.0, 40.0, 60.0]
    assert first.tolist() == [3.0, 4.0, 6.0]  # outputs are the caller's own: the next call does not overwrite them
    empty = runtime.infer(_inputs([], []), ["y", "s"])
    assert empty["y"].shape == (0,) and empty["s"].shape == (0,)


def test_bf16_passes_through_the_arena(runtime: PythonRuntime) -> None:
    bf16 = numpy_dtype("BF16")
    b = np.array([1.0, -2.5], np.float32).astype(bf16)
    out = runtime.infer({**_inputs([1.0], [b"a"]), "b": b}, ["b"])
    assert out["b"].dtype == bf16 and out["b"].astype(np.float32).tolist() == [1.0, -2.5]


def test_what_the_model_raises_reaches_the_caller(runtime: PythonRuntime) -> None:
    with pytest.raises(ValueError, match="negative") as info:
        runtime.infer(_inputs([-1.0], [b""]), ["y"])
    assert "traceback in the model's process" in "".join(info.value.__notes__)
    with pytest.raises(RuntimeError, match="Custom: custom"):  # a class only the model's module knows
        runtime.infer(_inputs([-2.0], [b""]), ["y"])
    with pytest.raises(InvalidInput, match="-3 is not allowed"):  # a Surge error keeps its status
        runtime.infer(_inputs([-3.0], [b""]), ["y"])
    assert set(runtime.infer(_inputs([-4.0], [b""]), ["y", "s"])) == {"y"}  # a missing output is named by the server's output check
    assert runtime.infer(_inputs([1.0], [b"a"]), ["y"])["y"].tolist() == [2.0]  # and it goes on serving
    assert runtime.retire_reason == ""


def test_a_call_larger_than_the_arena_is_refused(runtime: PythonRuntime) -> None:
    big = np.zeros(python_runtime.ARENA_BYTES // 4 + 1, np.float32)
    with pytest.raises(LimitExceeded, match="does not fit the python model's 1024 MiB shared-memory arena"):
        runtime.infer({"x": big, "s": np.array([], dtype=object)}, ["y"])
    assert runtime.infer(_inputs([1.0], [b"a"]), ["y"])["y"].tolist() == [2.0]


def test_kill_fails_the_call_and_says_why(runtime: PythonRuntime) -> None:
    runtime.kill()
    with pytest.raises(InstanceCrashed, match="model 'm' version 1: its process was killed by SIGKILL during the call"):
        runtime.infer(_inputs([1.0], [b"a"]), ["y"])
    assert runtime.retire_reason == "its process was killed by SIGKILL"


def test_close_calls_the_models_close_and_ends_the_process(runtime: PythonRuntime, tmp_path: Path) -> None:
    proc = runtime._proc
    assert proc is not None
    runtime.close()
    assert (tmp_path / "m" / "1" / "closed").read_text() == "m"
    assert proc.returncode == 0
    runtime.close()  # twice is harmless


def test_a_model_without_declared_tensors_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"must declare its \[\[input\]\] and \[\[output\]\]"):
        PythonRuntime().load(tmp_path / "model.py", parse_model_config("m", {"backend": "python"}), 0)


def test_a_load_failure_is_reported_and_leaves_no_process(tmp_path: Path) -> None:
    path = tmp_path / "m" / "1" / "model.py"
    path.parent.mkdir(parents=True)
    path.write_text("raise ImportError('no such thing')\n")
    config = parse_model_config("m", {"backend": "python", "input": [{"name": "x", "datatype": "FP32"}], "output": [{"name": "y", "datatype": "FP32"}]})
    rt = PythonRuntime()
    with pytest.raises(ImportError, match="no such thing"):
        rt.load(path, config, 0)
    proc = rt._proc
    rt.close()
    assert proc is not None and proc.returncode is not None
