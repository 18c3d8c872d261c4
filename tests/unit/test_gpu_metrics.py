"""``surge.server.observability.gpu_metrics``: Triton's ``nv_gpu_*`` families as perf_analyzer reads them.

NVML is not our code: a small fake module stands in for ``pynvml`` (same function names, checked against the
real package when it is installed); ``tests/gpu/test_gpu_metrics_nvml.py`` reads a real GPU.
"""

from __future__ import annotations

import logging
import re
import types
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from surge.server.observability.gpu_metrics import GPU_METRICS, GpuMetricsCollector, exposition, register_gpu_metrics  # noqa: E402

#: perf_analyzer's pattern (client_backend/triton/triton_client_backend.cc), with <metric> substituted.
PERF_ANALYZER_REGEX = r'\n{metric}\{{gpu_uuid="([^"]+)"\}} (\d+\.?\d*)'

H100_BYTES = 85_899_345_920  # 80 GiB: prometheus_client alone would write 8.589934592e+10


class _NVMLError(Exception):
    pass


class _NotSupported(_NVMLError):
    pass


def _fake_nvml(devices: list[dict[str, Any]], init_error: Exception | None = None) -> types.SimpleNamespace:
    """A stand-in for the ``pynvml`` module with the calls the collector makes; a device value may be an error."""
    calls: list[str] = []

    def value(handle: int, key: str) -> Any:
        v = devices[handle][key]
        if isinstance(v, Exception):
            raise v
        return v

    def init() -> None:
        calls.append("nvmlInit")
        if init_error is not None:
            raise init_error

    return types.SimpleNamespace(
        calls=calls,
        NVMLError=_NVMLError,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: value(h, "uuid"),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=value(h, "util_percent"), memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=value(h, "total"), used=value(h, "used"), free=0),
        nvmlDeviceGetPowerUsage=lambda h: value(h, "power_mw"),
        nvmlDeviceGetPowerManagementLimit=lambda h: value(h, "limit_mw"),
    )


GPUS = [
    {"uuid": "GPU-2a6b0c9e-1111-2222-3333-444455556666", "util_percent": 37, "total": H100_BYTES, "used": 12_884_901_888, "power_mw": 312_456, "limit_mw": 700_000},
    {"uuid": b"GPU-9f00aa11-7777-8888-9999-000011112222", "util_percent": 0, "total": 150_754_820_096, "used": 0, "power_mw": 71_000, "limit_mw": 700_000},
]


def _registry(nvml: Any) -> Any:
    registry = prometheus_client.CollectorRegistry()
    register_gpu_metrics(registry, nvml)
    return registry


def _scrape(registry: Any, metric: str) -> dict[str, str]:
    text = exposition(registry).decode()
    return dict(re.findall(PERF_ANALYZER_REGEX.format(metric=metric), text))


def test_perf_analyzer_reads_every_family_with_exact_values() -> None:
    registry = _registry(_fake_nvml(GPUS))
    uuids = ("GPU-2a6b0c9e-1111-2222-3333-444455556666", "GPU-9f00aa11-7777-8888-9999-000011112222")
    expected = {
        "nv_gpu_utilization": ("0.37", "0"),
        "nv_gpu_memory_total_bytes": ("85899345920", "150754820096"),
        "nv_gpu_memory_used_bytes": ("12884901888", "0"),
        "nv_gpu_power_usage": ("312.456", "71"),
        "nv_gpu_power_limit": ("700", "700"),
    }
    for metric, values in expected.items():
        assert _scrape(registry, metric) == dict(zip(uuids, values)), metric
    # perf_analyzer parses memory with stoull and the rest with stod: the captured text must be the whole number
    assert int(_scrape(registry, "nv_gpu_memory_total_bytes")[uuids[0]]) == H100_BYTES


def test_plain_generate_latest_would_mislead_perf_analyzer() -> None:
    """Why ``exposition`` exists: prometheus_client writes large values with an exponent that the regex cuts off."""
    text = prometheus_client.generate_latest(_registry(_fake_nvml(GPUS))).decode()
    captured = dict(re.findall(PERF_ANALYZER_REGEX.format(metric="nv_gpu_memory_total_bytes"), text))
    assert captured[GPUS[0]["uuid"]] == "8.589934592"  # perf_analyzer would read 8 bytes


def test_exactly_one_label_and_gauge_types() -> None:
    text = exposition(_registry(_fake_nvml(GPUS[:1]))).decode()
    for metric, help_text in GPU_METRICS.items():
        assert f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n" in text
    samples = [line for line in text.splitlines() if line.startswith("nv_gpu_")]
    assert len(samples) == 5
    assert all(re.fullmatch(r'nv_gpu_[a-z_]+\{gpu_uuid="GPU-[0-9a-f-]+"\} [0-9.]+', line) for line in samples), samples


def test_every_whole_value_is_written_in_plain_digits_and_others_round_trip() -> None:
    registry = _registry(_fake_nvml(GPUS[:1]))
    prometheus_client.Gauge("surge_big_bytes", "a large value", registry=registry).set(H100_BYTES)
    prometheus_client.Gauge("surge_tiny", "a small value", registry=registry).set(2.5e-7)
    prometheus_client.Gauge("surge_huge", "beyond exact integers", registry=registry).set(1e300)
    text = exposition(registry).decode()
    assert "surge_big_bytes 85899345920\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["surge_tiny"].samples[0].value == 2.5e-7 and families["surge_huge"].samples[0].value == 1e300
    assert text.endswith("\n")


def test_unsupported_readings_are_left_out_per_device() -> None:
    gpus = [dict(GPUS[0], power_mw=_NotSupported("Not Supported"), limit_mw=_NotSupported("Not Supported"))]
    registry = _registry(_fake_nvml(gpus))
    assert _scrape(registry, "nv_gpu_power_usage") == {}
    assert _scrape(registry, "nv_gpu_power_limit") == {}
    assert _scrape(registry, "nv_gpu_memory_total_bytes") == {GPUS[0]["uuid"]: "85899345920"}


def test_without_a_driver_nothing_is_exposed_and_the_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = _fake_nvml(GPUS, init_error=_NVMLError("NVML Shared Library Not Found"))
    registry = _registry(nvml)
    with caplog.at_level(logging.INFO, logger="surge.gpu_metrics"):
        for _ in range(3):
            assert "nv_gpu" not in exposition(registry).decode()
    assert nvml.calls == ["nvmlInit"]  # initialised once, not at every scrape
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["GPU metrics off: NVML is not usable here (NVML Shared Library Not Found)"]


def test_nvml_is_initialised_on_the_first_scrape_not_at_registration() -> None:
    nvml = _fake_nvml(GPUS)
    registry = _registry(nvml)
    assert nvml.calls == []
    exposition(registry)
    exposition(registry)
    assert nvml.calls == ["nvmlInit"]


def test_the_fake_matches_the_real_pynvml_names() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    fake = _fake_nvml(GPUS)
    missing = [name for name in vars(fake) if name.startswith(("nvml", "NVML")) and not hasattr(pynvml, name)]
    assert missing == []


def test_real_pynvml_without_a_gpu_yields_nothing() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver: tests/gpu reads it")
    assert list(GpuMetricsCollector().collect()) == []
