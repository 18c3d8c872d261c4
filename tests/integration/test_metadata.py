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
    assert list(metadata.extensions) == [*EXTENSIONS, "system_shared_memory"]  # cuda_shared_memory needs CuPy and a GPU


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


def test_grpc_health_list_reports_every_name_check_answers(server, caplog):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        listed = health.List(health_pb2.HealthListRequest(), timeout=10).statuses
        assert {name: s.status for name, s in listed.items()} == {
            "": health_pb2.HealthCheckResponse.SERVING,
            "inference.GRPCInferenceService": health_pb2.HealthCheckResponse.SERVING,
        }
        for name, status in listed.items():  # the same answer Check gives, name by name
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status == status.status
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# grpc.reflection.v1's reflection.proto as its public spec writes it, compiled here with protoc into a pool of its
# own: the test client knows nothing of grpcio-reflection's v1alpha classes nor of how Surge serves v1.
_REFLECTION_V1_PROTO = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest) returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest { string containing_type = 1; int32 extension_number = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse { string base_type_name = 1; repeated int32 extension_number = 2; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""


def _reflection_v1_messages(tmp_path):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    source = tmp_path / "grpc" / "reflection" / "v1" / "reflection.proto"
    source.parent.mkdir(parents=True)
    source.write_text(_REFLECTION_V1_PROTO)
    out = tmp_path / "reflection_v1.pb"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}", "grpc/reflection/v1/reflection.proto"]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    )


def test_reflection_v1_answers_as_a_v1_client_asks(server, tmp_path):
    from google.protobuf import descriptor_pb2

    request_type, response_type = _reflection_v1_messages(tmp_path)
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=request_type.SerializeToString, response_deserializer=response_type.FromString,
        )
        asked = [
            request_type(list_services=""),
            request_type(file_containing_symbol="inference.GRPCInferenceService"),
            request_type(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
            request_type(file_containing_symbol="no.such.Symbol"),
        ]
        listed, inference, v1, missing = list(call(iter(asked), timeout=10))
    services = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services

    def files(response) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        protos = (descriptor_pb2.FileDescriptorProto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto)
        return {f.package + "/" + f.name: f for f in protos}

    described = {s.name: s for f in files(inference).values() for s in f.service}
    assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata"} <= {m.name for m in described["GRPCInferenceService"].method}
    (v1_file,) = [f for f in files(v1).values() if f.package == "grpc.reflection.v1"]
    (method,) = v1_file.service[0].method
    assert (method.input_type, method.output_type) == (".grpc.reflection.v1.ServerReflectionRequest", ".grpc.reflection.v1.ServerReflectionResponse")
    assert method.client_streaming and method.server_streaming
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_v1alpha_descriptor_database(server):
    """grpcio-reflection's own client (v1alpha) still finds every service and its methods."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"inference.GRPCInferenceService", "grpc.reflection.v1.ServerReflection"} <= set(database.get_services())
        service = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
        assert "ModelInfer" in service.methods_by_name
