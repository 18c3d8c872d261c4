"""Prometheus metrics: per-version histograms and counters on the hot path, exposition at scrape time.

What is exported (prefix ``surge_``, base units; labels ``model`` and ``version``: the version that answered,
whichever route chose it; shadow requests are counted apart, in ``surge_shadow_*``):

- Histograms, one per request stage (``stats.py`` defines the stamps and boundaries), over answered
  requests: ``surge_request_duration_seconds`` (total server time), ``surge_decode_duration_seconds``,
  ``surge_queue_duration_seconds`` (also observes failed requests that waited before they failed, as
  ModelStatistics' queue does), ``surge_compute_input_duration_seconds``,
  ``surge_compute_infer_duration_seconds``, ``surge_compute_output_duration_seconds``,
  ``surge_encode_duration_seconds``; and ``surge_failed_request_duration_seconds`` (server time of
  failed requests). Buckets: ``DEFAULT_LATENCY_BUCKETS_S`` or the model's ``[metrics] latency_buckets_s``.
- ``surge_batch_size`` (rows per executed batch; buckets 1, 2, 4, ..., max_batch_size).
- ``surge_requests_total`` / ``surge_rows_total`` by ``code`` (the gRPC status name: OK,
  INVALID_ARGUMENT, ...; OK and ``PRESET_CODES`` exist at 0 from the moment a version loads, so an error
  ratio reads 0 rather than nothing); ``surge_unrouted_requests_total{code}`` for requests that never reached a
  version (unknown model or version, model not ready: no model label, so a client cannot create series).
- The edge (``edge.py``): ``surge_grpc_calls_{started,succeeded,failed}_total`` (grpc core's own counts,
  including calls that never reached a handler), ``surge_grpc_handler_failures_total``, and the
  histogram ``surge_event_loop_lag_seconds``.
- Gauges read at scrape time (no hot-path cost): ``surge_queue_depth``, ``surge_inflight_requests``,
  ``surge_model_state{state}`` (1 for the current state), ``surge_model_load_duration_seconds``;
  counter ``surge_queue_dropped_total{reason}`` (expired, cancelled: dropped before compute); for versions in
  the batcher's latency-SLO mode, ``surge_batcher_slo_margin_seconds`` (what the plan currently keeps back
  from the SLO) and ``surge_batcher_late_share`` (recent answers later than the SLO, exponentially weighted).
- Drift gauges (``drift.py``; only for versions monitoring drift): ``surge_drift_psi``, ``surge_drift_ks``,
  ``surge_drift_nan_ratio``, ``surge_drift_out_of_range_ratio`` ``{model,version,feature}``,
  ``surge_drift_alert{model,version}``, counters ``surge_drift_windows_total`` and
  ``surge_drift_samples_dropped_total``.
- ``surge_server_info{version}``, and prometheus_client's process, platform and GC collectors.

Why not prometheus_client's ``Histogram``: its ``observe`` scans the buckets linearly and takes two
locks, about 3 us per observation with 70 buckets (measured on the dev box), and a request makes eight;
``exposition.Histogram`` is one ``bisect`` and two integer additions (~0.25 us), updated on the event loop
only, so it needs no lock. prometheus_client does the content negotiation, the process collectors and
the parsing in tests; every family is written by ``exposition.Writer`` (see ``render``: about 10x cheaper).

Threads: ``VersionMetrics`` is written on the event loop. ``ServerMetrics.snapshot()`` runs on the
loop too (it copies the counters: a few microseconds per version, so a scrape sees one consistent
instant); ``render()`` formats a snapshot and may run in any thread.
"""

from __future__ import annotations

import bisect
import gzip
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .drift import DriftSnapshot
from .edge import LAG_BUCKETS_S, EdgeMetrics, EdgeSample, grpc_calls
from .exposition import Histogram, Writer, bucket_les, label_value, labels
from .gpu_metrics import register_gpu_metrics

__all__ = [
    "DEFAULT_LATENCY_BUCKETS_S",
    "STAGES",
    "ServerMetrics",
    "ServerSnapshot",
    "VersionMetrics",
    "VersionSample",
    "batch_size_buckets",
    "encode",
    "geometric_buckets",
    "negotiate",
    "render",
]

STATES = ("LOADING", "READY", "UNAVAILABLE", "UNLOADING")
#: Outcome codes exported at 0 from the moment a version loads (besides OK), so error ratios and alerts read 0,
#: not nothing, while a model has no errors: the client's mistakes, cancellations, and every server-side failure.
PRESET_CODES = ("CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE")


def geometric_buckets(start_s: float, stop_s: float, per_decade: int = 10) -> tuple[float, ...]:
    """Upper bounds ``start_s * 10**(k / per_decade)`` below ``stop_s``, then ``stop_s``, rounded to 3 significant digits.

    10 per decade is a factor of about 1.259 between neighbours, and every power of ten (1 ms, 10 ms, 0.1 s, 1 s)
    is a bound, so SLO thresholds such as ``le="0.1"`` exist exactly (alerts and dashboards use them).
    """
    if not 0 < start_s < stop_s or per_decade < 1:
        raise ValueError(f"geometric_buckets: need 0 < start_s < stop_s and per_decade >= 1, got {start_s}, {stop_s}, {per_decade}")
    count = math.ceil(math.log10(stop_s / start_s) * per_decade)
    bounds = {float(f"{start_s * 10 ** (k / per_decade):.3g}") for k in range(count)} | {stop_s}
    return tuple(sorted(b for b in bounds if b <= stop_s))


#: About 1.26x steps (10 per decade) from 10 microseconds to 60 seconds: 69 upper bounds, plus +Inf.
DEFAULT_LATENCY_BUCKETS_S = geometric_buckets(1e-5, 60.0)


def batch_size_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch-size upper bounds: powers of two below ``max_batch_size``, then ``max_batch_size`` (full batches)."""
    top = max(1, max_batch_size)
    return tuple(sorted({1 << i for i in range(top.bit_length()) if 1 << i < top} | {top}))


#: (metric name, help) per latency histogram, in the order ``VersionMetrics.histograms`` holds them.
STAGES: tuple[tuple[str, str], ...] = (
    ("surge_request_duration_seconds", "Server time of answered requests, from arrival to encoded response."),
    ("surge_decode_duration_seconds", "Decoding and validating the request (proto to numpy)."),
    ("surge_queue_duration_seconds", "Waiting in the batcher for rows and a free instance (also failed requests that waited)."),
    ("surge_compute_input_duration_seconds", "Batch assembly (and host-to-device copies) before the runtime call."),
    ("surge_compute_infer_duration_seconds", "The runtime's own call for the batch the request was part of."),
    ("surge_compute_output_duration_seconds", "Results back on the event loop, split into the request's rows."),
    ("surge_encode_duration_seconds", "Encoding the response (numpy to proto)."),
    ("surge_failed_request_duration_seconds", "Server time of requests that failed after reaching a model version."),
)



class VersionMetrics:
    """The metrics of one model version, bound once when it loads: label values, histograms, outcome counters.

    The ``observe_*`` methods are the hot path; they run on the event loop (called by ``VersionStats``).
    Durations are integer nanoseconds.
    """

    __slots__ = ("batch", "batch_les", "exemplars", "histograms", "labels", "latency_buckets_s", "latency_les", "outcomes", "_failed", "_ok", "_queue", "_stages")

    def __init__(self, model: str, version: str, *, latency_buckets_s: Sequence[float] = (), max_batch_size: int = 0) -> None:
        self.labels = (model, version)
        self.latency_buckets_s = tuple(latency_buckets_s) or DEFAULT_LATENCY_BUCKETS_S
        bounds_ns = [round(b * 1e9) for b in self.latency_buckets_s]
        self.histograms = tuple(Histogram(bounds_ns) for _ in STAGES)
        self._stages = self.histograms[:7]
        self._queue = self.histograms[2]
        self._failed = self.histograms[7]
        self.batch = Histogram(batch_size_buckets(max_batch_size))
        # the ``le`` label values, formatted once (as prometheus_client formats them: canonical for OpenMetrics)
        self.latency_les = bucket_les(self.latency_buckets_s)
        self.batch_les = bucket_les(self.batch.bounds)
        self._ok = [0, 0]  # requests, rows
        self.outcomes: dict[str, list[int]] = {"OK": self._ok, **{code: [0, 0] for code in PRESET_CODES}}
        self.exemplars: dict[int, tuple[str, int, float]] = {}  # request-latency bucket -> (trace id, ns, epoch s) of a sampled request

    def exemplar(self, total: int, trace_id: str) -> None:
        """A traced request's latency (ns) and trace id: the exemplar of its bucket of ``surge_request_duration_seconds``."""
        self.exemplars[bisect.bisect_left(self._stages[0].bounds, total)] = (trace_id, total, time.time())

    def observe_success(self, rows: int, total: int, decode: int, queue: int, assemble: int, infer: int, output: int, encode: int) -> None:
        """An answered request of ``rows`` rows and its stage durations (ns)."""
        h = self._stages
        h[0].observe(total)
        h[1].observe(decode)
        h[2].observe(queue)
        h[3].observe(assemble)
        h[4].observe(infer)
        h[5].observe(output)
        h[6].observe(encode)
        ok = self._ok
        ok[0] += 1
        ok[1] += rows

    def observe_failure(self, code: str, rows: int, total: int, queue: int) -> None:
        """A failed request: its outcome ``code``, rows (0 when it was not decoded), server time, queue wait (-1: none)."""
        self._failed.observe(total)
        if queue >= 0:
            self._queue.observe(queue)
        counts = self.outcomes.get(code)
        if counts is None:
            counts = self.outcomes[code] = [0, 0]  # bound once per (version, code), on the error path
        counts[0] += 1
        counts[1] += rows

    def observe_batch(self, rows: int) -> None:
        """One executed batch of ``rows`` rows."""
        self.batch.observe(rows)

    def snapshot(self) -> _MetricsSnapshot:
        """A copy of every counter (on the loop; the copy is what a scrape formats)."""
        return _MetricsSnapshot(
            labels=self.labels,
            latency_les=self.latency_les,
            histograms=tuple((list(h.counts), h.sum) for h in self.histograms),
            batch_les=self.batch_les,
            batch=(list(self.batch.counts), self.batch.sum),
            outcomes={code: (c[0], c[1]) for code, c in self.outcomes.items()},
            exemplars=dict(self.exemplars),
        )


@dataclass(frozen=True, slots=True)
class _MetricsSnapshot:
    labels: tuple[str, str]
    latency_les: tuple[str, ...]
    histograms: tuple[tuple[list[int], int], ...]
    batch_les: tuple[str, ...]
    batch: tuple[list[int], int]
    outcomes: dict[str, tuple[int, int]]
    exemplars: dict[int, tuple[str, int, float]]


@dataclass(frozen=True, slots=True)
class VersionSample:
    """What a scrape reports about one model version, taken on the event loop (see ``ModelVersion.sample``)."""

    model: str
    version: str
    state: str
    load_duration_s: float
    queue_depth: int
    inflight: int
    dropped_expired: int
    dropped_cancelled: int
    metrics: _MetricsSnapshot | None
    drift: DriftSnapshot | None = None
    slo: tuple[float, float] | None = None
    """Latency-SLO mode only: the batcher's (margin in seconds, share of recent answers later than the SLO)."""


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """Everything one scrape formats: per-version samples and the unrouted counts."""

    server_version: str
    versions: tuple[VersionSample, ...]
    unrouted: dict[str, int]
    edge: EdgeSample | None = None


class ServerMetrics:
    """The server-wide side of the metrics: unrouted requests, and the snapshot a scrape formats.

    ``versions`` returns the samples of every version currently in the repository's tables (called on the loop).
    """

    def __init__(self, versions: Callable[[], Iterable[VersionSample]], *, server_version: str = "") -> None:
        self._versions = versions
        self._server_version = server_version
        # The codes a lookup can fail with, exported from the start (at 0), so rate() and alerts see the series.
        self.unrouted: dict[str, int] = {"INVALID_ARGUMENT": 0, "NOT_FOUND": 0, "UNAVAILABLE": 0}
        self.edge = EdgeMetrics()
        """Calls that fail before or around the handlers, and the event-loop lag (``edge.py``)."""
        # prometheus_client's standard collectors in a registry of our own, not the global one (several servers
        # may share a process, as in the tests); more collectors may be registered here.
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        register_gpu_metrics(self.registry)  # Triton's nv_gpu_* gauges where NVML works; nothing elsewhere
        self.collectors = (self.registry,)

    def record_unrouted(self, code: str) -> None:
        """A request that failed before reaching a version (event loop; error path only)."""
        self.unrouted[code] = self.unrouted.get(code, 0) + 1

    def snapshot(self) -> ServerSnapshot:
        """Copy every counter and gauge (event loop)."""
        return ServerSnapshot(self._server_version, tuple(self._versions()), dict(self.unrouted), self.edge.sample())


def render(snapshot: ServerSnapshot, collectors: Iterable[Collector] = (), *, accept: str = "", accept_encoding: str = "") -> tuple[bytes, dict[str, str]]:
    """Format a snapshot (and extra prometheus_client collectors) as the client asked; returns (body, headers).

    ``accept``: the Accept header (OpenMetrics when it asks for ``application/openmetrics-text``, else
    Prometheus text 0.0.4, as prometheus_client negotiates); ``accept_encoding``: gzip when it lists it.
    Runs in any thread.

    Surge's own families are written line by line from the snapshot (``_write``): prometheus_client's generic
    formatter spends about 20 us per sample, and a version has about 600 samples (8 histograms of 70 buckets),
    which made a scrape of the demo repository cost 25 ms of CPU in the serving process; written directly it
    is a few ms. The collectors' families (process, platform, GC, GPU, traffic, rollouts) follow, written by
    the same ``exposition.Writer``. Both parsers of prometheus_client read the result (tests).
    """
    openmetrics, content_type = negotiate(accept)
    writer = Writer(openmetrics=openmetrics)
    _write(snapshot, writer)
    for collector in collectors:
        writer.families(collector.collect())
    return encode(writer.text(), content_type, accept_encoding)


def negotiate(accept: str) -> tuple[bool, str]:
    """(OpenMetrics?, Content-Type) for an Accept header, as prometheus_client negotiates."""
    _, content_type = choose_encoder(accept)
    return content_type.startswith("application/openmetrics-text"), content_type


def encode(text: str, content_type: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """A page's body and headers: UTF-8, gzip when ``accept_encoding`` lists it."""
    body = text.encode("utf-8")
    headers = {"Content-Type": content_type}
    if "gzip" in accept_encoding:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def _write(snap: ServerSnapshot, writer: Writer) -> None:
    """Surge's families in Prometheus text 0.0.4 or OpenMetrics 1.0 (the same lines, but for counter headers)."""
    w, header, sample, histogram = writer.w, writer.header, writer.sample, writer.histogram
    openmetrics = writer.openmetrics
    observed = [v.metrics for v in snap.versions if v.metrics is not None]
    version = [labels(("model", "version"), m.labels) for m in observed]

    header("surge_server_info", "gauge", "Surge server version.")
    w(f'surge_server_info{{version="{label_value(snap.server_version)}"}} 1\n')
    for index, (name, help_text) in enumerate(STAGES):
        header(name, "histogram", help_text)
        for m, text in zip(observed, version):
            counts, total_ns = m.histograms[index]
            histogram(name, text, m.latency_les, counts, total_ns / 1e9, m.exemplars if openmetrics and index == 0 else None)
    header("surge_batch_size", "histogram", "Rows per executed batch.")
    for m, text in zip(observed, version):
        histogram("surge_batch_size", text, m.batch_les, m.batch[0], m.batch[1])

    header("surge_requests_total", "counter", "Requests that reached a model version, by outcome (gRPC status name).")
    for m, text in zip(observed, version):
        for code, (n, _) in sorted(m.outcomes.items()):
            w(f'surge_requests_total{{{text},code="{code}"}} {n}\n')
    header("surge_rows_total", "counter", "Rows of requests that reached a model version, by outcome (0 for undecodable requests).")
    for m, text in zip(observed, version):
        for code, (_, rows) in sorted(m.outcomes.items()):
            w(f'surge_rows_total{{{text},code="{code}"}} {rows}\n')
    header("surge_unrouted_requests_total", "counter", "Inference requests that reached no model version (unknown model or version, not ready), by outcome.")
    for code, count in sorted(snap.unrouted.items()):
        w(f'surge_unrouted_requests_total{{code="{code}"}} {count}\n')
    if snap.edge is not None:
        _write_edge(snap.edge, writer)

    every = [(v, labels(("model", "version"), (v.model, v.version))) for v in snap.versions]
    header("surge_queue_depth", "gauge", "Requests waiting in the version's batcher.")
    w("".join(f"surge_queue_depth{{{text}}} {v.queue_depth}\n" for v, text in every))
    header("surge_inflight_requests", "gauge", "Requests queued or executing in the version.")
    w("".join(f"surge_inflight_requests{{{text}}} {v.inflight}\n" for v, text in every))
    header("surge_queue_dropped_total", "counter", "Requests dropped from the queue before compute, by reason.")
    for v, text in every:
        w(f'surge_queue_dropped_total{{{text},reason="expired"}} {v.dropped_expired}\n')
        w(f'surge_queue_dropped_total{{{text},reason="cancelled"}} {v.dropped_cancelled}\n')
    slo = [(v.slo, text) for v, text in every if v.slo is not None]
    if slo:
        header("surge_batcher_slo_margin_seconds", "gauge", "Latency-SLO mode: time the batcher's plan keeps back from the SLO, steered by measured latencies.")
        for (margin, _), text in slo:
            sample("surge_batcher_slo_margin_seconds", text, margin)
        header("surge_batcher_late_share", "gauge", "Latency-SLO mode: share of recent answers later than the SLO (about the last 100).")
        for (_, late), text in slo:
            sample("surge_batcher_late_share", text, late)
    header("surge_model_state", "gauge", "1 for the version's current state (LOADING, READY, UNAVAILABLE, UNLOADING).")
    for v, text in every:
        w("".join(f'surge_model_state{{{text},state="{state}"}} {int(v.state == state)}\n' for state in STATES))
    header("surge_model_load_duration_seconds", "gauge", "How long the version took to load and warm up.")
    for v, text in every:
        sample("surge_model_load_duration_seconds", text, v.load_duration_s)
    _write_drift([(v.drift, text) for v, text in every if v.drift is not None], writer)


_LAG_LES = bucket_les(LAG_BUCKETS_S)


def _write_edge(edge: EdgeSample, writer: Writer) -> None:
    """The edge families (``edge.py``): gRPC core's call counters, handler failures, the event-loop lag."""
    header, w = writer.header, writer.w
    calls = grpc_calls(edge.grpc_server_id) if edge.grpc_server_id is not None else None  # in the formatting thread
    if calls is not None:
        for name, count, help_text in zip(("started", "succeeded", "failed"), calls, (
            "gRPC calls of every method as grpc core counts them, including calls that never reached a handler.",
            "gRPC calls grpc core ended with OK.",
            "gRPC calls grpc core ended with another status (a handler's error, or refused before one: deadline, size, method, auth).",
        )):
            header(f"surge_grpc_calls_{name}_total", "counter", help_text)
            w(f"surge_grpc_calls_{name}_total {count}\n")
    header("surge_grpc_handler_failures_total", "counter", "gRPC inference calls whose handler answered an error or was cancelled; started - succeeded - this: lost outside the handlers.")
    w(f"surge_grpc_handler_failures_total {edge.handler_failures}\n")
    header("surge_event_loop_lag_seconds", "histogram", "How late a timer fires on the server's event loop (sampled 10 times a second): calls wait this long before a handler runs.")
    writer.histogram("surge_event_loop_lag_seconds", "", _LAG_LES, edge.lag_counts, edge.lag_sum_s)


#: (metric, FeatureDrift attribute, help) of the per-feature drift gauges.
DRIFT_GAUGES = (
    ("surge_drift_psi", "psi", "Population Stability Index of the feature's last window against the profile (> 0.2: significant shift)."),
    ("surge_drift_ks", "ks", "Kolmogorov-Smirnov statistic (0..1) of the feature's last window against the profile's CDF."),
    ("surge_drift_nan_ratio", "nan_ratio", "Share of the feature's values in the last window that are NaN or infinite."),
    ("surge_drift_out_of_range_ratio", "out_of_range_ratio", "Share of the feature's finite values in the last window outside the profile's [min, max]."),
)


def _write_drift(drifts: list[tuple[DriftSnapshot, str]], writer: Writer) -> None:
    """The drift families, for the versions that monitor drift (none written when no version does)."""
    if not drifts:
        return
    header, w = writer.header, writer.w
    for name, attribute, help_text in DRIFT_GAUGES:
        header(name, "gauge", help_text)
        for d, text in drifts:
            for f in d.features:
                writer.sample(name, f'{text},feature="{label_value(f.name)}"', getattr(f, attribute))
    header("surge_drift_alert", "gauge", "1 when a feature's PSI exceeds the model's [drift] psi_alert in the last window.")
    w("".join(f"surge_drift_alert{{{text}}} {int(d.alert)}\n" for d, text in drifts))
    header("surge_drift_windows_total", "counter", "Window computations of the drift thread.")
    w("".join(f"surge_drift_windows_total{{{text}}} {d.windows}\n" for d, text in drifts))
    header("surge_drift_samples_dropped_total", "counter", "Sampled requests dropped because the drift thread's queue was full.")
    w("".join(f"surge_drift_samples_dropped_total{{{text}}} {d.dropped}\n" for d, text in drifts))
