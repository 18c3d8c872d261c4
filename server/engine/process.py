"""The engine process's entry point (spawned by the supervisor, ``workers.py``): load the models, serve front ends.

``engine_main`` runs one ``EngineHost`` over one ``ModelRepository`` for one device, with its own ``/metrics``
page on 127.0.0.1 (an ephemeral port; the supervisor's scrape includes it: model families come from here,
whole). It tells the supervisor it is ready once the repository has loaded. On SIGTERM (sent after the front
ends have drained) it waits for the front ends to disconnect, within the drain timeout, then drains and frees
every model and exits 0. Exit 2: it cannot start (a configuration error), which stops the whole server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..errors import ConfigError
from .host import EngineHost

__all__ = ["engine_main", "engine_socket"]

log = logging.getLogger("surge.engine")

EXIT_CANNOT_START = 2


def engine_socket(state_dir: Path, device: str) -> Path:
    """Where the engine of ``device`` listens for front ends (the supervisor's 0700 state folder)."""
    return state_dir / f"engine-{device}.sock"


class _FrontEndRequests(Collector):
    """``surge_engine_requests_total{device, front_end}``: requests each front end sent this engine."""

    def __init__(self, host: EngineHost) -> None:
        self._host = host

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("surge_engine_requests", "Inference requests an engine received, by front end (process index).",
                                     labels=["device", "front_end"])  # fmt: skip
        for index, count in sorted(self._host.requests_by_front_end.items()):
            family.add_metric([self._host.device, str(index)], count)
        yield family


def engine_main(device: str, devices: list[str], config: Any, state_dir: str, secret: bytes, ready: Connection, log_level: str, loop: str,
                arena_bytes: int) -> None:  # fmt: skip
    """Entry point of a spawned engine: serve until SIGTERM; exit 2 when it cannot start."""
    from ..cli import _run
    from ..workers import _set_parent_death_signal

    _set_parent_death_signal()
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)-7s %(name)s [engine {device}]: %(message)s")
    try:
        _run(_serve_engine(device, devices, config, Path(state_dir), secret, ready, arena_bytes), loop)
    except (ConfigError, OSError) as exc:
        log.error("engine %s cannot start: %s", device, exc)
        sys.exit(EXIT_CANNOT_START)


async def _serve_engine(device: str, devices: list[str], config: Any, state_dir: Path, secret: bytes, ready: Connection, arena_bytes: int) -> None:
    from ..app import SERVER_VERSION
    from ..observability.metrics import ServerMetrics
    from ..edge.metrics_http import MetricsEndpoint
    from ..repository import ModelRepository

    if config.switch_interval_s:
        sys.setswitchinterval(config.switch_interval_s)
    from .devices import device_of

    root = config.model_repository
    owns = (lambda name: device_of(root, name) == device) if len(devices) > 1 else None  # one engine: every model is its own
    repository = ModelRepository(
        root, control_mode=config.model_control_mode, load_models=tuple(n for n in config.load_models if owns is None or owns(n)),
        poll_interval_s=config.poll_interval_s, drain_timeout_s=config.drain_timeout_s, metrics=config.metrics_port >= 0, owns=owns,
    )
    endpoint = None
    address = ""
    metrics = None
    if config.metrics_port >= 0:
        metrics = ServerMetrics(lambda: [v.sample() for v in repository.all_versions()], server_version=SERVER_VERSION)
        endpoint = MetricsEndpoint(metrics, "127.0.0.1", 0)
        address = await endpoint.start()
    host = EngineHost(repository, engine_socket(state_dir, device), secret, device=device, metrics_address=address, arena_bytes=arena_bytes)
    if metrics is not None:
        metrics.registry.register(_FrontEndRequests(host))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await repository.start()
        await host.start()
        ready.send({"device": device, "pid": os.getpid(), "metrics": address, "socket": str(host.socket_path)})
        ready.close()
        await stopping.wait()
        log.info("stopping: waiting for the front ends to finish (up to %.0f s), then draining the models", config.drain_timeout_s)
        try:
            await asyncio.wait_for(host.idle.wait(), config.drain_timeout_s)
        except TimeoutError:
            log.warning("front ends still connected after %.0f s; stopping anyway", config.drain_timeout_s)
    finally:
        await host.aclose()
        await repository.aclose()
        if endpoint is not None:
            await endpoint.aclose()
    log.info("stopped")
