"""surge.clients.loadgen's pure parts: SLO parsing and evaluation, scenarios, serialised plans, arrival schedules,
load sharing between processes, the response prefix scan. The runs against a server are in
tests/integration/test_loadgen.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.clients.loadgen.engine import Load, arrival_gaps, served_version
from surge.clients.loadgen.results import SloError, evaluate_slo, parse_slo
from surge.clients.loadgen.scenario import MIX_LENGTH, ScenarioError, build_plan, load_scenario
from surge.protos import grpc_service_pb2 as pb


def level(p99: float, errors: int = 0, ok: int = 1000, infer: float = 500.0) -> dict:
    return {"load": {"mode": "closed", "concurrency": 8, "rate": None}, "errors": {"UNAVAILABLE": errors} if errors else {},
            "error_rate": errors / (ok + errors), "infer_per_s": infer, "rows_per_s": 2 * infer,
            "latency_ms": {"min": 0.1, "mean": p99 / 2, "p50": p99 / 3, "p90": p99 / 2, "p99": p99, "p99.9": p99 * 2, "max": p99 * 3}}  # fmt: skip


def test_slo_parses_units_and_metrics() -> None:
    checks = parse_slo("p99<20ms, p99.9 <= 50000us, max<1s, errors<0.1%, errors<=3, infer/s>=400, rows/s>10, throughput>1")
    assert [(c.metric, c.op, c.threshold) for c in checks] == [
        ("p99", "<", 20.0), ("p99.9", "<=", 50.0), ("max", "<", 1000.0), ("error_rate", "<", 0.001), ("errors", "<=", 3.0),
        ("infer/s", ">=", 400.0), ("rows/s", ">", 10.0), ("infer/s", ">", 1.0),
    ]  # fmt: skip
    assert parse_slo("p50<2")[0].threshold == 2.0  # milliseconds by default


@pytest.mark.parametrize("text", ["", "p99", "p98<3ms", "p99<3h", "errors<1ms", "p99=3ms", "p99<abc", "infer/s>3ms"])
def test_slo_rejects_bad_text(text: str) -> None:
    with pytest.raises(SloError):
        parse_slo(text)


def test_slo_evaluates_every_level() -> None:
    checks = parse_slo("p99<20ms,errors<0.1%")
    assert evaluate_slo(checks, [level(10.0), level(19.9)])["passed"]
    result = evaluate_slo(checks, [level(10.0), level(25.0)])
    assert not result["passed"]
    assert [c["passed"] for c in result["checks"]] == [True, True, False, True]
    assert not evaluate_slo(checks, [level(10.0, errors=2, ok=998)])["passed"]  # 0.2% errors
    assert evaluate_slo(parse_slo("errors<=2"), [level(10.0, errors=2)])["passed"]
    assert not evaluate_slo(parse_slo("infer/s>600"), [level(10.0)])["passed"]
    empty = level(10.0)
    empty["latency_ms"] = dict.fromkeys(empty["latency_ms"])  # no successful request: a latency SLO fails
    assert not evaluate_slo(parse_slo("p99<1s"), [empty])["passed"]


def test_poisson_and_constant_gaps() -> None:
    rng = np.random.default_rng(1)
    gaps = arrival_gaps(500.0, "poisson", rng, 200_000)
    assert abs(gaps.mean() - 1 / 500) / (1 / 500) < 0.01
    assert abs(gaps.std() - 1 / 500) / (1 / 500) < 0.02  # exponential: sd == mean
    assert np.all(arrival_gaps(250.0, "constant", rng, 10) == 1 / 250)
    with pytest.raises(ValueError):
        arrival_gaps(1.0, "bursty", rng, 1)


def test_load_shares_add_up() -> None:
    closed = Load(concurrency=10, requests=101, connections=4, seed=3)
    parts = [closed.share(i, 3) for i in range(3)]
    assert [p.concurrency for p in parts] == [4, 3, 3]
    assert sum(p.requests for p in parts) == 101
    assert len({p.seed for p in parts}) == 3
    opened = Load(rate=300.0, arrival="constant", connections=2)
    parts = [opened.share(i, 3) for i in range(3)]
    assert [p.rate for p in parts] == [100.0, 100.0, 100.0]
    assert [p.phase_s for p in parts] == [0.0, 1 / 300, 2 / 300]  # interleaved: together a constant 300/s
    assert all(p.connections >= 1 for p in parts)
    assert Load(rate=300.0).share(2, 3).phase_s == 0.0  # Poisson processes add up to a Poisson process


@pytest.mark.parametrize("name, version", [("mlp", "1"), ("mlp", ""), ("", "7"), ("m" * 200, "12"), ("mlp", "v" * 300)])
def test_served_version_matches_a_full_parse(name: str, version: str) -> None:
    response = pb.ModelInferResponse(model_name=name, model_version=version, id="abc")
    response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(b"\x00" * 8)
    assert served_version(response.SerializeToString()) == version
    assert served_version(pb.ModelInferResponse(model_version=version).SerializeToString()) == version


def metadata(name: str, inputs: list[tuple[str, str, list[int]]]) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse(name=name, versions=["1"])
    for tensor, datatype, shape in inputs:
        meta.inputs.add(name=tensor, datatype=datatype, shape=shape)
    return meta


SCENARIO = """
seed = 5
variants = 3

[[request]]
model = "mlp"
weight = 3
rows = 4
deadline_ms = 50
routing_keys = ["user-1", "user-2", "user-3", "user-4"]
parameters = { priority = 1 }
outputs = ["y"]

[request.inputs.x]
shape = [16]

[[request]]
model = "versioned"
version = "2"
routing_keys = 2

[request.inputs.x]
npy = "rows.npy"
"""


def test_scenario_file_becomes_serialised_requests(tmp_path: Path) -> None:
    rows = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
    np.save(tmp_path / "rows.npy", rows)
    (tmp_path / "s.toml").write_text(SCENARIO)
    scenario = load_scenario(tmp_path / "s.toml")
    assert scenario.seed == 5 and scenario.variants == 3 and len(scenario.requests) == 2
    meta = {"mlp": metadata("mlp", [("x", "FP32", [-1, -1])]), "versioned": metadata("versioned", [("x", "FP32", [-1, 4])])}
    plan = build_plan(scenario, meta)
    mlp, versioned = plan.kinds
    assert (mlp.model, mlp.rows, mlp.timeout_s) == ("mlp", 4, 0.05)
    assert len(mlp.payloads) == 4  # max(variants, routing keys)
    keys = []
    for raw in mlp.payloads:
        request = pb.ModelInferRequest.FromString(raw)
        assert list(request.inputs[0].shape) == [4, 16] and request.inputs[0].datatype == "FP32"
        assert len(request.raw_input_contents[0]) == 4 * 16 * 4
        assert request.parameters["priority"].int64_param == 1 and [o.name for o in request.outputs] == ["y"]
        keys.append(request.parameters["routing_key"].string_param)
    assert keys == ["user-1", "user-2", "user-3", "user-4"]
    # the .npy gives 12 one-row requests, in order; routing_keys = 2 means key-0, key-1
    assert versioned.rows == 1 and len(versioned.payloads) == 12
    for i, raw in enumerate(versioned.payloads):
        request = pb.ModelInferRequest.FromString(raw)
        assert request.model_version == "2" and request.parameters["routing_key"].string_param == f"key-{i % 2}"
        assert np.array_equal(np.frombuffer(request.raw_input_contents[0], np.float32).reshape(1, 4), rows[i : i + 1])
    assert len(plan.mix) == MIX_LENGTH
    share = plan.mix.count(0) / MIX_LENGTH
    assert abs(share - 0.75) < 0.03  # weights 3:1


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[request]]\nmodel = 'm'\nwieght = 2\n", "unknown key(s) ['wieght']"),
        ("[[request]]\nweight = 2\n", "request[0].model"),
        ("[[request]]\nmodel = 'm'\nrows = 0\n", "request[0].rows"),
        ("[[request]]\nmodel = 'm'\ndeadline_ms = -1\n", "deadline_ms"),
        ("[[request]]\nmodel = 'm'\n[request.inputs.x]\nshape = 'x'\n", "request[0].inputs.x.shape"),
        ("[[request]]\nmodel = 'm'\n[request.inputs.x]\ndatatype = 'FP33'\n", "FP33"),
        ("requests = 1\n", "unknown top-level"),
        ("seed = 1\n", "at least one [[request]]"),
        ("[[request]\n", "s.toml"),
    ],
)
def test_scenario_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        load_scenario(tmp_path / "s.toml")


def test_plan_errors_name_the_input(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("[[request]]\nmodel = 'mlp'\n")
    scenario = load_scenario(tmp_path / "s.toml")
    with pytest.raises(ScenarioError, match=r"request\[0\].inputs.x: the model's dims \[-1\] are variable"):
        build_plan(scenario, {"mlp": metadata("mlp", [("x", "FP32", [-1, -1])])})
    (tmp_path / "s.toml").write_text("[[request]]\nmodel = 'nobatch'\nrows = 2\n")
    with pytest.raises(ScenarioError, match="no batch dimension; rows must be 1"):
        build_plan(load_scenario(tmp_path / "s.toml"), {"nobatch": metadata("nobatch", [("a", "FP32", [2, 3])])})
    (tmp_path / "s.toml").write_text("[[request]]\nmodel = 'mlp'\n[request.inputs.z]\nshape = [3]\n")
    with pytest.raises(ScenarioError, match=r"has no input\(s\) \['z'\]"):
        build_plan(load_scenario(tmp_path / "s.toml"), {"mlp": metadata("mlp", [("x", "FP32", [-1, 16])])})
