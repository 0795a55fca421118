"""values.schema.json, as Helm applies it: typos and wrong types are refused before anything
renders, and every scenario passes."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import pytest
import yaml

from tests.deploy import values_table
from tests.deploy.support import CHART_DIR, SCENARIOS, chart


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_are_accepted(scenario: str) -> None:
    chart().validate_schema(SCENARIOS[scenario])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        # typos: unknown keys at every level
        ({"wroker": {}}, "additional properties 'wroker'"),
        ({"api": {"replicas": 3}}, "additional properties 'replicas'"),
        ({"worker": {"config": {"maxBatchSize": 8}}}, "additional properties 'maxBatchSize'"),
        ({"worker": {"autoscaling": {"maxReplica": 8}}}, "additional properties 'maxReplica'"),
        ({"redis": {"auth": {"existingSecretKey": "pw"}}}, "existingSecretKey"),
        ({"monitoring": {"serviceMonitor": {"labels": {}}}}, "additional properties 'labels'"),
        # wrong types and values
        ({"api": {"replicaCount": "2"}}, "/api/replicaCount"),
        ({"worker": {"config": {"windowMs": 12.5}}}, "/worker/config/windowMs"),
        ({"worker": {"config": {"maxBatch": 0}}}, "/worker/config/maxBatch"),
        ({"config": {"logLevel": "info"}}, "/config/logLevel"),
        ({"config": {"leaseMs": 100}}, "/config/leaseMs"),
        ({"config": {"keyPrefix": "my prefix"}}, "/config/keyPrefix"),
        ({"api": {"config": {"port": 70000}}}, "/api/config/port"),
        ({"worker": {"autoscaling": {"mode": "kedaa"}}}, "/worker/autoscaling/mode"),
        ({"worker": {"autoscaling": {"minReplicas": 0}}}, "/worker/autoscaling/minReplicas"),
        ({"worker": {"mock": {"ttftMs": "fast"}}}, "/worker/mock/ttftMs"),
        ({"redis": {"enabled": "false"}}, "/redis/enabled"),
        ({"api": {"image": {"pullPolicy": "Sometimes"}}}, "/api/image/pullPolicy"),
        ({"commonLabels": {"tier": 1}}, "/commonLabels/tier"),
        # Redis: an external URL is required, and it must not carry the password
        ({"redis": {"enabled": False}}, "/externalRedis/url"),
        ({"redis": {"enabled": False}, "externalRedis": {"url": "localhost:6379"}}, "pattern"),
        (
            {"redis": {"enabled": False}, "externalRedis": {"url": "redis://:s3cret@db:6379/0"}},
            "pattern",
        ),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart().validate_schema(values)
    assert complaint in str(refused.value)


def test_bad_values_fail_lint_too() -> None:
    report = helm_python.lint(CHART_DIR, {"api": {"replicas": 3}}, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


def test_values_and_schema_describe_the_same_tree() -> None:
    """Every key of values.yaml is in the schema, and every setting the schema describes has a
    default in values.yaml (shared definitions such as probe timings may list more)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str, shared: bool) -> None:
        if "$ref" in node:
            node, shared = schema["definitions"][node["$ref"].rsplit("/", 1)[1]], True
        if not isinstance(value, dict) or node.get("additionalProperties") is not False:
            return
        known = set(node["properties"])
        assert set(value) <= known, f"{path}: not in the schema: {set(value) - known}"
        assert shared or known <= set(value), f"{path}: no default for {known - set(value)}"
        for key, child in value.items():
            walk(child, node["properties"][key], f"{path}.{key}", shared)

    walk(values, schema, "values", shared=False)


def _doc_comment_before(lines: list[str], i: int) -> bool:
    """Is line i preceded by a comment block that contains a `# --` line?"""
    j = i - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        if lines[j].strip().startswith("# --"):
            return True
        j -= 1
    return False


def test_every_value_has_a_comment() -> None:
    """Every value in values.yaml has a `# --` comment, on itself or on the block holding it."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        documented = _doc_comment_before(lines, i) or any(d for _, d in ancestors)
        _, _, value = stripped.removeprefix("- ").partition(":")
        if value.strip() and not documented:
            undocumented.append(f"line {i + 1}: {stripped}")
        ancestors.append((indent, documented))
    assert not undocumented, undocumented


def test_the_readme_documents_every_value() -> None:
    """The README's values table is the one values.yaml makes (`python -m
    tests.deploy.values_table` rewrites it): every documented key, its default, its comment."""
    readme = (CHART_DIR / "README.md").read_text()
    values_text = (CHART_DIR / "values.yaml").read_text()
    paths = [".".join(path) for path, _ in values_table.documented(values_text)]
    assert len(paths) > 100
    missing = [p for p in paths if f"| `{p}` |" not in readme]
    assert not missing, f"not in the README's values table: {missing}"
    start, end = values_table.readme_table(readme)
    assert readme[start:end] == values_table.table(values_text), (
        "the README's values table is out of date: python -m tests.deploy.values_table"
    )
