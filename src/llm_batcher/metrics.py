"""Prometheus metrics of the API and the workers (names follow Prometheus conventions).

Metric objects are module-level, as prometheus-client intends; they hold no configuration and
open nothing. Labels stay bounded: outcomes, error codes, causes and batch sizes, never a task id
or a context.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# One registry per process kind, so that each exports only what it measures.
API_REGISTRY = CollectorRegistry(auto_describe=True)
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
for _registry in (API_REGISTRY, WORKER_REGISTRY):
    for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        _registry.register(_collector)

# Latencies of a batched LLM: tens of milliseconds (first token of a warm batch) to minutes.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
_WINDOW_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2)

# --- both -----------------------------------------------------------------------------------

BACKGROUND_TASK_CRASHES = Counter(
    "llm_batcher_background_task_crashes_total",
    "Crashes of a long-lived background task (restarted after each), by task name.",
    ["task"],
    registry=None,
)
API_REGISTRY.register(BACKGROUND_TASK_CRASHES)
WORKER_REGISTRY.register(BACKGROUND_TASK_CRASHES)

# --- API ------------------------------------------------------------------------------------

REQUESTS = Counter(
    "llm_batcher_requests_total",
    "Requests to /generate and the OpenAI-compatible endpoints by outcome: done, error, rejected,"
    " cancelled, closed (by shutdown), disconnected (client left mid-stream). `code` is the error"
    " code or refusal code; `endpoint` is generate, completions or chat.",
    ["outcome", "code", "endpoint"],
    registry=API_REGISTRY,
)
OPEN_STREAMS = Gauge(
    "llm_batcher_open_streams", "SSE streams open on this API process.", registry=API_REGISTRY
)
TTFT = Histogram(
    "llm_batcher_time_to_first_token_seconds",
    "From a request's arrival to its first token, for tasks that produced one.",
    buckets=_LATENCY_BUCKETS,
    registry=API_REGISTRY,
)
REQUEST_DURATION = Histogram(
    "llm_batcher_request_duration_seconds",
    "From a request's arrival to its `done` event.",
    buckets=_LATENCY_BUCKETS,
    registry=API_REGISTRY,
)
QUEUE_WAIT = Histogram(
    "llm_batcher_queue_wait_seconds",
    "From a request's arrival to the start of its batch.",
    buckets=_LATENCY_BUCKETS,
    registry=API_REGISTRY,
)
TOKENS_SENT = Counter(
    "llm_batcher_tokens_sent_total", "Token events sent to clients.", registry=API_REGISTRY
)

# --- queue (exported by the API, which always runs; refreshed from Redis) ---------------------

QUEUE_DEPTH = Gauge(
    "llm_batcher_queue_depth",
    "Tasks waiting that no worker holds yet (the autoscaling signal).",
    registry=API_REGISTRY,
)
QUEUE_IN_FLIGHT = Gauge(
    "llm_batcher_queue_in_flight", "Tasks held by workers, not yet finished.", registry=API_REGISTRY
)
WORKERS_LIVE = Gauge(
    "llm_batcher_workers_live",
    "Workers with a heartbeat younger than a lease.",
    registry=API_REGISTRY,
)
REDIS_UP = Gauge(
    "llm_batcher_redis_up",
    "1 if the last Redis check of this process succeeded.",
    registry=API_REGISTRY,
)

# --- worker -----------------------------------------------------------------------------------

BATCH_SIZE = Histogram(
    "llm_batcher_batch_size",
    "Tasks per LLM batch (mean = sum / count).",
    buckets=_BATCH_BUCKETS,
    registry=WORKER_REGISTRY,
)
BATCH_DURATION = Histogram(
    "llm_batcher_batch_duration_seconds",
    "Wall time of one LLM run, from spawn to exit.",
    buckets=_LATENCY_BUCKETS,
    registry=WORKER_REGISTRY,
)
WINDOW_WAIT = Histogram(
    "llm_batcher_batch_window_wait_seconds",
    "Time a batch waited for more tasks after its first one.",
    buckets=_WINDOW_BUCKETS,
    registry=WORKER_REGISTRY,
)
TASKS_RETRIED = Counter(
    "llm_batcher_tasks_retried_total",
    "Tasks retried alone after their batch failed.",
    registry=WORKER_REGISTRY,
)
TASKS_TAKEN_OVER = Counter(
    "llm_batcher_tasks_taken_over_total",
    "Tasks taken over from a worker whose lease lapsed.",
    registry=WORKER_REGISTRY,
)
TASKS_DEAD_LETTERED = Counter(
    "llm_batcher_tasks_dead_lettered_total",
    "Tasks ended after too many deliveries.",
    registry=WORKER_REGISTRY,
)
TASKS_FINISHED = Counter(
    "llm_batcher_tasks_finished_total",
    "Tasks a worker ended, by state and code.",
    ["state", "code"],
    registry=WORKER_REGISTRY,
)
LLM_FAILURES = Counter(
    "llm_batcher_llm_failures_total",
    "Failed LLM runs by cause: crashed, hung, bad_output, truncated, spawn.",
    ["cause"],
    registry=WORKER_REGISTRY,
)
TOKENS_RELAYED = Counter(
    "llm_batcher_tokens_relayed_total",
    "Tokens a worker wrote to Redis (duplicates skipped on a retry are not counted).",
    registry=WORKER_REGISTRY,
)
IN_FLIGHT = Gauge(
    "llm_batcher_worker_in_flight_tasks", "Tasks this worker holds.", registry=WORKER_REGISTRY
)
HEARTBEAT_AGE = Gauge(
    "llm_batcher_worker_heartbeat_age_seconds",
    "Seconds since this worker's last successful heartbeat.",
    registry=WORKER_REGISTRY,
)

WORKER_REDIS_UP = Gauge(
    "llm_batcher_redis_up",
    "1 if this worker reached Redis within the last lease.",
    registry=WORKER_REGISTRY,
)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)


# --- operator -------------------------------------------------------------------------------

OPERATOR_REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    OPERATOR_REGISTRY.register(_collector)
OPERATOR_REGISTRY.register(BACKGROUND_TASK_CRASHES)

CONSUMERS_REMOVED = Counter(
    "llm_batcher_operator_consumers_removed_total",
    "Worker consumers the operator removed from the group, by why: `pod gone` or `no pod`.",
    ["why"],
    registry=OPERATOR_REGISTRY,
)
TASKS_RECLAIMED = Counter(
    "llm_batcher_operator_tasks_reclaimed_total",
    "Tasks of gone workers the operator handed on to live ones at once.",
    registry=OPERATOR_REGISTRY,
)
POD_PATCHES = Counter(
    "llm_batcher_operator_pod_patches_total",
    "pod-deletion-cost patches, by outcome: `ok`, `failed`, or `deferred` by the rate limit.",
    ["outcome"],
    registry=OPERATOR_REGISTRY,
)
DEAD_LETTER_EVENTS = Counter(
    "llm_batcher_operator_dead_letter_events_total",
    "Kubernetes Events posted for dead-lettered tasks.",
    registry=OPERATOR_REGISTRY,
)
OPERATOR_LEADING = Gauge(
    "llm_batcher_operator_leading",
    "1 while this operator replica holds the lock and acts, else 0.",
    registry=OPERATOR_REGISTRY,
)
