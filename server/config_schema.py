"""The schema of a model's configuration: every key of config.toml, its type, bound, default and meaning, once.

``config.toml``, the ModelConfig JSON of a ``RepositoryModelLoad`` request (its keys override config.toml's) and
the pipeline steps' parameters are all checked against these msgspec structs (``validate``), so every entry
point applies the same types, bounds and unknown-key rejection, with errors that name the key path
(``input[0].datatype: expected one of BF16, BOOL, ...; got 'FP33'``). ``json_schema()`` publishes it (``surge
config-schema``) and ``reference_table()`` renders the config.toml reference (docs/pages/configuration.md) from it.

Relations between keys (batching needs a batch dimension, preferred sizes within max_batch_size, a label file
inside the model folder) are checked in config.py, which turns the validated structs into ``ModelConfig``.
Adding a section is one struct here and one field of ``ModelToml``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from msgspec import inspect as mi

from surge.protos.datatypes import DATATYPES

from .errors import ConfigError

__all__ = ["ModelToml", "json_schema", "reference_table", "validate"]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (a container's cpuset), not the host's
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Bounds of every numeric knob, in config.toml and in a load request's overrides alike; an error names the key and
# the bound. Threads and instances scale with the cores.
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
#: At most this many latency buckets per histogram (each is one time series per model version and stage).
MAX_LATENCY_BUCKETS = 200
#: ``resize`` and ``crop`` sides (pixels): warm-up and the batch buffers hold max_batch_size images of this size.
MAX_IMAGE_SIDE = 16384
#: A Python model's execution_timeout_s when its config does not set one (its process is killed and restarted past it).
PYTHON_EXECUTION_TIMEOUT_S = 60.0
#: The smallest max_memory_bytes: an interpreter with numpy imported already uses about 30 MiB.
MIN_MAX_MEMORY_BYTES = 64 << 20
#: This machine's memory: the largest max_memory_bytes.
PHYSICAL_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
_INT32 = 2**31 - 1
_BIG = sys.float_info.max

BACKENDS = ("onnxruntime", "python", "torch", "tensorrt")
_CORES_NOTE = f"4 per core of the {CORES} this server may use, at most 256"


def _int(lo: int, hi: int, doc: str = "", bound: str = "") -> Any:
    """An integer in lo..hi; ``bound`` names a machine-dependent maximum in words (for the reference table)."""
    return Annotated[int, Meta(ge=lo, le=hi, description=doc or None, extra_json_schema={"x-bound": bound} if bound else None)]


def _num(lo: float, hi: float, doc: str = "") -> Any:
    return Annotated[float, Meta(ge=lo, le=hi, description=doc or None)]


#: A finite number (NaN and infinities are refused everywhere).
Finite = Annotated[float, Meta(ge=-_BIG, le=_BIG)]
Seconds = Annotated[float, Meta(ge=0.0, le=MAX_TIMEOUT_S, description="seconds")]
QueueDelay = Annotated[float, Meta(ge=0.0, le=MAX_QUEUE_DELAY_S, description="seconds")]
QueueSize = Annotated[int, Meta(ge=0, le=MAX_QUEUE_SIZE)]
Fraction = Annotated[float, Meta(gt=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0, le=_BIG)]
Name = Annotated[str, Meta(min_length=1)]
Datatype = Literal[tuple(sorted(DATATYPES))]  # type: ignore[valid-type]


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A config.toml table: unknown keys are errors; every field is described in the published schema."""


# --- sections whose validated form is what the server uses ----------------------------------------------------


class QueuePolicyConfig(Section, frozen=True):
    """One priority level's queue policy (Triton's ModelQueuePolicy, in seconds)."""

    max_queue_size: QueueSize = 0
    """Requests waiting at this level beyond which new ones are rejected with UNAVAILABLE (0: 4096)."""
    default_timeout_s: Seconds = 0.0
    """How long a request may wait before it is rejected (0: no limit); a request's timeout may only shorten it."""


class InstanceGroupConfig(Section, frozen=True):
    """How many runtime instances execute this model concurrently, and where."""

    count: _int(1, MAX_INSTANCES, _CORES_NOTE, "4 per core, at most 256") = 1  # type: ignore[valid-type]
    """Concurrent runtime instances, each with its own executor thread."""
    kind: Literal["cpu", "gpu", "auto"] = "cpu"
    """Where the instances run."""
    gpus: tuple[_int(0, _INT32), ...] = ()  # type: ignore[valid-type]
    """GPU ids for kind "gpu" (instances take them round-robin; empty: GPU 0)."""


class MetricsConfig(Section, frozen=True):
    """Per-model Prometheus histogram settings."""

    latency_buckets_s: Annotated[tuple[Annotated[float, Meta(gt=0.0, le=_BIG)], ...], Meta(min_length=1, max_length=MAX_LATENCY_BUCKETS)] = ()
    """Upper bounds (seconds, strictly increasing, at most 200) of this model's latency histograms; empty: 10 per decade from 10 us to 60 s."""


class DriftConfig(Section, frozen=True):
    """Drift monitoring (with drift_profile.json in the version folder); see drift.py."""

    sample_rate: Fraction = 0.01
    """Fraction of requests whose inputs and outputs are summarised (0 < r <= 1)."""
    window_rows: _int(10, MAX_DRIFT_WINDOW_ROWS) = 1000  # type: ignore[valid-type]
    """Rows in the sliding window compared with the profile."""
    psi_alert: NonNegative = 0.2
    """PSI above which a feature raises the version's alert gauge."""
    max_features: _int(1, MAX_DRIFT_FEATURES) = 64  # type: ignore[valid-type]
    """At most this many features tracked (the profile's first ones)."""


class ShadowConfig(Section, frozen=True):
    """Shadow traffic: a sampled fraction of the routed requests mirrored to another version; see shadow.py."""

    version: _int(0, _INT32) = 0  # type: ignore[valid-type]
    """The version that receives the mirrored requests (0: no shadow; only the budget and comparison settings)."""
    fraction: Fraction = 1.0
    """Fraction of routed requests mirrored (0 < f <= 1), sampled by routing key."""
    max_concurrency: _int(1, MAX_QUEUE_SIZE) = 4  # type: ignore[valid-type]
    """Shadow requests executing at once: the shadow's own budget, apart from the primary's."""
    max_queue: QueueSize = 64
    """Shadow requests waiting for the budget; beyond it a shadow request is dropped (and counted)."""
    rtol: NonNegative = 1e-5
    """Relative tolerance for float outputs (numpy.allclose)."""
    atol: NonNegative = 1e-6
    """Absolute tolerance for float outputs (numpy.allclose)."""
    log_path: str = ""
    """JSON-lines file of sampled disagreements ("": none); relative paths are relative to the model folder."""
    log_max_bytes: _int(0, MAX_LOG_BYTES) = 10_000_000  # type: ignore[valid-type]
    """The disagreement log stops growing at this size (bytes)."""
    log_sample_rate: _num(0.0, 1.0) = 1.0  # type: ignore[valid-type]
    """Fraction of disagreements written to the log."""
    log_inputs: bool = False
    """Include the request's inputs in logged disagreements (off: they may hold personal data)."""


class FeedbackConfig(Section, frozen=True):
    """Outcome feedback: answered requests are indexed for joining with outcomes; see feedback.py."""

    output: str = ""
    """The output whose per-row prediction labels and numbers are compared with ("": the first output)."""
    max_requests: _int(1, MAX_FEEDBACK_REQUESTS) = 100_000  # type: ignore[valid-type]
    """Answered requests remembered for joining (oldest forgotten first)."""


class RolloutToml(Section, frozen=True):
    """A progressive rollout to a new version, run by the server's controller (traffic/rollout.py)."""

    to_version: _int(1, 2**63 - 1)  # type: ignore[valid-type]
    """The version rolled out (it starts once this version is serving; the current one is what answers then)."""
    steps: list[str | _int(0, 100)] | str = msgspec.field(default_factory=lambda: ["shadow", "5", "25", "50", "100"])  # type: ignore[valid-type]
    """``shadow`` (first only) and rising percentages ending at 100."""
    window: str = "5m"
    """How long every gate must hold at a step before the next (a duration: 30s, 5m, 1h)."""
    gates: list[str] | str = msgspec.field(default_factory=lambda: ["p99<1.2x", "errors<0.5%", "agreement>99%"])
    """Gates checked over each window (p99, errors, agreement, max_diff, psi, accuracy, success, mae)."""
    min_samples: _int(1, MAX_FEEDBACK_REQUESTS) = 100  # type: ignore[valid-type]
    """Observations a gate needs before it can hold."""
    alpha: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.01
    """Significance level of a breach (0 < alpha < 1)."""


# --- sections config.py reshapes -----------------------------------------------------------------------------


class InputToml(Section, frozen=True):
    """One input of the model's signature."""

    name: Name
    """Tensor name as clients send it."""
    datatype: Datatype  # type: ignore[valid-type]
    """Open Inference Protocol datatype (FP32, INT64, BYTES, ...)."""
    dims: list[_int(-1, MAX_BATCH_ELEMENTS)] = []  # type: ignore[valid-type]
    """Shape without the batch dimension; -1 marks a variable dimension."""
    optional: bool = False
    """The request may omit it."""


class OutputToml(Section, frozen=True):
    """One output of the model's signature."""

    name: Name
    """Tensor name as clients receive it."""
    datatype: Datatype  # type: ignore[valid-type]
    """Open Inference Protocol datatype (FP32, INT64, BYTES, ...)."""
    dims: list[_int(-1, MAX_BATCH_ELEMENTS)] = []  # type: ignore[valid-type]
    """Shape without the batch dimension; -1 marks a variable dimension."""
    label_filename: str = ""
    """A file in the model folder naming the classes, one per line (for classification results)."""


class VersionPolicyToml(Section, frozen=True):
    """Which numbered version folders are served: one of latest = N, all = true, specific = [1, 3]."""

    latest: _int(1, _INT32) | None = None  # type: ignore[valid-type]
    """Serve the N highest versions (default: latest = 1)."""
    all: bool | None = None
    """Serve every version."""
    specific: list[_int(1, _INT32)] | None = None  # type: ignore[valid-type]
    """Serve these versions."""


class BatchingToml(Section, frozen=True):
    """Present: requests are batched (Triton's dynamic_batching, in seconds)."""

    max_queue_delay_s: QueueDelay = 0.0
    """How long the oldest request may wait for more rows before a batch is dispatched."""
    latency_slo_s: QueueDelay = 0.0
    """Target server latency per request: the batcher picks the wait (instead of max_queue_delay_s; 0: off)."""
    preferred_batch_sizes: list[_int(1, MAX_BATCH_SIZE)] = []  # type: ignore[valid-type]
    """Batch sizes (rows) to dispatch at as soon as they are reached."""
    max_queue_size: QueueSize = 0
    """Requests waiting beyond this are rejected at once with UNAVAILABLE (0: 4096)."""
    default_timeout_s: Seconds = 0.0
    """How long a request may wait (0: no limit); a request's timeout may only shorten it."""
    priority_levels: _int(1, MAX_PRIORITY_LEVELS) = 1  # type: ignore[valid-type]
    """Number of priority levels (1 is the highest)."""
    default_priority_level: _int(1, MAX_PRIORITY_LEVELS) = 1  # type: ignore[valid-type]
    """Level of requests that give no priority."""
    priority_queue_policy: dict[Annotated[str, Meta(pattern="^[0-9]+$")], QueuePolicyConfig] = {}
    """Queue policy per level ([dynamic_batching.priority_queue_policy.1]), overriding the default one."""


class RoutingToml(Section, frozen=True):
    """Present: requests naming no version are split across versions (and maybe shadowed); see routing.py."""

    weights: dict[Annotated[str, Meta(pattern="^[1-9][0-9]*$")], NonNegative] = {}
    """Version -> relative weight, e.g. { 1 = 90, 2 = 10 }; sticky by routing key (empty: the highest READY version)."""
    shadow: ShadowConfig = ShadowConfig()
    """Shadow traffic and its budget."""


# --- pipeline steps: one struct per op, its parameters typed and bounded ---------------------------------------

Floats = Finite | list[Finite]
Side = Annotated[int, Meta(ge=1, le=MAX_IMAGE_SIDE)]
Size = Side | Annotated[list[Side], Meta(min_length=2, max_length=2)]
ImageDatatype = Literal["UINT8", "FP32"]


class Step(Section, tag_field="op", frozen=True, kw_only=True):
    """A pipeline step; ``op`` picks the operation and the parameters it takes."""

    input: Name
    """The tensor it reads."""
    output: str = ""
    """The tensor it writes (default: the same name as input)."""


class DecodeJpeg(Step, tag="decode_jpeg", frozen=True, kw_only=True):
    """BYTES [1] (one JPEG per row) -> UINT8 [-1, -1, C] images for a later image step (decode.py)."""

    channels: Literal[1, 3] = 3
    """3: RGB, 1: grey."""
    max_pixels: _int(1, 2**31 - 1) = 8192 * 8192  # type: ignore[valid-type]
    """Larger images are rejected from their header, before they are decoded."""


class Normalize(Step, tag="normalize", frozen=True, kw_only=True):
    """UINT8 [H, W, C] image -> FP32 [C, H, W]: (x * scale - mean) / std."""

    mean: Floats
    std: Floats
    scale: Finite = 1.0 / 255.0
    datatype: ImageDatatype = "UINT8"


class ResizeCropNormalize(Step, tag="resize_crop_normalize", frozen=True, kw_only=True):
    """UINT8 [-1, -1, C] image -> FP32 [C, h, w]: resize, center crop, normalize."""

    resize: Size
    crop: Size | None = None
    mean: Floats
    std: Floats
    scale: Finite = 1.0 / 255.0
    datatype: ImageDatatype = "UINT8"


class Resize(Step, tag="resize", frozen=True, kw_only=True):
    """UINT8 [-1, -1, C] -> FP32 [h, w, C] (size: default the model's h, w)."""

    size: Size | None = None
    datatype: ImageDatatype = "UINT8"


class CenterCrop(Step, tag="center_crop", frozen=True, kw_only=True):
    """UINT8 [-1, -1, C] -> UINT8 [h, w, C] (size: default the model's h, w)."""

    size: Size | None = None
    datatype: ImageDatatype = "UINT8"


class Letterbox(Step, tag="letterbox", frozen=True, kw_only=True):
    """UINT8 [-1, -1, C] -> FP32 [h, w, C], aspect kept, padded with pad_value."""

    size: Size | None = None
    pad_value: Finite = 0.0
    datatype: ImageDatatype = "UINT8"


class TabularTransform(Step, tag="tabular_transform", frozen=True, kw_only=True):
    """FP32 [F] -> FP32 [F]: fill missing, clip, standardize (each optional)."""

    fill: Floats | None = None
    low: Floats | None = None
    high: Floats | None = None
    mean: Floats | None = None
    std: Floats | None = None


class Standardize(Step, tag="standardize", frozen=True, kw_only=True):
    """FP32 [F] -> FP32 [F]: (x - mean) / std."""

    mean: Floats
    std: Floats


class Clip(Step, tag="clip", frozen=True, kw_only=True):
    """FP32 [F] -> FP32 [F]: clipped to [low, high]."""

    low: Floats
    high: Floats


class FillMissing(Step, tag="fill_missing", frozen=True, kw_only=True):
    """FP32 [F] -> FP32 [F]: NaN replaced by values."""

    values: Floats


class Bucketize(Step, tag="bucketize", frozen=True, kw_only=True):
    """FP32 [F] -> INT64 [F]: the bucket of each value."""

    boundaries: Annotated[list[Finite], Meta(min_length=1)]


class OneHot(Step, tag="one_hot", frozen=True, kw_only=True):
    """INT64 [F] -> FP32 [F*depth]."""

    depth: _int(1, _INT32)  # type: ignore[valid-type]


class HashBucket(Step, tag="hash_bucket", frozen=True, kw_only=True):
    """INT64 [F] -> INT64 [F]: a seeded hash into num_buckets."""

    num_buckets: _int(1, _INT32)  # type: ignore[valid-type]
    seed: _int(0, 2**63 - 1) = 0  # type: ignore[valid-type]


class Softmax(Step, tag="softmax", frozen=True, kw_only=True):
    """FP32 or FP64 [..., K] -> the same shape."""


class Argmax(Step, tag="argmax", frozen=True, kw_only=True):
    """[..., K] -> INT64 [..., 1]."""


class Topk(Step, tag="topk", frozen=True, kw_only=True):
    """[..., K] -> INT64 [..., k] indices as output; values_output (optional) gets the values."""

    k: _int(1, _INT32)  # type: ignore[valid-type]
    values_output: Annotated[str, Meta(min_length=1)] | None = None


class Threshold(Step, tag="threshold", frozen=True, kw_only=True):
    """[..., K] -> BOOL [..., K]: x > value."""

    value: Finite


PreStep = DecodeJpeg | Normalize | ResizeCropNormalize | Resize | CenterCrop | Letterbox | TabularTransform | Standardize | Clip | FillMissing | Bucketize | OneHot | HashBucket
PostStep = Softmax | Argmax | Topk | Threshold
PRE_OPS = tuple(t.__struct_config__.tag for t in PreStep.__args__)
POST_OPS = tuple(t.__struct_config__.tag for t in PostStep.__args__)


class ModelToml(Section, frozen=True):
    """A model's config.toml (every key optional; inputs and outputs are read from the model file when omitted)."""

    backend: Literal[BACKENDS] = "onnxruntime"  # type: ignore[valid-type]
    """Which runtime executes it; when absent, the version folder's file decides (model.py: python, model.pt or model.pt2: torch, model.plan: tensorrt, else onnxruntime)."""
    max_batch_size: _int(0, MAX_BATCH_SIZE) | None = None  # type: ignore[valid-type]
    """Rows per request along the leading batch dimension; 0: the model has no batch dimension; at most what the model file supports (a TensorRT engine's profiles). When absent: TensorRT, the rows its profiles cover; otherwise 4 if every tensor has a variable first dimension, else 0 (Triton's rule)."""  # noqa: E501
    default_model_filename: str = ""
    """File in each version folder (default: model.onnx, model.py, model.pt or model.plan)."""
    version_policy: VersionPolicyToml = VersionPolicyToml()
    """Which versions are served."""
    input: list[InputToml] = []
    """The input signature ([[input]]; default: read from the model file)."""
    output: list[OutputToml] = []
    """The output signature ([[output]]; default: read from the model file)."""
    dynamic_batching: BatchingToml | None = None
    """Present: requests are batched (absent: one request per execution, same queueing and deadlines)."""
    instance_group: InstanceGroupConfig = InstanceGroupConfig()
    """Concurrent runtime instances."""
    parameters: dict[str, Any] = {}
    """Runtime options, validated by the runtime at load; ONNX Runtime: intra_op_threads (1), inter_op_threads (1), execution_mode, graph_optimization_level (all) and the GPU options (see GPU); *_threads keys are bounded like instance_group.count for every runtime."""  # noqa: E501
    metrics: MetricsConfig = MetricsConfig()
    """Prometheus histogram settings."""
    drift: DriftConfig | None = None
    """Present: monitor drift (absent: none)."""
    execution_timeout_s: Seconds | None = None
    """A batch running longer fails (DEADLINE_EXCEEDED) and its instance is replaced; 0: no limit (default: Python models 60, others 0)."""
    max_memory_bytes: _int(0, PHYSICAL_MEMORY, "this machine's memory", "this machine's memory") = 0  # type: ignore[valid-type]
    """Python models: restart the instance's process after a call leaves it above this much memory (0: no limit; else 64 MiB up to this machine's memory)."""
    routing: RoutingToml | None = None
    """Present: requests naming no version are split across versions (absent: the highest READY version answers)."""
    feedback: FeedbackConfig | None = None
    """Present: answered requests are indexed for outcome feedback."""
    rollout: RolloutToml | None = None
    """Present: the server rolls a new version out by itself, step by step, promoted and rolled back by gates."""
    preprocess: list[PreStep] = []
    """Pipeline steps before the model ([[preprocess]], op = one of the kernels)."""
    postprocess: list[PostStep] = []
    """Pipeline steps after the model ([[postprocess]]: softmax, argmax, topk, threshold)."""


# --- validation with key-path errors ---------------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def validate(data: Mapping[str, Any], schema: type[msgspec.Struct] = ModelToml) -> Any:
    """``data`` (decoded TOML or JSON) as ``schema``; ConfigError naming the key path and what is valid."""
    try:
        return msgspec.convert(data, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_message(str(exc), data, schema)) from None


def _message(text: str, data: Any, schema: type) -> str:
    match = _AT.match(text)
    assert match is not None
    msg = match["msg"]
    tokens: list[Any] = [t or (i if i == "..." else int(i)) for t, i in _TOKEN.findall(match["path"] or "")]
    info, value, found = _walk(mi.type_info(schema), tokens, data)
    if match["key"] and isinstance(value, Mapping):  # a table's key the schema refuses (only numbered tables have rules)
        key = next((str(k) for k in value if not str(k).isdigit() or str(k).startswith("0")), "")
        tokens.append(key)
        found = "key"
    if found == "key":
        return f"{'.'.join(str(t) for t in tokens)}: keys are whole numbers (versions, priority levels), e.g. 1; got {tokens[-1]!r}"
    while tokens and isinstance(tokens[-1], int) and _is_scalar(info) and found:  # a bad item: show the whole list
        tokens.pop()
        info, value, found = _walk(mi.type_info(schema), tokens, data)
    path = "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens).lstrip(".")
    if msg.startswith("Object contains unknown field"):
        struct = _pick(info, value)
        if isinstance(struct, mi.StructType) and isinstance(value, Mapping):
            valid = sorted(f.encode_name for f in struct.fields)
            unknown = sorted(str(k) for k in value if k not in valid and k != struct.tag_field)
            return f"{path or 'top level'}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}"
    if (missing := re.match(r"Object missing required field `(.*)`", msg)) is not None:
        return f"{path + '.' if path else ''}{missing[1]}: required"
    if info is not None and found:
        return f"{path or 'config'}: {_expected(info, value, tokens[-1] if tokens else '')}"
    return f"{path or 'top level'}: {msg[:1].lower()}{msg[1:]}"


def _expected(info: Any, value: Any, key: Any) -> str:
    kind = _pick(info, value)
    if isinstance(kind, mi.StructType | mi.DictType):
        return f"expected a table, got {type(value).__name__}"
    if isinstance(kind, mi.ListType) and isinstance(_unwrap(kind.item_type), mi.StructType | mi.UnionType):
        return f"expected an array of tables ([[{key}]]), got {type(value).__name__}"
    if isinstance(kind, mi.LiteralType):
        return f"expected one of {', '.join(map(str, kind.values))}; got {value!r}"
    return f"expected {_describe(info)}, got {value!r}"


def _unwrap(info: Any) -> Any:
    return info.type if isinstance(info, mi.Metadata) else info


def _is_scalar(info: Any) -> bool:
    return isinstance(_unwrap(info), mi.IntType | mi.FloatType | mi.StrType | mi.BoolType | mi.LiteralType)


def _walk(info: Any, tokens: list[Any], data: Any) -> tuple[Any, Any, bool | str]:
    """The type and the given value at ``tokens`` (the value's own type among a union's)."""
    value: Any = data
    found: Any = True
    annotation: Any = None
    for n, token in enumerate(tokens):
        info = _unwrap(info)
        if isinstance(info, mi.UnionType) and all(isinstance(t, mi.StructType) and t.tag_field == token for t in info.types):
            value = value.get(token) if isinstance(value, Mapping) else None
            return mi.LiteralType(tuple(t.tag for t in info.types)), value, True  # type: ignore[attr-defined]  # an op no step has
        info = _unwrap(_pick(info, value))
        if token == "..." and isinstance(value, Mapping) and isinstance(info, mi.DictType):
            token = tokens[n] = _failing_key(value, annotation)
            if token is None:
                return None, value, False
            if not isinstance(info.key_type, mi.StrType) or not re.fullmatch(info.key_type.pattern or ".*", token):
                return None, token, "key"
        if isinstance(value, Mapping) and not isinstance(token, int):
            found, value = token in value, value.get(token)
        elif isinstance(value, list) and isinstance(token, int) and token < len(value):
            value = value[token]
        else:
            found = False
        if isinstance(info, mi.StructType):
            annotation = next((f.type for f in msgspec.structs.fields(info.cls) if f.encode_name == token), None)
            info = next((f.type for f in info.fields if f.encode_name == token), None)
        elif isinstance(info, mi.ListType | mi.VarTupleType):
            info = info.item_type
        elif isinstance(info, mi.DictType):
            info = info.value_type
        else:
            info = None
    return info, value, found


def _failing_key(table: Mapping[str, Any], annotation: Any) -> str | None:
    """The first key of a table (a dict field) whose key or value the schema refuses."""
    for key, item in table.items():
        try:
            msgspec.convert({key: item}, annotation, strict=True)
        except msgspec.ValidationError:
            return str(key)
    return None


def _pick(info: Any, value: Any) -> Any:
    """The member of a union that ``value`` is meant as (a tagged step by its op, a table by its shape)."""
    info = _unwrap(info)
    if not isinstance(info, mi.UnionType):
        return info
    members = [_unwrap(t) for t in info.types if not isinstance(t, mi.NoneType)]
    if len(members) == 1:
        return members[0]
    if isinstance(value, Mapping):
        tables = [t for t in members if isinstance(t, mi.StructType)]
        return next((t for t in tables if t.tag == value.get(t.tag_field)), tables[0] if len(tables) == 1 else info)
    if isinstance(value, list):
        return next((t for t in members if isinstance(t, mi.ListType | mi.VarTupleType)), info)
    return info


def _describe(info: Any, portable: bool = False) -> str:
    """What is valid, in words: ``an integer from 1 to 64``, ``one of cpu, gpu, auto``; ``portable``: bounds that
    depend on the machine are named, not given (the reference table)."""
    extra = (info.extra_json_schema or {}) if isinstance(info, mi.Metadata) else {}
    note = f" ({extra['description']})" if extra.get("description") else ""
    info = _unwrap(info)
    if isinstance(info, mi.IntType):
        if portable and extra.get("x-bound"):
            return f"an integer from {info.ge} to {extra['x-bound']}"
        return f"an integer from {info.ge if info.ge is not None else '-inf'} to {info.le if info.le is not None else 'inf'}{note}"
    if isinstance(info, mi.FloatType):
        if info.le == 1 and (info.gt == 0 or info.ge == 0):
            return f"a fraction {'0 <' if info.gt == 0 else '0 <='} f <= 1"
        if info.gt == 0 and info.lt == 1:
            return "a number strictly between 0 and 1"
        if info.gt == 0:
            return f"a positive number{note}" if info.le is None or info.le >= _BIG else f"a number above 0 to {info.le:g}{note}"
        if info.ge is not None and info.ge > -_BIG:
            low = f"from {info.ge:g}"
        else:
            return f"a finite number{note}"
        return f"a number {low} to {info.le:g}{note}" if info.le is not None and info.le < _BIG else f"a finite number >= {info.ge:g}{note}"
    if isinstance(info, mi.LiteralType):
        return f"one of {', '.join(map(str, info.values))}"
    if isinstance(info, mi.StrType):
        return "a non-empty string" if info.min_length else "a string"
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.ListType | mi.VarTupleType):
        item = re.sub(r"^an? (\w+ )?(integer|number)", r"\1\2s", _describe(info.item_type))
        lo, hi = info.min_length or 0, info.max_length
        length = f"{lo} " if lo == hi else f"{lo} to {hi} " if hi is not None and lo else f"at least {lo} " if lo else f"at most {hi} " if hi is not None else ""
        return f"a list of {length}{item}"
    if isinstance(info, mi.StructType | mi.DictType):
        return "a table"
    if isinstance(info, mi.UnionType):
        return " or ".join(dict.fromkeys(_describe(t) for t in info.types if not isinstance(t, mi.NoneType)))
    return type(info).__name__


# --- publication -----------------------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config.toml (``surge config-schema``), for editors that complete and check TOML."""
    schema = msgspec.json.schema(ModelToml)
    schema["title"] = "Surge model config.toml"
    return schema


def reference_table() -> str:
    """The config.toml reference (docs/pages/configuration.md): one row per key, from the schema (a test keeps that page equal)."""
    rows = ["| key | type and bounds | default | meaning |", "|---|---|---|---|"]
    _rows(mi.type_info(ModelToml), "", rows)
    return "\n".join(rows) + "\n"


def _rows(struct: Any, prefix: str, rows: list[str]) -> None:
    docs = _field_docs(struct.cls)
    for f in struct.fields:
        key = prefix + f.encode_name
        inner = _pick(f.type, {}) if isinstance(f.type, mi.UnionType) else f.type
        item = inner.item_type if isinstance(inner, mi.ListType) else None
        if isinstance(inner, mi.StructType) and inner.fields or isinstance(item, mi.StructType):
            target = inner if isinstance(inner, mi.StructType) else item
            name = f"[[{key}]]" if item is not None else f"[{key}]"
            rows.append(f"| `{name}` | table | {'absent' if f.default is None else ''} | {_cell(docs.get(f.name, ''))} |")
            _rows(target, key + ".", rows)
        elif isinstance(item, mi.UnionType) and all(isinstance(t, mi.StructType) for t in item.types):
            ops = ", ".join(f"`{t.tag}`" for t in item.types)  # type: ignore[attr-defined]
            rows.append(f"| `[[{key}]]` | table: `op` ({ops}), `input`, `output` and the op's parameters (see pipelines) | | {_cell(docs.get(f.name, ''))} |")
        else:
            value = f.default_factory() if f.default is msgspec.NODEFAULT and f.default_factory is not msgspec.NODEFAULT else f.default
            default = "" if f.required or value in (None, "", [], {}, ()) else f"`{_toml(value)}`"
            rows.append(f"| `{key}` | {_cell(_describe(f.type, portable=True))} | {default} | {_cell(docs.get(f.name, ''))} |")


def _toml(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field (``x: int = 0`` then ``\"\"\"...\"\"\"``) of a struct and its bases."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not isinstance(klass, type) or not issubclass(klass, msgspec.Struct) or klass is msgspec.Struct:
            continue
        try:
            body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        except (OSError, TypeError, IndexError):
            continue
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[node.target.id] = str(after.value.value)
    return docs


if __name__ == "__main__":  # python -m surge.server.config_schema: the reference table
    print(reference_table(), end="")
