"""``surge batch``: outputs equal the served outputs for the same rows; formats; resume after a kill; clear errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from surge.clients import InferenceClient
from surge.server.cli import main
from surge.server.demo import write_demo_repository

TABULAR_CONFIG = """\
max_batch_size = 16
[dynamic_batching]
max_queue_delay_s = 0.001
[[preprocess]]
op = "tabular_transform"
input = "features"
output = "x"
fill = 0.0
low = -2.5
high = 2.5
mean = 0.1
std = [1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
[[postprocess]]
op = "topk"
input = "probabilities"
output = "top2"
values_output = "top2_scores"
k = 2
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_demo_repository(tmp_path_factory.mktemp("batch-repo"))
    (root / "tabular" / "1").mkdir(parents=True)
    shutil.copy(root / "mlp" / "1" / "model.onnx", root / "tabular" / "1" / "model.onnx")
    (root / "tabular" / "config.toml").write_text(TABULAR_CONFIG)
    return root


def _served(address: str, model: str, inputs: dict[str, np.ndarray], rows_per_request: int) -> dict[str, np.ndarray]:
    rows = next(iter(inputs.values())).shape[0]
    parts = []
    with InferenceClient(address, timeout_s=60, retries=0) as client:
        for start in range(0, rows, rows_per_request):
            result = client.infer(model, {n: a[start : start + rows_per_request] for n, a in inputs.items()})
            parts.append(result.outputs)
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


def _tabular_data(rows: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((rows, 16)) * 2).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def test_npy_to_npz_equals_served_output(repo: Path, tmp_path: Path, start_server, capsys) -> None:
    images = np.random.default_rng(5).integers(0, 256, (150, 29, 41, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    assert main(["batch", "--model-repository", str(repo), "--model", "classifier", "--input", str(tmp_path / "images.npy"),
                 "--output", str(tmp_path / "out.npz"), "--chunk-rows", "40"]) == 0
    captured = capsys.readouterr()
    assert "150 rows in 4 chunks" in captured.out
    assert "150/150 rows (100.0%)" in captured.err and "rows/s" in captured.err
    assert not (tmp_path / "out.npz.parts").exists()
    server = start_server(model_repository=repo)
    served = _served(server.address, "classifier", {"image": images}, 7)  # other request sizes than the job's: same rows, same results
    with np.load(tmp_path / "out.npz") as out:
        assert set(out.files) == {"probabilities", "classes", "scores"}
        np.testing.assert_array_equal(out["classes"], served["classes"])
        np.testing.assert_allclose(out["probabilities"], served["probabilities"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out["scores"], served["scores"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("source", "target"), [("npz", "parquet"), ("parquet", "csv"), ("csv", "npz")])
def test_formats_equal_served_output(repo: Path, tmp_path: Path, start_server, source: str, target: str) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    x = _tabular_data(203)
    src = tmp_path / f"in.{source}"
    if source == "npz":
        np.savez(src, features=x)
    elif source == "parquet":
        pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)}), src, row_group_size=50)
    else:  # one column per feature: the model has one 1-D input
        pacsv.write_csv(pa.table({f"f{i}": x[:, i] for i in range(16)}), src)
    out = tmp_path / f"out.{target}"
    assert main(["batch", "--model-repository", str(repo), "--model", "tabular", "--input", str(src), "--output", str(out), "--chunk-rows", "64", "--quiet"]) == 0
    if target == "npz":
        with np.load(out) as data:
            got = {n: data[n] for n in data.files}
    elif target == "parquet":
        table = pq.read_table(out)
        got = {n: np.stack(table.column(n).to_pylist()) for n in table.column_names}
    else:
        table = pacsv.read_csv(out)
        got = {n: np.stack([table.column(f"{n}_{i}").to_numpy() for i in range(w)], axis=1) for n, w in (("probabilities", 4), ("top2", 2), ("top2_scores", 2))}
    served = _served(start_server(model_repository=repo).address, "tabular", {"features": x}, 16)
    np.testing.assert_array_equal(got["top2"], served["top2"])
    np.testing.assert_allclose(got["probabilities"], served["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["top2_scores"], served["top2_scores"], rtol=1e-6, atol=1e-7)


def test_a_killed_job_resumes_where_it_stopped(repo: Path, tmp_path: Path) -> None:
    images = np.random.default_rng(9).integers(0, 256, (3000, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    args = [sys.executable, "-m", "surge.server.cli", "batch", "--model-repository", str(repo), "--model", "classifier",
            "--input", str(tmp_path / "images.npy"), "--output", str(tmp_path / "out.npz"), "--chunk-rows", "32", "--quiet"]
    parts = tmp_path / "out.npz.parts"
    first = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 90
    while len(list(parts.glob("chunk-*"))) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    kept = len(list(parts.glob("chunk-*")))
    assert 3 <= kept < 94, "the first run should have been killed part way"
    second = subprocess.run(args, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=110)
    assert second.returncode == 0, second.stderr
    assert f"{kept} resumed from an earlier run" in second.stdout
    expected = subprocess.run([*args[:-5], "--output", str(tmp_path / "fresh.npz"), "--chunk-rows", "32", "--quiet"],
                              cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=110)
    assert expected.returncode == 0, expected.stderr
    for written in ("out.npz", "fresh.npz"):  # the in-place .npz: valid zip, every member's CRC right (resumed: recomputed)
        with zipfile.ZipFile(tmp_path / written) as archive:
            assert archive.testzip() is None
    assert not parts.exists()
    with np.load(tmp_path / "out.npz") as resumed, np.load(tmp_path / "fresh.npz") as fresh:
        assert resumed["classes"].shape == (3000, 3)
        np.testing.assert_array_equal(resumed["classes"], fresh["classes"])
        np.testing.assert_array_equal(resumed["probabilities"], fresh["probabilities"])


def test_stale_parts_of_another_job_are_not_reused(repo: Path, tmp_path: Path, capsys) -> None:
    parts = tmp_path / "out.npz.parts"
    parts.mkdir()
    (parts / "job.json").write_text('{"input": "something else"}')
    (parts / "chunk-000000").mkdir()
    np.save(parts / "chunk-000000" / "probabilities.npy", np.zeros((64, 4), np.float32))
    np.save(tmp_path / "x.npy", _tabular_data(100))
    assert main(["batch", "--model-repository", str(repo), "--model", "tabular", "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "out.npz"), "--chunk-rows", "64", "--quiet"]) == 0
    assert "resumed" not in capsys.readouterr().out
    with np.load(tmp_path / "out.npz") as out:
        assert out["probabilities"].shape == (100, 4) and np.all(out["probabilities"].sum(axis=1) > 0.99)


@pytest.mark.parametrize(
    ("model", "data", "output", "message"),
    [
        ("tabular", np.zeros((4, 16), np.float64), "out.npz", "dtype float64, the model takes FP32"),
        ("tabular", np.zeros((4, 15), np.float32), "out.npz", r"rows of shape \[15\], the model takes \[16\]"),
        ("tabular", np.zeros((4, 16), np.float32), "out.txt", "unsupported format '.txt'"),
        ("tabular", np.zeros((4, 16), np.float32), "out.npy", "write .npz"),
        ("nothere", np.zeros((4, 16), np.float32), "out.npz", "no numbered version folder"),
    ],
)
def test_errors_are_clear(repo: Path, tmp_path: Path, capsys, model: str, data: np.ndarray, output: str, message: str) -> None:
    np.save(tmp_path / "x.npy", data)
    assert main(["batch", "--model-repository", str(repo), "--model", model, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / output), "--quiet"]) == 1
    assert re.search(message, capsys.readouterr().err)
