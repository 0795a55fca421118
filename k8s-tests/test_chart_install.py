"""The chart on a real cluster: it installs and becomes ready, `helm test` streams an answer
through the API, and an upgrade keeps the generated Redis password."""

from __future__ import annotations

import base64
from typing import Any

from conftest import CHART_DIR, kubectl, merge

RELEASE = "llmb"


def _redis_password(namespace: str) -> str:
    encoded = kubectl(
        "get", "secret", f"{RELEASE}-llm-batcher-redis", "--namespace", namespace,
        "--output", "jsonpath={.data.redis-password}",
    )  # fmt: skip
    return base64.b64decode(encoded).decode()


def test_install_test_and_upgrade(namespace: str, base_values: dict[str, Any]) -> None:
    import helm_python

    with helm_python.Config(namespace=namespace) as helm:
        release = helm.install(
            CHART_DIR, RELEASE, base_values, namespace=namespace, wait="watcher", timeout=300
        )
        try:
            assert release["status"] == "deployed", release
            password = _redis_password(namespace)
            assert len(password) == 32

            # helm test: the hook pod streams one /generate answer and checks it.
            report = helm.test(RELEASE, timeout=180, logs=True)
            assert "OK: " in report.get("logs", ""), report

            # An upgrade renders the Secret again: `lookup` must keep the live password.
            upgraded = merge(base_values, {"config": {"logLevel": "DEBUG"}})
            helm.upgrade(
                CHART_DIR, RELEASE, upgraded, namespace=namespace, wait="watcher", timeout=300
            )
            assert _redis_password(namespace) == password
            report = helm.test(RELEASE, timeout=180, logs=True)
            assert "OK: " in report.get("logs", ""), report
        finally:
            helm.uninstall(RELEASE, wait="watcher", timeout=180, ignore_not_found=True)
