"""``complete_signature``: the config completed from what the runtime read, including a model file's own batch limit."""

from __future__ import annotations

import pytest

from surge.server.config import TensorConfig, parse_model_config
from surge.server.errors import ConfigError
from surge.server.execution.model import AUTO_MAX_BATCH_SIZE, complete_signature
from surge.server.runtimes.base import Signature

X = TensorConfig(name="x", datatype="FP32", dims=(-1, 16))
Y = TensorConfig(name="y", datatype="FP32", dims=(-1, 4))


def _complete(config: dict, signature: Signature):
    return complete_signature(parse_model_config("m", config), signature)


def test_without_a_file_limit_triton_auto_complete_applies() -> None:
    assert _complete({}, Signature((X,), (Y,))).max_batch_size == AUTO_MAX_BATCH_SIZE


def test_the_file_limit_is_the_default_max_batch_size() -> None:
    # a TensorRT engine whose profiles cover 1..64 rows
    completed = _complete({}, Signature((X,), (Y,), max_batch_size=64))
    assert completed.max_batch_size == 64
    assert completed.inputs == (TensorConfig(name="x", datatype="FP32", dims=(16,)),)


def test_a_smaller_configured_max_batch_size_is_kept() -> None:
    assert _complete({"max_batch_size": 8}, Signature((X,), (Y,), max_batch_size=64)).max_batch_size == 8


def test_a_configured_max_batch_size_beyond_the_file_limit_is_an_error() -> None:
    with pytest.raises(ConfigError, match="max_batch_size = 128 exceeds the 64 rows the model file supports"):
        _complete({"max_batch_size": 128}, Signature((X,), (Y,), max_batch_size=64))


def test_the_file_limit_does_not_make_a_fixed_shape_model_batchable() -> None:
    fixed = TensorConfig(name="x", datatype="FP32", dims=(2, 3))
    assert _complete({}, Signature((fixed,), (fixed,), max_batch_size=None)).max_batch_size == 0
