"""The Python gRPC floor: grpc.aio on uvloop answering ModelInfer with a precomputed response.

    python -m bench.peers.floor_server [--port 0] [--address-file FILE] [--work none|hop|model|batch]

It parses each ModelInferRequest (as any server must) and returns a response serialised in advance for
that model and row count: no decode, no compute, no encode. ModelStreamInfer answers each message of a stream
the same way, in order, as a ModelStreamInferResponse carrying Triton's final flag (the streaming floor). What Surge adds on top of this is Surge's
own cost.

``--work`` adds, per request, what the issue's design requires of any server before its own code counts
(the floor is still answered with the precomputed response, so these are lower bounds):
``hop``: one round trip through a one-thread executor (runtimes never run on the event loop);
``model``: that round trip running the model's ONNX Runtime session (one thread, as Surge's instances) on the
request's bytes (``np.frombuffer``, no validation);
``batch``: the least a batching server does: requests that arrive while a batch runs wait (no timer, no
rules), the next batch is one ``np.concatenate`` and one session call in the executor; each request then gets
the precomputed answer. ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata, ModelConfig and ModelStatistics
answer like Surge's for the benchmark models (``bench.models.MODELS``), so perf_analyzer can drive it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import grpc

from bench.models import MAX_BATCH_SIZE, MODELS
from surge.protos import grpc_service_pb2 as pb
from surge.protos import model_config_pb2 as mc

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 2**31 - 1


def _metadata(name: str) -> pb.ModelMetadataResponse:
    spec = MODELS[name]
    response = pb.ModelMetadataResponse(name=name, versions=["1"], platform="onnxruntime_onnx")
    response.inputs.add(name="x", datatype="FP32", shape=[-1, spec.features])
    response.outputs.add(name="y", datatype="FP32", shape=[-1, spec.outputs])
    return response


def _config(name: str) -> pb.ModelConfigResponse:
    spec = MODELS[name]
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=MAX_BATCH_SIZE,
                            default_model_filename="model.onnx")
    config.version_policy.latest.num_versions = 1
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[spec.features])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[spec.outputs])
    config.instance_group.add(name=name, kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return pb.ModelConfigResponse(config=config)


def _infer_response(name: str, rows: int) -> bytes:
    spec = MODELS[name]
    response = pb.ModelInferResponse(model_name=name, model_version="1")
    response.outputs.add(name="y", datatype="FP32", shape=[rows, spec.outputs])
    response.raw_output_contents.append(bytes(4 * rows * spec.outputs))
    return response.SerializeToString()


def _final_flag() -> bytes:
    """ModelInferResponse.parameters["triton_final_response"] = true, serialised (appended to a response's bytes)."""
    response = pb.ModelInferResponse()
    response.parameters["triton_final_response"].bool_param = True
    return response.SerializeToString()


_FINAL = _final_flag()
_STREAM_TAG = b"\x12"  # ModelStreamInferResponse.infer_response (field 2, length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _sessions() -> dict[str, object]:
    import onnxruntime as ort

    from bench.models import ORT_THREADS, write_onnx_files
    from bench.scenarios.targets import CACHE

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = ORT_THREADS
    files = write_onnx_files(CACHE / "onnx")
    return {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for name, path in files.items()}


class Floor:
    def __init__(self, work: str = "none") -> None:
        self.responses: dict[tuple[str, int], bytes] = {}
        self.metadata = {name: _metadata(name) for name in MODELS}
        self.configs = {name: _config(name) for name in MODELS}
        self.work = work
        self.executor = ThreadPoolExecutor(max_workers=1) if work != "none" else None
        self.sessions = _sessions() if work in ("model", "batch") else {}
        self.waiting: dict[str, list[tuple[np.ndarray, asyncio.Future[None]]]] = {}
        self.running: set[str] = set()

    async def infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> bytes:
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        key = (request.model_name, rows)
        response = self.responses.get(key)
        if response is None:
            if request.model_name not in MODELS:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model_name}'")
            response = self.responses[key] = _infer_response(request.model_name, rows)
        if self.work == "batch":
            x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(rows, MODELS[request.model_name].features)
            future = asyncio.get_running_loop().create_future()
            self.waiting.setdefault(request.model_name, []).append((x, future))
            if request.model_name not in self.running:
                self._next_batch(request.model_name)
            await future
        elif self.executor is not None:
            loop = asyncio.get_running_loop()
            if self.work == "hop":
                await loop.run_in_executor(self.executor, int)
            else:
                x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(rows, MODELS[request.model_name].features)
                await loop.run_in_executor(self.executor, self.sessions[request.model_name].run, None, {"x": x})
        if request.id:  # echo the id (perf_analyzer's async mode matches on it): field 3, appended to the bytes
            rid = request.id.encode()
            response += b"\x1a" + _varint(len(rid)) + rid
        return response

    def _next_batch(self, name: str) -> None:
        batch = self.waiting.pop(name, [])
        if not batch:
            self.running.discard(name)
            return
        self.running.add(name)
        x = np.concatenate([b[0] for b in batch])
        done = asyncio.get_running_loop().run_in_executor(self.executor, self.sessions[name].run, None, {"x": x})

        def finished(_: object) -> None:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            self._next_batch(name)

        done.add_done_callback(finished)

    async def stream(self, requests, context):  # type: ignore[no-untyped-def]
        """ModelStreamInfer: each request answered in arrival order, as its precomputed response wrapped in a
        ModelStreamInferResponse (field 2) with Triton's final flag (perf_analyzer's streaming mode waits for it)."""
        async for request in requests:
            response = await self.infer(request, context)
            yield _STREAM_TAG + _varint(len(response) + len(_FINAL)) + response + _FINAL

    async def model(self, request, context, table):  # type: ignore[no-untyped-def]
        if request.name not in table:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return table[request.name]

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, request_cls, response_cls=None):  # type: ignore[no-untyped-def]
            serializer = response_cls.SerializeToString if response_cls else None  # None: fn returns bytes
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_cls.FromString, response_serializer=serializer)

        async def live(request, context):  # type: ignore[no-untyped-def]
            return pb.ServerLiveResponse(live=True)

        async def ready(request, context):  # type: ignore[no-untyped-def]
            return pb.ServerReadyResponse(ready=True)

        async def model_ready(request, context):  # type: ignore[no-untyped-def]
            return pb.ModelReadyResponse(ready=request.name in MODELS)

        async def server_metadata(request, context):  # type: ignore[no-untyped-def]
            return pb.ServerMetadataResponse(name="floor", version="0", extensions=["model_configuration", "statistics"])

        async def model_metadata(request, context):  # type: ignore[no-untyped-def]
            return await self.model(request, context, self.metadata)

        async def model_config(request, context):  # type: ignore[no-untyped-def]
            return await self.model(request, context, self.configs)

        async def statistics(request, context):  # type: ignore[no-untyped-def]
            names = [request.name] if request.name else list(MODELS)
            return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name=n, version="1") for n in names])

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": unary(live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": unary(model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": unary(statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            "ModelInfer": unary(self.infer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.stream, request_deserializer=pb.ModelInferRequest.FromString),
        })  # fmt: skip


async def serve(host: str, port: int, address_file: Path | None, work: str = "none") -> None:
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((Floor(work).handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    if address_file is not None:
        tmp = address_file.with_suffix(".tmp")
        tmp.write_text(f"{host}:{bound}")
        os.replace(tmp, address_file)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--address-file", type=Path)
    parser.add_argument("--work", choices=("none", "hop", "model", "batch"), default="none", help="per-request work the design requires (see above)")
    args = parser.parse_args()
    import uvloop

    try:
        uvloop.run(serve(args.host, args.port, args.address_file, args.work))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
