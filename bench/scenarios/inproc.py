"""Surge's own CPU per request, without gRPC: the servicer's ModelInfer driven in process.

    taskset -c 0 python -m bench.scenarios.inproc [--model tiny] [--concurrency 8] [--requests 2000]
        [--batching '{"latency_slo_s": 0.01}'] [--stream] [--profile]

A real repository, model versions, batcher, runtime instances and metrics, as ``surge serve`` builds them; N
coroutines each send requests one after another (parsed from wire bytes by the gRPC edge's deserializer, the answer serialised, one loop turn
between requests as when they come from the network), through ModelInfer as gRPC serves it. ``--stream``: one
ModelStreamInfer stream instead, N requests in flight on it (a new one sent as each answer comes). Also prints
the mean of each stage (the request's stamps, as the metrics read them) over the last round. With
``PYTHONPATH=.cache/bench/surge-src/<sha>`` (``bench.scenarios.targets.surge_source``) it measures that revision. Prints the process's CPU per request (every thread:
the event loop and the instance's) over five rounds, the rows per execution, and the same for the floor's
work (parse the request, return prepared bytes) for reference. gRPC's own cost is not in either number: what
Surge adds over the floor in ``bench.scenarios.ab`` minus this is the transport's share of the difference.
``--profile`` prints cProfile's top functions for the last round (cProfile inflates call-heavy code about 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable

import numpy as np

from bench.models import MODELS, write_onnx_files, write_repository
from surge.protos import grpc_service_pb2 as pb
from surge.server.dataplane import DataPlane
from surge.server.edge.grpc_servicer import InferenceServicer
from surge.server.edge.wire import parse_infer_request
from surge.server.repository import ModelRepository
from surge.server.traffic.traffic import Traffic

from . import targets


class _Context:
    """What ModelInfer asks of its gRPC context on the fast path."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()


def serialize(response: object) -> bytes:
    """What gRPC's serializer does with an answer (the edge returns wire bytes, or a message for it to serialise)."""
    return response if isinstance(response, bytes) else response.SerializeToString()  # type: ignore[attr-defined]


async def measure(model: str, concurrency: int, requests: int, batching: dict | None, profile: bool, stream: bool) -> None:
    onnx = write_onnx_files(targets.CACHE / "onnx")
    root = write_repository(targets.CACHE / "repo-inproc", {model: onnx[model]}, batching)
    repo = ModelRepository(root, metrics=True)
    traffic = Traffic(repo)
    repo.on_serving_change = traffic.serving_changed
    await repo.start()
    servicer = InferenceServicer(DataPlane(repo, server_name="surge", server_version="bench", is_ready=lambda: True, traffic=traffic))
    features = MODELS[model].features
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, features])
    request.outputs.add(name="y")
    request.raw_input_contents.append(np.ones(features, np.float32).tobytes())
    received = request.SerializeToString()
    context = _Context()

    async def client(n: int) -> None:
        for _ in range(n):
            response = await servicer.model_infer_wire(parse_infer_request(received), context)  # type: ignore[arg-type]
            serialize(response)
            await asyncio.sleep(0)

    async def streamed(n: int) -> None:
        """One stream, ``concurrency`` requests in flight, ``n * concurrency`` requests in all."""
        credits: asyncio.Queue[None] = asyncio.Queue()
        for _ in range(concurrency):
            credits.put_nowait(None)

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            for _ in range(n * concurrency):
                await credits.get()
                yield parse_infer_request(received)  # as gRPC hands it to the servicer

        async for response in servicer.ModelStreamInfer(requests(), context):  # type: ignore[arg-type]
            serialize(response)
            credits.put_nowait(None)

    def load(n: int) -> Awaitable[object]:
        return streamed(n) if stream else asyncio.gather(*(client(n) for _ in range(concurrency)))

    await load(50)  # warm-up
    version = repo.get(model, "")
    rounds = []
    for index in range(5):
        before = (version.stats.inference_count, version.stats.execution_count)
        profiler = None
        if profile and index == 4:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        c0 = time.process_time()
        stages = [(h.sum, sum(h.counts)) for h in version.stats.metrics.histograms[:7]]  # type: ignore[union-attr]
        await load(requests)
        cpu = (time.process_time() - c0) / (concurrency * requests) * 1e6
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        rows = (version.stats.inference_count - before[0]) / max(version.stats.execution_count - before[1], 1)
        rounds.append((cpu, rows))
    cpus = sorted(cpu for cpu, _ in rounds[: 4 if profile else 5])
    after = [(h.sum, sum(h.counts)) for h in version.stats.metrics.histograms[:7]]  # type: ignore[union-attr]
    means = [(s1 - s0) / max(c1 - c0, 1) / 1e3 for (s0, c0), (s1, c1) in zip(stages, after)]
    names = ("total", "decode", "queue", "compute_input", "compute_infer", "compute_output", "encode")
    print("stage means over the last round (us): " + ", ".join(f"{n} {m:.1f}" for n, m in zip(names, means)))
    print(f"{model}, {'one stream' if stream else 'ModelInfer'}, concurrency {concurrency}: Surge {cpus[len(cpus) // 2]:.1f} us CPU per request (median; rounds "
          f"{', '.join(f'{c:.1f}' for c in cpus)}), {rounds[-1][1]:.1f} rows per execution")  # fmt: skip
    c0 = time.process_time()
    for _ in range(100_000):
        pb.ModelInferRequest.FromString(received)  # the floor parses, then returns bytes prepared once
    print(f"the floor's work (parse the request): {(time.process_time() - c0) / 100_000 * 1e6:.2f} us per request")
    await repo.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per coroutine and round")
    parser.add_argument("--batching", type=json.loads, default={"latency_slo_s": 0.01}, help="[dynamic_batching] as JSON, or null")
    parser.add_argument("--stream", action="store_true", help="one ModelStreamInfer stream with --concurrency requests in flight")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import uvloop

    uvloop.run(measure(args.model, args.concurrency, args.requests, args.batching, args.profile, args.stream))


if __name__ == "__main__":
    main()
