"""The GitHub Actions workflows: valid against GitHub's workflow schema (the copy
check-jsonschema vendors, so no network), and the kind job pins what it installs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.images_support import REPO
from tests.support.tools import find_tool

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
K8S_WORKFLOW = REPO / ".github" / "workflows" / "k8s.yaml"
VERSION = re.compile(r"^v\d+\.\d+\.\d+$")


def schema_errors(workflow: Path) -> str | None:
    """check-jsonschema's complaint about the workflow, or None when it is valid."""
    tool = find_tool("check-jsonschema")
    assert tool is not None  # requires_tool
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return None if result.returncode == 0 else result.stdout + result.stderr


@pytest.mark.requires_tool("check-jsonschema")
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_the_workflow_is_valid(workflow: Path) -> None:
    assert schema_errors(workflow) is None, schema_errors(workflow)


@pytest.mark.requires_tool("check-jsonschema")
def test_the_schema_check_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = yaml.safe_load(K8S_WORKFLOW.read_text(encoding="utf-8"))
    broken["jobs"]["kind"]["steps"][0] = {"uses": "actions/checkout@v4", "run": "both"}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert schema_errors(path) is not None


def test_the_kind_job_pins_kind_kubectl_helm_and_its_actions() -> None:
    workflow = yaml.safe_load(K8S_WORKFLOW.read_text(encoding="utf-8"))
    steps = workflow["jobs"]["kind"]["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    for step in uses.values():
        assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", step["uses"]), step
    kind = uses["helm/kind-action"]["with"]
    assert VERSION.match(kind["version"]) and VERSION.match(kind["kubectl_version"]), kind
    assert kind["install_only"] is True, "run.sh creates (and deletes) the cluster"
    assert VERSION.match(uses["azure/setup-helm"]["with"]["version"])
    assert steps[-1]["run"] == "k8s-tests/run.sh"
    assert workflow["jobs"]["kind"]["timeout-minutes"] > 90  # run.sh bounds its suite at 90
