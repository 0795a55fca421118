"""Worker pod bodies shaped as the Kubernetes API sends them in watch events."""

from __future__ import annotations

from typing import Any

WORKER_LABELS = {
    "app.kubernetes.io/name": "llm-batcher",
    "app.kubernetes.io/instance": "demo",
    "app.kubernetes.io/component": "worker",
}


def worker_pod(
    name: str,
    *,
    phase: str = "Running",
    deleting: bool = False,
    container_state: dict[str, Any] | None = None,
    reason: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A worker pod; ``container_state`` is its one container's state (default: running)."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "llmb",
        "uid": f"uid-{name}",
        "labels": dict(WORKER_LABELS),
        "annotations": dict(annotations or {}),
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        metadata["deletionGracePeriodSeconds"] = 30
    state = container_state or {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": "worker", "ready": "running" in state, "state": state}],
    }
    if reason:
        status["reason"] = reason
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}


TERMINATED = {"terminated": {"exitCode": 137, "reason": "Error"}}


def deleted(name: str) -> dict[str, Any]:
    """The last body of a pod whose DELETED event arrives: terminated, grace period over."""
    return worker_pod(name, deleting=True, container_state=TERMINATED)


def draining(name: str) -> dict[str, Any]:
    """A pod being deleted whose worker still finishes its batch after SIGTERM."""
    return worker_pod(name, deleting=True)


def failed(name: str) -> dict[str, Any]:
    """A pod whose worker crashed for good (restartPolicy aside: phase Failed)."""
    return worker_pod(name, phase="Failed", container_state=TERMINATED)


def evicted(name: str) -> dict[str, Any]:
    """A pod the kubelet evicted (node pressure): Failed, reason Evicted, containers gone."""
    pod = worker_pod(name, phase="Failed", reason="Evicted", container_state=TERMINATED)
    pod["status"]["containerStatuses"] = []
    pod["status"]["message"] = "The node was low on resource: memory."
    return pod
