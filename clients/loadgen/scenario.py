"""What ``surge bench`` sends: a scenario (models, input shapes, mix weights, routing keys, deadlines, rows per
request), read from a TOML file or built from command-line flags, and turned into serialised requests before
the run (``build_plan``).

A scenario file::

    seed = 0                      # optional: random inputs and the mix order
    variants = 8                  # optional: distinct random payloads per request kind (default 8)

    [[request]]
    model = "mlp"                 # required
    version = ""                  # optional: an explicit version (bypasses the server's split)
    weight = 3                    # share of the mix (default 1)
    rows = 4                      # rows per request, the batch dimension (default 1; 1 for models without one)
    deadline_ms = 50              # gRPC deadline of each request (default: none)
    routing_keys = ["user-1", "user-2"]   # request parameter routing_key, cycled; an integer N means key-0..key-N-1
    outputs = ["probabilities"]   # outputs to ask for (default: all)
    parameters = { priority = 1 } # other request parameters

    [request.inputs.x]            # optional: otherwise every input comes from the server's ModelMetadata
    shape = [16]                  # dims of one row (no batch dimension), or the whole shape for a model without one
    datatype = "FP32"             # default: the server's
    npy = "x.npy"                 # optional: rows taken from this file in order (relative to the scenario file)

Inputs not given are random (normal for floats, 0..99 for integers) with the server's datatype and dims; a
variable dim (-1) needs ``shape`` (or ``--shape NAME:DIMS`` on the command line).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surge.clients._codec import ParameterValue, encode_infer_request
from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import numpy_dtype

__all__ = ["InputSpec", "Plan", "RequestKind", "RequestSpec", "Scenario", "ScenarioError", "build_plan", "load_scenario"]

DEFAULT_VARIANTS = 8
#: The mix order is a seeded sequence of this many kind indices, cycled: exact weights over any long run.
MIX_LENGTH = 4096


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the key path or the model."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...] | None = None
    datatype: str | None = None
    npy: str | None = None


@dataclass(frozen=True)
class RequestSpec:
    model: str
    version: str = ""
    weight: float = 1.0
    rows: int = 1
    deadline_ms: float | None = None
    routing_keys: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    inputs: tuple[InputSpec, ...] = ()


@dataclass(frozen=True)
class Scenario:
    requests: tuple[RequestSpec, ...]
    seed: int = 0
    variants: int = DEFAULT_VARIANTS
    base_dir: str = "."

    def to_dict(self) -> dict[str, Any]:
        """The scenario as plain data (for the JSON report)."""
        data = asdict(self)
        data.pop("base_dir")
        return data


@dataclass(frozen=True)
class RequestKind:
    """One entry of the mix, resolved against the server: its serialised payloads, rows per request, deadline."""

    model: str
    version: str
    rows: int
    timeout_s: float | None
    payloads: tuple[bytes, ...]

    @property
    def label(self) -> str:
        return self.model + (f":{self.version}" if self.version else "")


@dataclass(frozen=True)
class Plan:
    """Everything a run sends, serialised: the kinds and the mix order (indices into ``kinds``)."""

    kinds: tuple[RequestKind, ...]
    mix: tuple[int, ...]


_REQUEST_KEYS = {"model", "version", "weight", "rows", "deadline_ms", "routing_keys", "outputs", "parameters", "inputs"}
_INPUT_KEYS = {"shape", "datatype", "npy"}


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario TOML file; raises ScenarioError naming the bad key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    unknown = set(data) - {"seed", "variants", "request"}
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected seed, variants, [[request]]")
    entries = data.get("request")
    if not isinstance(entries, list) or not entries:
        raise ScenarioError(f"{path}: needs at least one [[request]] table")
    requests = tuple(_request_spec(entry, f"request[{i}]") for i, entry in enumerate(entries))
    seed, variants = data.get("seed", 0), data.get("variants", DEFAULT_VARIANTS)
    if not isinstance(seed, int) or not isinstance(variants, int) or variants < 1:
        raise ScenarioError(f"{path}: seed must be an integer and variants a positive integer")
    return Scenario(requests, seed=seed, variants=variants, base_dir=str(path.resolve().parent))


def _request_spec(entry: Any, where: str) -> RequestSpec:
    if not isinstance(entry, dict):
        raise ScenarioError(f"{where}: expected a table")
    unknown = set(entry) - _REQUEST_KEYS
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(_REQUEST_KEYS)}")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise ScenarioError(f"{where}.model: required, a model name")
    weight, rows, deadline = entry.get("weight", 1.0), entry.get("rows", 1), entry.get("deadline_ms")
    if not isinstance(weight, (int, float)) or not weight > 0:
        raise ScenarioError(f"{where}.weight: must be a positive number, got {weight!r}")
    if not isinstance(rows, int) or rows < 1:
        raise ScenarioError(f"{where}.rows: must be a positive integer, got {rows!r}")
    if deadline is not None and (not isinstance(deadline, (int, float)) or not deadline > 0):
        raise ScenarioError(f"{where}.deadline_ms: must be a positive number, got {deadline!r}")
    keys = entry.get("routing_keys", ())
    if isinstance(keys, int) and not isinstance(keys, bool):
        if keys < 1:
            raise ScenarioError(f"{where}.routing_keys: a count must be positive, got {keys}")
        keys = [f"key-{i}" for i in range(keys)]
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
        raise ScenarioError(f"{where}.routing_keys: a list of strings or a count")
    outputs = entry.get("outputs", ())
    if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, str) for o in outputs):
        raise ScenarioError(f"{where}.outputs: a list of output names")
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict) or not all(isinstance(v, (bool, int, float, str)) for v in parameters.values()):
        raise ScenarioError(f"{where}.parameters: a table of bool, integer, float or string values")
    inputs = []
    for name, spec in (entry.get("inputs") or {}).items():
        path = f"{where}.inputs.{name}"
        if not isinstance(spec, dict) or set(spec) - _INPUT_KEYS:
            raise ScenarioError(f"{path}: a table with keys among {sorted(_INPUT_KEYS)}")
        shape = spec.get("shape")
        if shape is not None and (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ScenarioError(f"{path}.shape: a list of non-negative integers, got {shape!r}")
        datatype = spec.get("datatype")
        if datatype is not None:
            try:
                numpy_dtype(datatype) if datatype != "BYTES" else None
            except KeyError:
                raise ScenarioError(f"{path}.datatype: unknown datatype {datatype!r}") from None
        inputs.append(InputSpec(name, None if shape is None else tuple(shape), datatype, spec.get("npy")))
    return RequestSpec(
        model=model, version=str(entry.get("version", "")), weight=float(weight), rows=rows,
        deadline_ms=None if deadline is None else float(deadline), routing_keys=tuple(keys), outputs=tuple(outputs),
        parameters=dict(parameters), inputs=tuple(inputs),
    )  # fmt: skip


def build_plan(scenario: Scenario, metadata: Mapping[str, pb.ModelMetadataResponse]) -> Plan:
    """Serialise every request of the scenario, against the models' metadata (keyed by ``RequestSpec.model``).

    Each request kind gets ``variants`` random payloads (or one per slice of its .npy rows), times its routing
    keys; raises ScenarioError when an input's shape or datatype cannot be resolved.
    """
    rng = np.random.default_rng(scenario.seed)
    kinds = tuple(_kind(spec, metadata[spec.model], scenario, rng, f"request[{i}]") for i, spec in enumerate(scenario.requests))
    weights = np.array([spec.weight for spec in scenario.requests])
    mix = np.random.default_rng(scenario.seed + 1).choice(len(kinds), size=MIX_LENGTH, p=weights / weights.sum())
    return Plan(kinds, tuple(int(i) for i in mix))


def _kind(spec: RequestSpec, meta: pb.ModelMetadataResponse, scenario: Scenario, rng: np.random.Generator, where: str) -> RequestKind:
    given = {i.name: i for i in spec.inputs}
    known = {t.name for t in meta.inputs}
    if set(given) - known:
        raise ScenarioError(f"{where}.inputs: model {spec.model} has no input(s) {sorted(set(given) - known)}; its inputs: {sorted(known)}")
    batched = bool(meta.inputs) and all(len(t.shape) > 0 and t.shape[0] == -1 for t in meta.inputs)
    if not batched and spec.rows != 1:
        raise ScenarioError(f"{where}.rows: model {spec.model} has no batch dimension; rows must be 1")
    columns: dict[str, list[np.ndarray]] = {}
    for tensor in meta.inputs:
        columns[tensor.name] = _payload_arrays(tensor, given.get(tensor.name), spec, batched, scenario, rng, f"{where}.inputs.{tensor.name}")
    count = max(len(v) for v in columns.values()) if columns else 1
    keys = spec.routing_keys or (None,)
    payloads = []
    for i in range(max(count, len(keys))):
        parameters: dict[str, ParameterValue] = dict(spec.parameters)
        key = keys[i % len(keys)]
        if key is not None:
            parameters["routing_key"] = key
        inputs = {name: arrays[i % len(arrays)] for name, arrays in columns.items()}
        request = encode_infer_request(spec.model, inputs, version=spec.version, outputs=spec.outputs or None, parameters=parameters or None)
        payloads.append(request.SerializeToString())
    timeout = None if spec.deadline_ms is None else spec.deadline_ms / 1e3
    return RequestKind(spec.model, spec.version, spec.rows if batched else 1, timeout, tuple(payloads))


def _payload_arrays(tensor: Any, given: InputSpec | None, spec: RequestSpec, batched: bool, scenario: Scenario,
                    rng: np.random.Generator, where: str) -> list[np.ndarray]:  # fmt: skip
    datatype = (given.datatype if given and given.datatype else None) or tensor.datatype
    dims = list(tensor.shape[1:] if batched else tensor.shape)
    if given is not None and given.npy:
        return _npy_slices(Path(scenario.base_dir) / given.npy, spec.rows if batched else 0, where)
    if given is not None and given.shape is not None:
        if len(given.shape) != len(dims) or any(d >= 0 and d != g for d, g in zip(dims, given.shape)):
            raise ScenarioError(f"{where}.shape: {list(given.shape)} does not fit the model's dims {dims}" + (" (without the batch dimension)" if batched else ""))
        dims = list(given.shape)
    if any(d < 0 for d in dims):
        raise ScenarioError(f"{where}: the model's dims {dims} are variable; give its shape (scenario shape = [...] or --shape {tensor.name}:D1,D2)")
    shape = ([spec.rows] if batched else []) + dims
    return [_random(datatype, shape, rng, where) for _ in range(scenario.variants)]


def _npy_slices(path: Path, rows: int, where: str) -> list[np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{where}.npy: cannot read {path}: {exc}") from None
    if rows == 0:  # no batch dimension: the file is one request's tensor
        return [data]
    if data.ndim == 0 or data.shape[0] < rows:
        raise ScenarioError(f"{where}.npy: {path} has {0 if data.ndim == 0 else data.shape[0]} rows; a request needs {rows}")
    return [data[i : i + rows] for i in range(0, data.shape[0] - rows + 1, rows)]


def _random(datatype: str, shape: Sequence[int], rng: np.random.Generator, where: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([f"surge-{i}".encode() for i in range(math.prod(shape))], dtype=np.object_).reshape(shape)
    try:
        dtype = numpy_dtype(datatype)
    except KeyError:
        raise ScenarioError(f"{where}: unknown datatype {datatype!r}") from None
    if dtype.kind == "f" or datatype == "BF16":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(0, 100, shape).astype(dtype)
