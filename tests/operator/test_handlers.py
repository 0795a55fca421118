"""The kopf wiring without a cluster: the registry holds the expected handlers with the worker
labels as their filter, no timer, daemon or change handler (so no finalizer and no progress
annotation on any pod); the handlers are plain functions that act on a real Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kopf._cogs.structs.bodies import Body
from kopf._core.intents.registries import _matches_labels
from redis.asyncio import Redis

from llm_batcher.operator.handlers import (
    build_registry,
    leading,
    on_cleanup,
    on_startup,
    on_worker_pod,
)
from llm_batcher.operator.service import Operator
from llm_batcher.protocol.consumers import consumer_holdings
from llm_batcher.settings import OperatorSettings
from tests.operator.pods import WORKER_LABELS, deleted, worker_pod
from tests.support.results import make_queue, submit

SELECTOR = ",".join(f"{k}={v}" for k, v in WORKER_LABELS.items())


@pytest.fixture
def settings(key_prefix: str) -> OperatorSettings:
    return OperatorSettings(namespace="llmb", worker_selector=SELECTOR, key_prefix=key_prefix)


@pytest.fixture
async def operator(settings: OperatorSettings, redis: Redis) -> AsyncIterator[Operator]:
    operator = Operator(settings, redis, replica="op-1")
    yield operator
    await operator.stop_loops()


def test_the_registry_watches_worker_pods_by_label_with_events_only(
    settings: OperatorSettings,
) -> None:
    registry = build_registry(settings)
    (watch,) = registry._watching.get_all_handlers()
    assert watch.fn is on_worker_pod
    assert watch.selector is not None
    assert (watch.selector.group, watch.selector.version) == ("", "v1")
    assert watch.selector.any_name == "pods"
    assert watch.labels == WORKER_LABELS
    # No timers or daemons (kopf guards each with a finalizer), no on.create/update/delete (which
    # store progress on the object and may add finalizers), no index and no webhook.
    assert list(registry._spawning.get_all_handlers()) == []
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._indexing.get_all_handlers()) == []
    assert list(registry._webhooks.get_all_handlers()) == []
    activities = {h.activity.value for h in registry._activities.get_all_handlers()}
    assert activities == {"authentication", "startup", "cleanup", "probe"}


def test_the_label_filter_selects_this_release_s_workers_only(settings: OperatorSettings) -> None:
    (watch,) = build_registry(settings)._watching.get_all_handlers()

    def selected(pod: dict[str, Any]) -> bool:
        cause = SimpleNamespace(body=Body(pod))  # what kopf's label filter reads of a cause
        return bool(_matches_labels(watch, cause, {}))  # type: ignore[arg-type]

    assert selected(worker_pod("w"))
    api_pod = worker_pod("a")
    api_pod["metadata"]["labels"]["app.kubernetes.io/component"] = "api"
    assert not selected(api_pod)
    other_release = worker_pod("o")
    other_release["metadata"]["labels"]["app.kubernetes.io/instance"] = "other"
    assert not selected(other_release)


async def test_the_pod_handler_releases_a_gone_pod_only_while_acting(
    operator: Operator, redis: Redis, key_prefix: str
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    await submit(queue, "a task")
    assert len(await queue.claims.read_new("llmb-worker-a", 1, None)) == 1

    await on_worker_pod(type="DELETED", body=Body(deleted("llmb-worker-a")), memo=operator)
    assert (await consumer_holdings(redis, queue.keys))["llmb-worker-a"] == 1  # not acting
    assert not leading(memo=operator)

    operator.lead.acting = True
    assert leading(memo=operator)
    await on_worker_pod(type="DELETED", body=Body(deleted("llmb-worker-a")), memo=operator)
    assert "llmb-worker-a" not in await consumer_holdings(redis, queue.keys)


async def test_startup_keeps_kopf_off_cluster_wide_resources(operator: Operator) -> None:
    """The Role grants pods and events in one namespace: kopf must not list namespaces or CRDs."""
    settings = kopf.OperatorSettings()
    await on_startup(settings=settings, memo=operator)
    try:
        assert settings.scanning.disabled
        assert settings.posting.level == logging.WARNING
    finally:
        await on_cleanup(memo=operator)
