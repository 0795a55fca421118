"""The operator's pure decisions: pod states, deletion-cost patches, the patch rate limit."""

from __future__ import annotations

from llm_batcher.operator.pods import (
    DELETION_COST,
    PodState,
    TokenBucket,
    consumer_of,
    cost_patch,
    pod_state,
)
from tests.operator.pods import deleted, draining, evicted, failed, worker_pod


def test_a_pod_s_consumer_is_its_name() -> None:
    assert consumer_of(worker_pod("llmb-worker-7d9f-abcde")) == "llmb-worker-7d9f-abcde"


def test_pod_states() -> None:
    assert pod_state(None, worker_pod("w")) is PodState.LIVE  # listed at start
    assert pod_state("ADDED", worker_pod("w", phase="Pending", container_state={})) is PodState.LIVE
    assert pod_state("MODIFIED", worker_pod("w")) is PodState.LIVE
    assert pod_state("MODIFIED", draining("w")) is PodState.DRAINING
    assert pod_state("MODIFIED", deleted("w")) is PodState.GONE  # terminated, object not yet gone
    assert pod_state("DELETED", draining("w")) is PodState.GONE  # force-deleted
    assert pod_state("MODIFIED", failed("w")) is PodState.GONE
    assert pod_state("MODIFIED", evicted("w")) is PodState.GONE


def test_a_deleted_pod_that_never_started_is_gone() -> None:
    pod = worker_pod("w", phase="Pending", deleting=True)
    pod["status"]["containerStatuses"] = []
    assert pod_state("MODIFIED", pod) is PodState.GONE


def test_cost_patch_only_on_change() -> None:
    assert cost_patch(worker_pod("w"), 0) == {"metadata": {"annotations": {DELETION_COST: "0"}}}
    assert cost_patch(worker_pod("w", annotations={DELETION_COST: "3"}), 3) is None
    patch = cost_patch(worker_pod("w", annotations={DELETION_COST: "3"}), 1)
    assert patch == {"metadata": {"annotations": {DELETION_COST: "1"}}}


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)  # 0.8 of a token
    assert bucket.take(10.5)  # one token after 0.5 s at 2/s
    assert not bucket.take(10.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
