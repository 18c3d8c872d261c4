"""Model and server configuration: TOML in, frozen dataclasses out, validated once at load.

A model's ``config.toml`` (every key optional; inputs and outputs are read from the model file when
omitted)::

    backend = "onnxruntime"            # or "python", "torch", "tensorrt"; default from the version folder's model file
    max_batch_size = 64                # rows per request (0: the model has no batch dimension)
    default_model_filename = "model.onnx"

    [version_policy]                   # exactly one of: latest = N | all = true | specific = [1, 3]
    latest = 1

    [[input]]
    name = "x"
    datatype = "FP32"
    dims = [16]                        # without the batch dimension; -1 for a variable dimension

    [[output]]
    name = "probabilities"
    datatype = "FP32"
    dims = [4]
    label_filename = "labels.txt"      # optional, in the model folder: one label per line, for classification

    [dynamic_batching]                 # present: requests are batched (Triton's semantics, seconds here)
    max_queue_delay_s = 0.0005         # or latency_slo_s = 0.010: the batcher picks the wait (see batching.py)
    preferred_batch_sizes = [16, 32]
    max_queue_size = 1024              # requests waiting beyond this get UNAVAILABLE at once (0: 4096)
    default_timeout_s = 0.0            # how long a request may wait (0: no limit); requests may only shorten it
    priority_levels = 2                # level 1 is the highest
    default_priority_level = 2
    [dynamic_batching.priority_queue_policy.1]
    max_queue_size = 64

    [instance_group]
    count = 1                          # runtime instances executing concurrently
    kind = "cpu"                       # "cpu" | "gpu" | "auto"
    gpus = []

    [parameters]                       # runtime options, validated by the runtime (see docs/pages/configuration.md)
    intra_op_threads = 1

    [metrics]                          # Prometheus histograms of this model (see metrics.py)
    latency_buckets_s = [0.001, 0.002, 0.005, 0.01]   # upper bounds, seconds, increasing (default: 10 us..60 s, x1.25)

    [drift]                            # present (and drift_profile.json in the version folder): monitor drift (see drift.py)
    sample_rate = 0.01                 # fraction of requests summarised, 0 < r <= 1
    window_rows = 1000                 # rows per sliding window
    psi_alert = 0.2                    # surge_drift_alert is 1 when a feature's PSI exceeds this
    max_features = 64                  # features tracked (the profile's first ones; a log line says when it caps)

    [routing]                          # present: requests naming no version are split (see routing.py)
    weights = { 1 = 90, 2 = 10 }       # version -> relative weight; sticky by routing key
    [routing.shadow]                   # mirror a sampled fraction of the routed traffic (see shadow.py)
    version = 2
    fraction = 1.0                     # 0 < f <= 1, sampled by routing key
    max_concurrency = 4                # shadow requests executing at once (its own budget)
    max_queue = 64                     # shadow requests waiting; beyond it they are dropped (counted)
    rtol = 1e-5                        # float outputs agree when allclose(rtol, atol)
    atol = 1e-6
    log_path = ""                      # JSON lines of sampled disagreements ("": no log)
    log_max_bytes = 10_000_000         # the log stops growing at this size
    log_sample_rate = 1.0              # fraction of disagreements logged
    log_inputs = false                 # include the request's inputs in the log

    [feedback]                         # present: answered requests are indexed for outcome feedback (see feedback.py)
    output = "probabilities"           # the output labels and numbers are compared with (default: the first)
    max_requests = 100000              # requests remembered for joining (oldest forgotten first)
    [[preprocess]]                     # pipeline steps before the model, run batched in the instance (see pipeline.py)
    op = "resize_crop_normalize"       # the kernel; its parameters are keys of this table
    input = "image"                    # what clients send
    output = "input"                   # the model input it makes (default: the same name as input)
    resize = [36, 36]
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]

    [[postprocess]]                    # steps after the model: softmax, argmax, topk, threshold
    op = "topk"
    input = "probabilities"
    output = "classes"
    k = 3

Errors are ``ConfigError`` naming the key path (``mlp/config.toml: input[0].datatype: ...``) and what is valid.
Every number has a bound (``MAX_*`` below: threads and instances scale with the cores, delays and timeouts,
queue and batch sizes), checked here for config.toml and a load request's overrides alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surge.protos.datatypes import DATATYPES

from .errors import ConfigError

log = logging.getLogger("surge.config")

__all__ = [
    "BatchingConfig",
    "DriftConfig",
    "FeedbackConfig",
    "StepConfig",
    "QueuePolicyConfig",
    "RoutingConfig",
    "ShadowConfig",
    "InstanceGroupConfig",
    "MetricsConfig",
    "ModelConfig",
    "TensorConfig",
    "VersionPolicy",
    "load_model_config",
    "parse_model_config",
]

BACKENDS = ("onnxruntime", "python", "torch", "tensorrt")
#: Triton's ``platform`` string for each backend (what ModelConfig and ModelMetadata report).
PLATFORM_OF = {"onnxruntime": "onnxruntime_onnx", "python": "python", "torch": "pytorch_libtorch", "tensorrt": "tensorrt_plan"}
#: The model file each backend loads when ``default_model_filename`` is not given.
DEFAULT_FILENAME = {"onnxruntime": "model.onnx", "python": "model.py", "torch": "model.pt", "tensorrt": "model.plan"}
CONFIG_FILENAME = "config.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorConfig:
    """One input or output of a model's signature."""

    name: str
    """Tensor name as clients send it."""
    datatype: str
    """Open Inference Protocol datatype string (FP32, INT64, BYTES, ...)."""
    dims: tuple[int, ...]
    """Shape without the batch dimension (when max_batch_size > 0); -1 marks a variable dimension."""
    optional: bool = False
    """Inputs only: the request may omit it."""
    label_filename: str = ""
    """Outputs only: a file in the model folder naming the classes, one per line (Triton's ``label_filename``)."""
    labels: tuple[str, ...] = ()
    """The label file's lines (``load_model_config`` reads them): what classification results append to each index."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionPolicy:
    """Which numbered version folders are served: Triton's latest{n} / all / specific."""

    kind: str = "latest"
    """"latest", "all" or "specific"."""
    num_versions: int = 1
    """For "latest": how many of the highest versions."""
    versions: tuple[int, ...] = ()
    """For "specific": the versions to serve."""

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among those present on disk, ascending."""
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.num_versions :]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePolicyConfig:
    """One priority level's queue policy (Triton's ModelQueuePolicy, in seconds)."""

    max_queue_size: int = 0
    """Requests waiting at this level beyond which new ones are rejected with UNAVAILABLE (0: 4096)."""
    default_timeout_s: float = 0.0
    """How long a request may wait before it is rejected (0: no limit); a request's timeout may only shorten it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingConfig:
    """Dynamic batching settings (Triton's ``dynamic_batching``, in seconds)."""

    max_queue_delay_s: float = 0.0
    """How long the oldest request may wait for more rows before a batch is dispatched."""
    latency_slo_s: float | None = None
    """Latency-SLO mode: target server latency per request; the batcher picks the wait (replaces max_queue_delay_s)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes (rows) to dispatch at as soon as they are reached."""
    max_queue_size: int = 0
    """Default queue policy: requests waiting beyond this are rejected at once with UNAVAILABLE (0: 4096)."""
    default_timeout_s: float = 0.0
    """Default queue policy: how long a request may wait (0: no limit)."""
    priority_levels: int = 1
    """Number of priority levels (1 is the highest)."""
    default_priority_level: int = 1
    """Level of requests that give no priority."""
    priority_queue_policy: Mapping[int, QueuePolicyConfig] = field(default_factory=dict)
    """Queue policy per level, overriding the default one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceGroupConfig:
    """How many runtime instances execute this model concurrently, and where."""

    count: int = 1
    """Number of instances (each with its own executor thread)."""
    kind: str = "cpu"
    """"cpu", "gpu" or "auto"."""
    gpus: tuple[int, ...] = ()
    """GPU ids for kind "gpu" (instances are spread over them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Per-model metrics settings (``[metrics]``)."""

    latency_buckets_s: tuple[float, ...] = ()
    """Upper bounds (seconds, strictly increasing) of every latency histogram; empty = metrics.DEFAULT_LATENCY_BUCKETS_S."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepConfig:
    """One ``[[preprocess]]`` or ``[[postprocess]]`` step; ``params`` are validated by pipeline.py at load."""

    op: str
    """The kernel or post-processing operation."""
    input: str
    """The tensor it reads."""
    output: str
    """The tensor it writes."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """The operation's parameters (the table's other keys)."""
    where: str = ""
    """Its key path in config.toml, for error messages (``preprocess[0]``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftConfig:
    """Drift monitoring settings (``[drift]``); see drift.py."""

    sample_rate: float = 0.01
    """Fraction of requests whose inputs and outputs are summarised (0 < r <= 1)."""
    window_rows: int = 1000
    """Rows in the sliding window compared with the profile."""
    psi_alert: float = 0.2
    """PSI above which a feature raises the version's alert gauge."""
    max_features: int = 64
    """At most this many features tracked (each is a few time series)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowConfig:
    """Shadow traffic settings (``[routing.shadow]``); see shadow.py."""

    version: int = 0
    """The version that receives the mirrored requests (0: no shadow; only the budget and comparison settings)."""
    fraction: float = 1.0
    """Fraction of routed requests mirrored (0 < f <= 1), sampled by routing key."""
    max_concurrency: int = 4
    """Shadow requests executing at once: the shadow's own budget, apart from the primary's."""
    max_queue: int = 64
    """Shadow requests waiting for the budget; beyond it a shadow request is dropped (and counted)."""
    rtol: float = 1e-5
    """Relative tolerance for float outputs (numpy.allclose)."""
    atol: float = 1e-6
    """Absolute tolerance for float outputs (numpy.allclose)."""
    log_path: str = ""
    """JSON-lines file of sampled disagreements ("": none); relative paths are relative to the model folder."""
    log_max_bytes: int = 10_000_000
    """The disagreement log stops growing at this size (bytes)."""
    log_sample_rate: float = 1.0
    """Fraction of disagreements written to the log."""
    log_inputs: bool = False
    """Include the request's inputs in logged disagreements (off: they may hold personal data)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """Version routing (``[routing]``): a weighted, sticky split of requests that name no version; see routing.py."""

    weights: tuple[tuple[int, float], ...] = ()
    """(version, weight) pairs, weights > 0 (relative; normalised); empty: the highest READY version."""
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    """Shadow traffic and its budget."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackConfig:
    """Outcome feedback (``[feedback]``); see feedback.py."""

    output: str = ""
    """The output whose per-row prediction labels and numbers are compared with ("": the first output)."""
    max_requests: int = 100_000
    """Answered requests remembered for joining (oldest forgotten first)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutConfig:
    """A progressive rollout to a new version (``[rollout]``), run by the server's controller; see traffic/rollout.py."""

    to_version: int
    """The version rolled out (it starts once this version is serving; the current one is what answers then)."""
    steps: tuple[str, ...] = ("shadow", "5", "25", "50", "100")
    """``shadow`` (first only) and rising percentages ending at 100."""
    window_s: float = 300.0
    """How long every gate must hold at a step before the next (seconds)."""
    gates: tuple[str, ...] = ("p99<1.2x", "errors<0.5%", "agreement>99%")
    """Gates checked over each window (traffic/rollout_plan.py: p99, errors, agreement, max_diff, psi, accuracy, success, mae)."""
    min_samples: int = 100
    """Observations a gate needs before it can hold."""
    alpha: float = 0.01
    """Significance level of a breach."""


#: At most this many latency buckets per histogram (each is one time series per model version and stage).
MAX_LATENCY_BUCKETS = 200


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (a container's cpuset), not the host's
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Bounds of every numeric knob, in config.toml and in a load request's overrides alike (both pass through
# ``parse_model_config``); an error names the key and the bound. Threads and instances scale with the cores.
CORES = _cores()
#: Runtime instances of one model version (each is an executor thread): 4 per core, never above 256.
MAX_INSTANCES = min(256, 4 * CORES)
#: Thread-count parameters of a runtime (``parameters.*_threads``, per instance): 4 per core, never above 256.
MAX_THREADS = min(256, 4 * CORES)
#: ``max_queue_delay_s`` and ``latency_slo_s``: the longest a batcher may hold a request for company.
MAX_QUEUE_DELAY_S = 10.0
#: ``default_timeout_s`` and ``execution_timeout_s``: one hour.
MAX_TIMEOUT_S = 3600.0
#: ``max_queue_size`` (per priority level) and the shadow's queue and concurrency.
MAX_QUEUE_SIZE = 65536
#: ``priority_levels``.
MAX_PRIORITY_LEVELS = 64
#: ``max_batch_size`` and ``preferred_batch_sizes`` (rows).
MAX_BATCH_SIZE = 65536
#: Elements of one input or output over a full batch (max_batch_size rows of its fixed dims): warm-up and the
#: preallocated input buffers hold this many at most (1 GiB of FP32).
MAX_BATCH_ELEMENTS = 2**28
#: Drift: rows per window, features tracked; feedback: requests remembered; shadow log size.
MAX_DRIFT_WINDOW_ROWS = 10_000_000
MAX_DRIFT_FEATURES = 4096
MAX_FEEDBACK_REQUESTS = 10_000_000
MAX_LOG_BYTES = 2**34
_CORES_BOUND = f" (4 per core of the {CORES} this server may use, at most 256)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """A model's validated configuration. ``inputs``/``outputs`` are empty until completed from the model file."""

    name: str
    """The model's name (its folder in the repository)."""
    backend: str = "onnxruntime"
    """Which runtime executes it: "onnxruntime", "python" or "tensorrt"."""
    max_batch_size: int | None = None
    """Rows per request along the leading batch dimension; 0 = no batch dimension; None = decide from the model."""
    default_model_filename: str = ""
    """File inside each version folder; empty = the backend's default (model.onnx, model.py, model.plan)."""
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    """Which versions are served."""
    inputs: tuple[TensorConfig, ...] = ()
    """The input signature (without the batch dimension)."""
    outputs: tuple[TensorConfig, ...] = ()
    """The output signature (without the batch dimension)."""
    dynamic_batching: BatchingConfig | None = None
    """Present when requests are batched."""
    instance_group: InstanceGroupConfig = field(default_factory=InstanceGroupConfig)
    """Concurrent runtime instances."""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Runtime-specific options, validated by the runtime at load."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus histogram settings."""
    drift: DriftConfig | None = None
    """Present when drift is monitored (with a profile in the version folder)."""
    execution_timeout_s: float = 0.0
    """A batch running longer fails its requests (DEADLINE_EXCEEDED) and its instance is replaced; 0: no limit.
    Python models default to ``PYTHON_EXECUTION_TIMEOUT_S``."""
    max_memory_bytes: int = 0
    """Python models: the instance's process is restarted after a call leaves it above this much anonymous
    memory (the call is answered first); 0: no limit."""
    routing: RoutingConfig | None = None
    """Present when requests naming no version are split across versions (and maybe shadowed)."""
    feedback: FeedbackConfig | None = None
    """Present when answered requests are indexed for outcome feedback."""
    rollout: RolloutConfig | None = None
    """Present when the server rolls a new version out by itself (``[rollout]``)."""
    preprocess: tuple[StepConfig, ...] = ()
    """Pipeline steps before the model (pipeline.py)."""
    postprocess: tuple[StepConfig, ...] = ()
    """Pipeline steps after the model (pipeline.py)."""

    @property
    def platform(self) -> str:
        """Triton's platform string for this backend."""
        return PLATFORM_OF[self.backend]

    @property
    def model_filename(self) -> str:
        """The file each version folder holds for this model."""
        return self.default_model_filename or DEFAULT_FILENAME[self.backend]

    def with_signature(self, inputs: tuple[TensorConfig, ...], outputs: tuple[TensorConfig, ...], max_batch_size: int) -> ModelConfig:
        """A copy with the signature completed (what the runtime read from the model file)."""
        return dataclasses.replace(self, inputs=inputs, outputs=outputs, max_batch_size=max_batch_size)


def load_model_config(model_dir: Path, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """Read ``<model_dir>/config.toml`` (optional) and validate it; ``overrides`` replace top-level keys.

    Raises ConfigError naming the file and key path.
    """
    path = model_dir / CONFIG_FILENAME
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{model_dir.name}/{CONFIG_FILENAME}: not valid TOML: {exc}") from None
    if overrides:
        data = {**data, **overrides}
    if "backend" not in data:
        data["backend"] = _guess_backend(model_dir)
    if data["backend"] == "torch" and "default_model_filename" not in data and _has_version_file(model_dir, "model.pt2"):
        data["default_model_filename"] = "model.pt2"  # a torch.export program rather than TorchScript
    try:
        config = parse_model_config(model_dir.name, data)
        if any(t.label_filename for t in config.outputs):
            config = dataclasses.replace(config, outputs=tuple(_with_labels(t, model_dir, i) for i, t in enumerate(config.outputs)))
        return config
    except ConfigError as exc:
        where = f"{model_dir.name}/{CONFIG_FILENAME}" + (" with the load request's config" if overrides else "")
        raise ConfigError(f"{where}: {exc}") from None


#: A label file larger than this is refused (a class name per line: even a million classes fit).
MAX_LABEL_FILE_BYTES = 64 * 2**20


def _with_labels(tensor: TensorConfig, model_dir: Path, index: int) -> TensorConfig:
    """``tensor`` with its label file's lines; the file must lie inside the model folder."""
    if not tensor.label_filename:
        return tensor
    where = f"output[{index}].label_filename"
    folder = model_dir.resolve()
    path = (folder / tensor.label_filename).resolve()
    if not path.is_relative_to(folder) or path == folder:
        raise ConfigError(f"{where}: {tensor.label_filename!r} must name a file inside the model folder")
    try:
        if path.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise ConfigError(f"{where}: {tensor.label_filename!r} is larger than {MAX_LABEL_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: {tensor.label_filename!r} does not exist in the model folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {tensor.label_filename!r} as UTF-8 text: {getattr(exc, 'strerror', None) or exc}") from None
    return dataclasses.replace(tensor, labels=tuple(line.rstrip("\r") for line in text.split("\n")))


def _has_version_file(model_dir: Path, name: str) -> bool:
    return any(p.is_dir() and p.name.isdigit() and (p / name).is_file() for p in model_dir.iterdir()) if model_dir.is_dir() else False


def _guess_backend(model_dir: Path) -> str:
    for version_dir in sorted(model_dir.iterdir()) if model_dir.is_dir() else ():
        if version_dir.is_dir() and version_dir.name.isdigit():
            if (version_dir / "model.py").is_file():
                return "python"
            if (version_dir / "model.pt").is_file() or (version_dir / "model.pt2").is_file():
                return "torch"
            if (version_dir / "model.plan").is_file():
                return "tensorrt"
            break
    return "onnxruntime"


def parse_model_config(name: str, data: Mapping[str, Any]) -> ModelConfig:
    """Validate a decoded TOML table into a ModelConfig; raises ConfigError naming the key path."""
    reader = _Table(data, "")
    backend = reader.choice("backend", BACKENDS, "onnxruntime")
    max_batch_size = reader.integer("max_batch_size", None, minimum=0, maximum=MAX_BATCH_SIZE)
    config = ModelConfig(
        name=name,
        backend=backend,
        max_batch_size=max_batch_size,
        default_model_filename=reader.string("default_model_filename", ""),
        version_policy=_version_policy(reader.table("version_policy")),
        inputs=tuple(_tensor(t, inputs=True) for t in reader.tables("input")),
        outputs=tuple(_tensor(t, inputs=False) for t in reader.tables("output")),
        dynamic_batching=_batching(reader.table("dynamic_batching"), max_batch_size),
        instance_group=_instance_group(reader.table("instance_group")),
        parameters=_parameters(reader.table("parameters")),
        metrics=_metrics(reader.table("metrics")),
        drift=_drift(reader.table("drift")),
        execution_timeout_s=_execution_timeout(reader, backend),
        max_memory_bytes=_max_memory(reader, backend),
        routing=_routing(reader.table("routing")),
        feedback=_feedback(reader.table("feedback")),
        rollout=_rollout(reader.table("rollout")),
        preprocess=tuple(_step(t) for t in reader.tables("preprocess")),
        postprocess=tuple(_step(t) for t in reader.tables("postprocess")),
    )
    reader.check_no_unknown()
    for kind, tensors in (("input", config.inputs), ("output", config.outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ConfigError(f"{kind}: tensor names must be unique, got {names}")
        for i, tensor in enumerate(tensors):
            elements = math.prod(d for d in tensor.dims if d > 0) * max(1, max_batch_size or 0)
            if elements > MAX_BATCH_ELEMENTS:
                raise ConfigError(
                    f"{kind}[{i}].dims: {list(tensor.dims)} over max_batch_size = {max_batch_size or 0} rows is {elements} elements a batch; "
                    f"at most {MAX_BATCH_ELEMENTS}"
                )
    return config


def _parameters(reader: _Table) -> dict[str, Any]:
    """Runtime options (each runtime validates its own); thread counts (``*_threads``) are bounded here for all."""
    for key in reader.data:
        if str(key).endswith("_threads"):
            reader.integer(key, 0, minimum=0, maximum=MAX_THREADS, bound=_CORES_BOUND)
    return dict(reader.data)


#: A Python model's execution_timeout_s when its config does not set one (its process is killed and restarted past it).
PYTHON_EXECUTION_TIMEOUT_S = 60.0
#: The smallest max_memory_bytes: an interpreter with numpy imported already uses about 30 MiB.
MIN_MAX_MEMORY_BYTES = 64 << 20


def _execution_timeout(reader: _Table, backend: str) -> float:
    return reader.number("execution_timeout_s", PYTHON_EXECUTION_TIMEOUT_S if backend == "python" else 0.0, minimum=0.0, maximum=MAX_TIMEOUT_S)


def _max_memory(reader: _Table, backend: str) -> int:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    value = reader.integer("max_memory_bytes", 0, minimum=0, maximum=physical, bound=" (this machine's memory)")
    if not value:
        return 0
    if backend != "python":
        raise ConfigError(f"max_memory_bytes: only python models run in a process of their own; backend is {backend!r}")
    if value < MIN_MAX_MEMORY_BYTES:
        raise ConfigError(
            f"max_memory_bytes: expected 0 (no limit) or {MIN_MAX_MEMORY_BYTES} ({MIN_MAX_MEMORY_BYTES >> 20} MiB) to this machine's "
            f"memory, {physical} ({physical >> 20} MiB); got {value}"
        )
    return value


def _tensor(reader: _Table, *, inputs: bool) -> TensorConfig:
    tensor = TensorConfig(
        name=reader.string("name", _REQUIRED),
        datatype=reader.choice("datatype", sorted(DATATYPES), _REQUIRED),
        dims=tuple(reader.int_list("dims", minimum=-1, maximum=MAX_BATCH_ELEMENTS)),
        optional=reader.boolean("optional", False) if inputs else False,
        label_filename="" if inputs else reader.string("label_filename", ""),
    )
    if 0 in tensor.dims:
        raise ConfigError(f"{reader.path}dims: a dimension may not be 0 (use -1 for a variable one), got {list(tensor.dims)}")
    reader.check_no_unknown()
    return tensor


def _version_policy(reader: _Table) -> VersionPolicy:
    reader.allow("latest", "all", "specific")
    given = [k for k in ("latest", "all", "specific") if k in reader.data]
    if len(given) > 1:
        raise ConfigError(f"version_policy: give one of latest, all, specific; got {given}")
    if not given:
        policy = VersionPolicy()
    elif given[0] == "latest":
        policy = VersionPolicy(kind="latest", num_versions=reader.integer("latest", 1, minimum=1, maximum=2**31 - 1))
    elif given[0] == "all":
        if reader.boolean("all", True) is not True:
            raise ConfigError("version_policy.all: must be true (or use latest / specific)")
        policy = VersionPolicy(kind="all")
    else:
        versions = reader.int_list("specific", minimum=1)
        if not versions:
            raise ConfigError("version_policy.specific: list at least one version, e.g. specific = [1, 3]")
        policy = VersionPolicy(kind="specific", versions=tuple(versions))
    reader.check_no_unknown()
    return policy


def _batching(reader: _Table, max_batch_size: int | None) -> BatchingConfig | None:
    if not reader.present:
        return None
    if max_batch_size == 0:
        raise ConfigError("dynamic_batching: needs a batch dimension, but max_batch_size = 0")
    slo = reader.number("latency_slo_s", 0.0, minimum=0.0, maximum=MAX_QUEUE_DELAY_S)
    policies: dict[int, QueuePolicyConfig] = {}
    by_level = reader.table("priority_queue_policy")
    for key in list(by_level.data):
        if not str(key).isdigit():
            raise ConfigError(f"dynamic_batching.priority_queue_policy.{key}: levels are integers, e.g. [dynamic_batching.priority_queue_policy.1]")
        policies[int(key)] = _queue_policy(by_level.table(str(key)))
    batching = BatchingConfig(
        max_queue_delay_s=reader.number("max_queue_delay_s", 0.0, minimum=0.0, maximum=MAX_QUEUE_DELAY_S),
        latency_slo_s=slo or None,
        preferred_batch_sizes=tuple(reader.int_list("preferred_batch_sizes", minimum=1, maximum=MAX_BATCH_SIZE)),
        max_queue_size=reader.integer("max_queue_size", 0, minimum=0, maximum=MAX_QUEUE_SIZE),
        default_timeout_s=reader.number("default_timeout_s", 0.0, minimum=0.0, maximum=MAX_TIMEOUT_S),
        priority_levels=reader.integer("priority_levels", 1, minimum=1, maximum=MAX_PRIORITY_LEVELS),
        default_priority_level=reader.integer("default_priority_level", 1, minimum=1, maximum=MAX_PRIORITY_LEVELS),
        priority_queue_policy=policies,
    )
    if batching.max_queue_delay_s > 1.0:  # seconds here; Triton's config writes microseconds
        log.warning("dynamic_batching.max_queue_delay_s = %g s (%g ms) makes requests wait over a second for a batch: "
                    "a unit mistake? Surge takes seconds here (0.002 is 2 ms); Triton's max_queue_delay_microseconds takes microseconds",
                    batching.max_queue_delay_s, batching.max_queue_delay_s * 1e3)
    if batching.latency_slo_s and "max_queue_delay_s" in reader.data:
        raise ConfigError("dynamic_batching: set latency_slo_s or max_queue_delay_s, not both (the SLO mode picks the delay)")
    if max_batch_size and any(size > max_batch_size for size in batching.preferred_batch_sizes):
        raise ConfigError(
            f"dynamic_batching.preferred_batch_sizes: {list(batching.preferred_batch_sizes)} exceeds max_batch_size = {max_batch_size}"
        )
    if batching.default_priority_level > batching.priority_levels:
        raise ConfigError(f"dynamic_batching.default_priority_level: {batching.default_priority_level} exceeds priority_levels = {batching.priority_levels}")
    bad = sorted(level for level in policies if not 1 <= level <= batching.priority_levels)
    if bad:
        raise ConfigError(f"dynamic_batching.priority_queue_policy: levels {bad} are outside 1..{batching.priority_levels} (priority_levels)")
    reader.check_no_unknown()
    return batching


def _queue_policy(reader: _Table) -> QueuePolicyConfig:
    policy = QueuePolicyConfig(
        max_queue_size=reader.integer("max_queue_size", 0, minimum=0, maximum=MAX_QUEUE_SIZE),
        default_timeout_s=reader.number("default_timeout_s", 0.0, minimum=0.0, maximum=MAX_TIMEOUT_S),
    )
    reader.check_no_unknown()
    return policy


def _metrics(reader: _Table) -> MetricsConfig:
    bounds = reader.number_list("latency_buckets_s")
    if reader.present and "latency_buckets_s" in reader.data:
        if not bounds:
            raise ConfigError("metrics.latency_buckets_s: list at least one upper bound in seconds, e.g. [0.001, 0.01, 0.1, 1.0]")
        if any(b <= 0 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ConfigError(f"metrics.latency_buckets_s: expected positive, strictly increasing seconds, got {bounds}")
        if len(bounds) > MAX_LATENCY_BUCKETS:
            raise ConfigError(f"metrics.latency_buckets_s: at most {MAX_LATENCY_BUCKETS} buckets (each is a time series per stage), got {len(bounds)}")
    config = MetricsConfig(latency_buckets_s=tuple(bounds))
    reader.check_no_unknown()
    return config


def _drift(reader: _Table) -> DriftConfig | None:
    if not reader.present:
        return None
    config = DriftConfig(
        sample_rate=reader.number("sample_rate", 0.01, minimum=0.0, maximum=1.0, unit="fraction"),
        window_rows=reader.integer("window_rows", 1000, minimum=10, maximum=MAX_DRIFT_WINDOW_ROWS),
        psi_alert=reader.number("psi_alert", 0.2, minimum=0.0, maximum=math.inf, unit="PSI"),
        max_features=reader.integer("max_features", 64, minimum=1, maximum=MAX_DRIFT_FEATURES),
    )
    if not 0.0 < config.sample_rate <= 1.0:
        raise ConfigError(f"drift.sample_rate: expected a fraction 0 < r <= 1, got {config.sample_rate}")
    reader.check_no_unknown()
    return config


def _routing(reader: _Table) -> RoutingConfig | None:
    if not reader.present:
        return None
    weights_table = reader.table("weights")
    weights: list[tuple[int, float]] = []
    for key in list(weights_table.data):
        if not str(key).isdigit() or int(key) < 1:
            raise ConfigError(f"routing.weights.{key}: keys are version numbers, e.g. weights = {{ 1 = 90, 2 = 10 }}")
        weight = weights_table.number(str(key), 0.0, minimum=0.0, maximum=math.inf, unit="relative weight")
        if weight > 0:
            weights.append((int(key), weight))
    if weights_table.data and not weights:
        raise ConfigError("routing.weights: at least one version needs a weight > 0, e.g. weights = { 1 = 90, 2 = 10 }")
    shadow = _shadow(reader.table("shadow"))
    reader.check_no_unknown()
    return RoutingConfig(weights=tuple(sorted(weights)), shadow=shadow)


def _shadow(reader: _Table) -> ShadowConfig:
    config = ShadowConfig(
        version=reader.integer("version", 0, minimum=0, maximum=2**31 - 1),
        fraction=reader.number("fraction", 1.0, minimum=0.0, maximum=math.inf, unit="fraction"),
        max_concurrency=reader.integer("max_concurrency", 4, minimum=1, maximum=MAX_QUEUE_SIZE),
        max_queue=reader.integer("max_queue", 64, minimum=0, maximum=MAX_QUEUE_SIZE),
        rtol=reader.number("rtol", 1e-5, minimum=0.0, maximum=math.inf, unit="relative tolerance"),
        atol=reader.number("atol", 1e-6, minimum=0.0, maximum=math.inf, unit="absolute tolerance"),
        log_path=reader.string("log_path", ""),
        log_max_bytes=reader.integer("log_max_bytes", 10_000_000, minimum=0, maximum=MAX_LOG_BYTES),
        log_sample_rate=reader.number("log_sample_rate", 1.0, minimum=0.0, maximum=math.inf, unit="fraction"),
        log_inputs=reader.boolean("log_inputs", False),
    )
    for key, value in (("fraction", config.fraction), ("log_sample_rate", config.log_sample_rate)):
        if value > 1.0 or (key == "fraction" and value == 0.0):
            raise ConfigError(f"routing.shadow.{key}: expected a fraction {'0 <' if key == 'fraction' else '0 <='} f <= 1, got {value}")
    reader.check_no_unknown()
    return config


def _feedback(reader: _Table) -> FeedbackConfig | None:
    if not reader.present:
        return None
    config = FeedbackConfig(output=reader.string("output", ""), max_requests=reader.integer("max_requests", 100_000, minimum=1, maximum=MAX_FEEDBACK_REQUESTS))
    reader.check_no_unknown()
    return config


def _rollout(reader: _Table) -> RolloutConfig | None:
    if not reader.present:
        return None
    from .traffic.rollout_plan import parse_duration, parse_gate, parse_steps  # pure parsers, no server state

    window = reader._get("window", "5m")
    gates = reader._get("gates", list(RolloutConfig.__dataclass_fields__["gates"].default))
    steps = reader._get("steps", list(RolloutConfig.__dataclass_fields__["steps"].default))
    to_version = reader.integer("to_version", _REQUIRED, minimum=1, maximum=2**63 - 1)
    min_samples = reader.integer("min_samples", 100, minimum=1, maximum=MAX_FEEDBACK_REQUESTS)
    alpha = reader.number("alpha", 0.01, minimum=0.0, maximum=1.0, unit="significance level")
    try:
        config = RolloutConfig(
            to_version=to_version, steps=parse_steps([str(s) for s in steps] if isinstance(steps, list) else str(steps)),
            window_s=parse_duration(str(window)), gates=tuple(parse_gate(str(g)).text for g in (gates if isinstance(gates, list) else [gates])),
            min_samples=min_samples, alpha=alpha,
        )
    except ValueError as exc:
        raise ConfigError(f"rollout: {exc}") from None
    if not 0.0 < config.alpha < 1.0:
        raise ConfigError(f"rollout.alpha: expected 0 < alpha < 1, got {config.alpha}")
    reader.check_no_unknown()
    return config


def _step(reader: _Table) -> StepConfig:
    op, name = reader.string("op", _REQUIRED), reader.string("input", _REQUIRED)
    params = {k: v for k, v in reader.data.items() if k not in ("op", "input", "output")}
    step = StepConfig(op=op, input=name, output=reader.string("output", name), params=params, where=reader.path.rstrip("."))
    reader.allow(*params)
    return step


def _instance_group(reader: _Table) -> InstanceGroupConfig:
    group = InstanceGroupConfig(
        count=reader.integer("count", 1, minimum=1, maximum=MAX_INSTANCES, bound=_CORES_BOUND),
        kind=reader.choice("kind", ("cpu", "gpu", "auto"), "cpu"),
        gpus=tuple(reader.int_list("gpus", minimum=0)),
    )
    reader.check_no_unknown()
    return group


_MISSING = object()
_REQUIRED: Any = object()


class _Table:
    """Typed reads from one TOML table, remembering which keys were used so unknown ones are reported."""

    def __init__(self, data: Any, path: str) -> None:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{path.rstrip('.') or 'config'}: expected a table, got {type(data).__name__}")
        self.present = data is not None
        self.data: Mapping[str, Any] = data if data is not None else {}
        self.path = path
        self._used: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _REQUIRED:
                raise ConfigError(f"{self.path}{key}: required")
            return default
        return value

    def string(self, key: str, default: Any) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or (default is _REQUIRED and not value):
            raise ConfigError(f"{self.path}{key}: expected a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, choices: Any, default: Any) -> str:
        value = self._get(key, default)
        if value not in choices:
            raise ConfigError(f"{self.path}{key}: expected one of {', '.join(choices)}; got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.path}{key}: expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int | None, *, minimum: int, maximum: int, bound: str = "") -> Any:
        """An integer in ``minimum..maximum``; ``bound`` says where the maximum comes from (in the error)."""
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(f"{self.path}{key}: expected an integer from {minimum} to {maximum}{bound}, got {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float, unit: str = "seconds") -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not minimum <= value <= maximum:
            raise ConfigError(f"{self.path}{key}: expected a number from {minimum:g} to {maximum:g} ({unit}), got {value!r}")
        return float(value)

    def int_list(self, key: str, *, minimum: int, maximum: int = 2**31 - 1) -> list[int]:
        value = self._get(key, [])
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum for v in value):
            raise ConfigError(f"{self.path}{key}: expected a list of integers from {minimum} to {maximum}, got {value!r}")
        return value

    def number_list(self, key: str) -> list[float]:
        value = self._get(key, [])
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value):
            raise ConfigError(f"{self.path}{key}: expected a list of numbers (seconds), got {value!r}")
        return [float(v) for v in value]

    def table(self, key: str) -> _Table:
        return _Table(self._get(key, None), f"{self.path}{key}.")

    def tables(self, key: str) -> list[_Table]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.path}{key}: expected an array of tables ([[{key}]]), got {type(value).__name__}")
        return [_Table(item, f"{self.path}{key}[{i}].") for i, item in enumerate(value)]

    def allow(self, *keys: str) -> None:
        """Count keys as valid without reading them (for tables whose keys are alternatives)."""
        self._used.update(keys)

    def check_no_unknown(self) -> None:
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            where = self.path.rstrip(".") or "top level"
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(self._used))}")

