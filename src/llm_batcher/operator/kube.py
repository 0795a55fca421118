"""The two Kubernetes writes the operator makes outside a handler: a pod's deletion cost and an
Event on the workers' Deployment.

They go through kopf's own API client, with the credentials kopf logged in with (its vault is a
context variable, which the loops inherit by being started from a kopf startup handler,
service.py). That client is internal to kopf (hence the pin below 2 in pyproject.toml); a client
library of its own would mean a second login and a second connection pool for two calls.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kopf._cogs.clients import errors as kopf_errors
from kopf._cogs.clients import events as kopf_events
from kopf._cogs.clients import patching as kopf_patching
from kopf._cogs.structs import bodies as kopf_bodies
from kopf._cogs.structs import patches as kopf_patches
from kopf._cogs.structs import references as kopf_references

log = logging.getLogger(__name__)

PODS = kopf_references.Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
EVENTS = kopf_references.Resource(
    group="", version="v1", plural="events", kind="Event", namespaced=True
)


async def patch_pod(
    settings: kopf.OperatorSettings, namespace: str, name: str, patch: dict[str, Any]
) -> bool:
    """Merge-patch a pod; False if it is gone or the API refused (logged)."""
    try:
        body, _ = await kopf_patching.patch_obj(
            settings=settings,
            resource=PODS,
            namespace=kopf_references.NamespaceName(namespace),
            name=name,
            patch=kopf_patches.Patch(patch),
            logger=log,
        )
    except kopf_errors.APIError as exc:
        log.warning("could not patch pod %s: %s", name, exc)
        return False
    return body is not None


async def post_deployment_event(
    settings: kopf.OperatorSettings, namespace: str, deployment: str, reason: str, message: str
) -> None:
    """Post a Warning Event on a Deployment of ``namespace`` (a failure is logged by kopf)."""
    ref: kopf_bodies.ObjectReference = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment,
        "namespace": namespace,
    }
    await kopf_events.post_event(
        ref=ref,
        type="Warning",
        reason=reason,
        message=message,
        resource=EVENTS,
        settings=settings,
        logger=log,
    )
