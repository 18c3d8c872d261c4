"""Build the JSON Schema of KServe's ServingRuntime and InferenceService from the KServe Python SDK's models.

    pip download --no-deps kserve==0.21.0 -d /tmp/kserve
    python -m tests.deploy.kserve_schema /tmp/kserve/kserve-0.21.0-py3-none-any.whl > tests/deploy/kserve-0.21.0.schema.json

Why: KServe publishes its CRD schemas only in its repository, and the SDK package (which pins protobuf < 7,
so it cannot sit in Surge's dev environment) is the registry-installable form of the same API: every model
class carries ``openapi_types`` (field -> type), ``attribute_map`` (field -> JSON key) and the required fields
(its client-side validation). This reads those from the wheel's source, without importing it, and writes one
schema: every KServe object is closed (``additionalProperties: false``, like ``kubectl --validate=strict``),
typed, with its required fields; Kubernetes types inside (Container, Probe, ObjectMeta, ...) are ``$ref``s to
kubernetes-validate's strict Kubernetes definitions (``https://kubernetes.io/api/_definitions.json#/$defs/...``), resolved by the test.
Not checked (the SDK does not carry them): enums, patterns and numeric bounds of KServe's own fields, and the
few types the SDK does not define (listed in the schema's ``$comment``), which accept anything.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile

ROOTS = ("V1beta1InferenceService", "V1alpha1ServingRuntime", "V1alpha1ClusterServingRuntime")
SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
           "datetime": {"type": "string"}, "date": {"type": "string"}, "object": {}}  # fmt: skip
#: The $id of kubernetes-validate's definitions file, which its schemas (and this one) refer to.
K8S_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
K8S_PREFIXES = ("io.k8s.api.core.v1.", "io.k8s.apimachinery.pkg.apis.meta.v1.", "io.k8s.api.apps.v1.", "io.k8s.api.autoscaling.v2.")


def read_models(wheel: str) -> tuple[str, dict[str, dict]]:
    """(SDK version, {class name: {"types": {attr: type}, "keys": {attr: json key}, "required": [attr]}})."""
    models: dict[str, dict] = {}
    version = ""
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith("/METADATA") and ".dist-info/" in name:
                version = re.search(r"^Version: (\S+)", z.read(name).decode(), re.M).group(1)  # type: ignore[union-attr]
            if not (name.startswith("kserve/models/") and name.endswith(".py")):
                continue
            source = z.read(name).decode()
            cls = re.search(r"^class (\w+)\(object\):", source, re.M)
            types = re.search(r"openapi_types = \{(.*?)\n    \}", source, re.S)
            keys = re.search(r"attribute_map = \{(.*?)\n    \}", source, re.S)
            if not (cls and types and keys):
                continue
            models[cls.group(1)] = {
                "types": dict(re.findall(r"'(\w+)': '([^']+)'", types.group(1))),
                "keys": dict(re.findall(r"'(\w+)': '([^']+)'", keys.group(1))),
                "required": re.findall(r"client_side_validation and (\w+) is None:", source),
            }
    return version, models


def k8s_definition(name: str) -> str | None:
    """The kubernetes-validate definition name for an SDK type name (V1Container, K8sIoApiAppsV1..., ResourceQuantity)."""
    if name == "ResourceQuantity":
        return "io.k8s.apimachinery.pkg.api.resource.Quantity"
    if name.startswith("K8sIo"):
        parts = re.findall(r"[A-Z][a-z0-9]*", name[len("K8sIo"):])  # Api Apps V1 Deployment Strategy
        version_at = next(i for i, p in enumerate(parts) if re.fullmatch(r"V\d+\w*", p))
        return "io.k8s." + ".".join(p.lower() for p in parts[:version_at + 1]) + "." + "".join(parts[version_at + 1:])
    match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", name)
    return match and "|".join(prefix.replace(".v1.", f".{match.group(1).lower()}.") + match.group(2) for prefix in K8S_PREFIXES)


def kubernetes_definitions() -> dict:
    """kubernetes-validate's strict Kubernetes definitions of its newest Kubernetes version."""
    import importlib.resources

    from kubernetes_validate.utils import latest_version

    path = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{latest_version()}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())  # {"$id": "/api/_definitions.json", "$defs": {...}}


def build(wheel: str) -> dict:
    version, models = read_models(wheel)
    k8s_definitions = kubernetes_definitions()["$defs"]
    defs: dict[str, dict] = {}
    unknown: set[str] = set()

    def schema_of(type_name: str) -> dict:
        if type_name in SCALARS:
            return SCALARS[type_name]
        if type_name.startswith("list[") and type_name.endswith("]"):
            return {"type": "array", "items": schema_of(type_name[5:-1])}
        if type_name.startswith("dict(str, ") and type_name.endswith(")"):
            return {"type": "object", "additionalProperties": schema_of(type_name[10:-1])}
        if type_name in models:
            add(type_name)
            return {"$ref": f"#/$defs/{type_name}"}
        for candidate in (k8s_definition(type_name) or "").split("|"):
            if candidate in k8s_definitions:
                return {"$ref": f"{K8S_DEFINITIONS_ID}#/$defs/{candidate}"}
        unknown.add(type_name)
        return {}

    def add(name: str) -> None:
        if name in defs:
            return
        model = models[name]
        defs[name] = {}  # placeholder against cycles
        properties = {model["keys"][attr]: schema_of(t) for attr, t in model["types"].items()}
        defs[name] = {"type": "object", "properties": properties, "additionalProperties": False,
                      "required": [model["keys"][attr] for attr in model["required"] if attr in model["keys"]]}  # fmt: skip

    for root in ROOTS:
        add(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:surge:kserve-schema",
        "$comment": f"Generated by tests/deploy/kserve_schema.py from the kserve {version} SDK wheel's models. "
                    f"Types the SDK does not define (accept anything): {', '.join(sorted(unknown)) or 'none'}.",
        "kserve_version": version,
        "roots": {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime",
                  "ClusterServingRuntime": "V1alpha1ClusterServingRuntime"},
        "$defs": defs,
    }


if __name__ == "__main__":
    json.dump(build(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
