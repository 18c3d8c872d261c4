"""Triton's classification extension: ``classify`` against an independent reference (tests.models.top_k_classes)."""

from __future__ import annotations

import numpy as np
import pytest

from surge.server.edge.extensions import classify
from tests.models import top_k_classes

LABELS = ("zero", "one", "", "three")


@pytest.mark.parametrize("width", [1, 3, 11, 300, 700])  # short rows are sorted whole, long ones partitioned
@pytest.mark.parametrize("values", ["ties", "integers", "scores"])
def test_classify_matches_the_reference_with_ties(width: int, values: str) -> None:
    rng = np.random.default_rng(width)
    for _ in range(20):
        rows, k = int(rng.integers(1, 4)), int(rng.integers(1, min(width, 20) + 1))
        if values == "ties":  # few distinct values: the k-th often ties with values a partition leaves out
            array = rng.integers(0, 4, (rows, width)).astype(np.float32)
        elif values == "integers":
            array = rng.integers(-500, 500, (rows, width)).astype(np.int32)
        else:
            array = rng.standard_normal((rows, width)).astype(np.float32)
        got = classify(array, k, LABELS, batched=True)
        assert got.shape == (rows, k) and got.dtype == np.object_
        assert got.tolist() == top_k_classes(array, k, LABELS)


def test_classify_unsigned_and_unbatched() -> None:
    assert classify(np.array([3, 250, 250, 1], np.uint8), 3, (), batched=False).tolist() == [b"250:1", b"250:2", b"3:0"]
    # Triton's document's example: [1, 5, 10, 4] -> top 2 by index [2, 1], with and without labels
    example = np.array([1, 5, 10, 4], np.int32)
    assert classify(example, 2, (), batched=False).tolist() == [b"10:2", b"5:1"]
    assert classify(example, 2, ("a", "pickle", "apple"), batched=False).tolist() == [b"10:2:apple", b"5:1:pickle"]
