"""The workers scale on the queue depth the code exports: one autoscaler in every mode, the right
target and metric, and the prometheus-adapter rule the HPA needs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llm_batcher import metrics
from tests.deploy.support import CHART_DIR, SCENARIOS, Rendered, render, render_scenario

QUEUE_DEPTH = metrics.QUEUE_DEPTH.describe()[0].name  # the name the API exports


def _worker_autoscalers(rendered: Rendered) -> list[dict[str, Any]]:
    """HPAs and ScaledObjects that target the worker Deployment."""
    (worker,) = [
        d for d in rendered.of_kind("Deployment") if d["metadata"]["name"].endswith("-worker")
    ]
    return [
        obj
        for obj in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject")
        if obj["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_worker_has_exactly_one_autoscaler_when_autoscaling(scenario: str) -> None:
    rendered = render_scenario(scenario)
    autoscaling = rendered.values["worker"]["autoscaling"]
    scalers = _worker_autoscalers(rendered)
    (worker,) = [
        d for d in rendered.of_kind("Deployment") if d["metadata"]["name"].endswith("-worker")
    ]
    if autoscaling["enabled"]:
        expected = {"hpa": "HorizontalPodAutoscaler", "keda": "ScaledObject"}[autoscaling["mode"]]
        assert [s["kind"] for s in scalers] == [expected]
        # The autoscaler owns the replica count: an upgrade must not reset it.
        assert "replicas" not in worker["spec"]
    else:
        assert scalers == []
        assert worker["spec"]["replicas"] == rendered.values["worker"]["replicaCount"]


def test_the_hpa_scales_the_worker_on_queue_depth_per_worker() -> None:
    rendered = render_scenario("default")
    (hpa,) = _worker_autoscalers(rendered)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llm-batcher-worker",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == QUEUE_DEPTH == "llm_batcher_queue_depth"
    # The series of this release's API Service, as the ServiceMonitor labels them.
    assert metric["external"]["metric"]["selector"] == {
        "matchLabels": {"service": "llm-batcher-api"}
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)


def test_scaling_is_fast_up_and_slow_down() -> None:
    behavior = _worker_autoscalers(render_scenario("default"))[0]["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    up = max(p["value"] for p in behavior["scaleUp"]["policies"] if p["type"] == "Pods")
    down = max(p["value"] for p in behavior["scaleDown"]["policies"] if p["type"] == "Pods")
    assert up > down


def test_the_scaled_object_queries_the_same_metric() -> None:
    rendered = render_scenario("keda")
    (scaled,) = _worker_autoscalers(rendered)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "llm-batcher-worker"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 20)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "12"
    # max(): every API pod exports the same queue depth.
    assert trigger["metadata"]["query"] == (
        f'max({QUEUE_DEPTH}{{namespace="llmb",service="llm-batcher-api"}})'
    )
    hpa_behavior = _worker_autoscalers(render_scenario("default"))[0]["spec"]["behavior"]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa_behavior


def test_switching_modes_never_leaves_the_worker_without_an_autoscaler() -> None:
    """Helm creates the new objects of an upgrade before it deletes the old ones. hpa -> keda:
    KEDA's webhook must not refuse the ScaledObject because our HPA still exists. keda -> hpa:
    our HPA must not collide with the one KEDA made (keda-hpa-<name>), which goes with the
    ScaledObject."""
    (hpa,) = _worker_autoscalers(render_scenario("default"))
    assert hpa["metadata"]["annotations"]["validations.keda.sh/hpa-ownership"] == "false"
    (scaled,) = _worker_autoscalers(render_scenario("keda"))
    assert "name" not in scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert f"keda-hpa-{scaled['metadata']['name']}" != hpa["metadata"]["name"]


def test_a_custom_metric_selector_reaches_hpa_and_keda() -> None:
    selector = {"job": "llm-api", "cluster": "eu"}
    for mode in ("hpa", "keda"):
        rendered = render({"worker": {"autoscaling": {"mode": mode, "metricSelector": selector}}})
        (scaler,) = _worker_autoscalers(rendered)
        if mode == "hpa":
            metric = scaler["spec"]["metrics"][0]["external"]["metric"]
            assert metric["selector"] == {"matchLabels": selector}
        else:
            query = scaler["spec"]["triggers"][0]["metadata"]["query"]
            assert query == f'max({QUEUE_DEPTH}{{namespace="llmb",cluster="eu",job="llm-api"}})'


def test_the_api_cpu_autoscaler_is_optional() -> None:
    assert render_scenario("default").of_kind("HorizontalPodAutoscaler") == _worker_autoscalers(
        render_scenario("default")
    )
    rendered = render_scenario("ingress")
    api = rendered.get("HorizontalPodAutoscaler", "llm-batcher-api")
    assert api["spec"]["scaleTargetRef"]["name"] == "llm-batcher-api"
    (metric,) = api["spec"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert "replicas" not in rendered.get("Deployment", "llm-batcher-api")["spec"]


def test_the_prometheus_adapter_rule_serves_the_hpa_metric() -> None:
    adapter = yaml.safe_load((CHART_DIR / "files" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    assert rule["name"]["as"] == QUEUE_DEPTH
    assert rule["seriesQuery"].startswith(QUEUE_DEPTH + "{")
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    # One value for the HPA: the max over API pods (a sum would count the queue once per pod).
    assert rule["metricsQuery"] == "max(<<.Series>>{<<.LabelMatchers>>})"
    # The label the HPA selects on is one the series query requires.
    (hpa,) = _worker_autoscalers(render_scenario("default"))
    (label,) = hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]
    assert f'{label}!=""' in rule["seriesQuery"]


def test_the_service_monitor_gives_the_series_the_label_the_hpa_selects() -> None:
    rendered = render_scenario("monitoring")
    monitor = rendered.get("ServiceMonitor", "llm-batcher")
    api_service = rendered.get("Service", "llm-batcher-api")
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"].items() <= api_service["metadata"]["labels"].items()
    (expression,) = selector["matchExpressions"]
    assert api_service["metadata"]["labels"][expression["key"]] in expression["values"]
    # Prometheus Operator labels each series service="<Service name>".
    (hpa,) = _worker_autoscalers(render({"monitoring": {"serviceMonitor": {"enabled": True}}}))
    matched = hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]
    assert matched == {"service": api_service["metadata"]["name"]}
