"""Rendering the chart with the real Helm engine (helm-python-sdk binds Helm's Go SDK) and
looking at what it produced.

Nothing here talks to a cluster: `lookup` answers nothing, as under `helm template`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import referencing
import yaml
from helm_python import _native

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "llm-batcher"
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd-schemas"
RELEASE = "llm-batcher"
NAMESPACE = "llmb"
# Kubernetes versions every object is validated against: the oldest schema kubernetes-validate
# has (the chart supports 1.23 and later, Chart.yaml kubeVersion) to a recent one.
KUBE_VERSIONS = ("1.25", "1.28", "1.31", "1.34")

# ci/<name>-values.yaml, plus the chart's defaults.
SCENARIOS: dict[str, dict[str, Any]] = {"default": {}} | {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
    for path in sorted((CHART_DIR / "ci").glob("*-values.yaml"))
}

# Kinds whose schemas come from their CRDs (tests/deploy/crd-schemas), not kubernetes-validate.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway-v1.json",
}
POD_KINDS = {"Deployment", "StatefulSet", "Pod"}
# Read by the mock LLM, which the worker runs as its child (it inherits the worker's environment);
# test_settings_env.py checks that the mock reads them.
MOCK_ENV = {"LLMB_MOCK_TTFT_MS", "LLMB_MOCK_ITL_MS", "LLMB_MOCK_EXTRA_TOKENS"}


@functools.cache
def chart() -> helm_python.Chart:
    """The chart, loaded once per test session (a handle into the Go library)."""
    return helm_python.Chart.load(CHART_DIR)


@dataclass
class Rendered:
    """The objects one set of values renders to, plus NOTES.txt."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str
    sources: dict[str, str] = field(repr=False)

    def kinds(self) -> list[str]:
        return sorted(obj["kind"] for obj in self.objects)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The one object of this kind and name; fails the test if absent."""
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name} not rendered: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return sorted(f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.objects)

    def pod_specs(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(object, pod spec) for every object that runs pods."""
        for obj in self.objects:
            if obj["kind"] == "Pod":
                yield obj, obj["spec"]
            elif obj["kind"] in POD_KINDS:
                yield obj, obj["spec"]["template"]["spec"]

    def containers(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(object label, pod spec, container) for every container, init containers included."""
        for obj, spec in self.pod_specs():
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield f"{obj['kind']}/{obj['metadata']['name']}", spec, container

    def container(self, kind: str, name: str) -> dict[str, Any]:
        """The first container of the named workload."""
        obj = self.get(kind, name)
        spec = obj["spec"] if kind == "Pod" else obj["spec"]["template"]["spec"]
        return spec["containers"][0]


# The API groups of a cluster with everything the chart can use: prometheus-adapter (or KEDA)
# serving the external metrics API, the Prometheus Operator, KEDA and the Gateway API. Scenarios
# render against it; BARE_CLUSTER is a fresh kind cluster, with only the built-in groups.
FULL_CLUSTER = (
    "external.metrics.k8s.io/v1beta1",
    "monitoring.coreos.com/v1",
    "keda.sh/v1alpha1",
    "gateway.networking.k8s.io/v1",
)
BARE_CLUSTER: tuple[str, ...] = ()


def render(
    values: dict[str, Any] | None = None,
    *,
    validate: bool = True,
    api_versions: tuple[str, ...] = FULL_CLUSTER,
    kube_version: str | None = None,
) -> Rendered:
    """Render the chart as `helm install` would (schema checked first, as Helm does), against a
    cluster that serves `api_versions` (.Capabilities.APIVersions) on top of the built-in ones."""
    values = values or {}
    if validate:
        chart().validate_schema(values)
    sources = _render(chart(), values, api_versions, kube_version)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(sources.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    notes = next((t for p, t in sources.items() if p.endswith("NOTES.txt")), "")
    return Rendered(chart().merge_values(values), objects, notes, sources)


def _render(
    loaded: helm_python.Chart,
    values: dict[str, Any],
    api_versions: tuple[str, ...],
    kube_version: str | None,
) -> dict[str, str]:
    """Chart.render, plus the capabilities its Go side takes (`api_versions`, `kube_version`,
    as `helm template --api-versions --kube-version`) but its Python signature does not pass."""
    options: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True}
    options["api_versions"] = list(api_versions)
    if kube_version is not None:
        options["kube_version"] = kube_version
    rendered = _native.call_string(
        "helm_render", loaded._raw(), json.dumps(values), json.dumps(options)
    )
    manifests: dict[str, str] = json.loads(rendered)
    return manifests


@functools.cache
def render_scenario(name: str) -> Rendered:
    """A ci/ scenario rendered once per session (tests must not modify the result)."""
    return render(SCENARIOS[name])


def validate_object(obj: dict[str, Any], kube_version: str) -> None:
    """Validate against the Kubernetes (or CRD) schema; raises jsonschema.ValidationError."""
    crd_schema = CRD_KINDS.get((obj["apiVersion"], obj["kind"]))
    if crd_schema is not None:
        _crd_validator(crd_schema).validate(obj)
    else:
        _kube_validator(kube_version, obj["apiVersion"], obj["kind"]).validate(obj)


@functools.cache
def _crd_validator(filename: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((CRD_SCHEMAS / filename).read_text()))


@functools.cache
def _kube_validator(
    kube_version: str, api_version: str, kind: str
) -> jsonschema.Draft202012Validator:
    """kubernetes-validate's strict schema of a kind, as its validate() builds it, but built once
    per kind and version (its validate() reloads 1.3 MB of definitions for every object).

    Strict: the schema rejects fields Kubernetes does not know (a typo, a wrong level)."""
    folder = importlib.resources.files(kubernetes_validate) / "kubernetes-json-schema"
    folder = folder / f"v{kube_version}.0-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1
    path = folder / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        raise LookupError(f"kubernetes-validate has no schema for {api_version} {kind}")
    schema = json.loads(path.read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry: referencing.Registry = referencing.Resource.from_contents(schema) @ (
        referencing.Resource.from_contents(definitions) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's environment by variable name (each entry as rendered)."""
    return {entry["name"]: entry for entry in container.get("env", [])}
