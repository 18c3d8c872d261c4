"""A model's own ModelConfig, sent back in a load request (as model_analyzer does), changes nothing, for every kind
of model; and in the ``none`` control mode a load is refused as Triton refuses it."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from surge.clients import InferenceClient, InferenceServerError
from surge.server.config import parse_model_config
from surge.server.edge.triton import config_overrides_from_json, model_config_message
from tests.integration.test_pipeline import TABULAR_CONFIG
from tests.models import write_test_repository

torch = pytest.importorskip("torch")
from tests.integration.test_torch import MLP_CONFIG  # noqa: E402
from tests.torch_models import make_mlp, write_torch_model  # noqa: E402

KINDS = ("mlp_batched", "nobatch", "mlp_labelled", "echo_py", "torch_mlp", "tabular")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = write_test_repository(tmp_path / "repo")
    write_torch_model(root / "torch_mlp", make_mlp(), torch.zeros(2, 256), kind="script", config=MLP_CONFIG)
    (root / "tabular" / "1").mkdir(parents=True)
    shutil.copy(root / "mlp" / "1" / "model.onnx", root / "tabular" / "1" / "model.onnx")
    (root / "tabular" / "config.toml").write_text(TABULAR_CONFIG)
    return root


def test_every_kind_of_model_loads_its_own_config_unchanged(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="explicit", load_models=KINDS)
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        for name in KINDS:
            config = client.model_config(name)
            for as_json in (json_format.MessageToJson(config, preserving_proto_field_name=True), json_format.MessageToJson(config)):
                client.load_model(name, config=as_json)
                assert client.model_config(name) == config, name
        result = client.infer("tabular", {"features": np.zeros((2, 16), np.float32)})  # the pipeline still runs
        assert result["label"].shape == (2, 1) and result["confident"].dtype == np.bool_


def test_a_tensorrt_config_translates_back_to_itself():
    """No TensorRT here to load an engine: the translation both ways, which is all a load request adds."""
    data = {
        "backend": "tensorrt", "max_batch_size": 8, "input": [{"name": "x", "datatype": "FP16", "dims": [3, 224, 224]}],
        "output": [{"name": "y", "datatype": "FP32", "dims": [1000]}], "dynamic_batching": {"max_queue_delay_s": 0.001},
        "instance_group": {"count": 2, "kind": "gpu", "gpus": [0]},
    }
    config = parse_model_config("engine", data)
    message = model_config_message(config)
    assert message.platform == "tensorrt_plan"
    overrides = config_overrides_from_json("engine", json_format.MessageToJson(message))
    assert overrides["backend"] == "tensorrt"
    assert model_config_message(parse_model_config("engine", overrides)) == message


def test_none_mode_refuses_loads_in_tritons_words(start_server, repo):
    server = start_server(model_repository=repo, model_control_mode="none")
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        for call in (lambda: client.load_model("mlp"), lambda: client.unload_model("mlp")):
            with pytest.raises(InferenceServerError) as info:
                call()
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "explicit model load / unload is not allowed if polling is enabled" in str(info.value)
            assert "--model-control-mode explicit" in str(info.value)
        assert client.is_model_ready("mlp")
