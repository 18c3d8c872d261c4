"""Client-side load balancing: one client over three ``surge serve`` processes; one is killed mid-run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from surge.clients import AsyncInferenceClient, InferenceClient, UnavailableError
from tests.models import write_add_model
from tests.process import SurgeProcess

pytestmark = pytest.mark.timeout(120)

X = np.ones((1, 4), np.float32)
CONCURRENCY = 4


async def _load(client: AsyncInferenceClient, stop: asyncio.Event, outcomes: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            result = await client.infer("add", {"x": X})
        except UnavailableError:
            outcomes["failed"] += 1
        else:
            assert result["y"][0, 0] == 2.0
            outcomes["ok"] += 1


def _served(address: str) -> int:
    with InferenceClient(address, timeout_s=30) as client:
        return client.model_statistics("add").model_stats[0].inference_count


def test_round_robin_over_three_servers_survives_one_killed(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_add_model(repository / "add" / "1" / "model.onnx", 1.0)
    (repository / "add" / "config.toml").write_text("max_batch_size = 8\n")
    servers = [SurgeProcess(repository, tmp_path / f"s{i}", "--log-level", "warning").start() for i in range(3)]
    addresses = [s.address for s in servers]
    try:
        async def run() -> tuple[dict[str, int], dict[str, int], list[int]]:
            # two clients at once: the default (retries on UNAVAILABLE) and one with no retries, to count the
            # requests that were in flight on the killed server (they fail there; with retries they succeed elsewhere)
            stop = asyncio.Event()
            retried, plain = {"ok": 0, "failed": 0}, {"ok": 0, "failed": 0}
            async with AsyncInferenceClient(addresses, timeout_s=30) as a, AsyncInferenceClient(",".join(addresses), timeout_s=30, retries=0) as b:
                assert a.address == b.address == "ipv4:" + ",".join(addresses)
                tasks = [asyncio.create_task(_load(a, stop, retried)) for _ in range(CONCURRENCY)]
                tasks += [asyncio.create_task(_load(b, stop, plain)) for _ in range(CONCURRENCY)]
                await asyncio.sleep(1.5)
                before = [await asyncio.to_thread(_served, address) for address in addresses]
                servers[1].proc.kill()  # SIGKILL: no drain, its connections reset
                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.gather(*tasks)
            return retried, plain, before

        retried, plain, before = asyncio.run(run())
        assert all(n > 0 for n in before), f"round robin should reach all three servers before the kill: {before}"
        after = [_served(addresses[0]), _served(addresses[2])]
        assert after[0] > before[0] and after[1] > before[2], "the two live servers keep serving after the kill"
        with InferenceClient(addresses, timeout_s=30) as client:  # the blocking client takes the same list
            assert client.address == "ipv4:" + ",".join(addresses)
            for _ in range(6):
                assert client.infer("add", {"x": X})["y"][0, 0] == 2.0
        port = addresses[0].rsplit(":", 1)[1]
        with InferenceClient(f"dns:///localhost:{port}", timeout_s=30) as client:  # a DNS name (here with one live server)
            assert client.infer("add", {"x": X})["y"][0, 0] == 2.0
        print(f"\nretrying client: {retried}; client without retries: {plain} (its failures were in flight on the killed server)")
        assert retried["failed"] == 0, retried
        assert plain["failed"] <= 2 * CONCURRENCY, plain
        assert retried["ok"] > 0 and plain["ok"] > 0
    finally:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
