"""Pipeline validation and signatures (server/execution/pipeline.py): what clients see, and clear errors for bad steps."""

from __future__ import annotations

import pytest

from surge.server.config import ModelConfig, TensorConfig, parse_model_config
from surge.server.errors import ConfigError
from surge.server.execution.pipeline import Pipeline


def _config(pre: list[dict] | None = None, post: list[dict] | None = None, *, inputs=None, outputs=None, max_batch_size: int = 8) -> ModelConfig:
    config = parse_model_config("m", {"max_batch_size": max_batch_size, "preprocess": pre or [], "postprocess": post or []})
    inputs = inputs or (TensorConfig(name="input", datatype="FP32", dims=(3, 32, 32)),)
    outputs = outputs or (TensorConfig(name="probabilities", datatype="FP32", dims=(10,)),)
    return config.with_signature(tuple(inputs), tuple(outputs), max_batch_size)


def _sig(tensors) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (t.datatype, t.dims) for t in tensors}


def test_image_pipeline_signature() -> None:
    config = _config(
        [{"op": "resize_crop_normalize", "input": "image", "output": "input", "resize": [36, 36], "mean": [0.5] * 3, "std": 0.25}],
        [{"op": "softmax", "input": "probabilities", "output": "p"}, {"op": "topk", "input": "p", "output": "classes", "values_output": "scores", "k": 3},
         {"op": "argmax", "input": "probabilities", "output": "best"}, {"op": "threshold", "input": "p", "output": "flags", "value": 0.5}],
    )
    pipeline = Pipeline(config)
    assert _sig(pipeline.config.inputs) == {"image": ("UINT8", (-1, -1, 3))}
    assert _sig(pipeline.config.outputs) == {
        "probabilities": ("FP32", (10,)), "p": ("FP32", (10,)), "classes": ("INT64", (3,)), "scores": ("FP32", (3,)),
        "best": ("INT64", (1,)), "flags": ("BOOL", (10,)),
    }
    assert pipeline.model_outputs == ("probabilities",)


@pytest.mark.parametrize(
    ("step", "model_input", "expected"),
    [
        ({"op": "normalize", "mean": 0.5, "std": 0.5}, ("FP32", (3, 8, 6)), ("UINT8", (8, 6, 3))),
        ({"op": "normalize", "mean": 0.5, "std": 0.5, "datatype": "FP32"}, ("FP32", (1, 8, 6)), ("FP32", (8, 6, 1))),
        ({"op": "resize"}, ("FP32", (8, 6, 3)), ("UINT8", (-1, -1, 3))),
        ({"op": "letterbox", "pad_value": 114}, ("FP32", (8, 6, 3)), ("UINT8", (-1, -1, 3))),
        ({"op": "center_crop"}, ("UINT8", (8, 6, 4)), ("UINT8", (-1, -1, 4))),
        ({"op": "tabular_transform", "fill": 0.0, "low": -3, "high": 3, "mean": [0, 1], "std": [1, 2]}, ("FP32", (2,)), ("FP32", (2,))),
        ({"op": "standardize", "mean": [0, 1, 2], "std": [1, 1, 1]}, ("FP32", (-1,)), ("FP32", (3,))),
        ({"op": "clip", "low": 0, "high": 1}, ("FP32", (5,)), ("FP32", (5,))),
        ({"op": "fill_missing", "values": 0}, ("FP32", (5,)), ("FP32", (5,))),
        ({"op": "bucketize", "boundaries": [0, 1, 2]}, ("INT64", (4,)), ("FP32", (4,))),
        ({"op": "one_hot", "depth": 5}, ("FP32", (20,)), ("INT64", (4,))),
        ({"op": "hash_bucket", "num_buckets": 100}, ("INT64", (4,)), ("INT64", (4,))),
    ],
)
def test_preprocess_signatures(step: dict, model_input: tuple, expected: tuple) -> None:
    config = _config([{**step, "input": "raw", "output": "x"}], inputs=[TensorConfig(name="x", datatype=model_input[0], dims=model_input[1])])
    assert _sig(Pipeline(config).config.inputs) == {"raw": expected}


def test_inputs_without_a_step_pass_through() -> None:
    inputs = [TensorConfig(name="x", datatype="FP32", dims=(2,)), TensorConfig(name="mask", datatype="BOOL", dims=(2,))]
    config = _config([{"op": "standardize", "input": "x", "mean": [0, 0], "std": [1, 1]}], inputs=inputs)
    assert [t.name for t in Pipeline(config).config.inputs] == ["mask", "x"]


@pytest.mark.parametrize(
    ("pre", "post", "message"),
    [
        ([{"op": "sharpen", "input": "image", "output": "input"}], [], r"preprocess\[0\]\.op: expected one of decode_jpeg, normalize, .*; got 'sharpen'"),
        ([{"op": "normalize", "input": "image", "output": "nope", "mean": 0, "std": 1}], [], r"'nope' is not a model input"),
        ([{"op": "normalize", "input": "image", "output": "input", "std": 1}], [], r"preprocess\[0\]\.mean: required"),
        ([{"op": "normalize", "input": "image", "output": "input", "mean": [1, 2], "std": 1}], [], r"mean: expected a number or a list of 3"),
        ([{"op": "normalize", "input": "image", "output": "input", "mean": 0, "std": 0}], [], r"std: must not contain 0"),
        ([{"op": "normalize", "input": "image", "output": "input", "mean": 0, "std": 1, "colour": 1}], [], r"unknown key\(s\) colour"),
        ([{"op": "resize_crop_normalize", "input": "image", "output": "input", "resize": [16, 16], "mean": 0, "std": 1}], [], r"resize: \[16, 16\] is smaller than the crop"),
        ([{"op": "resize_crop_normalize", "input": "image", "output": "input", "resize": 40, "crop": 30, "mean": 0, "std": 1}], [], r"crop: \[30, 30\] does not match"),
        ([{"op": "resize_crop_normalize", "input": "image", "output": "input", "resize": 100000, "mean": 0, "std": 1}], [], r"resize: expected an integer from 1 to 16384 or a list of 2 integers from 1 to 16384, got 100000"),
        ([{"op": "standardize", "input": "image", "output": "input", "mean": 0, "std": 1}], [], r"must be 1-D"),
        ([{"op": "center_crop", "input": "image", "output": "input"}], [], r"makes UINT8, but model input 'input' is FP32"),
        ([], [{"op": "topk", "input": "probabilities", "k": 11}], r"postprocess\[0\]\.k: 11 exceeds the 10 values"),
        ([], [{"op": "topk", "input": "missing", "k": 1}], r"'missing' is neither a model output"),
        ([], [{"op": "median", "input": "probabilities"}], r"postprocess\[0\]\.op: expected one of softmax, argmax, topk, threshold; got 'median'"),
        ([], [{"op": "threshold", "input": "probabilities"}], r"postprocess\[0\]\.value: required"),
    ],
)
def test_invalid_steps(pre: list, post: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Pipeline(_config(pre, post))


def test_two_steps_cannot_feed_one_model_input() -> None:
    step = {"op": "normalize", "input": "image", "output": "input", "mean": 0, "std": 1}
    with pytest.raises(ConfigError, match="already made by an earlier step"):
        Pipeline(_config([step, {**step, "input": "image2"}]))


def test_step_tables_need_op_and_input() -> None:
    with pytest.raises(ConfigError, match=r"preprocess\[0\]\.op: required"):
        parse_model_config("m", {"preprocess": [{"input": "x"}]})
    step = parse_model_config("m", {"postprocess": [{"op": "argmax", "input": "y"}]}).postprocess[0]
    assert (step.op, step.input, step.output, dict(step.params), step.where) == ("argmax", "y", "y", {}, "postprocess[0]")
