"""Live-cluster tests of the Helm chart: opt-in, run with `pytest k8s-tests`.

They install the chart into a namespace of their own in the current kube context (kind,
minikube, ...) and remove it afterwards. Without a reachable cluster, kubectl or the
helm-python-sdk they are skipped, with the reason. The images must be in the cluster first,
e.g. `kind load docker-image llm-batcher-api:0.1.0 llm-batcher-worker:0.1.0`, or name others
in a values file given as LLMB_K8S_VALUES.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[1] / "charts" / "llm-batcher"


def kubectl(*args: str, timeout_s: float = 60) -> str:
    """Run kubectl on the current context; its stdout, or CalledProcessError with stderr."""
    result = subprocess.run(
        ["kubectl", *args], capture_output=True, text=True, timeout=timeout_s, check=True
    )
    return result.stdout


def _cluster_problem() -> str | None:
    """Why these tests cannot run here, or None."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    try:
        import helm_python  # noqa: F401
    except ImportError:
        return "helm-python-sdk is not installed (pip install helm-python-sdk)"
    try:
        kubectl("version", "--request-timeout=5s", timeout_s=15)
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or exc.stdout).strip().splitlines()
        return f"no reachable Kubernetes cluster in the current kube context ({lines[-1]})"
    except subprocess.TimeoutExpired:
        return "no reachable Kubernetes cluster: the current kube context did not answer in 15 s"
    return None


@pytest.fixture(scope="session")
def cluster() -> None:
    """Skips the test, saying why, unless the current kube context reaches a cluster."""
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def base_values() -> dict[str, Any]:
    """Values for a small test install, plus those of LLMB_K8S_VALUES (image overrides)."""
    values: dict[str, Any] = {
        "redis": {"persistence": {"size": "256Mi"}},
        # No prometheus-adapter on a bare test cluster: a fixed pair of workers.
        "worker": {"autoscaling": {"enabled": False}, "replicaCount": 2},
    }
    extra = os.environ.get("LLMB_K8S_VALUES")
    if extra:
        values = merge(values, yaml.safe_load(Path(extra).read_text()) or {})
    return values


@pytest.fixture
def namespace(cluster: None) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards (with everything in it)."""
    name = f"llmb-k8s-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values merged the way Helm merges a values file over others."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
