"""Triton's trace extension through tritonclient (gRPC and HTTP): get/update_trace_settings, global and per model,
against ``surge serve --trace-exporter console``; a traced request's caller trace id reaches the exported spans.

Runs in its own pytest process (see conftest.py): never import surge.protos / surge.clients here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
pytest.importorskip("opentelemetry.sdk", reason="tracing needs surge[tracing]")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.models import write_test_repository  # noqa: E402
from tests.process import SurgeProcess  # noqa: E402

TRACE_ID = "5b8efff798038103d269b633813fc60c"


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SurgeProcess]:
    repository = write_test_repository(tmp_path_factory.mktemp("trace-repository"))
    server = SurgeProcess(repository, tmp_path_factory.mktemp("trace-server"), "--trace-exporter", "console", "--trace-ratio", "0").start()
    yield server
    server.stop_and_check()


def _settings(response: dict) -> dict[str, list[str]]:
    return {k: v.get("value", []) for k, v in response["settings"].items()}


def test_trace_settings_over_grpc(traced_server: SurgeProcess) -> None:
    client = grpcclient.InferenceServerClient(traced_server.address)
    start = _settings(client.get_trace_settings(as_json=True))
    assert start["trace_level"] == ["OFF"] and start["trace_mode"] == ["opentelemetry"]  # --trace-ratio 0
    changed = _settings(client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}, as_json=True))
    assert changed["trace_level"] == ["TIMESTAMPS"] and changed["trace_rate"] == ["1"]
    model = _settings(client.update_trace_settings(model_name="mlp", settings={"trace_count": "5"}, as_json=True))
    assert model["trace_count"] == ["5"] and model["trace_level"] == ["TIMESTAMPS"]
    assert _settings(client.get_trace_settings(as_json=True))["trace_count"] == ["-1"]  # the global count is untouched
    cleared = _settings(client.update_trace_settings(model_name="mlp", settings={"trace_count": None}, as_json=True))
    assert cleared["trace_count"] == ["-1"]
    with pytest.raises(InferenceServerException) as info:
        client.update_trace_settings(settings={"trace_rate": "0"})
    assert "at least 1" in info.value.message() and info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        client.get_trace_settings(model_name="nosuch")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    x = grpcclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    client.infer("mlp", [x], headers={"traceparent": f"00-{TRACE_ID}-a2fb4a1d1a96d312-01"})
    client.close()


def test_trace_settings_over_http(traced_server: SurgeProcess) -> None:
    client = httpclient.InferenceServerClient(traced_server.http_address)
    doc = client.update_trace_settings(settings={"trace_rate": "50", "log_frequency": "3"})
    assert doc["trace_rate"] == "50" and doc["log_frequency"] == "3" and isinstance(doc["trace_level"], list)
    assert client.get_trace_settings()["trace_rate"] == "50"
    model = client.update_trace_settings(model_name="mlp", settings={"trace_level": ["OFF"]})
    assert model["trace_level"] == ["OFF"] and client.get_trace_settings(model_name="mlp")["trace_level"] == ["OFF"]
    assert client.get_trace_settings()["trace_level"] == ["TIMESTAMPS"]
    with pytest.raises(InferenceServerException) as info:
        client.update_trace_settings(settings={"trace_level": ["LOUD"]})
    assert "not one of" in info.value.message() and info.value.status() == "400"
    assert "trace" in client.get_server_metadata()["extensions"]
    client.close()


def test_traced_request_reaches_the_exporter(traced_server: SurgeProcess) -> None:
    traced_server.stop_and_check()  # the batch processor flushes on shutdown; the console exporter writes to the log
    spans = [json.loads(block) for block in _json_blocks(traced_server.log())]
    mine = [s for s in spans if s["context"]["trace_id"] == f"0x{TRACE_ID}"]
    assert {s["name"] for s in mine} >= {"inference.GRPCInferenceService/ModelInfer", "decode", "queue", "compute", "encode"}
    server = next(s for s in mine if s["kind"] == "SpanKind.SERVER")
    assert server["parent_id"] == "0xa2fb4a1d1a96d312" and server["attributes"]["surge.model"] == "mlp"
    traced_server.start()  # the module fixture stops it again


def _json_blocks(text: str) -> Iterator[str]:
    """The console exporter's span documents (each a JSON object starting at a line with a lone ``{``)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line == "{":
            depth, block = 0, []
            for other in lines[i:]:
                block.append(other)
                depth += other.count("{") - other.count("}")
                if depth == 0:
                    yield "\n".join(block)
                    break
