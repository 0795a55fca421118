"""The release under test, as the Kubernetes API and Helm see it: its pods by component, their
logs and events, its autoscaler, and `helm` itself. Every call is bounded."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REQUEST_TIMEOUT_S = 30
"""The longest one Kubernetes API call may take."""
POLL_S = 0.5
"""How often a wait asks the API server again (each poll is a request)."""
KEDA = ("keda.sh", "v1alpha1", "scaledobjects")
MERGE_PATCH = "application/merge-patch+json"  # a null removes an annotation

CHART_DIR = Path(__file__).resolve().parents[1] / "charts" / "llm-batcher"


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition()`` until it returns something true (returned); fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def pod_ready(pod: Any) -> bool:
    """Ready, and not on its way out."""
    if pod.metadata.deletion_timestamp is not None:
        return False
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def log_time(line: dict[str, Any]) -> float:
    """The epoch seconds of one JSON log line (`time`: 2026-01-02T03:04:05.678Z)."""
    stamp = dt.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=dt.UTC).timestamp()


@dataclass
class Release:
    """One installed release of the chart: its namespace and the names of its objects."""

    name: str
    namespace: str
    core: Any
    apps: Any
    custom: Any
    autoscaling: Any

    def selector(self, component: str | None = None) -> str:
        labels = f"app.kubernetes.io/instance={self.name}"
        return labels + (f",app.kubernetes.io/component={component}" if component else "")

    # --- pods ---------------------------------------------------------------------------------

    def pods(self, component: str) -> list[Any]:
        found = self.core.list_namespaced_pod(
            self.namespace, label_selector=self.selector(component),
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        return list(found.items)

    def ready_pods(self, component: str) -> list[Any]:
        return [p for p in self.pods(component) if pod_ready(p)]

    def ready_pod_name(self, component: str) -> str:
        """A ready pod of the component (the newest), or AssertionError after 120 s."""
        pods = wait_for(lambda: self.ready_pods(component), 120, f"a ready {component} pod")
        newest = max(pods, key=lambda p: p.metadata.creation_timestamp)
        return str(newest.metadata.name)

    def delete_pod(self, name: str, grace_period_s: int | None = None) -> None:
        self.core.delete_namespaced_pod(
            name, self.namespace, grace_period_seconds=grace_period_s,
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip

    def pod_gone(self, name: str) -> bool:
        try:
            self.core.read_namespaced_pod(name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    def logs(
        self, pod: str, container: str | None = None, tail: int | None = None,
        since_s: int | None = None,
    ) -> str:  # fmt: skip
        """A pod's log ('' when it has none yet or is gone)."""
        try:
            text = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=container, tail_lines=tail,
                since_seconds=since_s, _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
            return str(text)
        except ApiException as exc:
            if exc.status in (400, 404):
                return ""
            raise

    def json_logs(self, component: str, since_s: int = 900) -> Iterator[tuple[str, dict[str, Any]]]:
        """(pod, line) for the JSON log lines of the component's current pods, of the last
        ``since_s`` seconds (a test's own, not the whole history of a long-lived pod)."""
        for pod in self.pods(component):
            name = pod.metadata.name
            for text in self.logs(name, container=component, since_s=since_s).splitlines():
                if text.startswith("{"):
                    try:
                        yield name, json.loads(text)
                    except ValueError:
                        continue

    # --- workloads ----------------------------------------------------------------------------

    def deployment(self, component: str) -> Any | None:
        """The release's Deployment of a component, or None when it has none."""
        found = self.apps.list_namespaced_deployment(
            self.namespace, label_selector=self.selector(component),
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        return found.items[0] if found.items else None

    def worker_replicas(self) -> int:
        """The worker Deployment's wanted replicas (what the autoscaler set)."""
        deployment = self.deployment("worker")
        assert deployment is not None, "the release has no worker Deployment"
        return int(deployment.spec.replicas or 0)

    def rolled_out(self, component: str) -> bool:
        """The Deployment's current spec is observed, updated and available on every replica."""
        d = self.deployment(component)
        if d is None:
            return False
        wanted, status = d.spec.replicas or 0, d.status
        return bool(
            (status.observed_generation or 0) >= d.metadata.generation
            and (status.updated_replicas or 0) == wanted
            and (status.available_replicas or 0) == wanted
            and (status.replicas or 0) == wanted
        )

    def redis_ready(self) -> bool:
        sets = self.apps.list_namespaced_stateful_set(
            self.namespace, label_selector=self.selector("redis"),
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        return all((s.status.ready_replicas or 0) == s.spec.replicas for s in sets.items)

    def scaled_object(self) -> dict[str, Any] | None:
        """The worker's KEDA ScaledObject, or None (no KEDA, or mode hpa)."""
        try:
            found = self.custom.list_namespaced_custom_object(
                *KEDA[:2], self.namespace, KEDA[2], label_selector=self.selector("worker"),
                _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:  # KEDA's CRD is not installed
                return None
            raise
        items: list[dict[str, Any]] = found["items"]
        return items[0] if items else None

    def worker_hpa(self) -> Any | None:
        found = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(
            self.namespace, label_selector=self.selector("worker"),
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        return found.items[0] if found.items else None

    def pause_keda(self, replicas: int | None) -> None:
        """Hold the ScaledObject at ``replicas`` (KEDA's paused-replicas), or let it scale."""
        scaled = self.scaled_object()
        assert scaled is not None
        value = None if replicas is None else str(replicas)
        patch = {"metadata": {"annotations": {"autoscaling.keda.sh/paused-replicas": value}}}
        self.custom.patch_namespaced_custom_object(
            *KEDA[:2], self.namespace, KEDA[2], scaled["metadata"]["name"], patch,
            _request_timeout=REQUEST_TIMEOUT_S, _content_type=MERGE_PATCH,
        )  # fmt: skip

    def scale_workers(self, replicas: int) -> None:
        deployment = self.deployment("worker")
        assert deployment is not None
        self.apps.patch_namespaced_deployment_scale(
            deployment.metadata.name, self.namespace, {"spec": {"replicas": replicas}},
            _request_timeout=REQUEST_TIMEOUT_S, _content_type=MERGE_PATCH,
        )  # fmt: skip

    @contextlib.contextmanager
    def workers_held_at(self, replicas: int) -> Iterator[None]:
        """Exactly ``replicas`` workers inside (ready ones, or none at all for 0), whatever the
        load: KEDA paused at that count, or the Deployment scaled to it. Under an HPA, which
        cannot be paused, the test is skipped."""
        if self.scaled_object() is not None:
            self.pause_keda(replicas)
            restore: Callable[[], None] = lambda: self.pause_keda(None)  # noqa: E731
        elif self.worker_hpa() is None:
            before = self.worker_replicas()
            self.scale_workers(replicas)
            restore = lambda: self.scale_workers(before)  # noqa: E731
        else:
            pytest.skip("an HPA scales the workers: the test cannot hold their number")
        try:
            if replicas == 0:
                wait_for(lambda: not self.pods("worker"), 180, "the workers to leave")
            else:
                wait_for(
                    lambda: len(self.ready_pods("worker")) >= replicas, 300,
                    f"{replicas} ready workers",
                )  # fmt: skip
            yield
        finally:
            restore()

    # --- the namespace, for a failure report ------------------------------------------------------

    def events(self) -> list[Any]:
        found = self.core.list_namespaced_event(self.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        return sorted(found.items, key=lambda e: str(e.last_timestamp or e.event_time or ""))

    def dump(self, tail: int = 100) -> str:
        """The namespace's pods with the tail of their logs, and its events: what a failure
        report needs. Never raises: it is called when something already went wrong."""
        out: list[str] = []
        try:
            for pod in self.core.list_namespaced_pod(
                self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            ).items:
                name, phase = pod.metadata.name, pod.status.phase
                out.append(f"--- pod {name} ({phase}, ready={pod_ready(pod)})")
                for container in pod.spec.containers:
                    out.append(f"    [{container.name}]")
                    out.append(self.logs(name, container=container.name, tail=tail))
            out.append("--- events")
            for event in self.events():
                obj = event.involved_object
                out.append(
                    f"{event.last_timestamp} {event.type} {obj.kind}/{obj.name} "
                    f"{event.reason}: {event.message}"
                )
        except Exception as exc:  # the report is best-effort; the test failed already
            out.append(f"(could not read the namespace: {exc})")
        return "\n".join(out)


def helm(*args: str, timeout_s: float = 600) -> str:
    """Run the helm CLI (bounded); its stdout, or AssertionError with its output."""
    binary = shutil.which("helm")
    assert binary is not None, "helm is not on PATH"
    result = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def release_from_config(name: str, namespace: str) -> Release:
    """Clients for the current kube context (load_kube_config was called)."""
    return Release(
        name, namespace, client.CoreV1Api(), client.AppsV1Api(), client.CustomObjectsApi(),
        client.AutoscalingV2Api(),
    )  # fmt: skip
