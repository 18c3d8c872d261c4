"""``surge batch``'s default chunk size: about 8 MiB of input rows, whole ``max_batch_size`` batches."""

from __future__ import annotations

from surge.server.commands.batch import CHUNK_BYTES, default_chunk_rows
from surge.server.config import ModelConfig, TensorConfig


def _config(max_batch_size: int, *inputs: TensorConfig) -> ModelConfig:
    return ModelConfig(name="m", max_batch_size=max_batch_size, inputs=inputs)


def test_fixed_rows_fill_about_chunk_bytes_in_whole_batches() -> None:
    assert default_chunk_rows(_config(256, TensorConfig(name="features", datatype="FP32", dims=(16,)))) == CHUNK_BYTES // 64
    images = default_chunk_rows(_config(32, TensorConfig(name="image", datatype="UINT8", dims=(64, 64, 3))))
    assert images % 32 == 0 and images * 64 * 64 * 3 <= CHUNK_BYTES < (images + 32) * 64 * 64 * 3
    two = default_chunk_rows(_config(8, TensorConfig(name="a", datatype="FP32", dims=(4,)), TensorConfig(name="b", datatype="INT64", dims=(2,))))
    assert two % 8 == 0 and two * 32 <= CHUNK_BYTES < (two + 8) * 32


def test_a_huge_row_still_gets_one_batch_and_unknown_sizes_get_4096_rows() -> None:
    assert default_chunk_rows(_config(4, TensorConfig(name="video", datatype="FP32", dims=(64, 3, 512, 512)))) == 4
    assert default_chunk_rows(_config(256, TensorConfig(name="text", datatype="BYTES", dims=(1,)))) == 4096
    assert default_chunk_rows(_config(100, TensorConfig(name="seq", datatype="FP32", dims=(-1,)))) == 4000
