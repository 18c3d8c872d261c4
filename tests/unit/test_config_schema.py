"""The config schema: one set of rules for config.toml, a load request's config and pipeline steps, published."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from surge.server.config import MAX_INSTANCES, load_model_config, parse_model_config
from surge.server.config_schema import json_schema, reference_table
from surge.server.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "pages" / "configuration.md"


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_model_config("m", data)
    return str(info.value)


def test_readme_reference_is_the_schema() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    match = re.search(r"<!-- config-reference:[^\n]*-->\n(.*?)<!-- /config-reference -->", text, re.S)
    assert match is not None, "docs/pages/configuration.md lost its config-reference markers"
    assert match[1] == reference_table(), "docs/pages/configuration.md's config.toml reference differs: paste `python -m surge.server.config_schema` between the markers"


def test_cli_prints_a_json_schema_that_checks_config_toml() -> None:
    out = subprocess.run([sys.executable, "-m", "surge.server.cli", "config-schema"], capture_output=True, text=True, timeout=60, check=True).stdout
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_s": 0.001}, "instance_group": {"count": 1},
            "input": [{"name": "x", "datatype": "FP32", "dims": [4]}],
            "preprocess": [{"op": "standardize", "input": "x", "mean": [0.0] * 4, "std": [1.0] * 4}]}
    assert list(validator.iter_errors(good)) == []
    parse_model_config("m", good)  # the server accepts what the schema accepts
    for bad in ({"instance_group": {"count": MAX_INSTANCES + 1}}, {"dynamic_batching": {"max_queue_delay": 1}},
                {"preprocess": [{"op": "sharpen", "input": "x"}]}, {"input": [{"name": "x", "datatype": "FP33"}]}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(ConfigError):
            parse_model_config("m", bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"routing": {"shadow": {"rtol": math.nan}}}, "routing.shadow.rtol: expected a finite number >= 0, got nan"),
        ({"drift": {"psi_alert": math.inf}}, "drift.psi_alert: expected a finite number >= 0, got inf"),
        ({"preprocess": [{"op": "standardize", "input": "x", "mean": [0.0, math.nan], "std": 1}]},
         "preprocess[0].mean: expected a finite number or a list of finite numbers, got [0.0, nan]"),
        ({"postprocess": [{"op": "threshold", "input": "y", "value": math.nan}]}, "postprocess[0].value: expected a finite number, got nan"),
        ({"postprocess": [{"op": "topk", "input": "y", "k": 3, "colour": 1}]},
         "postprocess[0]: unknown key(s) colour; valid keys: input, k, output, values_output"),
        ({"postprocess": [{"op": "topk", "input": "y"}]}, "postprocess[0].k: required"),
        ({"preprocess": [{"op": "hash_bucket", "input": "x", "num_buckets": 0}]}, "preprocess[0].num_buckets: expected an integer from 1 to"),
        ({"dynamic_batching": {"priority_queue_policy": {"one": {}}}}, "dynamic_batching.priority_queue_policy.one: keys are whole numbers"),
        ({"dynamic_batching": {"priority_levels": 2, "priority_queue_policy": {"2": {"max_queue_size": -1}}}},
         "dynamic_batching.priority_queue_policy.2.max_queue_size: expected an integer from 0 to 65536, got -1"),
    ],
)
def test_numbers_are_finite_and_steps_are_checked_by_the_schema(data: dict, message: str) -> None:
    assert message in _error(data)


def test_a_load_request_config_meets_the_same_schema(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "config.toml").write_text('backend = "python"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_model_config(tmp_path, {"postprocess": [{"op": "threshold", "input": "y", "value": math.nan}]})
    assert str(info.value) == f"{tmp_path.name}/config.toml with the load request's config: postprocess[0].value: expected a finite number, got nan"
