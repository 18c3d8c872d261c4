"""``surge.server.config``: TOML tables in, validated frozen dataclasses out; every error names its key path."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from surge.protos.datatypes import DATATYPES
from surge.server.config import (
    BatchingConfig,
    InstanceGroupConfig,
    ModelConfig,
    TensorConfig,
    VersionPolicy,
    load_model_config,
    parse_model_config,
    PYTHON_EXECUTION_TIMEOUT_S,
)
from surge.server import config as config_module
from surge.server.errors import ConfigError, InferenceServerError

TOP_LEVEL_KEYS = [
    "backend",
    "default_model_filename",
    "drift",
    "dynamic_batching",
    "execution_timeout_s",
    "feedback",
    "input",
    "instance_group",
    "max_batch_size",
    "max_memory_bytes",
    "metrics",
    "output",
    "parameters",
    "postprocess",
    "preprocess",
    "rollout",
    "routing",
    "version_policy",
]


def _input(**overrides: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "dims": [4], **overrides}


def _error(data: Any, name: str = "m") -> str:
    with pytest.raises(ConfigError) as info:
        parse_model_config(name, data)
    return str(info.value)


# --- defaults --------------------------------------------------------------------------------------------


def test_empty_table_gives_every_default() -> None:
    config = parse_model_config("mlp", {})
    assert config == ModelConfig(name="mlp")
    assert config.backend == "onnxruntime"
    assert config.max_batch_size is None
    assert config.default_model_filename == ""
    assert config.version_policy == VersionPolicy(kind="latest", num_versions=1, versions=())
    assert config.inputs == () and config.outputs == ()
    assert config.dynamic_batching is None
    assert config.instance_group == InstanceGroupConfig(count=1, kind="cpu", gpus=())
    assert config.parameters == {}
    assert config.platform == "onnxruntime_onnx"
    assert config.model_filename == "model.onnx"


def test_python_backend_platform_and_filename() -> None:
    config = parse_model_config("py", {"backend": "python"})
    assert config.platform == "python"
    assert config.model_filename == "model.py"
    assert parse_model_config("py", {"backend": "python", "default_model_filename": "entry.py"}).model_filename == "entry.py"


def test_config_is_frozen() -> None:
    config = parse_model_config("m", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_batch_size = 3  # type: ignore[misc]


def test_full_config_is_parsed() -> None:
    config = parse_model_config(
        "mlp",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "default_model_filename": "net.onnx",
            "version_policy": {"specific": [1, 3]},
            "input": [_input(optional=True), {"name": "ids", "datatype": "INT64", "dims": [-1]}],
            "output": [{"name": "y", "datatype": "FP32", "dims": [4]}],
            "dynamic_batching": {"max_queue_delay_s": 0.0005, "preferred_batch_sizes": [16, 32], "max_queue_size": 1024},
            "instance_group": {"count": 2, "kind": "gpu", "gpus": [0, 1]},
            "parameters": {"intra_op_threads": 1},
        },
    )
    assert config.max_batch_size == 64
    assert config.model_filename == "net.onnx"
    assert config.version_policy == VersionPolicy(kind="specific", versions=(1, 3))
    assert config.inputs == (
        TensorConfig(name="x", datatype="FP32", dims=(4,), optional=True),
        TensorConfig(name="ids", datatype="INT64", dims=(-1,), optional=False),
    )
    assert config.outputs == (TensorConfig(name="y", datatype="FP32", dims=(4,)),)
    assert config.dynamic_batching == BatchingConfig(max_queue_delay_s=0.0005, preferred_batch_sizes=(16, 32), max_queue_size=1024)
    assert config.instance_group == InstanceGroupConfig(count=2, kind="gpu", gpus=(0, 1))
    assert config.parameters == {"intra_op_threads": 1}


def test_tensor_dims_default_to_scalar() -> None:
    config = parse_model_config("m", {"input": [{"name": "x", "datatype": "BYTES"}]})
    assert config.inputs == (TensorConfig(name="x", datatype="BYTES", dims=()),)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_protocol_datatype_is_accepted(datatype: str) -> None:
    assert parse_model_config("m", {"input": [_input(datatype=datatype)]}).inputs[0].datatype == datatype


def test_empty_dynamic_batching_table_enables_batching_with_defaults() -> None:
    config = parse_model_config("m", {"max_batch_size": 8, "dynamic_batching": {}})
    assert config.dynamic_batching == BatchingConfig(max_queue_delay_s=0.0, preferred_batch_sizes=(), max_queue_size=0)


def test_integer_queue_delay_becomes_float() -> None:
    batching = parse_model_config("m", {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_s": 1}}).dynamic_batching
    assert batching is not None
    assert batching.max_queue_delay_s == 1.0 and isinstance(batching.max_queue_delay_s, float)


def test_dynamic_batching_with_undecided_max_batch_size_is_accepted() -> None:
    # max_batch_size omitted: decided later from the model file, so batching cannot be judged yet.
    config = parse_model_config("m", {"dynamic_batching": {"preferred_batch_sizes": [1024]}})
    assert config.max_batch_size is None
    assert config.dynamic_batching == BatchingConfig(preferred_batch_sizes=(1024,))


def test_preferred_sizes_equal_to_max_batch_size_are_accepted() -> None:
    config = parse_model_config("m", {"max_batch_size": 8, "dynamic_batching": {"preferred_batch_sizes": [4, 8]}})
    assert config.dynamic_batching is not None and config.dynamic_batching.preferred_batch_sizes == (4, 8)


def test_with_signature_completes_a_copy() -> None:
    config = parse_model_config("m", {})
    inputs = (TensorConfig(name="x", datatype="FP32", dims=(4,)),)
    outputs = (TensorConfig(name="y", datatype="FP32", dims=(2,)),)
    completed = config.with_signature(inputs, outputs, 16)
    assert (completed.inputs, completed.outputs, completed.max_batch_size) == (inputs, outputs, 16)
    assert (config.inputs, config.outputs, config.max_batch_size) == ((), (), None)
    assert completed.name == "m" and completed.backend == config.backend


def test_parameters_are_copied_not_aliased() -> None:
    raw = {"parameters": {"intra_op_threads": 2}}
    config = parse_model_config("m", raw)
    raw["parameters"]["intra_op_threads"] = 9
    assert config.parameters == {"intra_op_threads": 2}


# --- errors name the key path ----------------------------------------------------------------------------


def test_config_error_is_a_value_error_and_server_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, InferenceServerError)


@pytest.mark.parametrize(
    ("data", "path", "hint"),
    [
        ({"backend": "tensorflow"}, "backend:", "expected one of onnxruntime, python, tensorrt, torch; got 'tensorflow'"),
        ({"max_batch_size": -1}, "max_batch_size:", "expected an integer from 0 to "),
        ({"max_batch_size": True}, "max_batch_size:", "expected an integer from 0 to "),
        ({"max_batch_size": 4.0}, "max_batch_size:", "expected an integer from 0 to "),
        ({"max_batch_size": "8"}, "max_batch_size:", "expected an integer from 0 to "),
        ({"default_model_filename": 5}, "default_model_filename:", "expected a string, got 5"),
        ({"input": [_input(datatype="FLOAT")]}, "input[0].datatype:", "expected one of BF16, BOOL, BYTES, FP16, FP32"),
        ({"input": [_input(), _input(name="z", datatype="fp32")]}, "input[1].datatype:", "got 'fp32'"),
        ({"input": [{"datatype": "FP32"}]}, "input[0].name:", "required"),
        ({"input": [_input(name="")]}, "input[0].name:", "expected a non-empty string, got ''"),
        ({"input": [_input(name=3)]}, "input[0].name:", "expected a non-empty string, got 3"),
        ({"input": [{"name": "x"}]}, "input[0].datatype:", "required"),
        ({"input": [_input(dims=[4, -2])]}, "input[0].dims:", "expected a list of integers from -1 to"),
        ({"input": [_input(dims=4)]}, "input[0].dims:", "expected a list of integers from -1 to"),
        ({"input": [_input(dims=[True])]}, "input[0].dims:", "expected a list of integers from -1 to"),
        ({"input": [_input(dims=[4, 0])]}, "input[0].dims:", "a dimension may not be 0 (use -1 for a variable one), got [4, 0]"),
        ({"input": [_input(optional="yes")]}, "input[0].optional:", "expected true or false, got 'yes'"),
        ({"input": [_input(), 7]}, "input[1]:", "expected a table, got int"),
        ({"input": {"name": "x"}}, "input:", "expected an array of tables ([[input]]), got dict"),
        ({"output": [{"name": "y", "datatype": "FP32", "dims": [1.5]}]}, "output[0].dims:", "expected a list of integers from -1 to"),
        ({"output": [{"name": "y", "datatype": "STRING"}]}, "output[0].datatype:", "got 'STRING'"),
        ({"version_policy": 3}, "version_policy:", "expected a table, got int"),
        ({"version_policy": {"latest": 0}}, "version_policy.latest:", "expected an integer from 1 to "),
        ({"version_policy": {"specific": [0, 2]}}, "version_policy.specific:", "expected a list of integers from 1 to"),
        ({"version_policy": {"specific": []}}, "version_policy.specific:", "list at least one version"),
        ({"version_policy": {"all": False}}, "version_policy.all:", "must be true"),
        ({"version_policy": {"all": 1}}, "version_policy.all:", "expected true or false, got 1"),
        ({"version_policy": {"latest": 1, "all": True}}, "version_policy:", "give one of latest, all, specific; got ['latest', 'all']"),
        ({"dynamic_batching": []}, "dynamic_batching:", "expected a table, got list"),
        ({"dynamic_batching": {"max_queue_delay_s": -0.1}}, "dynamic_batching.max_queue_delay_s:", "expected a number from 0 to"),
        ({"dynamic_batching": {"max_queue_delay_s": float("nan")}}, "dynamic_batching.max_queue_delay_s:", "got nan"),
        ({"dynamic_batching": {"max_queue_delay_s": float("inf")}}, "dynamic_batching.max_queue_delay_s:", "got inf"),
        ({"dynamic_batching": {"max_queue_delay_s": True}}, "dynamic_batching.max_queue_delay_s:", "got True"),
        ({"dynamic_batching": {"max_queue_delay_s": "1ms"}}, "dynamic_batching.max_queue_delay_s:", "got '1ms'"),
        ({"dynamic_batching": {"preferred_batch_sizes": [0]}}, "dynamic_batching.preferred_batch_sizes:", "expected a list of integers from 1 to"),
        ({"dynamic_batching": {"max_queue_size": -1}}, "dynamic_batching.max_queue_size:", "expected an integer from 0 to "),
        ({"instance_group": {"count": 0}}, "instance_group.count:", "expected an integer from 1 to "),
        ({"instance_group": {"kind": "tpu"}}, "instance_group.kind:", "expected one of auto, cpu, gpu; got 'tpu'"),
        ({"instance_group": {"gpus": [-1]}}, "instance_group.gpus:", "expected a list of integers from 0 to"),
        ({"instance_group": [{"count": 2}]}, "instance_group:", "expected a table, got list"),
        ({"parameters": 3}, "parameters:", "expected a table, got int"),
    ],
)
def test_error_names_key_path_and_what_is_valid(data: dict[str, Any], path: str, hint: str) -> None:
    message = _error(data)
    assert message.startswith(path), message
    assert hint in message, message


def test_top_level_that_is_not_a_table_is_rejected() -> None:
    assert _error([1, 2]).startswith("config: expected a table, got list")


def test_duplicate_input_names_rejected() -> None:
    message = _error({"input": [_input(), _input(datatype="INT64")]})
    assert message == "input: tensor names must be unique, got ['x', 'x']"


def test_duplicate_output_names_rejected() -> None:
    message = _error({"output": [{"name": "y", "datatype": "FP32"}, {"name": "y", "datatype": "FP32"}]})
    assert message.startswith("output: tensor names must be unique")


def test_same_name_for_an_input_and_an_output_is_allowed() -> None:
    config = parse_model_config("m", {"input": [_input(name="t")], "output": [{"name": "t", "datatype": "FP32"}]})
    assert config.inputs[0].name == config.outputs[0].name == "t"


# --- unknown keys ----------------------------------------------------------------------------------------


def _valid_keys(message: str) -> list[str]:
    match = re.search(r"valid keys: (.*)$", message)
    assert match, message
    return [k for k in match.group(1).split(", ") if k]


def test_unknown_top_level_key_rejected() -> None:
    message = _error({"max_batch_size": 4, "max_batchsize": 8})
    assert message.startswith("top level: unknown key(s) max_batchsize; valid keys: ")
    assert set(_valid_keys(message)) <= set(TOP_LEVEL_KEYS)
    assert {"backend", "max_batch_size", "input", "output", "dynamic_batching"} <= set(_valid_keys(message))


def test_several_unknown_keys_are_all_listed_sorted() -> None:
    assert _error({"zeta": 1, "alpha": 2}).startswith("top level: unknown key(s) alpha, zeta; valid keys: ")


def test_unknown_top_level_key_lists_every_valid_key() -> None:
    assert _valid_keys(_error({"max_batchsize": 8})) == TOP_LEVEL_KEYS


def test_unknown_top_level_key_reported_with_parameters_present() -> None:
    assert _valid_keys(_error({"max_batchsize": 8, "parameters": {}})) == TOP_LEVEL_KEYS


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"input": [_input(shape=[4])]}, "input[0]: unknown key(s) shape; valid keys: datatype, dims, name, optional"),
        (
            {"input": [_input(), _input(name="z", data_type="FP32")]},
            "input[1]: unknown key(s) data_type; valid keys: datatype, dims, name, optional",
        ),
        ({"output": [{"name": "y", "datatype": "FP32", "optional": True}]}, "output[0]: unknown key(s) optional; valid keys: datatype, dims, label_filename, name"),
        (
            {"dynamic_batching": {"max_queue_delay_microseconds": 100}},
            "dynamic_batching: unknown key(s) max_queue_delay_microseconds; valid keys: default_priority_level, default_timeout_s, "
            "latency_slo_s, max_queue_delay_s, max_queue_size, preferred_batch_sizes, priority_levels, priority_queue_policy",
        ),
        ({"instance_group": {"count": 1, "gpu": [0]}}, "instance_group: unknown key(s) gpu; valid keys: count, gpus, kind"),
    ],
)
def test_unknown_nested_key_rejected_with_valid_keys(data: dict[str, Any], expected: str) -> None:
    assert _error(data) == expected


@pytest.mark.parametrize("table", [{"newest": 2}, {"latest": 2, "newest": 2}])
def test_unknown_version_policy_key_lists_every_valid_key(table: dict[str, Any]) -> None:
    message = _error({"version_policy": table})
    assert message.startswith("version_policy: unknown key(s) newest; valid keys: ")
    assert _valid_keys(message) == ["all", "latest", "specific"]


@pytest.mark.parametrize("table", [{"newest": 2}, {"latest": 2, "newest": 2}])
def test_unknown_version_policy_key_rejected(table: dict[str, Any]) -> None:
    assert _error({"version_policy": table}).startswith("version_policy: unknown key(s) newest")


def test_parameters_are_free_form() -> None:
    config = parse_model_config("m", {"parameters": {"anything": "goes", "nested": {"a": [1]}}})
    assert config.parameters == {"anything": "goes", "nested": {"a": [1]}}


# --- version policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "policy"),
    [
        ({}, VersionPolicy(kind="latest", num_versions=1)),
        ({"latest": 2}, VersionPolicy(kind="latest", num_versions=2)),
        ({"all": True}, VersionPolicy(kind="all")),
        ({"specific": [3, 1]}, VersionPolicy(kind="specific", versions=(3, 1))),
    ],
)
def test_version_policy_parsed(table: dict[str, Any], policy: VersionPolicy) -> None:
    assert parse_model_config("m", {"version_policy": table}).version_policy == policy


@pytest.mark.parametrize(
    ("policy", "available", "selected"),
    [
        (VersionPolicy(), [1, 2, 3], [3]),
        (VersionPolicy(), [10, 9, 2], [10]),
        (VersionPolicy(kind="latest", num_versions=2), [3, 1, 2], [2, 3]),
        (VersionPolicy(kind="latest", num_versions=5), [2, 1], [1, 2]),
        (VersionPolicy(kind="latest", num_versions=1), [], []),
        (VersionPolicy(kind="all"), [3, 1, 2], [1, 2, 3]),
        (VersionPolicy(kind="all"), [], []),
        (VersionPolicy(kind="specific", versions=(1, 3)), [1, 2, 3, 4], [1, 3]),
        (VersionPolicy(kind="specific", versions=(3, 1)), [4, 3, 2, 1], [1, 3]),
        (VersionPolicy(kind="specific", versions=(1, 7)), [1, 2], [1]),
        (VersionPolicy(kind="specific", versions=(7,)), [1, 2], []),
    ],
)
def test_version_policy_select(policy: VersionPolicy, available: list[int], selected: list[int]) -> None:
    assert policy.select(available) == selected


def test_select_does_not_mutate_its_argument() -> None:
    available = [3, 1, 2]
    VersionPolicy(kind="all").select(available)
    assert available == [3, 1, 2]


# --- dynamic batching ------------------------------------------------------------------------------------


def test_dynamic_batching_without_a_batch_dimension_rejected() -> None:
    message = _error({"max_batch_size": 0, "dynamic_batching": {"max_queue_delay_s": 0.001}})
    assert message == "dynamic_batching: needs a batch dimension, but max_batch_size = 0"


def test_empty_dynamic_batching_without_a_batch_dimension_rejected() -> None:
    assert _error({"max_batch_size": 0, "dynamic_batching": {}}).startswith("dynamic_batching: needs a batch dimension")


def test_max_batch_size_zero_without_batching_is_fine() -> None:
    config = parse_model_config("m", {"max_batch_size": 0})
    assert config.max_batch_size == 0 and config.dynamic_batching is None


def test_preferred_batch_size_above_max_batch_size_rejected() -> None:
    message = _error({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_sizes": [4, 16]}})
    assert message == "dynamic_batching.preferred_batch_sizes: [4, 16] exceeds max_batch_size = 8"


# --- load_model_config -----------------------------------------------------------------------------------


def _model_dir(root: Path, name: str = "mlp", toml: str | bytes | None = None, files: dict[str, str] | None = None) -> Path:
    model_dir = root / name
    model_dir.mkdir()
    if toml is not None:
        path = model_dir / "config.toml"
        path.write_bytes(toml if isinstance(toml, bytes) else toml.encode("utf-8"))
    for rel, text in (files or {}).items():
        (model_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / rel).write_text(text)
    return model_dir


_TOML = """
max_batch_size = 64

[version_policy]
latest = 2

[[input]]
name = "x"
datatype = "FP32"
dims = [16]

[[output]]
name = "probabilities"
datatype = "FP32"
dims = [4]

[dynamic_batching]
max_queue_delay_s = 0.0005
preferred_batch_sizes = [16, 32]

[instance_group]
count = 2

[parameters]
intra_op_threads = 1
"""


def test_load_reads_config_toml(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, toml=_TOML, files={"1/model.onnx": ""}))
    assert config.name == "mlp"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 64
    assert config.version_policy == VersionPolicy(kind="latest", num_versions=2)
    assert config.inputs == (TensorConfig(name="x", datatype="FP32", dims=(16,)),)
    assert config.outputs == (TensorConfig(name="probabilities", datatype="FP32", dims=(4,)),)
    assert config.dynamic_batching == BatchingConfig(max_queue_delay_s=0.0005, preferred_batch_sizes=(16, 32))
    assert config.instance_group == InstanceGroupConfig(count=2)
    assert config.parameters == {"intra_op_threads": 1}


def test_load_without_config_toml_gives_defaults(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, "plain", files={"1/model.onnx": ""}))
    assert config == ModelConfig(name="plain", backend="onnxruntime")


def test_load_of_a_missing_folder_gives_defaults(tmp_path: Path) -> None:
    assert load_model_config(tmp_path / "absent") == ModelConfig(name="absent")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_config(_model_dir(tmp_path, toml="max_batch_size = = 3\n"))
    assert str(info.value).startswith("mlp/config.toml: not valid TOML: ")


def test_non_utf8_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_config(_model_dir(tmp_path, toml=b'default_model_filename = "\xff\xfe"\n'))
    assert str(info.value).startswith("mlp/config.toml: not valid TOML: ")


def test_invalid_value_names_the_file_and_key_path(tmp_path: Path) -> None:
    toml = '[[input]]\nname = "x"\ndatatype = "FP32"\n\n[[input]]\nname = "y"\ndatatype = "FLOAT"\n'
    with pytest.raises(ConfigError) as info:
        load_model_config(_model_dir(tmp_path, toml=toml))
    assert str(info.value).startswith("mlp/config.toml: input[1].datatype: expected one of ")


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_config(_model_dir(tmp_path, toml="[instance_group]\ncounts = 2\n"))
    assert str(info.value) == "mlp/config.toml: instance_group: unknown key(s) counts; valid keys: count, gpus, kind"


def test_backend_guessed_python_from_model_py(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, files={"1/model.py": "x = 1\n"}))
    assert config.backend == "python"
    assert config.model_filename == "model.py"


def test_backend_guessed_python_with_a_config_that_omits_backend(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, toml="max_batch_size = 4\n", files={"3/model.py": ""}))
    assert (config.backend, config.max_batch_size) == ("python", 4)


def test_backend_guessed_tensorrt_from_model_plan(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, files={"1/model.plan": ""}))
    assert (config.backend, config.model_filename, config.platform) == ("tensorrt", "model.plan", "tensorrt_plan")


def test_backend_guessed_onnxruntime_otherwise(tmp_path: Path) -> None:
    assert load_model_config(_model_dir(tmp_path, "a", files={"1/model.onnx": ""})).backend == "onnxruntime"
    # model.py outside a numbered version folder does not count
    assert load_model_config(_model_dir(tmp_path, "b", files={"model.py": "", "src/model.py": ""})).backend == "onnxruntime"


def test_explicit_backend_wins_over_the_guess(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, toml='backend = "onnxruntime"\n', files={"1/model.py": ""}))
    assert config.backend == "onnxruntime"


def test_overrides_replace_top_level_keys(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path, toml=_TOML, files={"1/model.onnx": ""})
    config = load_model_config(model_dir, {"max_batch_size": 32, "instance_group": {"kind": "auto"}})
    assert config.max_batch_size == 32
    # the whole [instance_group] table is replaced, not merged: count falls back to its default
    assert config.instance_group == InstanceGroupConfig(count=1, kind="auto")
    # keys not overridden keep the file's values
    assert config.version_policy == VersionPolicy(kind="latest", num_versions=2)
    assert config.dynamic_batching == BatchingConfig(max_queue_delay_s=0.0005, preferred_batch_sizes=(16, 32))


def test_overrides_without_a_config_file(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, files={"1/model.onnx": ""}), {"max_batch_size": 8})
    assert config.max_batch_size == 8


def test_override_of_backend_wins_over_the_guess(tmp_path: Path) -> None:
    config = load_model_config(_model_dir(tmp_path, files={"1/model.onnx": ""}), {"backend": "python"})
    assert config.backend == "python"


def test_overrides_are_validated(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path, toml=_TOML, files={"1/model.onnx": ""})
    with pytest.raises(ConfigError) as info:
        load_model_config(model_dir, {"max_batch_size": 16})  # preferred size 32 now exceeds it
    assert str(info.value) == "mlp/config.toml with the load request's config: dynamic_batching.preferred_batch_sizes: [16, 32] exceeds max_batch_size = 16"


def test_overrides_do_not_mutate_the_caller_mapping(tmp_path: Path) -> None:
    overrides = {"max_batch_size": 32}
    load_model_config(_model_dir(tmp_path, toml=_TOML, files={"1/model.onnx": ""}), overrides)
    assert overrides == {"max_batch_size": 32}


_LABELLED = '[[output]]\nname = "probabilities"\ndatatype = "FP32"\ndims = [4]\nlabel_filename = "{}"\n'


def test_output_label_file_is_read_at_load(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path, toml=_LABELLED.format("labels.txt"), files={"labels.txt": "cat\r\ndog\n\nemu\n"})
    (output,) = load_model_config(model_dir).outputs
    assert output.label_filename == "labels.txt"
    assert output.labels[:4] == ("cat", "dog", "", "emu")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("missing.txt", "'missing.txt' does not exist in the model folder"),
        ("../outside.txt", "must name a file inside the model folder"),
        (".", "must name a file inside the model folder"),
    ],
)
def test_label_file_errors_name_the_key(tmp_path: Path, name: str, fragment: str) -> None:
    (tmp_path / "outside.txt").write_text("secret\n")
    with pytest.raises(ConfigError) as info:
        load_model_config(_model_dir(tmp_path, toml=_LABELLED.format(name)))
    assert str(info.value).startswith("mlp/config.toml: output[0].label_filename: ") and fragment in str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_label_filename_is_for_outputs_only() -> None:
    with pytest.raises(ConfigError, match="unknown key.*label_filename"):
        parse_model_config("m", {"input": [{"name": "x", "datatype": "FP32", "label_filename": "l.txt"}]})


def test_label_filename_round_trips_through_tritons_model_config(tmp_path: Path) -> None:
    """RepositoryModelLoad's config JSON (Triton's ModelConfig) may name a label file; ModelConfig reports it."""
    import json

    from surge.server.edge.triton import config_overrides_from_json, model_config_message

    triton_json = json.dumps({"output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "labels.txt"}]})
    overrides = config_overrides_from_json("mlp", triton_json)
    model_dir = _model_dir(tmp_path, files={"labels.txt": "a\nb\n"})
    config = load_model_config(model_dir, overrides)
    assert config.outputs[0].labels[:2] == ("a", "b")
    assert model_config_message(config).output[0].label_filename == "labels.txt"

@pytest.mark.parametrize(
    ("data", "key", "bound"),
    [
        ({"instance_group": {"count": config_module.MAX_INSTANCES + 1}}, "instance_group.count:", f"to {config_module.MAX_INSTANCES} (4 per core"),
        ({"parameters": {"intra_op_threads": 10000}}, "parameters.intra_op_threads:", f"to {config_module.MAX_THREADS} (4 per core"),
        ({"parameters": {"inter_op_threads": -1}}, "parameters.inter_op_threads:", f"from 0 to {config_module.MAX_THREADS}"),
        ({"dynamic_batching": {"max_queue_delay_s": 2.0**62 / 1e6}}, "dynamic_batching.max_queue_delay_s:", "from 0 to 10 (seconds)"),
        ({"dynamic_batching": {"latency_slo_s": 11.0}}, "dynamic_batching.latency_slo_s:", "from 0 to 10 (seconds)"),
        ({"dynamic_batching": {"default_timeout_s": 1e9}}, "dynamic_batching.default_timeout_s:", "from 0 to 3600 (seconds)"),
        ({"dynamic_batching": {"max_queue_size": 10**9}}, "dynamic_batching.max_queue_size:", f"from 0 to {config_module.MAX_QUEUE_SIZE}"),
        ({"dynamic_batching": {"priority_levels": 10**6}}, "dynamic_batching.priority_levels:", "from 1 to 64"),
        ({"dynamic_batching": {"priority_queue_policy": {"1": {"max_queue_size": 10**9}}}},
         "dynamic_batching.priority_queue_policy.1.max_queue_size:", f"to {config_module.MAX_QUEUE_SIZE}"),
        ({"max_batch_size": 2**40}, "max_batch_size:", f"from 0 to {config_module.MAX_BATCH_SIZE}"),
        ({"execution_timeout_s": 1e12}, "execution_timeout_s:", "from 0 to 3600 (seconds)"),
        ({"max_batch_size": 4096, "input": [{"name": "x", "datatype": "FP32", "dims": [1 << 17]}]}, "input[0].dims:", f"at most {config_module.MAX_BATCH_ELEMENTS}"),
        ({"drift": {"window_rows": 10**12}}, "drift.window_rows:", "from 10 to"),
        ({"routing": {"shadow": {"max_queue": 10**9}}}, "routing.shadow.max_queue:", f"to {config_module.MAX_QUEUE_SIZE}"),
        ({"feedback": {"max_requests": 10**12}}, "feedback.max_requests:", "from 1 to"),
    ],
)
def test_every_numeric_knob_has_a_bound_named_in_the_error(data: dict[str, Any], key: str, bound: str) -> None:
    message = _error(data)
    assert message.startswith(key) and bound in message, message


def test_bounds_scale_with_the_cores_within_a_ceiling() -> None:
    assert config_module.MAX_INSTANCES == min(256, 4 * config_module.CORES) >= 4
    config = parse_model_config("m", {"instance_group": {"count": config_module.MAX_INSTANCES}, "parameters": {"intra_op_threads": config_module.MAX_THREADS}})
    assert config.instance_group.count == config_module.MAX_INSTANCES and config.parameters["intra_op_threads"] == config_module.MAX_THREADS

# --- python model process limits --------------------------------------------------------------------------


def test_python_models_get_a_default_execution_timeout_and_others_none() -> None:
    assert parse_model_config("py", {"backend": "python"}).execution_timeout_s == PYTHON_EXECUTION_TIMEOUT_S > 0
    assert parse_model_config("py", {"backend": "python", "execution_timeout_s": 0}).execution_timeout_s == 0.0  # explicitly none
    assert parse_model_config("m", {}).execution_timeout_s == 0.0
    assert parse_model_config("py", {"backend": "python"}).max_memory_bytes == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"execution_timeout_s": -1}, "execution_timeout_s: expected a number from 0 to 3600 (seconds), got -1"),
        ({"execution_timeout_s": 1e9}, "execution_timeout_s: expected a number from 0 to 3600 (seconds), got 1000000000.0"),
        ({"max_memory_bytes": 1 << 20}, "max_memory_bytes: expected 0 (no limit) or 67108864 (64 MiB) to this machine's memory"),
        ({"max_memory_bytes": 1 << 60}, "got 1152921504606846976"),
        ({"max_memory_bytes": 1.5e9}, "max_memory_bytes: expected an integer from 0 to"),
        ({"max_memory_bytes": -5}, "(this machine's memory), got -5"),
    ],
)
def test_python_process_limits_out_of_bounds_are_rejected(data: dict[str, Any], expected: str) -> None:
    assert expected in _error({"backend": "python", **data})


def test_max_memory_bytes_is_for_python_models_only() -> None:
    assert "max_memory_bytes: only python models run in a process of their own; backend is 'onnxruntime'" in _error({"max_memory_bytes": 1 << 30})
    assert parse_model_config("py", {"backend": "python", "max_memory_bytes": 1 << 30}).max_memory_bytes == 1 << 30
