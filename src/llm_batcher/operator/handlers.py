"""The kopf wiring: which events reach which plain function (build_registry).

Only `@kopf.on.event` watches pods: kopf never patches progress onto the pod, and never adds a
finalizer, so the operator, stopped or broken, can hold no pod back. The periodic work (the
sweep, the deletion costs, dead letters) is not a kopf timer: kopf runs timers per object and
puts a finalizer on each object to stop them; it runs as loops the startup handler starts
(service.py). Every handler gets the operator's state as kopf's ``memo``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from llm_batcher.settings import OperatorSettings

if TYPE_CHECKING:
    from llm_batcher.operator.service import Operator

log = logging.getLogger(__name__)


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, its ServiceAccount; elsewhere, the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def on_worker_pod(type: str | None, body: kopf.Body, memo: Operator, **_: Any) -> None:
    """A worker pod was listed, added, changed or deleted: a gone one's tasks go to live
    workers at once (reconcile.Reconciler.pod_event)."""
    await memo.reconciler.pod_event(type, body, act=memo.lead.acting)


async def on_startup(settings: kopf.OperatorSettings, memo: Operator, **_: Any) -> None:
    """Tune kopf, then start the periodic loops (they inherit kopf's API credentials)."""
    settings.posting.level = logging.WARNING  # kopf's own Events: only its failures
    # No listing or watching of namespaces and CRDs, which are cluster-wide: the Role grants
    # neither, and the one namespace to watch is known.
    settings.scanning.disabled = True
    memo.start_loops(settings)


async def on_cleanup(memo: Operator, **_: Any) -> None:
    """Stop the periodic loops and let another replica act at once."""
    await memo.stop_loops()


def leading(memo: Operator, **_: Any) -> bool:
    """Liveness detail: whether this replica holds the lock and acts."""
    return memo.lead.acting


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A registry of the operator's handlers; worker pods are those with the worker labels."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(on_startup)
    kopf.on.cleanup(registry=registry)(on_cleanup)
    kopf.on.probe(id="leading", registry=registry)(leading)
    kopf.on.event("v1", "pods", labels=settings.worker_labels, registry=registry)(on_worker_pod)
    return registry
