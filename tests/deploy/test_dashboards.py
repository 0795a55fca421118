"""Checks of the Grafana dashboard and the Prometheus alert rules (charts/llm-batcher/files/).

The main check: every metric name that a PromQL expression uses (dashboard targets and alert
expressions) must be a sample name that the code exports, as computed from the registries of
llm_batcher.metrics. A renamed metric, or a histogram queried without its `_bucket` suffix,
fails here and not on a blank panel in production.

Both mix no releases: every dashboard query selects the release of the `namespace` and
`release` variables, and every alert aggregates and joins by (namespace, release).

The checks that run promtool (syntax of the rules and of every dashboard expression) are skipped
when promtool is not on PATH; test_alert_cases.py unit-tests the alerts on synthetic series.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

import llm_batcher.metrics as metrics_module
from tests.deploy.support import CHART_DIR

DASHBOARD_PATH = CHART_DIR / "files" / "llm-batcher-dashboard.json"
ALERTS_PATH = CHART_DIR / "files" / "alerts.yaml"

DATASOURCE_UID = "${datasource}"
ROWS = ["Traffic", "Latency", "Queue & workers", "Batching", "Failures", "Redis", "Operator"]
UNITS = {"s", "reqps", "short", "percentunit"}
ALERT_NAMES = {
    "LlmBatcherQueueStuck",
    "LlmBatcherQueueBacklog",
    "LlmBatcherHighLatencyP99",
    "LlmBatcherHighErrorRate",
    "LlmBatcherNoLiveWorkers",
    "LlmBatcherDeadLetters",
    "LlmBatcherLlmFailures",
    "LlmBatcherRedisDown",
    "LlmBatcherBackgroundTaskCrashes",
}
SEVERITIES = {"critical", "warning", "info"}
# Gauges that every API replica exports with the same value, read from Redis: max(), not sum().
REPLICATED_GAUGES = (
    "llm_batcher_queue_depth",
    "llm_batcher_queue_in_flight",
    "llm_batcher_workers_live",
)
# Grafana's built-in interval variables and the dashboard's own, replaced for promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
RELEASE_VARIABLES = {"$namespace": "llmb", "$release": "llm-batcher"}
# The labels that tell one release from another (the chart's ServiceMonitor and compose's
# Prometheus set them): every alert groups by them and every dashboard query selects on them.
RELEASE_LABELS = ("namespace", "release")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.requires_tool("promtool")

# --- what the code exports --------------------------------------------------------------------

# Sample-name suffixes by metric family type, as prometheus-client exposes them.
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


def _registries() -> list[CollectorRegistry]:
    """The default registry and every registry that llm_batcher.metrics defines."""
    found = [prometheus_client.REGISTRY]
    for value in vars(metrics_module).values():
        if isinstance(value, CollectorRegistry) and all(value is not r for r in found):
            found.append(value)
    return found


def exported_families() -> dict[str, set[str]]:
    """Family name -> its sample names, for every llm_batcher_ family the code registers.

    Families, not samples, so that labelled metrics with no child yet count too."""
    families: dict[str, set[str]] = {}
    for registry in _registries():
        for family in registry.collect():
            if not family.name.startswith("llm_batcher_"):
                continue
            suffixes = _SUFFIXES.get(family.type, ("",))
            families.setdefault(family.name, set()).update(family.name + s for s in suffixes)
    return families


def exported_sample_names() -> set[str]:
    return set().union(*exported_families().values())


# --- PromQL tokenizer -------------------------------------------------------------------------

# Strings, comments, identifiers (metric names may contain colons), then any other character.
_TOKEN = re.compile(
    r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`|#[^\n]*|[A-Za-z_:][A-Za-z0-9_:]*|\S"""
)
_METRIC = re.compile(r"llm_batcher_[a-zA-Z0-9_]+")


_MATCHER = re.compile(r'(\w+)(=~|!~|!=|=)("(?:\\.|[^"\\])*")')


def tokens(expr: str) -> list[str]:
    """The tokens of an expression, comments left out."""
    return [token for token in _TOKEN.findall(expr) if not token.startswith("#")]


def metric_names(expr: str) -> set[str]:
    """The llm_batcher_ metric names an expression uses (not inside strings or comments)."""
    return {token for token in tokens(expr) if _METRIC.fullmatch(token)}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, its label matchers as written, e.g. `release="$release"`) of every selector."""
    found = []
    parts = tokens(expr)
    for n, token in enumerate(parts):
        if _METRIC.fullmatch(token):
            braces = ""
            if parts[n + 1 : n + 2] == ["{"]:
                braces = "".join(itertools.takewhile(lambda t: t != "}", parts[n + 2 :]))
            found.append((token, {"".join(m) for m in _MATCHER.findall(braces)}))
    return found


# --- the dashboard ----------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every target of every panel."""
    return [
        (f"panel {p['id']} {p['title']!r} target {t.get('refId')}", t.get("expr", ""))
        for p in data_panels(dashboard)
        for t in p.get("targets", [])
    ]


# --- the alert rules --------------------------------------------------------------------------


def load_alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_PATH.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def all_exprs() -> list[tuple[str, str]]:
    alerts = [(f"alert {r['alert']}", r["expr"]) for r in load_alert_rules()]
    return dashboard_exprs(load_dashboard()) + alerts


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )


# === tests: the helpers themselves ============================================================


def test_tokenizer_finds_metric_names_outside_strings_and_comments() -> None:
    expr = (
        'sum by (code) (rate(llm_batcher_requests_total{outcome="llm_batcher_in_a_string"}[5m]))'
        " / on() llm_batcher_other_total # llm_batcher_in_a_comment\n"
        "+ not_llm_batcher_prefixed + llm_batcher_x:recorded"
    )
    assert metric_names(expr) == {"llm_batcher_requests_total", "llm_batcher_other_total"}


def test_selectors_list_their_matchers() -> None:
    expr = 'sum(rate(llm_batcher_a_total{code=~"x|y", release="$release"}[5m])) / llm_batcher_b'
    assert selectors(expr) == [
        ("llm_batcher_a_total", {'code=~"x|y"', 'release="$release"'}),
        ("llm_batcher_b", set()),
    ]


def test_exported_names_follow_the_exposition_format() -> None:
    names = exported_sample_names()
    assert "llm_batcher_requests_total" in names  # labelled counter with no child yet
    assert "llm_batcher_requests_total_total" not in names
    assert {"llm_batcher_batch_size_bucket", "llm_batcher_batch_size_count"} <= names
    assert "llm_batcher_batch_size" not in names  # a histogram has no bare sample
    assert "llm_batcher_queue_depth" in names
    assert "llm_batcher_not_a_metric" not in names


# === tests: the dashboard =====================================================================


def test_dashboard_identity_and_settings() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "llm-batcher"
    assert dashboard["title"] == "llm-batcher"
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert dashboard["refresh"] == "10s"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_namespace_and_release_variables_list_what_prometheus_has() -> None:
    """One namespace, then one of its releases: a single choice each, so no panel mixes two."""
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", *RELEASE_LABELS]
    exported = exported_sample_names()
    for label in RELEASE_LABELS:
        variable = variables[label]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        assert not variable["multi"] and not variable["includeAll"], label
        query = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert query and query[2] == label, variable["query"]
        assert metric_names(query[1]) and metric_names(query[1]) <= exported, query[1]
        assert variable["definition"] == variable["query"]
    assert 'namespace="$namespace"' in variables["release"]["query"]


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in all_panels(load_dashboard())]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate panel ids: {duplicates}"


def test_panels_are_grouped_in_the_expected_rows() -> None:
    panels = sorted(
        load_dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])
    )
    assert panels[0]["type"] == "row", "the first panel must be a row"
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    for before, after in itertools.pairwise(panels):
        assert not (before["type"] == after["type"] == "row"), f"row {before['title']!r} is empty"
    assert panels[-1]["type"] != "row", f"row {panels[-1]['title']!r} is empty"


def test_panels_fit_the_grid_without_overlapping() -> None:
    boxes = [(p["id"], p["gridPos"]) for p in load_dashboard()["panels"]]
    for pid, g in boxes:
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"panel {pid} is off grid"
    for n, (a, ga) in enumerate(boxes):
        for b, gb in boxes[n + 1 :]:
            apart_x = ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
            apart_y = ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"]
            assert apart_x or apart_y, f"panels {a} and {b} overlap"


def test_every_panel_queries_the_datasource_variable() -> None:
    for panel in data_panels(load_dashboard()):
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        assert panel.get("targets"), f"{where} has no target"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, where
            assert target.get("expr", "").strip(), f"{where} has an empty expression"


def test_every_dashboard_query_selects_one_release() -> None:
    wanted = {f'{label}="${label}"' for label in RELEASE_LABELS}
    for where, expr in dashboard_exprs(load_dashboard()):
        for metric, matchers in selectors(expr):
            assert wanted <= matchers, f"{where}: {metric} does not select $namespace/$release"


def test_every_panel_has_a_unit() -> None:
    for panel in data_panels(load_dashboard()):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit in UNITS, f"panel {panel['id']} {panel['title']!r}: unit {unit!r}"


def test_dashboard_metrics_are_exported_by_the_code() -> None:
    exported = exported_sample_names()
    unknown = [
        f"{where}: {name}"
        for where, expr in dashboard_exprs(load_dashboard())
        for name in sorted(metric_names(expr) - exported)
    ]
    assert not unknown, "metrics the code does not export:\n" + "\n".join(unknown)


def test_every_exported_metric_has_a_panel() -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs(load_dashboard())))
    missing = sorted(f for f, samples in exported_families().items() if not samples & used)
    assert not missing, f"metrics with no panel on the dashboard: {missing}"


def test_the_request_rate_is_split_by_endpoint() -> None:
    """/generate and the OpenAI-compatible endpoints share llm_batcher_requests_total; the
    dashboard tells them apart by its `endpoint` label."""
    exprs = [
        target["expr"]
        for panel in all_panels(load_dashboard())
        for target in panel.get("targets", [])
        if "llm_batcher_requests_total" in metric_names(target.get("expr", ""))
    ]
    assert any(re.search(r"by \([^)]*\bendpoint\b", expr) for expr in exprs), exprs


def test_replicated_queue_gauges_are_never_summed() -> None:
    summed = re.compile(
        r"\bsum\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*(?:" + "|".join(REPLICATED_GAUGES) + r")\b"
    )
    offenders = [where for where, expr in all_exprs() if summed.search(expr)]
    assert not offenders, f"queue gauges summed over API replicas (use max()): {offenders}"


def test_quantiles_come_from_bucket_rates_by_le() -> None:
    for where, expr in all_exprs():
        if "histogram_quantile" in expr:
            assert re.search(r"by\s*\([^)]*\ble\b[^)]*\)", expr), f"{where}: no `by (le)`"
            assert re.search(r"rate\(\s*llm_batcher_\w+_bucket(\{[^}]*\})?\[", expr), (
                f"{where}: no rate"
            )


@needs_promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for panel in data_panels(load_dashboard()):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in (GRAFANA_VARIABLES | RELEASE_VARIABLES).items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['id']}: unknown variable in {expr!r}"
            record = f"dashboard:panel_{panel['id']}:{target['refId']}"
            rules.append({"record": record, "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# === tests: the alert rules ===================================================================


def test_alert_rules_parse_as_yaml() -> None:
    document = yaml.safe_load(ALERTS_PATH.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    for group in document["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}


def test_the_expected_alerts_are_defined() -> None:
    names = [rule["alert"] for rule in load_alert_rules()]
    assert len(names) == len(set(names)), "an alert is defined twice"
    assert set(names) == ALERT_NAMES


def test_every_alert_has_for_severity_and_annotations() -> None:
    for rule in load_alert_rules():
        where = rule["alert"]
        assert re.fullmatch(r"\d+[smhdwy]", str(rule.get("for", ""))), f"{where}: for"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{where}: severity"
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{where}: no {key}"


_AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "topk", "quantile"}


def _label_list(parts: list[str], start: int) -> set[str]:
    """The labels of the `(a, b)` list that starts at parts[start]."""
    assert parts[start] == "(", parts[start:]
    return set(itertools.takewhile(lambda t: t != ")", parts[start + 1 :])) - {","}


def test_every_alert_aggregates_and_joins_by_release() -> None:
    """A bare `max(...)` takes one release's workers for another's (a release with none then
    never alerts), `on ()` joins one release's queue with another's progress, and either way
    the alert loses the labels it is routed on."""
    for rule in load_alert_rules():
        parts = tokens(rule["expr"])
        for n, token in enumerate(parts):
            where = f"{rule['alert']}: {' '.join(parts[max(0, n - 2) : n + 4])}"
            assert token not in ("vector", "ignoring", "without"), where
            if token in _AGGREGATIONS and parts[n + 1] in ("(", "by"):
                assert parts[n + 1] == "by", f"{where}: aggregation without `by`"
                assert set(RELEASE_LABELS) <= _label_list(parts, n + 2), where
            if token in ("and", "unless"):
                assert parts[n + 1] == "on", f"{where}: join without `on`"
            if token == "on":
                assert set(RELEASE_LABELS) <= _label_list(parts, n + 1), where


def test_alert_metrics_are_exported_by_the_code() -> None:
    exported = exported_sample_names()
    unknown = [
        f"{rule['alert']}: {name}"
        for rule in load_alert_rules()
        for name in sorted(metric_names(rule["expr"]) - exported)
    ]
    assert not unknown, "metrics the code does not export:\n" + "\n".join(unknown)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
