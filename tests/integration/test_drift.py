"""Drift monitoring over the wire: a profile made with ``surge profile`` from N(0, 1), a real server sampling every
request (sample_rate = 1) into windows of 200 rows, our client, and /metrics parsed with prometheus_client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.clients import InferenceClient
from surge.server.observability import drift
from surge.server.cli import main
from tests.integration.test_metrics import samples, value
from tests.models import write_add_model

WINDOW_ROWS = 200
ROWS_PER_REQUEST = 50


@pytest.fixture
def drift_repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    write_add_model(root / "add" / "1" / "model.onnx", 1.0)
    (root / "add" / "config.toml").write_text(f"max_batch_size = 64\n\n[drift]\nsample_rate = 1.0\nwindow_rows = {WINDOW_ROWS}\npsi_alert = 0.2\n")
    x = np.random.default_rng(0).standard_normal((20_000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x + 1.0)  # the model's predictions on the sample
    assert main(["profile", str(root / "add"), "--data", str(tmp_path / "x.npy"), "--outputs", str(tmp_path / "y.npy")]) == 0
    assert (root / "add" / "1" / "drift_profile.json").is_file()
    return root


def test_drift_alert_stays_off_for_the_same_distribution_and_rises_on_a_shift(drift_repository: Path, start_server, capsys) -> None:
    server = start_server(model_repository=drift_repository)
    rng = np.random.default_rng(1)

    def send(shift: float) -> dict:
        x = rng.standard_normal((ROWS_PER_REQUEST, 4)).astype(np.float32)
        x[:, 0] += shift
        client.infer("add", {"x": x})
        assert drift.flush(30.0)  # the sample was queued before the response: wait for the drift thread
        return samples(server)

    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client:
        found = samples(server)
        assert value(found, "surge_drift_alert", model="add", version="1") == 0
        assert value(found, "surge_drift_windows_total", model="add", version="1") == 0
        # 20 windows of fresh rows from the profile's distribution: the false alarm rate
        alarms, worst = 0, 0.0
        for _ in range(20):
            for _ in range(WINDOW_ROWS // ROWS_PER_REQUEST):
                found = send(0.0)
            alarms += int(value(found, "surge_drift_alert", model="add", version="1"))
            worst = max(worst, *(value(found, "surge_drift_psi", model="add", version="1", feature=f"{t}[{i}]") for t in "xy" for i in range(4)))
        assert alarms <= 1, f"{alarms} false alarms in 20 windows"
        assert value(found, "surge_drift_windows_total", model="add", version="1") >= 20
        # a one-standard-deviation mean shift on x[0]: the alert rises within one window of rows
        for sent in range(1, WINDOW_ROWS // ROWS_PER_REQUEST + 1):
            found = send(1.0)
            if value(found, "surge_drift_alert", model="add", version="1") == 1:
                break
        assert value(found, "surge_drift_alert", model="add", version="1") == 1, "no alert after a full window of shifted rows"
        for feature in ("x[0]", "y[0]"):  # the input and the prediction it shifts
            assert value(found, "surge_drift_psi", model="add", version="1", feature=feature) > 0.2
        assert value(found, "surge_drift_psi", model="add", version="1", feature="x[1]") < 0.2
        assert value(found, "surge_drift_samples_dropped_total", model="add", version="1") == 0
        assert value(found, "surge_drift_nan_ratio", model="add", version="1", feature="x[0]") == 0

    capsys.readouterr()
    assert main(["drift", "add", "--url", server.server.metrics_address]) == 0
    out = capsys.readouterr().out
    assert "model add version 1: drift ALERT" in out and "x[0]" in out and "y[3]" in out
    with capsys.disabled():  # the measurement, visible with pytest -s
        print(f"\ndrift: {alarms}/20 false alarms (highest PSI {worst:.3f}); alert after {sent * ROWS_PER_REQUEST} shifted rows\n{out}")


def test_drift_is_off_without_a_profile(drift_repository: Path, start_server) -> None:
    (drift_repository / "add" / "1" / "drift_profile.json").unlink()
    server = start_server(model_repository=drift_repository)
    with InferenceClient(server.address, timeout_s=30.0, retries=0) as client:
        client.infer("add", {"x": np.zeros((2, 4), dtype=np.float32)})
    assert not any(name.startswith("surge_drift") for name, _ in samples(server))
