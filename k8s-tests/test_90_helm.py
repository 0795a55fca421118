"""`helm test` passes on the release; `helm uninstall` leaves only what the chart README says
it keeps: Redis' PersistentVolumeClaim and the Secrets marked `helm.sh/resource-policy: keep`.
The uninstall runs only when LLMB_K8S_UNINSTALL=1 (run.sh sets it): it ends the release."""

from __future__ import annotations

import os

import pytest
from kube import Release, helm, wait_for

pytestmark = pytest.mark.timeout(900)

KEPT_SECRETS = ("-redis", "-api-keys")  # <fullname>-redis; <fullname>-api-keys with api.auth


def test_helm_test_passes(release: Release) -> None:
    # One worker held up: the hook's check waits 60 s (helmTest.timeoutS), about what KEDA
    # takes to wake a worker from zero (test_50 covers that wake-up).
    with release.workers_held_at(1):
        out = helm(
            "test", release.name, "--namespace", release.namespace, "--logs", "--timeout", "5m",
            timeout_s=360,
        )  # fmt: skip
    assert "Succeeded" in out, out
    assert "OK: " in out, out


def left_behind(release: Release) -> dict[str, list[str]]:
    """The release's objects still in the namespace, by kind."""
    selector = f"app.kubernetes.io/instance={release.name}"
    ns, core, apps = release.namespace, release.core, release.apps
    listings = {
        "Pod": core.list_namespaced_pod,
        "Service": core.list_namespaced_service,
        "ConfigMap": core.list_namespaced_config_map,
        "Secret": core.list_namespaced_secret,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim,
        "ServiceAccount": core.list_namespaced_service_account,
        "Deployment": apps.list_namespaced_deployment,
        "StatefulSet": apps.list_namespaced_stateful_set,
    }
    found = {
        kind: [
            o.metadata.name for o in list_(ns, label_selector=selector, _request_timeout=30).items
        ]
        for kind, list_ in listings.items()
    }
    return {kind: names for kind, names in found.items() if names}


def test_helm_uninstall_leaves_only_the_pvc_and_the_kept_secrets(release: Release) -> None:
    if os.environ.get("LLMB_K8S_UNINSTALL") != "1":
        pytest.skip("uninstalls the release: set LLMB_K8S_UNINSTALL=1 (run.sh does)")
    helm("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "5m")
    wait_for(
        lambda: set(left_behind(release)) <= {"Secret", "PersistentVolumeClaim"},
        300,
        "the release's pods and workloads to go",
    )
    left = left_behind(release)
    assert len(left.get("PersistentVolumeClaim", [])) == 1, left
    for name in left.get("Secret", []):
        assert name.endswith(KEPT_SECRETS), left
    assert any(name.endswith("-redis") for name in left.get("Secret", [])), left
