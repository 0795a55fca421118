"""The chart lints and renders with the real Helm engine, and every object it renders is valid
for each supported Kubernetes version (CRD kinds against their CRD schemas)."""

from __future__ import annotations

import copy

import helm_python
import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.support import (
    CHART_DIR,
    CRD_KINDS,
    KUBE_VERSIONS,
    RELEASE,
    SCENARIOS,
    render,
    render_scenario,
    validate_object,
)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str, kube_version: str) -> None:
    report = helm_python.lint(
        CHART_DIR, SCENARIOS[scenario], strict=True, namespace="llmb", kube_version=kube_version
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_valid(scenario: str, kube_version: str) -> None:
    rendered = render_scenario(scenario)
    assert rendered.objects
    for obj in rendered.objects:
        try:
            validate_object(obj, kube_version)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")


def test_the_validation_catches_mistakes() -> None:
    """The same validation, on objects with the mistakes it is there to catch."""
    deployment = copy.deepcopy(render_scenario("default").get("Deployment", "llm-batcher-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        validate_object(deployment, "1.32")
    monitor = copy.deepcopy(render_scenario("monitoring").get("ServiceMonitor", "llm-batcher"))
    del monitor["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError, match="selector"):
        validate_object(monitor, "1.32")
    scaled = copy.deepcopy(render_scenario("keda").get("ScaledObject", "llm-batcher-worker"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # must be a string
    with pytest.raises(jsonschema.ValidationError, match="string"):
        validate_object(scaled, "1.32")


def test_kubernetes_validate_agrees_on_a_sample() -> None:
    """The cached validators above give kubernetes-validate's own answer."""
    deployment = render_scenario("default").get("Deployment", "llm-batcher-worker")
    assert kubernetes_validate.validate(deployment, "1.32", strict=True) == "1.32"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_names_are_unique_and_namespaced(scenario: str) -> None:
    rendered = render_scenario(scenario)
    assert len(set(rendered.names())) == len(rendered.names()), rendered.names()
    for obj in rendered.objects:
        expected = (
            "monitoring" if obj["kind"] == "ConfigMap" and scenario == "monitoring" else "llmb"
        )
        assert obj["metadata"]["namespace"] == expected, obj["metadata"]


def test_scenarios_render_what_they_are_about() -> None:
    kinds = {name: render_scenario(name).kinds() for name in SCENARIOS}
    base = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"}
    base |= {"Role", "RoleBinding"}  # the operator's
    redis = {"StatefulSet", "Secret", "NetworkPolicy"}
    assert set(kinds["default"]) == base | redis | {"HorizontalPodAutoscaler"}
    assert "StatefulSet" not in kinds["external-redis"] and "Secret" not in kinds["external-redis"]
    assert "ScaledObject" in kinds["keda"] and "HorizontalPodAutoscaler" not in kinds["keda"]
    assert "HorizontalPodAutoscaler" not in kinds["autoscaling-off"]
    assert "PodDisruptionBudget" not in kinds["autoscaling-off"]
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= set(kinds["monitoring"])
    assert kinds["monitoring"].count("Service") == 4  # api, worker and operator (metrics), redis
    assert "Ingress" in kinds["ingress"] and kinds["ingress"].count("HorizontalPodAutoscaler") == 2
    assert "HTTPRoute" in kinds["gateway"]
    assert "Secret" not in kinds["existing-secret"] and "Secret" not in kinds["custom-llm"]


def test_every_crd_kind_is_covered_by_a_scenario() -> None:
    rendered = {(o["apiVersion"], o["kind"]) for n in SCENARIOS for o in render_scenario(n).objects}
    assert set(CRD_KINDS) <= rendered


def test_notes_give_the_port_forward_and_curl_commands() -> None:
    notes = render_scenario("default").notes
    assert "kubectl --namespace llmb port-forward service/llm-batcher-api 8000:8000" in notes
    assert "curl -N 'http://localhost:8000/generate?context=" in notes
    assert f"helm test {RELEASE} --namespace llmb" in notes


def test_httproute_without_a_gateway_fails_with_the_reason() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="parentRefs"):
        render({"api": {"httpRoute": {"enabled": True}}})


@pytest.mark.parametrize("values", [{"fullnameOverride": "x" * 70}, {"nameOverride": "y" * 70}])
def test_names_stay_within_dns_limits(values: dict[str, str]) -> None:
    rendered = render(values)
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    for sts in rendered.of_kind("StatefulSet"):
        # Its pods' controller-revision-hash label is "<name>-<10 characters>", at most 63.
        assert len(sts["metadata"]["name"]) <= 52
