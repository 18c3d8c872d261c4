"""CUDA-graph bucket logic of the PyTorch runtime: pure functions, no GPU needed."""

from __future__ import annotations

import numpy as np
import pytest

from surge.server.errors import ConfigError, InvalidInput
from surge.server.runtimes.torch import bucket_for, graph_buckets, pad_rows


def test_buckets_default_to_powers_of_two_up_to_max_batch_size():
    assert graph_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert graph_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert graph_buckets(0) == [1]


def test_buckets_follow_preferred_sizes_then_explicit_ones_and_always_include_max():
    assert graph_buckets(64, preferred=(8, 32)) == [8, 32, 64]
    assert graph_buckets(64, preferred=(8, 32), explicit=(1, 16)) == [1, 16, 64]
    with pytest.raises(ConfigError, match=r"\[128\] are outside 1..64"):
        graph_buckets(64, explicit=(128,))


@pytest.mark.parametrize(("rows", "bucket"), [(1, 8), (8, 8), (9, 32), (33, 64), (64, 64)])
def test_a_batch_goes_to_the_smallest_bucket_that_holds_it(rows, bucket):
    assert bucket_for(rows, [8, 32, 64]) == bucket


def test_a_batch_larger_than_every_bucket_is_an_error():
    with pytest.raises(InvalidInput, match="65 rows exceeds the largest captured batch size 64"):
        bucket_for(65, [8, 64])


def test_padding_appends_zero_rows_and_trimming_recovers_the_batch():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = pad_rows(x, 8)
    assert padded.shape == (8, 2) and not padded[3:].any()
    np.testing.assert_array_equal(padded[:3], x)
    assert pad_rows(x, 3) is x
