"""Surge's own CPU per request, without gRPC: the servicer's ModelInfer driven in process.

    taskset -c 0 python -m bench.scenarios.inproc [--model tiny] [--concurrency 8] [--requests 2000]
        [--batching '{"latency_slo_s": 0.01}'] [--profile]

A real repository, model versions, batcher, runtime instances and metrics, as ``surge serve`` builds them; N
coroutines each send requests one after another (parsed from wire bytes, the answer serialised, one loop turn
between requests as when they come from the network). Prints the process's CPU per request (every thread:
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

import numpy as np

from bench.models import MODELS, write_onnx_files, write_repository
from surge.protos import grpc_service_pb2 as pb
from surge.server.dataplane import DataPlane
from surge.server.edge.grpc_servicer import InferenceServicer
from surge.server.repository import ModelRepository
from surge.server.traffic.traffic import Traffic

from . import targets


class _Context:
    """What ModelInfer asks of its gRPC context on the fast path."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()


async def measure(model: str, concurrency: int, requests: int, batching: dict | None, profile: bool) -> None:
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
    wire = request.SerializeToString()
    context = _Context()

    async def client(n: int) -> None:
        for _ in range(n):
            response = await servicer.ModelInfer(pb.ModelInferRequest.FromString(wire), context)  # type: ignore[arg-type]
            response.SerializeToString()
            await asyncio.sleep(0)

    await asyncio.gather(*(client(50) for _ in range(concurrency)))  # warm-up
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
        await asyncio.gather(*(client(requests) for _ in range(concurrency)))
        cpu = (time.process_time() - c0) / (concurrency * requests) * 1e6
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        rows = (version.stats.inference_count - before[0]) / max(version.stats.execution_count - before[1], 1)
        rounds.append((cpu, rows))
    cpus = sorted(cpu for cpu, _ in rounds[: 4 if profile else 5])
    print(f"{model}, concurrency {concurrency}: Surge {cpus[len(cpus) // 2]:.1f} us CPU per request (median; rounds "
          f"{', '.join(f'{c:.1f}' for c in cpus)}), {rounds[-1][1]:.1f} rows per execution")  # fmt: skip
    c0 = time.process_time()
    for _ in range(100_000):
        pb.ModelInferRequest.FromString(wire)  # the floor parses, then returns bytes prepared once
    print(f"the floor's work (parse the request): {(time.process_time() - c0) / 100_000 * 1e6:.2f} us per request")
    await repo.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per coroutine and round")
    parser.add_argument("--batching", type=json.loads, default={"latency_slo_s": 0.01}, help="[dynamic_batching] as JSON, or null")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import uvloop

    uvloop.run(measure(args.model, args.concurrency, args.requests, args.batching, args.profile))


if __name__ == "__main__":
    main()
