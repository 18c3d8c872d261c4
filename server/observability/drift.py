"""Drift monitoring: a reference profile of a model's data, and sliding-window PSI / KS against it while serving.

Offline (``surge profile``): ``build_profile`` summarises a sample of training or validation data into a
JSON profile, per feature (a tensor's column: ``x[3]``; a tensor of one value per row is named ``x``):
fixed bin edges (deciles of the sample by default), the sample's fraction of values in each bin (the two
outer bins are open: (-inf, e0) and [e_last, +inf)), 101 quantiles (the reference CDF for KS), mean, std,
min, max and the missing rate (NaN or +-inf). Pure numpy: this module imports nothing of the server.

Categorical features: a feature whose finite sample values are all integers (an integer or bool dtype, or
floats that are all integral) and take at most ``max_categories`` (default 20) distinct values is profiled
as ``kind = "categorical"``: instead of quantile bins it stores its sorted ``categories`` and ``fractions``
= each category's share of the finite values followed by an "other" bucket (the share outside the table,
0 in the profile). The JSON's ``kind`` field defaults to ``"continuous"``, so profiles written before it
still load.

Online: a ``DriftMonitor`` per model version (``[drift]`` in its config.toml and ``drift_profile.json`` in
its version folder). On the event loop the only work is ``sample()`` (one ``random()`` draw per request)
and, for a sampled request, ``offer()``: the request's input and output arrays, by reference (decoded
inputs are read-only views of the request; outputs are fresh arrays), are put on a bounded queue
(``QUEUE_ITEMS`` requests for the whole process; when full the sample is dropped and counted). ONE
background thread (``surge-drift``, shared by every monitor in the process) copies the tracked columns into
a per-tensor ring buffer of the last ``window_rows`` rows and, once the window is full, every
``window_rows // 10`` new rows (at least 1) computes per feature:

- PSI, Population Stability Index: sum over bins of (p - q) * ln(p / q), p the window's fraction of finite
  values in the bin, q the profile's, both floored at 1e-4 (empty bins). Unitless; rule of thumb: < 0.1
  stable, 0.1-0.2 moderate, > 0.2 significant shift.
- KS, the Kolmogorov-Smirnov statistic: the largest distance between the window's empirical CDF and the
  profile's CDF (linear between its 101 quantiles); 0..1.
- the non-finite (NaN/inf) ratio of the window's values, and the out-of-range ratio (finite values below
  the profile's min or above its max, over the finite values).

For a categorical feature PSI is the same formula over the category frequencies plus the "other" bucket;
the out-of-range ratio is the share of finite values that are not a category of the profile (the "other"
bucket); KS is not meaningful for a discrete variable and is exported as 0 (the ``surge_drift_ks`` gauge
stays present, so every feature has the same gauges).

The results replace an immutable ``DriftSnapshot`` that the metrics scrape reads (no lock needed). The
alert is on when any feature's PSI exceeds ``psi_alert``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROFILE_FILENAME",
    "DriftMonitor",
    "DriftSnapshot",
    "FeatureDrift",
    "FeatureProfile",
    "Profile",
    "bin_counts",
    "build_profile",
    "category_counts",
    "drift_report",
    "flush",
    "ks_statistic",
    "psi",
]

log = logging.getLogger("surge.drift")

PROFILE_FILENAME = "drift_profile.json"
PROFILE_FORMAT = "surge-drift-profile/1"
#: Requests waiting for the drift thread, all monitors together; beyond this a sampled request is dropped (counted).
QUEUE_ITEMS = 1024
#: PSI floor for a bin's fraction (an empty bin would make ln(p / q) infinite).
PSI_EPSILON = 1e-4
_LEVELS = np.linspace(0.0, 1.0, 101)


# -- statistics (shared by the offline profile and the server) ------------------------------------


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of finite ``values`` in the bins (-inf, e0), [e0, e1), ..., [e_last, +inf): ``len(edges) + 1`` counts."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """Population Stability Index of observed bin ``counts`` against ``expected`` bin fractions (floored at 1e-4)."""
    total = counts.sum()
    if total == 0:
        return math.nan
    p = np.maximum(counts / total, PSI_EPSILON)
    q = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def category_counts(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Counts of finite ``values`` per category of sorted ``categories``, then the count of the rest ("other"): ``len(categories) + 1`` counts."""
    k = len(categories)
    if k == 0:
        return np.array([len(values)], dtype=np.int64)
    idx = np.searchsorted(categories, values)
    known = categories[np.minimum(idx, k - 1)] == values
    counts = np.bincount(idx[known], minlength=k)
    return np.append(counts, len(values) - int(known.sum()))


def ks_statistic(values: np.ndarray, quantiles: np.ndarray) -> float:
    """One-sample KS statistic of finite ``values`` against the CDF linear between ``quantiles`` (at levels 0, 1/(k-1), ..., 1)."""
    n = len(values)
    if n == 0:
        return math.nan
    x = np.sort(values)
    ref = np.interp(x, quantiles, np.linspace(0.0, 1.0, len(quantiles)))
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - ref), np.max(ref - (i - 1) / n)))


def _columns(array: np.ndarray) -> np.ndarray:
    """A tensor as (rows, features): the first axis is rows, the rest is flattened."""
    a = np.asarray(array)
    return a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)


def _numeric(array: np.ndarray) -> bool:
    return np.asarray(array).dtype.kind in "fiub"


# -- the profile -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """The reference summary of one feature (one column of one tensor)."""

    name: str
    tensor: str
    column: int
    edges: np.ndarray
    fractions: np.ndarray
    quantiles: np.ndarray
    mean: float
    std: float
    min: float
    max: float
    missing_rate: float
    count: int
    #: "continuous" (``edges`` and ``fractions`` per bin) or "categorical" (``categories``; ``fractions`` per category, then "other").
    kind: str = "continuous"
    #: The categorical feature's sorted values (empty for a continuous one; ``edges`` is empty for a categorical one).
    categories: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "tensor": self.tensor, "column": self.column, "kind": self.kind, "edges": self.edges.tolist(),
            "fractions": self.fractions.tolist(), "quantiles": self.quantiles.tolist(), "mean": self.mean, "std": self.std,
            "min": self.min, "max": self.max, "missing_rate": self.missing_rate, "count": self.count,
        }
        if self.categorical:
            d["categories"] = self.categories.tolist()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureProfile:
        kind = str(d.get("kind", "continuous"))
        edges = np.asarray(d.get("edges", []), dtype=np.float64)
        fractions = np.asarray(d["fractions"], dtype=np.float64)
        categories = np.asarray(d.get("categories", []), dtype=np.float64)
        if kind == "continuous":
            if len(fractions) != len(edges) + 1 or np.any(np.diff(edges) <= 0):
                raise ValueError(f"feature {d.get('name')!r}: needs strictly increasing edges and len(edges) + 1 fractions")
        elif kind == "categorical":
            if len(categories) == 0 or len(fractions) != len(categories) + 1 or np.any(np.diff(categories) <= 0):
                raise ValueError(f"feature {d.get('name')!r}: a categorical feature needs strictly increasing categories and len(categories) + 1 fractions (the last: other)")
        else:
            raise ValueError(f"feature {d.get('name')!r}: kind {kind!r}, expected 'continuous' or 'categorical'")
        return cls(
            name=str(d["name"]), tensor=str(d["tensor"]), column=int(d["column"]), edges=edges, fractions=fractions,
            quantiles=np.asarray(d["quantiles"], dtype=np.float64), mean=float(d["mean"]), std=float(d["std"]),
            min=float(d["min"]), max=float(d["max"]), missing_rate=float(d["missing_rate"]), count=int(d["count"]),
            kind=kind, categories=categories,
        )


def _feature_profile(name: str, tensor: str, column: int, values: np.ndarray, bins: int, max_categories: int = 20) -> FeatureProfile:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        raise ValueError(f"feature {name}: no finite values in the sample")
    common = dict(
        name=name, tensor=tensor, column=column, quantiles=np.quantile(finite, _LEVELS), mean=float(finite.mean()),
        std=float(finite.std()), min=float(finite.min()), max=float(finite.max()),
        missing_rate=1.0 - len(finite) / len(values), count=len(values),
    )
    if max_categories > 0 and np.all(finite == np.round(finite)):
        categories = np.unique(finite)
        if len(categories) <= max_categories:
            return FeatureProfile(
                edges=np.empty(0, dtype=np.float64), fractions=category_counts(finite, categories) / len(finite),
                kind="categorical", categories=categories, **common,
            )
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return FeatureProfile(edges=edges, fractions=bin_counts(finite, edges) / len(finite), **common)


@dataclass(frozen=True, slots=True)
class Profile:
    """A model version's reference profile: its features, inputs first, then outputs (``drift_profile.json``)."""

    features: tuple[FeatureProfile, ...]
    rows: int

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT, "rows": self.rows, "features": [f.to_dict() for f in self.features]}, indent=1)

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read a profile file; raises ValueError (or OSError) with the reason."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"{path}: not a Surge drift profile (format {data.get('format')!r}, expected {PROFILE_FORMAT!r})")
        return cls(tuple(FeatureProfile.from_dict(f) for f in data["features"]), int(data["rows"]))


def build_profile(tensors: Mapping[str, np.ndarray], *, bins: int = 10, max_categories: int = 20) -> Profile:
    """Profile a sample: ``tensors`` maps tensor names (inputs, then outputs) to arrays whose first axis is rows.

    Non-numeric tensors (BYTES) are skipped. ``bins``: quantile bins per feature (fewer when values repeat).
    ``max_categories``: a feature of integral values with at most this many distinct ones is categorical
    (0: every feature is continuous).
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    features: list[FeatureProfile] = []
    rows = 0
    for tensor, array in tensors.items():
        if not _numeric(array):
            log.warning("drift profile: tensor %s is not numeric (%s); skipped", tensor, np.asarray(array).dtype)
            continue
        table = _columns(array).astype(np.float64)
        rows = max(rows, table.shape[0])
        for column in range(table.shape[1]):
            name = tensor if table.shape[1] == 1 else f"{tensor}[{column}]"
            features.append(_feature_profile(name, tensor, column, table[:, column], bins, max_categories))
    if not features:
        raise ValueError("no numeric feature to profile")
    return Profile(tuple(features), rows)


# -- serving ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's drift over the last full window (``ks`` is 0 for a categorical feature)."""

    name: str
    psi: float
    ks: float
    nan_ratio: float
    out_of_range_ratio: float


@dataclass(frozen=True, slots=True)
class DriftSnapshot:
    """What a metrics scrape exports for a version: the last window's results (empty before the first full window)."""

    features: tuple[FeatureDrift, ...]
    alert: bool
    windows: int
    dropped: int


class _Window:
    """The last ``rows`` rows of one tensor's tracked columns (a ring buffer, drift thread only)."""

    def __init__(self, features: list[FeatureProfile], rows: int) -> None:
        self.features = features
        self.columns = np.array([f.column for f in features])
        self.data = np.empty((rows, len(features)), dtype=np.float64)
        self.next = 0
        self.filled = 0
        self.fresh = 0  # rows since the last computation

    def add(self, array: np.ndarray) -> int:
        table = _columns(array)
        if table.shape[1] <= self.columns.max():
            return 0
        chunk = table[-len(self.data):, self.columns]  # only the last window's worth matters
        n = len(chunk)
        end = self.next + n
        if end <= len(self.data):
            self.data[self.next:end] = chunk
        else:
            split = len(self.data) - self.next
            self.data[self.next:] = chunk[:split]
            self.data[: n - split] = chunk[split:]
        self.next = end % len(self.data)
        self.filled = min(len(self.data), self.filled + n)
        self.fresh += len(table)
        return n

    def compute(self) -> list[FeatureDrift]:
        self.fresh = 0
        results = []
        for j, f in enumerate(self.features):
            values = self.data[:, j]
            finite = values[np.isfinite(values)]
            nan_ratio = 1.0 - len(finite) / len(values)
            if f.categorical:  # PSI over the categories + other; out of range: not a profiled category; KS exported as 0
                counts = category_counts(finite, f.categories)
                oor = counts[-1] / len(finite) if len(finite) else math.nan
                results.append(FeatureDrift(f.name, psi(f.fractions, counts), 0.0, nan_ratio, float(oor)))
                continue
            oor = float(np.mean((finite < f.min) | (finite > f.max))) if len(finite) else math.nan
            results.append(FeatureDrift(f.name, psi(f.fractions, bin_counts(finite, f.edges)), ks_statistic(finite, f.quantiles), nan_ratio, oor))
        return results


class DriftMonitor:
    """Drift of one model version against its profile. ``sample``/``offer`` on the event loop; the rest in the drift thread."""

    def __init__(self, profile: Profile, *, model: str, version: str, sample_rate: float = 0.01, window_rows: int = 1000,
                 psi_alert: float = 0.2, max_features: int = 64) -> None:
        self.model, self.version = model, version
        self.sample_rate = sample_rate
        self.window_rows = window_rows
        self.psi_alert = psi_alert
        self.step = max(1, window_rows // 10)
        features = list(profile.features)
        if len(features) > max_features:
            log.warning(
                "model %s version %s: drift tracks the first %d of the profile's %d features (max_features; raise it in [drift])",
                model, version, max_features, len(features),
            )
            features = features[:max_features]
        by_tensor: dict[str, list[FeatureProfile]] = {}
        for f in features:
            by_tensor.setdefault(f.tensor, []).append(f)
        self._windows = {tensor: _Window(fs, window_rows) for tensor, fs in by_tensor.items()}
        self._results: dict[str, FeatureDrift] = {}
        self._order = [f.name for f in features]
        self.dropped = 0  # event loop only
        self._windows_done = 0
        self.snapshot_value = DriftSnapshot((), False, 0, 0)  # replaced whole by the drift thread

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(self._windows)

    def sample(self) -> bool:
        """Whether to sample this request (event loop: one random draw)."""
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def offer(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Hand a sampled request's arrays (by reference) to the drift thread; dropped and counted when its queue is full."""
        if not _WORKER.submit(self, inputs, outputs):
            self.dropped += 1

    def snapshot(self) -> DriftSnapshot:
        """The last results and the drop count (event loop)."""
        s = self.snapshot_value
        return DriftSnapshot(s.features, s.alert, s.windows, self.dropped)

    def ingest(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """In the drift thread: add a request's rows to the windows; recompute the full windows every ``step`` rows."""
        changed = False
        for tensor, window in self._windows.items():
            array = inputs.get(tensor)
            if array is None:
                array = outputs.get(tensor)
            if array is None or not _numeric(array) or not window.add(array):
                continue
            if window.filled == self.window_rows and window.fresh >= self.step:
                for result in window.compute():
                    self._results[result.name] = result
                changed = True
        if changed:
            self._windows_done += 1
            features = tuple(self._results[n] for n in self._order if n in self._results)
            alert = any(f.psi > self.psi_alert for f in features)  # NaN compares False
            self.snapshot_value = DriftSnapshot(features, alert, self._windows_done, 0)


class _Worker:
    """The one drift thread of the process and its bounded queue (started on first use)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Any, Any, Any]] = queue.Queue(QUEUE_ITEMS)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _ensure(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="surge-drift", daemon=True)
                    self._thread.start()

    def submit(self, monitor: DriftMonitor, inputs: Any, outputs: Any) -> bool:
        self._ensure()
        try:
            self._queue.put_nowait((monitor, inputs, outputs))
        except queue.Full:
            return False
        return True

    def flush(self, timeout_s: float) -> bool:
        self._ensure()
        done = threading.Event()
        try:
            self._queue.put((None, done, None), timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            monitor, inputs, outputs = self._queue.get()
            if monitor is None:
                inputs.set()
                continue
            try:
                monitor.ingest(inputs, outputs)
            except Exception:
                log.exception("drift: model %s version %s: summarising a sample failed", monitor.model, monitor.version)


_WORKER = _Worker()


def flush(timeout_s: float = 30.0) -> bool:
    """Wait until the drift thread has processed every sample queued before this call (tests, tools); any thread."""
    return _WORKER.flush(timeout_s)


# -- surge drift: the terminal view ---------------------------------------------------------------


def drift_report(metrics_text: str, model: str, version: str = "") -> str:
    """The drift gauges of ``model`` (all its versions, or ``version``) in a scrape of /metrics, as a table."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {"surge_drift_psi": "psi", "surge_drift_ks": "ks", "surge_drift_nan_ratio": "nan", "surge_drift_out_of_range_ratio": "oor"}
    per_feature: dict[tuple[str, str], dict[str, float]] = {}
    alerts: dict[str, float] = {}
    dropped: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.labels.get("model") != model or (version and s.labels.get("version") != version):
                continue
            v = s.labels.get("version", "")
            if s.name in names:
                per_feature.setdefault((v, s.labels["feature"]), {})[names[s.name]] = s.value
            elif s.name == "surge_drift_alert":
                alerts[v] = s.value
            elif s.name == "surge_drift_samples_dropped_total":
                dropped[v] = s.value
    if not alerts:
        return f"model {model}{' version ' + version if version else ''}: no drift metrics (needs [drift] in config.toml and drift_profile.json in the version folder)"
    lines = []
    for v in sorted(alerts, key=lambda x: (len(x), x)):
        state = "ALERT" if alerts[v] else "ok"
        lines.append(f"model {model} version {v}: drift {state} (samples dropped: {dropped.get(v, 0):.0f})")
        rows = [(f, r) for (vv, f), r in per_feature.items() if vv == v]
        if not rows:
            lines.append("  no full window yet")
            continue
        lines.append(f"  {'FEATURE':<24} {'PSI':>8} {'KS':>7} {'NaN':>7} {'OUT':>7}")
        for f, r in rows:
            lines.append(f"  {f:<24} {r.get('psi', math.nan):>8.4f} {r.get('ks', math.nan):>7.4f} {r.get('nan', math.nan):>7.2%} {r.get('oor', math.nan):>7.2%}")
    return "\n".join(lines)
