"""Prometheus families of version routing, shadows and outcome feedback (``traffic.py``'s state), at scrape time.

``TrafficCollector`` is registered on ``ServerMetrics.registry`` (its families are written by ``exposition.Writer``
like every other); ``collect`` runs in the metrics endpoint's thread and reads copies of the counters
(``Traffic.snapshot``): nothing here runs on the request path. Families (labels ``model``; ``primary``/``shadow`` for shadow pairs; ``version`` for
feedback quality) are listed in docs/pages/routing-and-rollouts.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ..observability.exposition import bucket_les
from ..observability.metrics import DEFAULT_LATENCY_BUCKETS_S
from .traffic import Traffic

__all__ = ["TrafficCollector"]


class TrafficCollector:
    """Exports routing, shadow and feedback metrics to prometheus_client (called at scrape time, in any thread)."""

    def __init__(self, traffic: Traffic) -> None:
        self._traffic = traffic

    def collect(self) -> Iterator[Any]:
        rows = self._traffic.snapshot()
        weight = GaugeMetricFamily("surge_route_weight", "Share of the requests naming no version that a version is routed (weights normalised).",
                                   labels=["model", "version"])
        generation = CounterMetricFamily("surge_route_changes", "Route changes since the server started.", labels=["model"])
        for name, routes, gen, _, _, _, _ in rows:
            generation.add_metric([name], gen)
            if routes is not None:
                for version, share in routes.shares().items():
                    weight.add_metric([name, str(version)], share)
        yield weight
        yield generation
        yield from self._shadow(rows)
        yield from self._feedback(rows)

    @staticmethod
    def _shadow(rows: list[Any]) -> Iterator[Any]:
        pair_labels = ["model", "primary", "shadow"]
        requests = CounterMetricFamily("surge_shadow_requests", "Shadow requests by outcome: compared, dropped (budget full), shadow_failed, primary_failed, compare_failed (the comparison raised).",
                                       labels=[*pair_labels, "outcome"])
        agreed = CounterMetricFamily("surge_shadow_agreed", "Compared requests whose every output agreed.", labels=pair_labels)
        out_compared = CounterMetricFamily("surge_shadow_output_compared", "Compared requests, per output.", labels=[*pair_labels, "output"])
        out_agreed = CounterMetricFamily("surge_shadow_output_agreed", "Compared requests whose output agreed (exact, or allclose for floats).",
                                         labels=[*pair_labels, "output"])
        am_compared = CounterMetricFamily("surge_shadow_argmax_compared", "Compared requests of score-vector outputs.", labels=[*pair_labels, "output"])
        am_agreed = CounterMetricFamily("surge_shadow_argmax_agreed", "Compared requests whose every row has the same top class.", labels=[*pair_labels, "output"])
        max_abs = GaugeMetricFamily("surge_shadow_max_abs_difference", "Largest absolute difference seen between primary and shadow outputs.",
                                    labels=[*pair_labels, "output"])
        mean_abs = GaugeMetricFamily("surge_shadow_mean_abs_difference", "Mean over compared requests of the mean absolute difference.",
                                     labels=[*pair_labels, "output"])
        latency = HistogramMetricFamily("surge_shadow_latency_seconds", "Execution time of compared requests, for the primary and the shadow.",
                                        labels=[*pair_labels, "role"])
        latency_diff = GaugeMetricFamily("surge_shadow_mean_latency_difference_seconds",
                                         "Mean over compared requests of the shadow's execution time minus the primary's (> 0: the shadow is slower).",
                                         labels=pair_labels)
        log_lines = CounterMetricFamily("surge_shadow_log_lines", "Disagreements written to the log, or skipped (log full or unwritable).",
                                        labels=[*pair_labels, "result"])
        pending = GaugeMetricFamily("surge_shadow_pending", "Shadow requests waiting or executing.", labels=["model"])
        les = bucket_les(DEFAULT_LATENCY_BUCKETS_S)
        for name, _, _, n_pending, sender, pairs, _ in rows:
            if sender is not None:
                pending.add_metric([name], n_pending)
            for p in pairs:
                labels = [p.model, p.primary, p.shadow]
                agreed.add_metric(labels, p.agreed)  # agreements before counts (see PairStats.fold)
                for outcome, count in list(p.outcomes.items()):
                    requests.add_metric([*labels, outcome], count)
                for output, o in list(p.outputs.items()):
                    o_agreed, am_agreed_n = o.agreed, o.argmax_agreed
                    out_agreed.add_metric([*labels, output], o_agreed)
                    out_compared.add_metric([*labels, output], o.compared)
                    if o.argmax_compared:
                        am_agreed.add_metric([*labels, output], am_agreed_n)
                        am_compared.add_metric([*labels, output], o.argmax_compared)
                    if o.abs_count:
                        max_abs.add_metric([*labels, output], o.max_abs)
                        mean_abs.add_metric([*labels, output], o.abs_sum / o.abs_count)
                for role, h in (("primary", p.primary_latency), ("shadow", p.shadow_latency)):
                    latency.add_metric([*labels, role], list(zip(les, itertools.accumulate(list(h.counts)))), h.sum / 1e9)
                compared = sum(p.shadow_latency.counts)
                if compared:
                    latency_diff.add_metric(labels, (p.shadow_latency.sum - p.primary_latency.sum) / compared / 1e9)
                log_lines.add_metric([*labels, "written"], p.log_written)
                log_lines.add_metric([*labels, "skipped"], p.log_skipped)
        yield from (requests, agreed, out_compared, out_agreed, am_compared, am_agreed, max_abs, mean_abs, latency, latency_diff, log_lines, pending)

    @staticmethod
    def _feedback(rows: list[Any]) -> Iterator[Any]:
        reports = CounterMetricFamily("surge_feedback_reports", "Outcome reports by result: joined, unknown (request id not indexed or forgotten).",
                                      labels=["model", "result"])
        ratio = GaugeMetricFamily("surge_feedback_join_ratio", "Share of outcome reports joined with the version that answered.", labels=["model"])
        size = GaugeMetricFamily("surge_feedback_index_requests", "Answered requests remembered for joining.", labels=["model"])
        evicted = CounterMetricFamily("surge_feedback_evicted", "Requests forgotten (the index was full) before any outcome arrived.", labels=["model"])
        v = ["model", "version"]
        labelled = CounterMetricFamily("surge_feedback_labelled_rows", "Rows with a ground-truth label.", labels=v)
        correct = CounterMetricFamily("surge_feedback_correct_rows", "Labelled rows whose predicted class was right.", labels=v)
        valued = CounterMetricFamily("surge_feedback_valued_rows", "Rows with a ground-truth number.", labels=v)
        abs_error = CounterMetricFamily("surge_feedback_abs_error", "Sum of absolute errors over valued rows.", labels=v)
        sq_error = CounterMetricFamily("surge_feedback_squared_abs_error", "Sum of squared absolute errors over valued rows.", labels=v)
        flags = CounterMetricFamily("surge_feedback_flags", "Requests with a success/failure outcome.", labels=v)
        successes = CounterMetricFamily("surge_feedback_successes", "Requests whose outcome was a success.", labels=v)
        accuracy = GaugeMetricFamily("surge_feedback_accuracy", "Correct / labelled rows.", labels=v)
        mae = GaugeMetricFamily("surge_feedback_mean_abs_error", "Mean absolute error over valued rows.", labels=v)
        rate = GaugeMetricFamily("surge_feedback_success_rate", "Successes / flags.", labels=v)
        for name, _, _, _, _, _, index in rows:
            if index is None:
                continue
            reports.add_metric([name, "joined"], index.joined)
            reports.add_metric([name, "unknown"], index.unknown)
            ratio.add_metric([name], index.joined / index.received if index.received else 0.0)
            size.add_metric([name], len(index))
            evicted.add_metric([name], index.evicted)
            for version, q in list(index.quality.items()):
                labels = [name, version]
                labelled.add_metric(labels, q.labelled)
                correct.add_metric(labels, q.correct)
                valued.add_metric(labels, q.valued)
                abs_error.add_metric(labels, q.abs_error_sum)
                sq_error.add_metric(labels, q.abs_error_sq_sum)
                flags.add_metric(labels, q.flags)
                successes.add_metric(labels, q.successes)
                if q.labelled:
                    accuracy.add_metric(labels, q.correct / q.labelled)
                if q.valued:
                    mae.add_metric(labels, q.abs_error_sum / q.valued)
                if q.flags:
                    rate.add_metric(labels, q.successes / q.flags)
        yield from (reports, ratio, size, evicted, labelled, correct, valued, abs_error, sq_error, flags, successes, accuracy, mae, rate)
