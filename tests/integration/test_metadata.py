"""Health, metadata, config and statistics RPCs; gRPC health and reflection."""

from __future__ import annotations

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from surge.server.edge.grpc_servicer import EXTENSIONS


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.server_metadata()
    assert metadata.name == "surge" and metadata.version
    assert list(metadata.extensions) == list(EXTENSIONS)


def test_model_ready(client):
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("broken")


def test_model_metadata_has_leading_batch_dim_only_when_batchable(client):
    mlp = client.model_metadata("mlp")
    assert mlp.name == "mlp" and list(mlp.versions) == ["1"] and mlp.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.inputs] == [("x", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.outputs] == [("probabilities", "FP32", [-1, 4])]
    nobatch = client.model_metadata("nobatch")
    assert [list(t.shape) for t in nobatch.inputs] == [[2, 3]]
    assert list(client.model_metadata("versioned").versions) == ["1", "2"]


def test_model_config_is_triton_shaped(client):
    config = client.model_config("mlp")
    assert config.name == "mlp" and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 64
    assert not config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [16])]
    assert config.version_policy.latest.num_versions == 1
    slow = client.model_config("slow_py")
    assert slow.HasField("dynamic_batching") and slow.dynamic_batching.default_queue_policy.max_queue_size == 2
    assert client.model_config("versioned").version_policy.HasField("all")


def test_statistics_count_every_request_and_read_numeric_versions(client):
    def stats(name, version=""):
        return {s.version: s for s in client.model_statistics(name, version).model_stats}

    before = stats("versioned")
    for rows in (1, 3):
        client.infer("versioned", {"x": np.zeros((rows, 4), np.float32)}, version="1")
    client.infer("versioned", {"x": np.zeros((2, 4), np.float32)}, version="2")
    after = stats("versioned")
    assert set(after) == {"1", "2"}
    v1, v1_before = after["1"].inference_stats, before["1"].inference_stats
    assert v1.success.count - v1_before.success.count == 2
    assert v1.queue.count - v1_before.queue.count == 2  # perf_analyzer picks versions by queue.count
    assert after["1"].inference_count - before["1"].inference_count == 4  # rows
    assert after["1"].execution_count - before["1"].execution_count == 2
    assert v1.compute_infer.ns > v1_before.compute_infer.ns and after["1"].last_inference > 0
    assert {b.batch_size for b in after["1"].batch_stats} >= {1, 3}
    assert list(stats("versioned", "2")) == ["2"]
    everything = client.model_statistics().model_stats
    assert {"mlp", "versioned", "nobatch"} <= {s.name for s in everything}


def test_grpc_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
