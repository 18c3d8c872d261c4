"""The decode_jpeg step (server/execution/decode.py, pipeline.py): its signature, config errors, per-row rejection,
images of different sizes through one image step, and the per-request errors a shared batch hands out."""

from __future__ import annotations

import io

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("numba")

from surge.kernels.image import resize_crop_normalize  # noqa: E402
from surge.server.config import ModelConfig, TensorConfig, parse_model_config  # noqa: E402
from surge.server.errors import ConfigError, RowsRejected  # noqa: E402
from surge.server.execution.decode import JpegDecoder, encode_jpeg  # noqa: E402
from surge.server.execution.pipeline import Pipeline  # noqa: E402

DECODE = {"op": "decode_jpeg", "input": "jpeg", "output": "image"}
RCN = {"op": "resize_crop_normalize", "input": "image", "output": "x", "resize": [20, 20], "crop": [16, 16], "mean": 0.5, "std": 0.25}


def _config(pre: list[dict], *, max_batch_size: int = 4, dims=(3, 16, 16)) -> ModelConfig:
    config = parse_model_config("m", {"max_batch_size": max_batch_size, "preprocess": pre})
    return config.with_signature((TensorConfig(name="x", datatype="FP32", dims=dims),), (TensorConfig(name="y", datatype="FP32", dims=(2,)),), max_batch_size)


class _Echo:
    """A runtime stand-in that returns its preprocessed input, so the test sees what the model would get."""

    def infer(self, inputs, output_names):
        return {"y": inputs["x"]}


def test_decode_feeds_an_image_step_and_the_pipeline_takes_bytes() -> None:
    pipeline = Pipeline(_config([DECODE, RCN]))
    assert [(t.name, t.datatype, t.dims) for t in pipeline.config.inputs] == [("jpeg", "BYTES", (1,))]


@pytest.mark.parametrize(
    ("pre", "max_batch_size", "message"),
    [
        ([DECODE], 4, r"preprocess\[0\]\.output: no later preprocess step reads 'image'"),
        ([{**DECODE, "output": "x"}], 4, r"decode_jpeg feeds an image step .* not model input 'x'"),
        ([DECODE, RCN], 0, r"decode_jpeg needs a batched model"),
        ([{**DECODE, "channels": 2}, RCN], 4, r"preprocess\[0\]\.channels: expected one of 1, 3; got 2"),
        ([{**DECODE, "channels": 1}, RCN], 4, r"reads decode_jpeg's output 'image' .* 1 channels"),
        ([DECODE, {**RCN, "datatype": "FP32"}], 4, r"must be one of resize, letterbox, center_crop, resize_crop_normalize taking UINT8"),
        ([{**DECODE, "quality": 3}, RCN], 4, r"unknown key\(s\) quality"),
    ],
)
def test_decode_config_errors(pre, max_batch_size, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Pipeline(_config(pre, max_batch_size=max_batch_size))


def _rows(payloads) -> np.ndarray:
    rows = np.empty((len(payloads), 1), dtype=np.object_)
    rows[:, 0] = payloads
    return rows


def test_images_of_different_sizes_run_per_size_group_in_row_order() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(30, 40, 3), (24, 24, 3), (30, 40, 3)]]
    payloads = [encode_jpeg(im, quality=95) for im in images]
    instance = Pipeline(_config([DECODE, RCN])).instance(_Echo(), 0)
    got = instance.run({"jpeg": _rows(payloads)}, ["y"])["y"]
    decoded = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads]
    expected = np.stack([resize_crop_normalize(d, (20, 20), (16, 16), 0.5, 0.25) for d in decoded])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_warm_up_inputs_are_valid_jpegs_of_the_image_steps_size() -> None:
    pipeline = Pipeline(_config([DECODE, RCN]))
    rows = pipeline.instance(_Echo(), 0).synthetic(pipeline.config.inputs[0], 3)
    assert rows.shape == (3, 1)
    assert Image.open(io.BytesIO(rows[0, 0])).size == (20, 20)


def test_every_bad_row_is_named_and_a_header_too_large_is_refused_before_decoding() -> None:
    decoder = JpegDecoder(channels=3, max_pixels=100 * 100)
    good = encode_jpeg(np.zeros((10, 10, 3), dtype=np.uint8))
    big = encode_jpeg(np.zeros((101, 100, 3), dtype=np.uint8))
    with pytest.raises(RowsRejected) as info:
        decoder.cpu(_rows([good, b"xx", good, big, None]), lambda reasons: RowsRejected("step", reasons))
    assert list(info.value.reasons) == [1, 3, 4]
    assert "100 x 101 pixels exceeds max_pixels = 10000" in info.value.reasons[3]
    assert str(info.value).startswith("step: row 1: not a JPEG image")


def test_a_shared_batch_gives_each_request_its_own_rows() -> None:
    error = RowsRejected("model 'm' preprocess[0]", {1: "bad", 5: "worse", 6: "worst"})
    # requests of 2, 3 and 2 rows: rows 0-1, 2-4, 5-6
    assert str(error.for_rows(0, 2)) == "model 'm' preprocess[0]: row 1: bad"
    assert error.for_rows(2, 3) is None
    assert error.for_rows(5, 2).reasons == {0: "worse", 1: "worst"}
