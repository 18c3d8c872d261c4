"""Distributed tracing: OpenTelemetry spans per request stage, built after the fact from the stage stamps.

Off by default. When off, the request path pays one attribute check (``Tracing.on``). When on:

- each inference request's W3C ``traceparent``/``tracestate`` (gRPC metadata, or REST headers: the caller's
  metadata the data plane is given) is extracted, and the sampler decides; an unsampled request
  carries nothing further (``Stamps.trace`` stays None);
- a sampled request gets a SERVER span (OpenTelemetry RPC conventions: ``rpc.system``, ``rpc.service``,
  ``rpc.method``, ``rpc.grpc.status_code``) started at its arrival stamp, and, when it is answered or fails,
  the children ``decode``, ``queue``, ``compute`` and ``encode`` with the times of ``stats.Stamps`` (no live
  span on the hot path); attributes ``surge.model``, ``surge.model_version``, ``surge.rows``,
  ``surge.batch_size``, ``surge.route``, ``surge.status``;
- every executed batch with a sampled request in it gets one ``batch`` span (child of the first sampled
  request, linked to every sampled request's span; their ``compute`` spans link back to it);
- a mirrored (shadow) call gets a ``shadow`` span, child of and linked to the request it mirrors;
- the request-latency histogram keeps the trace id of a sampled request per bucket (OpenMetrics exemplars).

Sampling is parent-based (a caller's sampled/unsampled flag is followed) with a ratio for new traces, per
model and global, through Triton's trace extension (``TraceSetting`` over gRPC, ``/v2[/models/{m}]/trace/setting``
over REST; ``trace_level``, ``trace_rate``, ``trace_count``, ``log_frequency``, ``trace_file``):
``trace_level`` OFF samples nothing, TIMESTAMPS (or TENSORS) samples; ``trace_rate`` N samples one new trace in
N (ratio 1/N); ``trace_count`` N stops after N more sampled requests (-1: no limit); ``log_frequency`` and
``trace_file`` are kept and reported (spans go to the exporter, not to a file).

Configured by the standard ``OTEL_*`` variables (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME``, ...) and ``surge serve
--trace-*`` flags (the flags win). Needs ``surge[tracing]``.
"""

from __future__ import annotations

import functools
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError, InvalidInput
from ..execution.stats import _EPOCH_OFFSET_NS as EPOCH_OFFSET_NS

if TYPE_CHECKING:
    from ..execution.stats import Stamps

__all__ = ["DISABLED", "EXPORTERS", "TraceSettings", "Tracing", "build", "from_options", "record_batch", "setting_json", "setting_request"]

EXPORTERS = ("otlp-grpc", "otlp-http", "console", "none")
RPC_SERVICE = "inference.GRPCInferenceService"
LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
#: gRPC status names -> numeric codes (rpc.grpc.status_code)
_GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


_random64 = functools.partial(random.getrandbits, 64)


def _epoch(perf_ns: int) -> int:
    return EPOCH_OFFSET_NS + perf_ns


# -- Triton's trace settings ---------------------------------------------------------------------


@dataclass(slots=True)
class TraceSettings:
    """One scope's settings (global, or a model's overrides: None = the global value)."""

    trace_level: tuple[str, ...] | None = None
    trace_rate: int | None = None
    trace_count: int | None = None
    log_frequency: int | None = None
    trace_file: str | None = None


_FIELDS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file")


def _parse(name: str, values: list[str]) -> Any:
    """A setting's new value from its strings (Triton sends every value as a list of strings)."""
    if name == "trace_level":
        levels = tuple(v.upper() for v in values)
        bad = [v for v in levels if v not in LEVELS]
        if bad:
            raise InvalidInput(f"trace_level {bad[0]!r} is not one of {', '.join(LEVELS)}")
        if "OFF" in levels and len(levels) > 1:
            raise InvalidInput("trace_level OFF cannot be combined with other levels")
        return levels
    if len(values) != 1:
        raise InvalidInput(f"{name} takes one value, got {len(values)}")
    if name == "trace_file":
        return values[0]
    try:
        number = int(values[0])
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {values[0][:40]!r}") from None
    low = {"trace_rate": 1, "trace_count": -1, "log_frequency": 0}[name]
    if number < low:
        raise InvalidInput(f"{name} must be at least {low}, got {number}")
    return number


class _Sampler:
    """Parent-based sampling with Triton's settings per model (an OpenTelemetry ``Sampler``; built lazily)."""

    def __init__(self, tracing: Tracing) -> None:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult
        from opentelemetry.trace import SpanKind, get_current_span

        self._t = tracing
        self._result, self._yes = SamplingResult, Decision.RECORD_AND_SAMPLE
        self._drop = SamplingResult(Decision.DROP)
        self._server = SpanKind.SERVER
        self._parent = get_current_span

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None, attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
        parent = self._parent(parent_context).get_span_context()
        if kind is not self._server:  # a stage, batch or shadow span: exactly when its request is sampled
            sampled = parent.is_valid and parent.trace_flags.sampled
        elif self._t.decided:  # a new trace that ``Tracing.begin`` sampled already
            sampled = True
        else:
            sampled = self._t.decide(attributes.get("surge.model", "") if attributes else "", trace_id, parent if parent.is_valid else None)
        return self._result(self._yes, attributes, parent.trace_state if parent.is_valid else None) if sampled else self._drop

    def get_description(self) -> str:
        return "SurgeTraceSettings"


# -- the tracer ----------------------------------------------------------------------------------


class Tracing:
    """The server's tracing: the OpenTelemetry tracer, Triton's settings, and the request hooks.

    ``on``: the one attribute the request path reads (False: tracing not configured, or trace_level OFF everywhere).
    """

    def __init__(self, *, ratio: float = 1.0) -> None:
        self.on = False
        self.decided = False  # set by ``begin`` around starting a span it has sampled already (event loop only)
        self._provider: Any = None
        self._lock = threading.Lock()
        rate = max(1, round(1 / ratio)) if ratio > 0 else 1
        self.global_settings = TraceSettings(("TIMESTAMPS",) if ratio > 0 else ("OFF",), rate, -1, 0, "")
        self.model_settings: dict[str, TraceSettings] = {}

    def attach(self, provider: Any) -> None:
        """Trace through ``provider`` (an SDK ``TracerProvider`` whose sampler is this object's ``_Sampler``)."""
        from opentelemetry import trace
        from opentelemetry.propagate import extract
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        self._provider = provider
        self._tracer = provider.get_tracer("surge.server")
        self._extract = extract
        self._set_span = trace.set_span_in_context
        self._Link, self._SERVER, self._Status, self._ERROR = Link, SpanKind.SERVER, Status, StatusCode.ERROR
        self._refresh()

    @property
    def configured(self) -> bool:
        return self._provider is not None

    # -- settings (Triton's trace extension) ------------------------------------------------------

    def settings_of(self, model: str = "") -> dict[str, list[str]]:
        """The effective settings of ``model`` ("" = global) as Triton reports them (every value a list of strings)."""
        g, m = self.global_settings, self.model_settings.get(model) if model else None
        out: dict[str, list[str]] = {}
        for name in _FIELDS:
            value = getattr(m, name) if m is not None and getattr(m, name) is not None else getattr(g, name)
            out[name] = list(value) if name == "trace_level" else [str(value)]
        out["trace_mode"] = ["opentelemetry"]
        return out

    def update(self, model: str, settings: dict[str, list[str]]) -> dict[str, list[str]]:
        """Apply a TraceSetting request (an empty list clears a model's override); returns the effective settings."""
        unknown = [k for k in settings if k not in _FIELDS and k != "trace_mode"]
        if unknown:
            raise InvalidInput(f"unknown trace setting {unknown[0][:60]!r}; the settings are {', '.join(_FIELDS)}")
        if settings and not self.configured:
            raise InvalidInput("tracing is not configured on this server; start it with --trace-exporter (or OTEL_TRACES_EXPORTER)")
        mode = settings.get("trace_mode")
        if mode and [v.lower() for v in mode] != ["opentelemetry"]:
            raise InvalidInput("trace_mode: Surge traces with OpenTelemetry only")
        parsed = {name: (_parse(name, values) if values else None) for name, values in settings.items() if name != "trace_mode"}
        with self._lock:
            if model and parsed:
                scope = self.model_settings.setdefault(model, TraceSettings())
                for name, value in parsed.items():
                    setattr(scope, name, value)
            elif not model:
                for name, value in parsed.items():
                    if value is None:
                        raise InvalidInput(f"the global {name} cannot be cleared; give it a value")
                    setattr(self.global_settings, name, value)
            self._refresh()
        return self.settings_of(model)

    def _refresh(self) -> None:
        scopes = [self.global_settings, *self.model_settings.values()]
        self.on = self.configured and any(s.trace_level not in (None, ("OFF",)) and s.trace_count != 0 for s in scopes)

    def decide(self, model: str, trace_id: int, parent: Any) -> bool:
        """Sample a request of ``model``? (``begin`` asks for a new trace, the SDK's sampler for a caller's: ``parent``.)"""
        g, m = self.global_settings, self.model_settings.get(model)
        scope = m if m is not None else g
        level = scope.trace_level if scope.trace_level is not None else g.trace_level
        if level == ("OFF",):
            return False
        with self._lock:
            holder = scope if scope.trace_count is not None else g
            count = holder.trace_count
            if count == 0:
                return False
            if parent is not None:
                sampled = bool(parent.trace_flags.sampled)
            else:
                rate = scope.trace_rate if scope.trace_rate is not None else g.trace_rate
                assert rate is not None  # the global settings set every field
                sampled = rate == 1 or (trace_id & 0xFFFFFFFFFFFFFFFF) < (1 << 64) // rate  # TraceIdRatioBased's test
            if sampled and count is not None and count > 0:
                holder.trace_count = count - 1
                if count == 1:
                    self._refresh()
            return sampled

    # -- request hooks ----------------------------------------------------------------------------

    def begin(self, stamps: Stamps, metadata: Callable[[], Iterable[tuple[str, Any]] | None], model: str, method: str) -> RequestTrace | None:
        """A request arrived (``stamps.start``): its trace when sampled, else None. ``metadata``: the caller's (gRPC metadata
        or HTTP headers), where a ``traceparent`` continues the caller's trace."""
        carrier: dict[str, str] | None = None
        for key, value in metadata() or ():
            if key == "traceparent" or key == "tracestate":
                if carrier is None:
                    carrier = {}
                carrier[key] = value if isinstance(value, str) else value.decode("ascii", "replace")
        if carrier is None:  # a new trace: decided here, so an unsampled request never reaches the SDK
            if not self.decide(model, _random64(), None):
                return None
            self.decided = True
        try:
            span = self._tracer.start_span(
                f"{RPC_SERVICE}/{method}", context=self._extract(carrier) if carrier is not None else None, kind=self._SERVER,
                start_time=_epoch(stamps.start), attributes={"rpc.system": "grpc", "rpc.service": RPC_SERVICE, "rpc.method": method, "surge.model": model},
            )
        finally:
            self.decided = False
        if not span.is_recording():
            return None
        return RequestTrace(self, span)

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()


class RequestTrace:
    """One sampled request's server span; its stage spans are made when it ends."""

    __slots__ = ("batch", "batch_rows", "batch_size", "span", "tracing")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self.tracing = tracing
        self.span = span
        self.batch: Any = None  # the span context of the batch it ran in
        self.batch_size = 0
        self.batch_rows = 0

    def end(self, s: Stamps, version: Any, code: str, route: str = "primary", end_ns: int = 0) -> None:
        """The request was answered (``code`` "OK") or failed: the stage spans from ``s``, then the server span."""
        t = self.tracing
        span = self.span
        end = end_ns or s.end
        span.set_attributes({
            "surge.model_version": version.version_str, "surge.rows": s.rows, "surge.batch_size": self.batch_rows or s.rows,
            "surge.batch_requests": self.batch_size or 1, "surge.route": route, "surge.status": code,
            "rpc.grpc.status_code": _GRPC_CODES.get(code, 2),
        })
        if code != "OK":
            span.set_status(t._Status(t._ERROR, code))
        ctx = t._set_span(span)
        stages = (
            ("decode", s.start, s.decoded), ("queue", s.decoded, s.exec_start), ("compute", s.exec_start, s.encode_start), ("encode", s.encode_start, s.end),
        )
        for name, begin, finish in stages:
            if not begin:
                break
            if not finish:  # the stage the request failed in
                finish = end
            links = [t._Link(self.batch)] if name == "compute" and self.batch is not None else None
            t._tracer.start_span(name, context=ctx, start_time=_epoch(begin), links=links).end(_epoch(finish))
        span.end(_epoch(end))
        metrics = version.stats.metrics
        if metrics is not None and code == "OK":
            metrics.exemplar(end - s.start, format(span.get_span_context().trace_id, "032x"))

    def shadow(self, model: str, version: str, start_ns: int, end_ns: int, outcome: str) -> None:
        """The mirrored call of this request ran from ``start_ns`` to ``end_ns`` (perf_counter_ns)."""
        t = self.tracing
        sc = self.span.get_span_context()
        span = t._tracer.start_span(
            "shadow", context=t._set_span(self.span), start_time=_epoch(start_ns), links=[t._Link(sc, {"surge.link": "mirrors"})],
            attributes={"surge.model": model, "surge.model_version": version, "surge.route": "shadow", "surge.status": outcome},
        )
        if outcome != "OK":
            span.set_status(t._Status(t._ERROR, outcome))
        span.end(_epoch(end_ns))


def record_batch(model: str, version: int, traces: list[RequestTrace], requests: int, rows: int, start_ns: int, end_ns: int) -> None:
    """One executed batch holding the sampled requests ``traces``: its span, linked to each of theirs."""
    t = traces[0].tracing
    span = t._tracer.start_span(
        "batch", context=t._set_span(traces[0].span), start_time=_epoch(start_ns),
        links=[t._Link(r.span.get_span_context()) for r in traces],
        attributes={"surge.model": model, "surge.model_version": str(version), "surge.batch_size": rows, "surge.batch_requests": requests},
    )
    span.end(_epoch(end_ns))
    sc = span.get_span_context()
    for r in traces:
        r.batch, r.batch_size, r.batch_rows = sc, requests, rows


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """``surge serve --trace-*``; unset fields fall back to the ``OTEL_*`` variables."""

    exporter: str = ""
    endpoint: str = ""
    ratio: float | None = None
    service_name: str = ""


def from_options(options: TraceOptions) -> Tracing:
    """The server's tracing: DISABLED unless an exporter is named (flag or ``OTEL_TRACES_EXPORTER``)."""
    exporter = (options.exporter or os.environ.get("OTEL_TRACES_EXPORTER", "")).strip().lower()
    if exporter in ("", "none"):
        return Tracing()
    if exporter == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        exporter = "otlp-http" if protocol.startswith("http") else "otlp-grpc"
    if exporter not in EXPORTERS:
        raise ConfigError(f"trace exporter must be one of {', '.join(EXPORTERS)} (or otlp), got {exporter!r}")
    ratio = options.ratio
    if ratio is None:
        arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "")
        try:
            ratio = float(arg) if arg else 1.0
        except ValueError:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1, got {arg[:40]!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"trace ratio must be between 0 and 1, got {ratio}")
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ConfigError("tracing needs the OpenTelemetry SDK: pip install 'surge[tracing]'") from None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return build(BatchSpanProcessor(_exporter(exporter, options.endpoint)), ratio=ratio, service_name=options.service_name)


def build(processor: Any, *, ratio: float = 1.0, service_name: str = "") -> Tracing:
    """Tracing through an SDK span ``processor`` (the exporter's ``BatchSpanProcessor``; tests pass an in-memory one).

    ``service_name``: else ``OTEL_SERVICE_NAME`` (``OTEL_RESOURCE_ATTRIBUTES`` too), else "surge".
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "surge"}))
    tracing = Tracing(ratio=ratio)
    provider = TracerProvider(resource=resource, sampler=cast(Sampler, _Sampler(tracing)))
    provider.add_span_processor(processor)
    tracing.attach(provider)
    return tracing


def _exporter(kind: str, endpoint: str) -> Any:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint or None)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter(endpoint=endpoint or None, insecure=True if endpoint.startswith("http://") else None)


DISABLED = Tracing()
"""Tracing off: what a data plane has until the server gives it its own."""


# -- the trace extension over REST ---------------------------------------------------------------


def setting_request(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """A REST trace-setting body, parsed (``{"trace_rate": "10", "trace_level": ["TIMESTAMPS"], "trace_count": null}``;
    the REST edge reads it with its bounded JSON reader), as the settings to change (``Tracing.update``)."""
    changes: dict[str, list[str]] = {}
    for name, value in doc.items():
        values = [] if value is None else value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise InvalidInput(f"trace setting {str(name)[:60]!r} must be a string, a number, a list of strings, or null")
        changes[name] = [str(v) for v in values]
    return changes


def setting_json(settings: Mapping[str, list[str]]) -> dict[str, Any]:
    """Trace settings as Triton's REST answers them: ``trace_level`` a list, every other setting one string."""
    return {name: list(v) if name == "trace_level" else (v[0] if len(v) == 1 else list(v)) for name, v in settings.items()}
