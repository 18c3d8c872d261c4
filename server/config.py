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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from . import config_schema as schema
from .config_schema import (  # noqa: F401 - the bounds and the sections used as they are belong to this module's interface
    BACKENDS,
    CORES,
    MAX_BATCH_ELEMENTS,
    MAX_BATCH_SIZE,
    MAX_DRIFT_FEATURES,
    MAX_DRIFT_WINDOW_ROWS,
    MAX_FEEDBACK_REQUESTS,
    MAX_INSTANCES,
    MAX_LATENCY_BUCKETS,
    MAX_LOG_BYTES,
    MAX_PRIORITY_LEVELS,
    MAX_QUEUE_DELAY_S,
    MAX_QUEUE_SIZE,
    MAX_THREADS,
    MAX_TIMEOUT_S,
    MIN_MAX_MEMORY_BYTES,
    PYTHON_EXECUTION_TIMEOUT_S,
    DriftConfig,
    FeedbackConfig,
    InstanceGroupConfig,
    MetricsConfig,
    QueuePolicyConfig,
    ShadowConfig,
)
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
class RoutingConfig:
    """Version routing (``[routing]``): a weighted, sticky split of requests that name no version; see routing.py."""

    weights: tuple[tuple[int, float], ...] = ()
    """(version, weight) pairs, weights > 0 (relative; normalised); empty: the highest READY version."""
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    """Shadow traffic and its budget."""


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


_CORES_BOUND = f" (4 per core of the {CORES} this server may use, at most 256)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """A model's validated configuration. ``inputs``/``outputs`` are empty until completed from the model file."""

    name: str
    """The model's name (its folder in the repository)."""
    backend: str = "onnxruntime"
    """Which runtime executes it: "onnxruntime", "python", "torch" or "tensorrt"."""
    max_batch_size: int | None = None
    """Rows per request along the leading batch dimension; 0 = no batch dimension; None = decide from the model."""
    default_model_filename: str = ""
    """File inside each version folder; empty = the backend's default (model.onnx, model.py, model.pt, model.plan)."""
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
    """Validate a decoded TOML table (or a load request's ModelConfig JSON) into a ModelConfig.

    Types, bounds and unknown keys are the schema's (config_schema.py); the relations between keys are checked
    here. Raises ConfigError naming the key path.
    """
    toml: schema.ModelToml = schema.validate(data)
    backend = toml.backend
    max_batch_size = toml.max_batch_size
    config = ModelConfig(
        name=name,
        backend=backend,
        max_batch_size=max_batch_size,
        default_model_filename=toml.default_model_filename,
        version_policy=_version_policy(toml.version_policy),
        inputs=tuple(_tensor(t) for t in toml.input),
        outputs=tuple(_tensor(t) for t in toml.output),
        dynamic_batching=_batching(toml.dynamic_batching, max_batch_size, data.get("dynamic_batching") or {}),
        instance_group=toml.instance_group,
        parameters=_parameters(toml.parameters),
        metrics=_metrics(toml.metrics),
        drift=toml.drift,
        execution_timeout_s=(PYTHON_EXECUTION_TIMEOUT_S if backend == "python" else 0.0) if toml.execution_timeout_s is None else toml.execution_timeout_s,
        max_memory_bytes=_max_memory(toml.max_memory_bytes, backend),
        routing=_routing(toml.routing),
        feedback=toml.feedback,
        rollout=_rollout(toml.rollout),
        preprocess=tuple(_step(s, data, "preprocess", i) for i, s in enumerate(toml.preprocess)),
        postprocess=tuple(_step(s, data, "postprocess", i) for i, s in enumerate(toml.postprocess)),
    )
    for kind, tensors in (("input", config.inputs), ("output", config.outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ConfigError(f"{kind}: tensor names must be unique, got {names}")
        for i, tensor in enumerate(tensors):
            if 0 in tensor.dims:
                raise ConfigError(f"{kind}[{i}].dims: a dimension may not be 0 (use -1 for a variable one), got {list(tensor.dims)}")
            elements = math.prod(d for d in tensor.dims if d > 0) * max(1, max_batch_size or 0)
            if elements > MAX_BATCH_ELEMENTS:
                raise ConfigError(
                    f"{kind}[{i}].dims: {list(tensor.dims)} over max_batch_size = {max_batch_size or 0} rows is {elements} elements a batch; "
                    f"at most {MAX_BATCH_ELEMENTS}"
                )
    return config


def _parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Runtime options (each runtime validates its own); thread counts (``*_threads``) are bounded here for all."""
    for key, value in parameters.items():
        if str(key).endswith("_threads") and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THREADS):
            raise ConfigError(f"parameters.{key}: expected an integer from 0 to {MAX_THREADS}{_CORES_BOUND}, got {value!r}")
    return dict(parameters)


def _max_memory(value: int, backend: str) -> int:
    if not value:
        return 0
    if backend != "python":
        raise ConfigError(f"max_memory_bytes: only python models run in a process of their own; backend is {backend!r}")
    if value < MIN_MAX_MEMORY_BYTES:
        physical = schema.PHYSICAL_MEMORY
        raise ConfigError(
            f"max_memory_bytes: expected 0 (no limit) or {MIN_MAX_MEMORY_BYTES} ({MIN_MAX_MEMORY_BYTES >> 20} MiB) to this machine's "
            f"memory, {physical} ({physical >> 20} MiB); got {value}"
        )
    return value


def _tensor(t: schema.InputToml | schema.OutputToml) -> TensorConfig:
    return TensorConfig(
        name=t.name,
        datatype=t.datatype,
        dims=tuple(t.dims),
        optional=getattr(t, "optional", False),
        label_filename=getattr(t, "label_filename", ""),
    )


def _version_policy(t: schema.VersionPolicyToml) -> VersionPolicy:
    given = [k for k in ("latest", "all", "specific") if getattr(t, k) is not None]
    if len(given) > 1:
        raise ConfigError(f"version_policy: give one of latest, all, specific; got {given}")
    if t.latest is not None:
        return VersionPolicy(kind="latest", num_versions=t.latest)
    if t.all is not None:
        if t.all is not True:
            raise ConfigError("version_policy.all: must be true (or use latest / specific)")
        return VersionPolicy(kind="all")
    if t.specific is not None:
        if not t.specific:
            raise ConfigError("version_policy.specific: list at least one version, e.g. specific = [1, 3]")
        return VersionPolicy(kind="specific", versions=tuple(t.specific))
    return VersionPolicy()


def _batching(t: schema.BatchingToml | None, max_batch_size: int | None, given: Mapping[str, Any]) -> BatchingConfig | None:
    if t is None:
        return None
    if max_batch_size == 0:
        raise ConfigError("dynamic_batching: needs a batch dimension, but max_batch_size = 0")
    batching = BatchingConfig(
        max_queue_delay_s=t.max_queue_delay_s,
        latency_slo_s=t.latency_slo_s or None,
        preferred_batch_sizes=tuple(t.preferred_batch_sizes),
        max_queue_size=t.max_queue_size,
        default_timeout_s=t.default_timeout_s,
        priority_levels=t.priority_levels,
        default_priority_level=t.default_priority_level,
        priority_queue_policy={int(level): policy for level, policy in t.priority_queue_policy.items()},
    )
    if batching.max_queue_delay_s > 1.0:  # seconds here; Triton's config writes microseconds
        log.warning("dynamic_batching.max_queue_delay_s = %g s (%g ms) makes requests wait over a second for a batch: "
                    "a unit mistake? Surge takes seconds here (0.002 is 2 ms); Triton's max_queue_delay_microseconds takes microseconds",
                    batching.max_queue_delay_s, batching.max_queue_delay_s * 1e3)
    if batching.latency_slo_s and "max_queue_delay_s" in given:
        raise ConfigError("dynamic_batching: set latency_slo_s or max_queue_delay_s, not both (the SLO mode picks the delay)")
    if max_batch_size and any(size > max_batch_size for size in batching.preferred_batch_sizes):
        raise ConfigError(
            f"dynamic_batching.preferred_batch_sizes: {list(batching.preferred_batch_sizes)} exceeds max_batch_size = {max_batch_size}"
        )
    if batching.default_priority_level > batching.priority_levels:
        raise ConfigError(f"dynamic_batching.default_priority_level: {batching.default_priority_level} exceeds priority_levels = {batching.priority_levels}")
    bad = sorted(level for level in batching.priority_queue_policy if not 1 <= level <= batching.priority_levels)
    if bad:
        raise ConfigError(f"dynamic_batching.priority_queue_policy: levels {bad} are outside 1..{batching.priority_levels} (priority_levels)")
    return batching


def _metrics(t: MetricsConfig) -> MetricsConfig:
    bounds = t.latency_buckets_s
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ConfigError(f"metrics.latency_buckets_s: expected positive, strictly increasing seconds, got {list(bounds)}")
    return t


def _routing(t: schema.RoutingToml | None) -> RoutingConfig | None:
    if t is None:
        return None
    weights = sorted((int(version), float(weight)) for version, weight in t.weights.items() if weight > 0)
    if t.weights and not weights:
        raise ConfigError("routing.weights: at least one version needs a weight > 0, e.g. weights = { 1 = 90, 2 = 10 }")
    return RoutingConfig(weights=tuple(weights), shadow=t.shadow)


def _step(step: schema.Step, data: Mapping[str, Any], kind: str, index: int) -> StepConfig:
    given = data[kind][index]  # the table as written: parameters it leaves out take the pipeline's defaults
    params = {f: getattr(step, f) for f in step.__struct_fields__ if f not in ("input", "output") and f in given}
    return StepConfig(op=str(type(step).__struct_config__.tag), input=step.input, output=step.output or step.input,
                      params=params, where=f"{kind}[{index}]")


def _rollout(t: schema.RolloutToml | None) -> RolloutConfig | None:
    if t is None:
        return None
    from .traffic.rollout_plan import parse_duration, parse_gate, parse_steps  # pure parsers, no server state

    steps = [str(s) for s in t.steps] if isinstance(t.steps, list) else t.steps
    gates = t.gates if isinstance(t.gates, list) else [t.gates]
    try:
        return RolloutConfig(to_version=t.to_version, steps=parse_steps(steps), window_s=parse_duration(t.window),
                             gates=tuple(parse_gate(g).text for g in gates), min_samples=t.min_samples, alpha=t.alpha)
    except ValueError as exc:
        raise ConfigError(f"rollout: {exc}") from None


