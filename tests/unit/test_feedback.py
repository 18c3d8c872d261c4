"""feedback.FeedbackIndex: joins, per-version quality, bounded memory, invalid reports."""

from __future__ import annotations

import numpy as np
import pytest

from surge.server.errors import InvalidInput
from surge.server.traffic.feedback import FeedbackIndex


def test_labels_join_with_the_argmax_of_scores() -> None:
    index = FeedbackIndex("m", "scores", 100)
    index.record("a", "1", {"scores": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}, 2)
    index.record("b", "2", {"scores": np.array([[0.7, 0.3]], np.float32)}, 1)
    assert index.report("a", labels=[1, 1]) == "1"
    assert index.report("b", labels=[0]) == "2"
    assert (index.quality["1"].labelled, index.quality["1"].correct) == (2, 1)
    assert (index.quality["2"].labelled, index.quality["2"].correct) == (1, 1)
    assert index.report("a", labels=[1, 1]) == ""  # one outcome per request: the id is forgotten once joined
    assert (index.received, index.joined, index.unknown) == (3, 2, 1)


def test_values_give_absolute_errors_and_flags_success_rates() -> None:
    index = FeedbackIndex("m", "y", 100)
    index.record("a", "1", {"y": np.array([[1.0], [2.0]])}, 2)
    index.record("b", "1", {"y": np.array([[5.0]])}, 1)
    index.report("a", values=[1.5, 1.0])
    q = index.quality["1"]
    assert (q.valued, q.abs_error_sum, q.abs_error_sq_sum) == (2, 1.5, 1.25)
    index.report("b", success=False)
    assert (q.flags, q.successes) == (1, 0)


@pytest.mark.parametrize(
    ("outputs", "kwargs", "message"),
    [
        ({"y": np.array([[1.0], [2.0]])}, {"values": [1.0]}, "2 rows"),
        ({"y": np.array([[1.0]])}, {"labels": [1]}, "report values, not labels"),
        ({"other": np.array([[1.0]])}, {"values": [1.0]}, "no prediction"),
        ({"y": np.array([[1.0]])}, {"values": [1.0], "success": True}, "exactly one"),
    ],
)
def test_invalid_reports(outputs: dict, kwargs: dict, message: str) -> None:
    index = FeedbackIndex("m", "y", 100)
    index.record("a", "1", outputs, len(next(iter(outputs.values()))))
    with pytest.raises(InvalidInput, match=message):
        index.report("a", **kwargs)
    assert index.received == 0  # invalid reports are not counted


def test_the_index_is_bounded_and_forgets_the_oldest() -> None:
    index = FeedbackIndex("m", "y", 3)
    for i in range(5):
        index.record(f"r{i}", "1", {"y": np.array([float(i)])}, 1)
    assert len(index) == 3 and index.evicted == 2
    assert index.report("r0", success=True) == "" and index.report("r4", success=True) == "1"
    index.record("r2", "2", {"y": np.array([0.0])}, 1)  # answered again: the newest answer wins
    assert index.report("r2", success=True) == "2"
