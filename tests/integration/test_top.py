"""``surge top`` against a real server: the view between two scrapes reflects a known workload."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest

from surge.clients import InferenceClient, InferenceServerError
from surge.server.commands.top import format_table, histogram_quantile, rows, scrape


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.4: 40.0, math.inf: 40.0}
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: halfway through (0.1, 0.2]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.2 * (39.6 - 30) / 10)
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 5.0}) == 0.1  # beyond the last bound: that bound
    assert math.isnan(histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))


def test_top_view_reflects_a_known_workload(start_server, test_repository) -> None:
    thread = start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("mlp", "mlp_batched"))
    url = thread.server.metrics_address
    before = scrape(url)
    with InferenceClient(thread.address, timeout_s=30, retries=0) as client:
        for _ in range(10):
            client.infer("mlp", {"x": np.ones((2, 16), np.float32)})
        with pytest.raises(InferenceServerError):
            client.infer("mlp", {"x": np.ones((2, 15), np.float32)})
    after = scrape(url)
    view = {(r.model, r.version): r for r in rows(before, after)}
    mlp = view[("mlp", "1")]
    dt = after.at - before.at
    assert mlp.rate * dt == pytest.approx(11)
    assert mlp.error_ratio == pytest.approx(1 / 11) and mlp.server_error_ratio == 0  # INVALID_ARGUMENT is the client's
    assert 0 < mlp.p50_s <= mlp.p99_s < 30
    assert mlp.batch_mean == 2 and mlp.batch_fill == pytest.approx(2 / 64)
    assert mlp.state == "READY" and mlp.queue_depth == 0
    idle = view[("mlp_batched", "1")]
    assert idle.rate == 0 and math.isnan(idle.error_ratio) and math.isnan(idle.p99_s)
    text = format_table(list(view.values()), url=url)
    assert "mlp_batched" in text and "REQ/S" in text


def test_surge_top_once_command(start_server, test_repository) -> None:
    thread = start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("mlp",))
    result = subprocess.run([sys.executable, "-m", "surge.server.cli", "top", "--url", thread.server.metrics_address, "--once", "--interval-s", "0.2"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:3] == ["mlp", "1", "READY"] for line in result.stdout.splitlines())
    bad = subprocess.run([sys.executable, "-m", "surge.server.cli", "top", "--url", "127.0.0.1:1", "--once"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot reach http://127.0.0.1:1/metrics") and "Traceback" not in bad.stderr


def test_run_once_writes_one_view(start_server, test_repository) -> None:
    from surge.server.commands.top import run

    thread = start_server(model_repository=test_repository, model_control_mode="explicit", load_models=("mlp",))
    out = io.StringIO()
    assert run(thread.server.metrics_address, 0.1, once=True, out=out) == 0
    assert out.getvalue().count("\n") >= 3
