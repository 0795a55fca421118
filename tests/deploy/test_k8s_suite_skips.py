"""Without a cluster, `pytest k8s-tests` skips at once with one line saying what it needs (a
plain `pytest` collects k8s-tests/ too), and fails instead under LLMB_K8S_REQUIRE=1 (run.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.images_support import REPO

# A kube context whose API server is a closed port of this machine.
UNREACHABLE = """apiVersion: v1
kind: Config
clusters: [{name: closed, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: none}}]
contexts: [{name: closed, context: {cluster: closed, user: nobody}}]
current-context: closed
"""
FAST_S = 20.0


def run_suite(kubeconfig: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_K8S_")}
    environment.update(KUBECONFIG=str(kubeconfig), **env)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "k8s-tests", "-q", "-p", "no:randomly",
         "-p", "no:cacheprovider"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("config", "why"),
    [(None, "there is no kube context"), (UNREACHABLE, "the current kube context did not answer")],
    ids=["no-kubeconfig", "unreachable"],
)
def test_without_a_cluster_the_suite_skips_fast_with_one_line(
    tmp_path: Path, config: str | None, why: str
) -> None:
    kubeconfig = tmp_path / "config"
    if config is not None:
        kubeconfig.write_text(config, encoding="utf-8")
    result, elapsed_s = run_suite(kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 1, result.stdout
    assert "k8s-tests need a reachable Kubernetes cluster" in skips[0], skips
    assert "k8s-tests/run.sh" in skips[0] and why in skips[0], skips
    assert elapsed_s < FAST_S, elapsed_s


def test_run_sh_makes_a_missing_cluster_fail_the_suite(tmp_path: Path) -> None:
    result, _ = run_suite(tmp_path / "absent", LLMB_K8S_REQUIRE="1")
    assert result.returncode == 1, result.stdout
    assert "there is no kube context" in result.stdout
