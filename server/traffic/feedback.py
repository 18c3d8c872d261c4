"""Outcome feedback: join late ground truth with the version that answered, and keep per-version quality.

A model with ``[feedback]`` in its config has one ``FeedbackIndex``. Every answered request that carries
a request id is remembered (``record``, on the event loop after the answer is encoded: one dict insert,
plus the per-row prediction of the configured output: the argmax of a score vector, or the value of a
one-value-per-row numeric output, as a small copy). The index is bounded (``max_requests``): the oldest
entries are forgotten first and counted as evicted. Minutes or hours later the application reports the
outcome through ``surge.v1.Feedback/ReportOutcome`` (``report``):

- ``labels`` (one class id per row): joined with the prediction, counted per version as labelled rows
  and correct rows (accuracy = correct / labelled);
- ``values`` (one number per row): the absolute error against the prediction, per version as its sum, sum
  of squares and count (mean absolute error, and its variance for a significance test);
- ``success`` (a flag for the whole request, e.g. "the user clicked"): per version, flags and successes.

Counters per model: reports received, joined, and unknown (the id was never indexed or was forgotten);
the join rate is joined / received. All are exported as metrics (``traffic.py``) and read by
``surge ab``, which tests the differences between versions for significance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInput

__all__ = ["FeedbackIndex", "QualityStats"]


@dataclass(slots=True)
class QualityStats:
    """Per-version quality counters (event loop only)."""

    labelled: int = 0
    correct: int = 0
    valued: int = 0
    abs_error_sum: float = 0.0
    abs_error_sq_sum: float = 0.0
    flags: int = 0
    successes: int = 0


class FeedbackIndex:
    """One model's bounded index of answered requests and its per-version quality. Event loop only."""

    def __init__(self, model: str, output: str, max_requests: int) -> None:
        """``output``: the output predictions are taken from ("": none; success flags still join)."""
        self.model = model
        self.output = output
        self.max_requests = max_requests
        self._entries: dict[str, tuple[str, np.ndarray | None]] = {}
        self.quality: dict[str, QualityStats] = {}
        self.received = 0
        self.joined = 0
        self.unknown = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def record(self, request_id: str, version: str, outputs: dict[str, np.ndarray], rows: int) -> None:
        """Remember who answered ``request_id`` and its per-row prediction (request path, after the answer)."""
        entries = self._entries
        if request_id in entries:
            del entries[request_id]  # the newest answer wins and moves to the young end
        elif len(entries) >= self.max_requests:
            del entries[next(iter(entries))]  # dicts keep insertion order: this is the oldest
            self.evicted += 1
        entries[request_id] = (version, _prediction(outputs.get(self.output), rows))

    def report(self, request_id: str, *, labels: Sequence[int] | None = None, values: Sequence[float] | None = None,
               success: bool | None = None) -> str:
        """Join an outcome with the version that answered ``request_id``; returns that version ("" when unknown).

        Exactly one of ``labels``, ``values``, ``success``. Raises InvalidInput when the outcome does not fit
        the prediction (row count, or a label for a model whose output is not a class).
        """
        given = sum(x is not None for x in (labels, values, success))
        if given != 1:
            raise InvalidInput("ReportOutcome: set exactly one of labels, values, success")
        entry = self._entries.get(request_id)
        if entry is None:
            self.received += 1
            self.unknown += 1
            return ""
        version, prediction = entry
        stats = self.quality.get(version) or QualityStats()
        if success is not None:
            stats.flags += 1
            stats.successes += bool(success)
        else:
            truth = np.asarray(labels if labels is not None else values)
            if prediction is None:
                raise InvalidInput(f"model '{self.model}': request '{request_id}' has no prediction of output '{self.output}' to compare with "
                                   "(the model's [feedback] output was not in the answer, or holds several values per row)")
            if truth.shape != (prediction.shape[0],):
                raise InvalidInput(f"model '{self.model}': request '{request_id}' had {prediction.shape[0]} rows; send one outcome per row, got {truth.size}")
            if labels is not None:
                if prediction.dtype.kind not in "iub":
                    raise InvalidInput(f"model '{self.model}': output '{self.output}' is a number per row, not a class; report values, not labels")
                stats.labelled += truth.size
                stats.correct += int(np.count_nonzero(truth == prediction))
            else:
                errors = np.abs(truth.astype(np.float64) - prediction.astype(np.float64))
                stats.valued += truth.size
                stats.abs_error_sum += float(errors.sum())
                stats.abs_error_sq_sum += float((errors * errors).sum())
        self.quality.setdefault(version, stats)
        self.received += 1  # invalid reports (raised above) are not counted
        self.joined += 1
        del self._entries[request_id]  # one outcome per request
        return version


def _prediction(output: np.ndarray | None, rows: int) -> np.ndarray | None:
    """Per-row prediction: argmax of a (rows x classes) score output, else its one value per row; None otherwise."""
    if output is None:
        return None
    output = np.asarray(output)
    if output.dtype.kind == "f" and output.ndim == 2 and output.shape == (rows, output.shape[1]) and output.shape[1] > 1:
        return np.asarray(output.argmax(axis=1))  # rows x classes: the top class of each row
    if output.dtype.kind in "iubf" and output.size == rows:
        return output.reshape(rows).copy()
    return None
