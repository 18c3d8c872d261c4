"""GPU device metrics with Triton's names, read from NVML (``nvidia-ml-py``, imported as ``pynvml``).

Triton's metrics endpoint exposes per-GPU gauges labelled by ``gpu_uuid`` alone; ``perf_analyzer
--collect-metrics`` scrapes them with the regex ``\\n<metric>\\{gpu_uuid="([^"]+)"\\} (\\d+\\.?\\d*)``. The same
families here:

    nv_gpu_utilization          GPU utilization rate [0.0 - 1.0)
    nv_gpu_memory_total_bytes   GPU total memory, in bytes
    nv_gpu_memory_used_bytes    GPU used memory, in bytes
    nv_gpu_power_usage          GPU power usage in watts
    nv_gpu_power_limit          GPU power management limit in watts

``register_gpu_metrics(registry)`` adds a collector that reads NVML at each scrape (a few microseconds per
device). Without ``pynvml``, or without a driver, it yields nothing and logs why once. A value NVML does not
support on a device (power on some boards) is left out for that device.

Number format: prometheus_client's encoders write values of 10**6 and more in exponent form
(``8.589934592e+10``), which the Prometheus server reads, but which perf_analyzer's regex cuts at the ``e`` (it
would read 8 bytes of memory). Surge's pages are written by ``exposition.Writer``, which writes whole values in
plain digits, as Triton does; ``exposition(registry)`` is a registry's page written that way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GPU_METRICS", "GpuMetricsCollector", "exposition", "register_gpu_metrics"]

log = logging.getLogger("surge.gpu_metrics")

#: Family name -> help text (Triton's).
GPU_METRICS = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_power_usage": "GPU power usage in watts",
    "nv_gpu_power_limit": "GPU power management limit in watts",
}
_LABEL = "gpu_uuid"


class GpuMetricsCollector:
    """A prometheus_client custom collector over NVML. ``nvml`` is the ``pynvml`` module (None: import it).

    ``collect`` runs in the scraping thread; NVML is initialised on the first scrape, once.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._state = "new"  # "new" -> "ready" | "unavailable"
        self._devices: list[tuple[str, Any]] = []  # (uuid, handle)

    def describe(self) -> list[Any]:
        """No metadata up front: registering must not touch NVML (prometheus_client then calls ``collect`` lazily)."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield the five gauge families, one sample per GPU; nothing when NVML is unavailable."""
        from prometheus_client.core import GaugeMetricFamily

        if not self._ready():
            return
        nvml = self._nvml
        families = {name: GaugeMetricFamily(name, text, labels=[_LABEL]) for name, text in GPU_METRICS.items()}
        for uuid, handle in self._devices:
            readings: tuple[tuple[str, Callable[[Any], float]], ...] = (
                ("nv_gpu_utilization", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100),
                ("nv_gpu_memory_total_bytes", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total),
                ("nv_gpu_memory_used_bytes", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used),
                ("nv_gpu_power_usage", lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000),
                ("nv_gpu_power_limit", lambda h: nvml.nvmlDeviceGetPowerManagementLimit(h) / 1000),
            )
            for name, read in readings:
                try:
                    families[name].add_metric([uuid], float(read(handle)))
                except nvml.NVMLError:  # not supported on this device, or it went away: leave the sample out
                    continue
        yield from families.values()

    def _ready(self) -> bool:
        with self._lock:
            if self._state == "new":
                self._state = "unavailable"
                try:
                    if self._nvml is None:
                        import pynvml

                        self._nvml = pynvml
                    nvml = self._nvml
                    nvml.nvmlInit()
                    for i in range(nvml.nvmlDeviceGetCount()):
                        handle = nvml.nvmlDeviceGetHandleByIndex(i)
                        uuid = nvml.nvmlDeviceGetUUID(handle)
                        self._devices.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
                except ImportError:
                    if _nvidia_driver_present():
                        log.info("GPU metrics off: nvidia-ml-py is not installed (pip install 'surge[gpu]')")
                    else:
                        log.debug("GPU metrics off: no NVIDIA driver on this machine")
                except Exception as exc:  # NVMLError: no driver, no device, no permission
                    log.info("GPU metrics off: NVML is not usable here (%s)", exc)
                else:
                    self._state = "ready"
                    log.info("GPU metrics on for %d GPU(s)", len(self._devices))
            return self._state == "ready"


def _nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded (its device node or proc folder), so that suggesting NVML makes sense."""
    return os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia")


def register_gpu_metrics(registry: Any, nvml: Any = None) -> GpuMetricsCollector:
    """Register a ``GpuMetricsCollector`` with a prometheus_client ``CollectorRegistry``; returns it."""
    collector = GpuMetricsCollector(nvml)
    registry.register(collector)
    return collector


def exposition(registry: Any) -> bytes:
    """A prometheus_client registry's families as Prometheus text, written by Surge's writer (plain whole numbers)."""
    from .exposition import Writer

    writer = Writer(openmetrics=False)
    writer.families(registry.collect())
    return writer.text().encode("utf-8")
