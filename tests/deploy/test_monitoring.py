"""The chart's monitoring objects: the dashboard and the alerts of files/ reach Grafana and
Prometheus as they are, and the ServiceMonitor scrapes the API and the workers. The series of
one release carry the same `namespace` and `release` labels, under Kubernetes and compose."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.support import CHART_DIR, RELEASE, REPO, render_scenario


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


def test_service_monitor_scrapes_api_workers_and_operator_only() -> None:
    rendered = render_scenario("monitoring")
    monitor = rendered.get("ServiceMonitor", "llm-batcher")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert {k: endpoint[k] for k in ("port", "path", "interval", "scrapeTimeout")} == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
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
    assert scraped == {"llm-batcher-api", "llm-batcher-worker", "llm-batcher-operator"}
    worker = rendered.get("Service", "llm-batcher-worker")
    assert worker["spec"]["clusterIP"] == "None"  # only for discovery: no traffic to workers


def test_service_monitor_labels_every_series_with_its_release() -> None:
    """The alerts and the dashboard tell releases apart by (namespace, release): the API's and
    the workers' series get the same `release` (their `job` labels differ)."""
    rendered = render_scenario("monitoring")
    [endpoint] = rendered.get("ServiceMonitor", "llm-batcher")["spec"]["endpoints"]
    [relabeling] = [r for r in endpoint["relabelings"] if r["targetLabel"] == "release"]
    assert relabeling.get("action", "replace") == "replace"
    [source] = relabeling["sourceLabels"]
    # Prometheus names a Service label __meta_kubernetes_service_label_<name, sanitized>.
    values = {
        service["metadata"]["name"]: {
            "__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value
            for key, value in service["metadata"]["labels"].items()
        }.get(source)
        for service in rendered.of_kind("Service")
    }
    assert values["llm-batcher-api"] == values["llm-batcher-worker"] == RELEASE


def test_compose_prometheus_gives_api_and_workers_one_release() -> None:
    """compose.yaml's Prometheus sets the labels that the ServiceMonitor sets in Kubernetes, so
    that the same alerts and dashboard variables work there."""
    config = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    labels_by_job = {}
    for job in config["scrape_configs"]:
        labels = {}
        for rule in job["relabel_configs"]:
            # A replace rule without source labels sets target_label to replacement.
            assert rule.get("action", "replace") == "replace" and "source_labels" not in rule
            labels[rule["target_label"]] = rule["replacement"]
        labels_by_job[job["job_name"]] = labels
    api, worker = labels_by_job["llm-batcher-api"], labels_by_job["llm-batcher-worker"]
    assert api == worker
    assert set(api) == {"namespace", "release"} and all(api.values())
