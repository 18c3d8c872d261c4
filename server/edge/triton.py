"""Triton-shaped views of Surge's state: the ModelConfig and ModelStatistics messages, and config overrides.

Our config is TOML with seconds; Triton's is a protobuf with microseconds. This module is the only place
that converts between them (both directions), so the units stay at the edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from surge.protos import grpc_service_pb2 as pb
from surge.protos import model_config_pb2 as mc

from ..config import ModelConfig
from ..errors import ConfigError, InvalidInput, Unsupported
from ..execution.model import ModelVersion
from .jsonread import read_json

__all__ = ["config_overrides_from_json", "model_config_message", "statistics_message"]

_TYPE_OF = {name: getattr(mc, f"TYPE_{name}") for name in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16")}
_TYPE_OF["BYTES"] = mc.TYPE_STRING
_DATATYPE_OF = {value: key for key, value in _TYPE_OF.items()}
_KIND = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU, "auto": mc.ModelInstanceGroup.KIND_AUTO}
#: The Triton ModelConfig fields a load request's ``config`` may set (what ``config_overrides_from_json`` translates).
_APPLIED = (
    "name", "platform", "backend", "max_batch_size", "default_model_filename", "input", "output", "dynamic_batching", "instance_group",
    "version_policy", "parameters",
)
_BACKEND_OF_PLATFORM = {
    "onnxruntime_onnx": "onnxruntime", "onnxruntime": "onnxruntime", "python": "python", "pytorch_libtorch": "torch", "pytorch": "torch", "torch": "torch",
    "tensorrt_plan": "tensorrt", "tensorrt": "tensorrt",
}
#: Triton's parameters that carry a pipeline's steps (see model_config_message).
_STEP_PARAMETERS = {"surge_preprocess": "preprocess", "surge_postprocess": "postprocess"}


def model_config_message(config: ModelConfig) -> mc.ModelConfig:
    """Triton's ModelConfig for one of our (completed) configs; ``dynamic_batching`` present iff batching is on."""
    message = mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size or 0,
        default_model_filename=config.model_filename,
    )
    policy = config.version_policy
    if policy.kind == "all":
        message.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        message.version_policy.specific.versions.extend(policy.versions)
    else:
        message.version_policy.latest.num_versions = policy.num_versions
    for t in config.inputs:
        message.input.add(name=t.name, data_type=_TYPE_OF[t.datatype], dims=t.dims, optional=t.optional)
    for t in config.outputs:
        message.output.add(name=t.name, data_type=_TYPE_OF[t.datatype], dims=t.dims, label_filename=t.label_filename)
    batching = config.dynamic_batching
    if batching is not None:
        message.dynamic_batching.SetInParent()  # present even when every field is default (perf_analyzer checks presence)
        db = message.dynamic_batching
        db.preferred_batch_size.extend(batching.preferred_batch_sizes)
        db.max_queue_delay_microseconds = round(batching.max_queue_delay_s * 1e6)
        if batching.priority_levels > 1:
            db.priority_levels = batching.priority_levels
            db.default_priority_level = batching.default_priority_level
        _queue_policy_message(db.default_queue_policy, batching.max_queue_size, batching.default_timeout_s)
        for level, queue in batching.priority_queue_policy.items():
            _queue_policy_message(db.priority_queue_policy[level], queue.max_queue_size, queue.default_timeout_s)
        if batching.latency_slo_s is not None:
            message.parameters["latency_slo_s"].string_value = repr(batching.latency_slo_s)  # Triton has no field for it
    group = config.instance_group
    message.instance_group.add(name=config.name, kind=_KIND[group.kind], count=group.count, gpus=group.gpus)
    for key, value in config.parameters.items():
        message.parameters[key].string_value = json.dumps(value) if not isinstance(value, str) else value
    for kind, steps in (("preprocess", config.preprocess), ("postprocess", config.postprocess)):
        if steps:  # Triton has no field for a pipeline: its steps as JSON, the signature above is the pipeline's
            message.parameters[f"surge_{kind}"].string_value = json.dumps([{"op": s.op, "input": s.input, "output": s.output, **s.params} for s in steps])
    return message


def _queue_policy_message(target: mc.ModelQueuePolicy, max_queue_size: int, default_timeout_s: float) -> None:
    target.max_queue_size = max_queue_size
    target.default_timeout_microseconds = round(default_timeout_s * 1e6)
    target.allow_timeout_override = True  # a request's timeout may shorten the default (never lengthen it)


def _queue_policy_keys(policy: mc.ModelQueuePolicy) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if policy.max_queue_size:
        keys["max_queue_size"] = policy.max_queue_size
    if policy.default_timeout_microseconds:
        keys["default_timeout_s"] = policy.default_timeout_microseconds / 1e6
    return keys


def config_overrides_from_json(model_name: str, text: str) -> dict[str, Any]:
    """Turn RepositoryModelLoad's ``config`` parameter (Triton ModelConfig JSON) into our TOML keys.

    Only the keys the JSON sets are returned, so they override the model's config.toml top-level keys.
    Raises InvalidInput for invalid JSON (``jsonread``: strict, depth-bounded), ConfigError for a JSON that is
    not a Triton ModelConfig, and Unsupported for Triton features Surge does not build.
    """
    data = read_json(text, "the 'config' parameter")
    if not isinstance(data, dict):
        raise ConfigError("the 'config' parameter must be a JSON object (a Triton ModelConfig)")
    for key in ("sequence_batching", "ensemble_scheduling", "batch_input", "batch_output"):
        if key in data:
            raise Unsupported(f"the 'config' parameter sets {key}, which Surge does not support")
    fields = mc.ModelConfig.DESCRIPTOR.fields_by_name
    field_of = {name: name for name in fields} | {f.json_name: name for name, f in fields.items()}
    ignored = sorted(key for key in data if field_of.get(key) not in _APPLIED)
    if ignored:  # as config.toml does: a key that would be silently ignored is an error
        raise ConfigError(
            f"the 'config' parameter sets {', '.join(map(repr, ignored))}, which Surge does not apply; keys it applies: {', '.join(_APPLIED)}"
        )
    data = {field_of[key]: value for key, value in data.items()}
    message = mc.ModelConfig()
    try:
        json_format.ParseDict(data, message)  # a field Triton does not know, at any depth, is an error naming it
    except json_format.ParseError as exc:
        raise ConfigError(f"the 'config' parameter is not a valid Triton ModelConfig: {exc}") from None
    if message.name and message.name != model_name:
        raise ConfigError(f"the 'config' parameter names model '{message.name}' but the request loads '{model_name}'")
    out: dict[str, Any] = {}
    backend = message.backend or message.platform
    if backend:
        if backend not in _BACKEND_OF_PLATFORM:
            raise Unsupported(f"backend/platform '{backend}' is not served by Surge ({', '.join(_BACKEND_OF_PLATFORM)})")
        out["backend"] = _BACKEND_OF_PLATFORM[backend]
    if "max_batch_size" in data:
        out["max_batch_size"] = message.max_batch_size
    if message.default_model_filename:
        out["default_model_filename"] = message.default_model_filename
    if "input" in data:
        out["input"] = [_tensor(t, with_optional=True) for t in message.input]
    if "output" in data:
        out["output"] = [_tensor(t, with_optional=False) for t in message.output]
    if message.HasField("dynamic_batching"):
        db = message.dynamic_batching
        batching: dict[str, Any] = {
            "max_queue_delay_s": db.max_queue_delay_microseconds / 1e6,
            "preferred_batch_sizes": list(db.preferred_batch_size),
        }
        batching.update(_queue_policy_keys(db.default_queue_policy))
        if db.priority_levels:
            batching["priority_levels"] = db.priority_levels
            batching["default_priority_level"] = db.default_priority_level or db.priority_levels
        if db.priority_queue_policy:
            batching["priority_queue_policy"] = {str(level): _queue_policy_keys(p) for level, p in db.priority_queue_policy.items()}
        out["dynamic_batching"] = batching
    if message.instance_group:
        groups = message.instance_group
        kinds = {g.kind for g in groups}
        kind = {mc.ModelInstanceGroup.KIND_GPU: "gpu", mc.ModelInstanceGroup.KIND_CPU: "cpu"}.get(next(iter(kinds)), "auto") if len(kinds) == 1 else "auto"
        out["instance_group"] = {
            "count": sum(max(g.count, 1) for g in groups),
            "kind": kind,
            "gpus": sorted({gpu for g in groups for gpu in g.gpus}),
        }
    if message.HasField("version_policy"):
        vp = message.version_policy
        choice = vp.WhichOneof("policy_choice")
        out["version_policy"] = (
            {"all": True} if choice == "all" else {"specific": list(vp.specific.versions)} if choice == "specific" else {"latest": vp.latest.num_versions or 1}
        )
    parameters = {key: _parameter(p.string_value) for key, p in message.parameters.items()}
    for key, section in _STEP_PARAMETERS.items():  # a pipeline's steps; the input and output above are its signature
        if key in parameters:
            out[section] = parameters.pop(key)
            out.pop("input", None), out.pop("output", None)  # the model's own come from config.toml or the model file
    slo = parameters.pop("latency_slo_s", None)  # ours, carried in Triton's parameters map (see model_config_message)
    if slo is not None and "dynamic_batching" in out:
        out["dynamic_batching"]["latency_slo_s"] = slo
        out["dynamic_batching"].pop("max_queue_delay_s", None)
    if parameters:
        out["parameters"] = parameters
    return out


def _tensor(t: Any, *, with_optional: bool) -> dict[str, Any]:
    if t.data_type not in _DATATYPE_OF:
        raise ConfigError(f"tensor '{t.name}' in the 'config' parameter has no valid data_type")
    tensor: dict[str, Any] = {"name": t.name, "datatype": _DATATYPE_OF[t.data_type], "dims": list(t.dims)}
    if with_optional and t.optional:
        tensor["optional"] = True
    if not with_optional and t.label_filename:  # an output's label file (read from the model folder at load)
        tensor["label_filename"] = t.label_filename
    return tensor


def _parameter(text: str) -> Any:
    try:
        return read_json(text, "a parameter")  # Triton parameters are strings; "2" and "true" mean numbers and booleans
    except InvalidInput:
        return text


def statistics_message(name: str, versions: Iterable[ModelVersion]) -> list[pb.ModelStatistics]:
    """Triton's cumulative ModelStatistics, one per version (numeric version strings)."""
    out: list[pb.ModelStatistics] = []
    for version in versions:
        s = version.stats
        message = pb.ModelStatistics(
            name=name,
            version=version.version_str,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        stats = message.inference_stats
        for field_name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            d = getattr(s, field_name)
            target = getattr(stats, field_name)
            target.count, target.ns = d.count, d.ns
        for size in sorted(s.batches):
            b = s.batches[size]
            entry = message.batch_stats.add(batch_size=size)
            for field_name in ("compute_input", "compute_infer", "compute_output"):
                d = getattr(b, field_name)
                target = getattr(entry, field_name)
                target.count, target.ns = d.count, d.ns
        out.append(message)
    return out
