"""GPU metrics from a real NVML: runs where nvidia-ml-py and an NVIDIA driver are present."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.gpu

prometheus_client = pytest.importorskip("prometheus_client")
pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install 'surge[gpu]')")

from surge.server.observability.gpu_metrics import GPU_METRICS, exposition, register_gpu_metrics  # noqa: E402
from tests.unit.test_gpu_metrics import PERF_ANALYZER_REGEX  # noqa: E402


@pytest.fixture(scope="module")
def device_count() -> int:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML is not usable here: {exc}")
    return pynvml.nvmlDeviceGetCount()


def test_every_gpu_reports_every_family_in_perf_analyzer_form(device_count: int) -> None:
    registry = prometheus_client.CollectorRegistry()
    register_gpu_metrics(registry)
    text = exposition(registry).decode()
    print(text)  # the device run keeps this as a record of what a real GPU exposed
    values = {metric: dict(re.findall(PERF_ANALYZER_REGEX.format(metric=metric), text)) for metric in GPU_METRICS}
    uuids = set(values["nv_gpu_memory_total_bytes"])
    assert len(uuids) == device_count and all(u.startswith("GPU-") for u in uuids)
    for uuid in uuids:
        total, used = int(values["nv_gpu_memory_total_bytes"][uuid]), int(values["nv_gpu_memory_used_bytes"][uuid])
        assert total > 1 << 30 and 0 <= used <= total
        assert 0.0 <= float(values["nv_gpu_utilization"][uuid]) <= 1.0
        if uuid in values["nv_gpu_power_usage"]:  # some boards do not report power
            assert 0.0 < float(values["nv_gpu_power_usage"][uuid]) < 2000.0
            assert 0.0 < float(values["nv_gpu_power_limit"][uuid]) < 2000.0
