"""config.py's [routing] and [feedback] tables: values, defaults, and errors that name the key path."""

from __future__ import annotations

import tomllib

import pytest

from surge.server.config import ConfigError, FeedbackConfig, RoutingConfig, ShadowConfig, parse_model_config


def _parse(text: str):
    return parse_model_config("m", tomllib.loads(text))


def test_routing_and_feedback_tables() -> None:
    config = _parse("""
[routing]
weights = { 1 = 90, 2 = 10, 3 = 0 }
[routing.shadow]
version = 3
fraction = 0.25
max_concurrency = 2
max_queue = 8
rtol = 0.001
atol = 0.0
log_path = "shadow.jsonl"
log_max_bytes = 1000
log_sample_rate = 0.5
log_inputs = true
[feedback]
output = "probabilities"
max_requests = 10
""")
    assert config.routing == RoutingConfig(
        weights=((1, 90.0), (2, 10.0)),  # a zero weight is no weight
        shadow=ShadowConfig(version=3, fraction=0.25, max_concurrency=2, max_queue=8, rtol=0.001, atol=0.0, log_path="shadow.jsonl",
                            log_max_bytes=1000, log_sample_rate=0.5, log_inputs=True),
    )
    assert config.feedback == FeedbackConfig(output="probabilities", max_requests=10)


def test_absent_tables_and_defaults() -> None:
    assert _parse("").routing is None and _parse("").feedback is None
    config = _parse("[routing]\n[feedback]\n")
    assert config.routing == RoutingConfig() and config.routing.shadow.version == 0
    assert config.feedback == FeedbackConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[routing.weights]\nv1 = 1\n", "routing.weights.v1: keys are whole numbers"),
        ("[routing.weights]\n1 = -1\n", "routing.weights.1: expected a finite number >= 0, got -1"),
        ("[routing.weights]\n1 = 0\n", "routing.weights: at least one version needs a weight > 0"),
        ("[routing]\nweight = 1\n", "routing: unknown key(s) weight"),
        ("[routing.shadow]\nfraction = 0\n", "routing.shadow.fraction: expected a fraction 0 < f <= 1"),
        ("[routing.shadow]\nfraction = 2\n", "routing.shadow.fraction"),
        ("[routing.shadow]\nmax_concurrency = 0\n", "routing.shadow.max_concurrency: expected an integer from 1 to"),
        ("[routing.shadow]\nlog_sample_rate = 1.5\n", "routing.shadow.log_sample_rate"),
        ("[routing.shadow]\nlog_inputs = 1\n", "routing.shadow.log_inputs: expected true or false"),
        ("[feedback]\nmax_requests = 0\n", "feedback.max_requests: expected an integer from 1 to"),
        ("[feedback]\noutputs = 'y'\n", "feedback: unknown key(s) outputs"),
    ],
)
def test_errors_name_the_key_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert message in str(info.value)
