"""The data plane without an edge: plain values in and out, over a real repository (one ONNX model, two versions)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from surge.protos import grpc_service_pb2 as pb
from surge.server import errors
from surge.server.dataplane import DataPlane, TensorMetadata, error_message
from surge.server.repository import ModelRepository

from tests.models import write_add_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for version, constant in ((1, 1.0), (2, 2.0)):
        write_add_model(tmp_path / "add" / str(version) / "model.onnx", constant)
    (tmp_path / "add" / "config.toml").write_text("max_batch_size = 8\n\n[version_policy]\nall = true\n")
    return tmp_path


def run(root: Path, body) -> None:
    async def main() -> None:
        repo = ModelRepository(root)
        await repo.start()
        try:
            await body(DataPlane(repo, server_name="surge", server_version="test", is_ready=repo.ready))
        finally:
            await repo.aclose()

    asyncio.run(main())


def no_metadata() -> tuple[()]:
    return ()


async def outputs_of(request, spec, version, outputs, decoded):
    return version, outputs


def add_request(version: str = "", rows: int = 2) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="add", model_version=version, id="r1")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.arange(rows * 4, dtype=np.float32).tobytes())
    return request


def test_health_metadata_config_and_index(repository: Path) -> None:
    async def body(plane: DataPlane) -> None:
        assert plane.live() and plane.ready()
        assert plane.model_ready("add", "1") and plane.model_ready("add", "")
        assert not plane.model_ready("add", "7") and not plane.model_ready("nope", "")
        name, version, extensions = plane.server_metadata()
        assert (name, version) == ("surge", "test") and "model_repository" in extensions
        meta = plane.model_metadata("add", "")
        assert (meta.name, sorted(meta.versions)) == ("add", ["1", "2"])
        assert meta.inputs == [TensorMetadata("x", "FP32", [-1, 4])] and meta.outputs == [TensorMetadata("y", "FP32", [-1, 4])]
        assert plane.model_config("add", "2").max_batch_size == 8
        assert sorted((row.name, row.version, row.state) for row in plane.repository_index(True)) == [("add", "1", "READY"), ("add", "2", "READY")]
        with pytest.raises(errors.ModelNotFound):
            plane.model_metadata("nope", "")

    run(repository, body)


def test_infer_takes_and_gives_plain_values_and_counts_statistics(repository: Path) -> None:
    async def body(plane: DataPlane) -> None:
        version, outputs = await plane.infer(add_request("1"), no_metadata, None, outputs_of)
        assert version == "1" and outputs["y"].tolist() == (np.arange(8, dtype=np.float32).reshape(2, 4) + 1).tolist()
        version, outputs = await plane.infer(add_request(), no_metadata, None, outputs_of)
        assert version == "2"  # the latest, with no routes
        stats = (await plane.statistics("add", "1", no_metadata)).model_stats
        assert [(s.version, s.inference_count) for s in stats] == [("1", 2)]
        with pytest.raises(errors.InvalidInput, match="needs a model name"):
            await plane.statistics("", "1", no_metadata)
        with pytest.raises(errors.VersionNotFound):
            await plane.statistics("add", "9", no_metadata)
        bad = add_request("1")
        bad.inputs[0].datatype = "INT32"
        with pytest.raises(errors.InvalidInput, match="expects FP32"):
            await plane.infer(bad, no_metadata, None, outputs_of)
        failed = (await plane.statistics("add", "1", no_metadata)).model_stats[0].inference_stats.fail.count
        assert failed == 1  # counted once, whichever edge asked
        plane.stopping = True
        with pytest.raises(errors.ModelNotReady, match="shutting down"):
            await plane.infer(add_request(), no_metadata, None, outputs_of)

    run(repository, body)


def test_control_operations_refuse_with_protocol_neutral_errors(repository: Path) -> None:
    async def body(plane: DataPlane) -> None:
        with pytest.raises(errors.RepositoryFixed):  # control mode none
            await plane.load("add", {}, no_metadata)
        with pytest.raises(errors.ModelNotFound):
            plane.trace_setting("nope", {})
        with pytest.raises(errors.Unsupported, match="--log-level"):
            plane.log_settings()
        with pytest.raises(errors.InvalidInput, match="no system shared memory region named 'r'"):
            plane.shared_memory_status("system", "r", no_metadata)
        assert plane.shared_memory_status("system", "", no_metadata) == []
        await plane.unregister_shared_memory("system", "r", no_metadata)  # unknown: no error, as Triton

    run(repository, body)


def test_error_messages_hide_internals_behind_a_request_id(caplog: pytest.LogCaptureFixture) -> None:
    assert error_message(errors.InvalidInput("input 'x' is wrong")) == "input 'x' is wrong"
    with caplog.at_level(logging.ERROR, logger="surge.dataplane"):
        message = error_message(KeyError("/srv/secret/path"), "req-7")
    assert message == "internal error (request id req-7); the server log has the details" and "/srv" not in message
    assert "req-7" in caplog.text
    assert error_message(errors.RuntimeFailure("model 'm' failed"), "req-8") == "model 'm' failed (request id req-8; the server log has the details)"
    assert errors.status_name(errors.Relayed("NOT_FOUND", "sibling says no")) == "NOT_FOUND"
    assert errors.status_name(errors.ExecutionTimeout("slow")) == "DEADLINE_EXCEEDED" and errors.status_name(ValueError()) == "INTERNAL"
