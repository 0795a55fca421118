"""The chart's monitoring objects: the dashboard and the alerts of files/ reach Grafana and
Prometheus as they are, and the ServiceMonitor scrapes the API and the workers."""

from __future__ import annotations

import json

import yaml

from tests.deploy.support import CHART_DIR, render_scenario


def test_dashboard_configmap_carries_the_dashboard_for_the_sidecar() -> None:
    rendered = render_scenario("monitoring")
    (configmap,) = rendered.of_kind("ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    (text,) = configmap["data"].values()
    assert text == (CHART_DIR / "files" / "llm-batcher-dashboard.json").read_text()
    assert json.loads(text)["title"]


def test_prometheus_rule_carries_the_alerts() -> None:
    rendered = render_scenario("monitoring")
    rule = rendered.get("PrometheusRule", "llm-batcher")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = yaml.safe_load((CHART_DIR / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert any(r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"])


def test_service_monitor_scrapes_api_and_workers_only() -> None:
    rendered = render_scenario("monitoring")
    monitor = rendered.get("ServiceMonitor", "llm-batcher")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    selector = monitor["spec"]["selector"]
    scraped = set()
    for service in rendered.of_kind("Service"):
        labels = service["metadata"]["labels"]
        matches = selector["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
        )
        if matches:
            scraped.add(service["metadata"]["name"])
            assert "metrics" in [p["name"] for p in service["spec"]["ports"]]
    assert scraped == {"llm-batcher-api", "llm-batcher-worker"}
    worker = rendered.get("Service", "llm-batcher-worker")
    assert worker["spec"]["clusterIP"] == "None"  # only for discovery: no traffic to workers
