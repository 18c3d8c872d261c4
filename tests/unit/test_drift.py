"""Drift statistics against hand-computed values, the profile format, the [drift] config table, and the monitor offline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surge.server.config import DriftConfig, parse_model_config
from surge.server.observability.drift import (
    DriftMonitor,
    FeatureProfile,
    Profile,
    bin_counts,
    build_profile,
    category_counts,
    drift_report,
    ks_statistic,
    psi,
)
from surge.server.errors import ConfigError


def test_psi_matches_hand_computation() -> None:
    # p = [0.75, 0.25] against q = [0.5, 0.5]: 0.25 ln 1.5 + (-0.25) ln 0.5 = 0.25 (ln 1.5 + ln 2) = 0.25 ln 3
    assert psi(np.array([0.5, 0.5]), np.array([3, 1])) == pytest.approx(0.25 * math.log(3.0), abs=1e-12)
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([20, 30, 50])) == pytest.approx(0.0, abs=1e-12)
    # an empty bin is floored at 1e-4: (1e-4 - 0.5) ln(1e-4 / 0.5) + (1 - 0.5) ln(1 / 0.5)
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(2.0)
    assert psi(np.array([0.5, 0.5]), np.array([0, 10])) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(psi(np.array([0.5, 0.5]), np.array([0, 0])))


def test_ks_matches_hand_computation() -> None:
    uniform = np.linspace(0.0, 1.0, 101)  # the reference CDF is F(x) = x on [0, 1]
    # x = 0.1, 0.2, 0.9: D+ = max(1/3 - 0.1, 2/3 - 0.2, 1 - 0.9) = 0.4667; D- = max(0.1, 0.2 - 1/3, 0.9 - 2/3) = 0.2333
    assert ks_statistic(np.array([0.9, 0.1, 0.2]), uniform) == pytest.approx(2 / 3 - 0.2, abs=1e-12)
    assert ks_statistic(np.array([2.0, 3.0]), uniform) == pytest.approx(1.0)  # all above the reference's max
    assert ks_statistic(np.array([0.5]), uniform) == pytest.approx(0.5)


def test_bin_counts_uses_open_outer_bins() -> None:
    edges = np.array([0.0, 1.0])
    assert bin_counts(np.array([-5.0, 0.0, 0.5, 1.0, 7.0]), edges).tolist() == [1, 2, 2]


def test_profile_of_a_normal_sample_and_its_json_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10_000, 3)).astype(np.float32)
    x[:100, 2] = np.nan
    profile = build_profile({"x": x, "y": x[:, 0]})
    assert [f.name for f in profile.features] == ["x[0]", "x[1]", "x[2]", "y"]
    f0 = profile.features[0]
    assert len(f0.edges) == 9 and np.allclose(f0.fractions, 0.1, atol=1e-3)
    assert f0.mean == pytest.approx(0.0, abs=0.03) and f0.std == pytest.approx(1.0, abs=0.03)
    assert profile.features[2].missing_rate == pytest.approx(0.01)
    path = tmp_path / "drift_profile.json"
    path.write_text(profile.to_json())
    again = Profile.load(path)
    assert again.rows == 10_000 and np.array_equal(again.features[1].quantiles, profile.features[1].quantiles)


def _windows(monitor: DriftMonitor, rng: np.random.Generator, count: int, shift: float = 0.0) -> list[bool]:
    """Feed ``count`` fresh windows (rows in requests of 50) and return the alert after each."""
    alerts = []
    for _ in range(count):
        for _ in range(monitor.window_rows // 50):
            x = rng.standard_normal((50, 4)).astype(np.float32)
            x[:, 0] += shift
            monitor.ingest({"x": x}, {})
        alerts.append(monitor.snapshot().alert)
    return alerts


def test_false_alarms_and_a_one_sigma_shift_offline() -> None:
    profile = build_profile({"x": np.random.default_rng(1).standard_normal((20_000, 4))})
    monitor = DriftMonitor(profile, model="m", version="1", window_rows=1000, psi_alert=0.2)
    rng = np.random.default_rng(2)
    assert sum(_windows(monitor, rng, 20)) <= 1  # same distribution: at most one false alarm in 20 windows
    assert max(f.psi for f in monitor.snapshot().features) < 0.2
    assert _windows(monitor, rng, 1, shift=1.0) == [True]  # within one window of shifted rows
    shifted = {f.name: f for f in monitor.snapshot().features}
    assert shifted["x[0]"].psi > 0.5 and shifted["x[0]"].ks > 0.3 and shifted["x[1]"].psi < 0.2


def test_nan_and_out_of_range_ratios() -> None:
    profile = build_profile({"x": np.random.default_rng(1).uniform(0.0, 1.0, (5000, 1))})
    monitor = DriftMonitor(profile, model="m", version="1", window_rows=100)
    x = np.full((100, 1), 0.5)
    x[:10] = np.nan
    x[10:28] = 5.0
    monitor.ingest({"x": x}, {})
    (f,) = monitor.snapshot().features
    assert f.name == "x" and f.nan_ratio == pytest.approx(0.1) and f.out_of_range_ratio == pytest.approx(18 / 90)


def _categorical_sample() -> np.ndarray:
    """1000 rows: column 0 categorical (0: 50 %, 1: 30 %, 2: 20 %), column 1 continuous."""
    x = np.empty((1000, 2))
    x[:, 0] = np.repeat([0, 1, 2], [500, 300, 200])
    x[:, 1] = np.random.default_rng(3).standard_normal(1000)
    return x


def test_categorical_profile_detection_and_json_round_trip(tmp_path) -> None:
    codes = np.repeat(np.array([2, 7, 3], dtype=np.int32), [200, 500, 300])
    profile = build_profile({"c": codes, "x": _categorical_sample()})
    c, x0, x1 = profile.features
    assert c.kind == "categorical" and c.categories.tolist() == [2.0, 3.0, 7.0]
    assert c.fractions.tolist() == pytest.approx([0.2, 0.3, 0.5, 0.0]) and len(c.edges) == 0  # the last: other
    assert x0.kind == "categorical" and x0.categories.tolist() == [0.0, 1.0, 2.0]  # integral floats
    assert x1.kind == "continuous" and len(x1.edges) == 9
    # more distinct values than max_categories, or max_categories=0: continuous
    assert build_profile({"c": np.arange(1000) % 21}).features[0].kind == "continuous"
    assert build_profile({"c": np.arange(1000) % 21}, max_categories=21).features[0].kind == "categorical"
    assert build_profile({"c": codes}, max_categories=0).features[0].kind == "continuous"
    path = tmp_path / "drift_profile.json"
    path.write_text(profile.to_json())
    again = Profile.load(path)
    for before, after in zip(profile.features, again.features, strict=True):
        assert after.kind == before.kind and np.array_equal(after.categories, before.categories)
        assert np.array_equal(after.fractions, before.fractions) and np.array_equal(after.edges, before.edges)
    # a profile written before categorical features (no kind) still loads, as continuous
    old = x1.to_dict()
    del old["kind"]
    assert FeatureProfile.from_dict(old).kind == "continuous"
    with pytest.raises(ValueError, match="categories"):
        FeatureProfile.from_dict({**c.to_dict(), "fractions": [0.5, 0.5]})


def test_category_counts_put_unseen_values_in_other() -> None:
    assert category_counts(np.array([0.0, 2.0, 2.0, 5.0, -1.0, 1.0]), np.array([0.0, 1.0, 2.0])).tolist() == [1, 1, 2, 2]


def test_categorical_psi_on_an_unchanged_and_a_shifted_mix() -> None:
    monitor = DriftMonitor(build_profile({"x": _categorical_sample()}), model="m", version="1", window_rows=100)
    noise = np.random.default_rng(4).standard_normal(100)
    monitor.ingest({"x": np.column_stack([np.repeat([0, 1, 2], [50, 30, 20]), noise])}, {})
    unchanged = monitor.snapshot().features[0]
    # p = q = [0.5, 0.3, 0.2, other 0 (floored at 1e-4 both sides)]: every term is 0
    assert unchanged.name == "x[0]" and unchanged.psi == pytest.approx(0.0, abs=1e-12)
    assert unchanged.ks == 0.0 and unchanged.out_of_range_ratio == 0.0
    monitor.ingest({"x": np.column_stack([np.repeat([0, 1, 2], [20, 30, 50]), noise])}, {})
    shifted = monitor.snapshot().features[0]
    # p = [0.2, 0.3, 0.5, 0] against q = [0.5, 0.3, 0.2, 0]: (-0.3) ln 0.4 + 0 + 0.3 ln 2.5 + 0 = 0.6 ln 2.5
    assert shifted.psi == pytest.approx(0.6 * math.log(2.5), abs=1e-12) and shifted.ks == 0.0
    assert monitor.snapshot().alert


def test_unseen_categories_count_as_out_of_range() -> None:
    monitor = DriftMonitor(build_profile({"x": _categorical_sample()}), model="m", version="1", window_rows=100)
    x = np.column_stack([np.repeat([0.0, 1.0, 2.0, 7.0, np.nan], [40, 20, 20, 10, 10]), np.zeros(100)])
    x[0, 0] = -3.0  # below the profile's categories: also unseen
    monitor.ingest({"x": x}, {})
    f = monitor.snapshot().features[0]
    assert f.nan_ratio == pytest.approx(0.1) and f.out_of_range_ratio == pytest.approx(11 / 90)
    # p = [39, 20, 20, 11] / 90 against q = [0.5, 0.3, 0.2, 1e-4 (floored)]
    p, q = np.array([39, 20, 20, 11]) / 90, np.array([0.5, 0.3, 0.2, 1e-4])
    assert f.psi == pytest.approx(float(np.sum((p - q) * np.log(p / q))), abs=1e-12) and f.ks == 0.0


def test_max_features_caps_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    profile = build_profile({"x": np.random.default_rng(1).standard_normal((1000, 8))})
    monitor = DriftMonitor(profile, model="m", version="1", window_rows=100, max_features=3)
    monitor.ingest({"x": np.zeros((100, 8))}, {})
    assert [f.name for f in monitor.snapshot().features] == ["x[0]", "x[1]", "x[2]"]
    assert "first 3 of the profile's 8 features" in caplog.text


def test_drift_config_table() -> None:
    assert parse_model_config("m", {}).drift is None
    assert parse_model_config("m", {"drift": {}}).drift == DriftConfig()
    config = parse_model_config("m", {"drift": {"sample_rate": 1, "window_rows": 200, "psi_alert": 0.25, "max_features": 8}}).drift
    assert config == DriftConfig(sample_rate=1.0, window_rows=200, psi_alert=0.25, max_features=8)
    with pytest.raises(ConfigError, match="sample_rate"):
        parse_model_config("m", {"drift": {"sample_rate": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_model_config("m", {"drift": {"window": 5}})


def test_drift_report_formats_a_scrape() -> None:
    text = (
        'surge_drift_psi{model="m",version="1",feature="x[0]"} 0.5\n'
        'surge_drift_ks{model="m",version="1",feature="x[0]"} 0.25\n'
        'surge_drift_alert{model="m",version="1"} 1\n'
        'surge_drift_alert{model="other",version="1"} 0\n'
    )
    report = drift_report(text, "m")
    assert "model m version 1: drift ALERT" in report and "x[0]" in report and "0.5000" in report
    assert "no drift metrics" in drift_report(text, "missing")
