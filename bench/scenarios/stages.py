"""Where a request's server time goes, per stage, under perf_analyzer: Surge's own ModelStatistics before and after.

    python -m bench.scenarios.stages [--model tiny] [--concurrency 1,64] [--surge-rev REV] [--batching JSON]

One ``surge serve`` on CPU 0 (perf_analyzer on CPU 1, as in ``bench.compare``); for each concurrency in turn (same
server), the per-request means of ModelStatistics' stages over that measurement: queue (in the batcher), compute
input (decode + batch assembly, which includes the hand-off to the instance thread), compute infer (the runtime's
own call), compute output (results back on the loop, the request resumed, encode), their total, and rows per
execution (the batches formed).
"""

from __future__ import annotations

import argparse
import json

import grpc

from bench.models import MODELS, write_onnx_files, write_repository
from surge.protos import grpc_service_pb2 as pb
from surge.protos import grpc_service_pb2_grpc as pb_grpc

from . import perf_analyzer as pa
from . import targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--concurrency", default="1,64", help="levels, measured in this order on one server")
    parser.add_argument("--surge-rev", help="serve Surge from this git revision instead of the working tree")
    parser.add_argument("--batching", type=json.loads, default={"latency_slo_s": 0.01}, help="[dynamic_batching] as JSON, or null")
    args = parser.parse_args()
    repo = write_repository(targets.CACHE / "repo-stages", write_onnx_files(targets.CACHE / "onnx"), args.batching)
    windows = pa.Windows(interval_ms=2000, stability_pct=100, max_trials=3, warmup_requests=300)
    with targets.surge(repo, targets.surge_source(args.surge_rev)[1], "stages") as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def stats() -> pb.ModelStatistics:
            return stub.ModelStatistics(pb.ModelStatisticsRequest(name=args.model)).model_stats[0]

        for concurrency in (int(c) for c in args.concurrency.split(",")):
            before = stats()
            m = pa.measure(address, args.model, MODELS[args.model].features, 1, concurrency=concurrency, windows=windows)
            after = stats()
            n = after.inference_stats.success.count - before.inference_stats.success.count

            def us(stage: str) -> float:
                return (getattr(after.inference_stats, stage).ns - getattr(before.inference_stats, stage).ns) / n / 1e3

            rows_per_exec = n / max(1, after.execution_count - before.execution_count)
            print(f"c{concurrency}: {m['infer_per_s']:.0f} infer/s, p50 {m['p50_ms'] * 1e3:.0f} us, p99 {m['p99_ms'] * 1e3:.0f} us | server "
                  f"per request: total {us('success'):.0f} us = queue {us('queue'):.0f} + compute input {us('compute_input'):.0f} "
                  f"+ infer {us('compute_infer'):.0f} + output {us('compute_output'):.0f} | rows per execution {rows_per_exec:.1f}")


if __name__ == "__main__":
    main()
