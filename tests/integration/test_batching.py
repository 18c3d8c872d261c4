"""Dynamic batching over the wire: concurrent requests coalesce, results equal unbatched execution."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from surge.clients import AsyncInferenceClient, InferenceServerError


def _executions(stats) -> tuple[int, int]:
    (s,) = stats.model_stats
    return s.inference_count, s.execution_count


async def test_concurrent_requests_coalesce_with_identical_outputs(server):
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(48)]
    async with AsyncInferenceClient(server.address, timeout_s=30) as client:
        before = _executions(await client.model_statistics("mlp_batched"))
        batched = await asyncio.gather(*(client.infer("mlp_batched", {"x": x}, request_id=str(i)) for i, x in enumerate(xs)))
        after = _executions(await client.model_statistics("mlp_batched"))
        unbatched = [await client.infer("mlp", {"x": x}) for x in xs]
        stats = (await client.model_statistics("mlp_batched")).model_stats[0]
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == sum(len(x) for x in xs)
    assert executions < len(xs) / 2, f"{executions} executions for {len(xs)} requests"
    for i, (a, b) in enumerate(zip(batched, unbatched)):
        assert a.id == str(i) and a["probabilities"].shape == (len(xs[i]), 4)
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-6, atol=1e-7)
    assert max(b.batch_size for b in stats.batch_stats) > 3


async def test_a_failing_runtime_fails_exactly_its_batch(server):
    """failing_batched_py forms batches of 4 rows: one negative input fails its batch, the next batch succeeds."""
    async with AsyncInferenceClient(server.address, timeout_s=30, retries=0) as client:
        values = [1.0, -1.0, 2.0, 3.0]
        first = await asyncio.gather(
            *(client.infer("failing_batched_py", {"x": np.array([[v]], np.float32)}) for v in values), return_exceptions=True
        )
        assert all(isinstance(r, InferenceServerError) and r.code == grpc.StatusCode.INTERNAL for r in first)
        second = await asyncio.gather(*(client.infer("failing_batched_py", {"x": np.array([[v]], np.float32)}) for v in (4.0, 5.0, 6.0, 7.0)))
        assert [float(r["y"][0, 0]) for r in second] == [4.0, 5.0, 6.0, 7.0]


async def test_priority_and_timeout_parameters_over_the_wire(server):
    async with AsyncInferenceClient(server.address, timeout_s=30, retries=0) as client:
        x = np.ones((1, 16), np.float32)
        high = await client.infer("mlp_batched", {"x": x}, parameters={"priority": 1})
        assert high["probabilities"].shape == (1, 4)
        with pytest.raises(InferenceServerError) as info:
            await client.infer("mlp_batched", {"x": x}, parameters={"priority": 3})
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "priority 3" in info.value.message
        # slow_py has one instance: behind a 1 s request, a 50 ms timeout (Triton's µs parameter) expires in the queue
        blocker = asyncio.ensure_future(client.infer("slow_py", {"delay_s": np.array([[1.0]], np.float32)}))
        await asyncio.sleep(0.2)
        with pytest.raises(InferenceServerError) as info:
            await client.infer("slow_py", {"delay_s": np.array([[0.0]], np.float32)}, parameters={"timeout": 50_000})
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "dropped before compute" in info.value.message
        await blocker
