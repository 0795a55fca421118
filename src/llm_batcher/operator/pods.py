"""Pure decisions about worker pods: is a pod gone, what is its consumer, what deletion cost it
should carry, and when a patch may go out. No I/O, so each is a plain function to test.

A pod's consumer is its name: the chart sets LLMB_WORKER_ID from metadata.name (the downward
API), and the worker uses its id as its consumer name in the group (protocol/consumers.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
"""The annotation a ReplicaSet reads on scale-down: pods with a lower cost go first."""


class PodState(StrEnum):
    """What a worker pod's event says about its worker."""

    LIVE = "live"  # running, or starting
    DRAINING = "draining"  # being deleted, containers still running: it finishes its batch
    GONE = "gone"  # deleted, failed, evicted, or every container terminated


def consumer_of(pod: Mapping[str, Any]) -> str:
    """The Redis consumer name of a worker pod: the pod's name."""
    return str(pod["metadata"]["name"])


def pod_state(event_type: str | None, pod: Mapping[str, Any]) -> PodState:
    """Whether the pod's worker still runs, from a watch event's type and the pod's body."""
    if event_type == "DELETED":
        return PodState.GONE
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):  # an evicted pod is Failed, too
        return PodState.GONE
    if not pod.get("metadata", {}).get("deletionTimestamp"):
        return PodState.LIVE
    containers = status.get("containerStatuses") or []
    if containers and all("terminated" in (c.get("state") or {}) for c in containers):
        return PodState.GONE
    return PodState.DRAINING if containers else PodState.GONE


def deletion_cost(held: int) -> str:
    """The pod-deletion-cost of a worker holding ``held`` tasks: an idle worker costs 0, so a
    scale-down removes idle workers first (best effort, as Kubernetes documents)."""
    return str(held)


def cost_patch(pod: Mapping[str, Any], held: int) -> dict[str, Any] | None:
    """The merge patch that brings the pod's deletion cost to ``held`` tasks; None if it is."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    wanted = deletion_cost(held)
    if annotations.get(DELETION_COST) == wanted:
        return None
    return {"metadata": {"annotations": {DELETION_COST: wanted}}}


@dataclass
class TokenBucket:
    """At most ``rate_per_s`` actions a second in the long run, ``burst`` at once."""

    rate_per_s: float
    burst: int
    _tokens: float = field(init=False)
    _at_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)

    def take(self, now_s: float) -> bool:
        """Spend one token if there is one, at monotonic time ``now_s``."""
        if self._at_s is not None:
            elapsed = max(0.0, now_s - self._at_s)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        self._at_s = now_s
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
