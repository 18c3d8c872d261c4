"""Every manifest in deploy/ against the Kubernetes and KServe schemas, offline, and against each other and Surge.

- Kubernetes kinds (Deployment, Service, HPA, ConfigMap, PVC): kubernetes-validate, strict (unknown fields are
  errors), with the Kubernetes 1.37 OpenAPI schemas it ships.
- KServe kinds (ServingRuntime, InferenceService): jsonschema against ``tests/deploy/kserve-0.21.0.schema.json``,
  generated from the KServe SDK's models (``tests/deploy/kserve_schema.py`` says how and what it leaves out), its
  Kubernetes parts (containers, probes, metadata) resolved against kubernetes-validate's strict definitions.
- ServiceMonitor: jsonschema against ``tests/deploy/prometheus-operator-0.80.1.servicemonitor.schema.json``, generated
  (``tests/deploy/servicemonitor_schema.py``) from cloudcoil's models of the Prometheus Operator v0.80.1 CRDs
  (types, enums, patterns), closed to unknown fields.
- Consistency: Service and ServiceMonitor select the Deployment's pods, ports by name exist, the HPA scales the
  Deployment on a metric the adapter rule serves, the adapter's PromQL parses and names metrics Surge exports,
  every ``surge serve`` command line parses with Surge's own CLI parser, probes and ports agree with its flags,
  the InferenceService names the ServingRuntime and a format and protocol it supports.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import referencing
import yaml
from kubernetes_validate import utils as kv

from surge.server.app import ServerConfig
from surge.server.cli import _parser
from surge.server.observability.metrics import ServerSnapshot, VersionSample, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KSERVE_SCHEMA = Path(__file__).resolve().parents[1] / "deploy" / "kserve-0.21.0.schema.json"
SERVICE_MONITOR_SCHEMA = Path(__file__).resolve().parents[1] / "deploy" / "prometheus-operator-0.80.1.servicemonitor.schema.json"
KUBERNETES_VERSION = "1.37"
KSERVE_KINDS = {("serving.kserve.io/v1beta1", "InferenceService"), ("serving.kserve.io/v1alpha1", "ServingRuntime")}
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


DOCS = _documents()


def _find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/, found {len(found)}"
    return found[0]


def _kubernetes_definitions() -> dict[str, Any]:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{kv.latest_version()}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())


def _kserve_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    definitions = _kubernetes_definitions()
    registry = referencing.Registry().with_resources([
        (definitions["$id"], referencing.Resource.from_contents(definitions)),
        (schema["$id"], referencing.Resource.from_contents(schema)),
    ])  # fmt: skip
    root = {"$ref": f"{schema['$id']}#/$defs/{schema['roots'][kind]}"}
    return jsonschema.Draft202012Validator(root, registry=registry)


def _validate(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (or kubernetes-validate's) when ``doc`` does not fit its kind's schema."""
    key = (doc["apiVersion"], doc["kind"])
    if key in KSERVE_KINDS:
        _kserve_validator(doc["kind"]).validate(doc)
    elif key == SERVICE_MONITOR:
        jsonschema.Draft202012Validator(json.loads(SERVICE_MONITOR_SCHEMA.read_text())).validate(doc)
    else:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)


def test_deploy_has_every_manifest_the_issue_asks_for() -> None:
    kinds = sorted({d["kind"] for _, d in DOCS})
    assert kinds == sorted({"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "InferenceService", "PersistentVolumeClaim",
                            "Service", "ServiceMonitor", "ServingRuntime"})  # fmt: skip
    assert _find("Service", "surge")["spec"]["clusterIP"] == "None"  # headless, for client-side load balancing


@pytest.mark.parametrize("name,doc", DOCS, ids=[name for name, _ in DOCS])
def test_manifest_fits_its_schema(name: str, doc: dict[str, Any]) -> None:
    _validate(doc)


@pytest.mark.parametrize("kind,mutate,message", [
    ("Deployment", lambda d: d["spec"].__setitem__("replica", 2), "replica"),
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].__setitem__("containerPort", "8001"), "8001"),
    ("HorizontalPodAutoscaler", lambda d: d["spec"]["metrics"][0]["pods"]["target"].pop("type"), "type"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0].__setitem__("prots", []), "prots"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0]["readinessProbe"]["grpc"].__setitem__("port", "grpc"), "grpc"),
    ("ServingRuntime", lambda d: d["spec"].__setitem__("multiModel", "no"), "no"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].pop("modelFormat"), "modelFormat"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"]["resources"].__setitem__("request", {}), "request"),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "15 seconds"), "15 seconds"),
    ("ServiceMonitor", lambda d: d["spec"].__setitem__("endpoint", []), "endpoint"),
])  # fmt: skip
def test_the_validators_reject_broken_manifests(kind: str, mutate: Any, message: str) -> None:
    doc = copy.deepcopy(_find(kind, "surge" if kind in ("Deployment", "ServingRuntime") else None))
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=message):
        _validate(doc)


def _surge_containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, doc in DOCS:
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", spec)
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if container.get("command", [])[:2] == ["surge", "serve"]:
                out.append((name, container))
    return out


def test_every_surge_command_line_parses_and_its_ports_and_probes_agree() -> None:
    containers = _surge_containers()
    assert len(containers) == 4  # the Deployment, the sidecar, the ServingRuntimes (gRPC and REST)
    for name, container in containers:
        parsed, unknown = _parser().parse_known_args(["serve", *container["args"]])
        # --grpc-address comes with the reliability work; until it is merged it is the one flag allowed unknown
        assert all(a.startswith("--grpc-address=unix://") for a in unknown), (name, unknown)
        ports = {p["containerPort"] for p in container.get("ports", [])}
        if "ServingRuntime/" in name:  # Knative allows one port (gRPC or REST); KServe scrapes by annotation
            runtime = _find("ServingRuntime", name.rsplit("/", 1)[1])
            assert str(parsed.metrics_port) == runtime["spec"]["annotations"]["prometheus.kserve.io/port"]
        else:
            assert parsed.metrics_port in ports, name
        if name.endswith("ServingRuntime/surge-rest"):  # the one port is REST's; the probe asks REST for readiness
            assert ports == {parsed.http_port} and container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": parsed.http_port}
            assert parsed.host == "0.0.0.0" and _find("ServingRuntime", "surge-rest")["spec"]["protocolVersions"] == ["v2"]
        elif not any(a.startswith("--grpc-address") for a in container["args"]):
            assert parsed.grpc_port in ports and parsed.host == "0.0.0.0", name
            for probe in ("readinessProbe",):
                grpc_probe = container[probe].get("grpc")
                assert grpc_probe is None or grpc_probe["port"] == parsed.grpc_port, name
        else:  # a Unix socket: the probes check health over it
            socket = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--grpc-address"))
            assert all(socket in " ".join(container[p]["exec"]["command"]) for p in ("startupProbe", "readinessProbe")), name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert any(socket.removeprefix("unix://").startswith(m + "/") for m in mounts), name
            # REST never listens on the pod network beside the owner-only gRPC socket: off, or on its own socket
            config = ServerConfig(model_repository=Path("/models"), grpc_address=parsed.grpc_address, http_address=parsed.http_address,
                                  http_port=parsed.http_port)  # fmt: skip
            assert config.http_port == -1, name
            if config.http_address:
                assert any(config.http_address.removeprefix("unix://").startswith(m + "/") for m in mounts), name


def test_service_servicemonitor_and_hpa_point_at_the_deployment() -> None:
    deployment, service, monitor, hpa = _find("Deployment", "surge"), _find("Service", "surge"), _find("ServiceMonitor"), _find("HorizontalPodAutoscaler")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "surge")
    claim = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert _find("PersistentVolumeClaim", claim)


def test_the_adapter_rule_serves_the_hpa_metric_from_a_metric_surge_exports() -> None:
    rules = yaml.safe_load(_find("ConfigMap", "adapter-config")["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"]: rule for rule in rules}
    hpa_metrics = [m["pods"]["metric"]["name"] for m in _find("HorizontalPodAutoscaler")["spec"]["metrics"] if m["type"] == "Pods"]
    assert hpa_metrics and set(hpa_metrics) <= set(served)
    sample = VersionSample(model="m", version="1", state="READY", load_duration_s=0.1, queue_depth=3, inflight=4,
                           dropped_expired=0, dropped_cancelled=0, metrics=None)  # fmt: skip
    exported, _ = render(ServerSnapshot("test", (sample,), {}))
    for rule in rules:
        series = promql_parser.parse(rule["seriesQuery"])
        assert isinstance(series, promql_parser.VectorSelector)
        assert f'{series.name}{{model="m",version="1"}}'.encode() in exported, f"Surge exports no {series.name}"
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        query = rule["metricsQuery"].replace("<<.Series>>", series.name).replace("<<.LabelMatchers>>", 'namespace="default",pod=~"surge-a|surge-b"')
        parsed = promql_parser.parse(query.replace("<<.GroupBy>>", "pod"))
        assert isinstance(parsed, promql_parser.AggregateExpr) and parsed.modifier is not None


def test_the_inferenceservice_runs_on_the_surge_runtime() -> None:
    runtime, service = _find("ServingRuntime", "surge"), _find("InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container" and "--model-repository=/mnt/models" in container["args"]
    assert [p["name"] for p in container["ports"]] == ["h2c"]  # KServe routes gRPC to the port named h2c
