"""Unit tests of the alert rules (charts/llm-batcher/files/alerts.yaml) on synthetic series,
run by `promtool test rules` (skipped when promtool is not on PATH).

Every case runs beside two healthy releases: one in the same namespace, one of the same name in
another namespace. So an alert must fire for its own release only, with the `namespace` and
`release` labels it is routed on, and a healthy release must not hide a broken one (as
`max(llm_batcher_workers_live) == 0` over the whole cluster did). Series carry the labels of the
chart's ServiceMonitor: the API's and the workers' `job` differ, the release is the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.test_dashboards import (
    ALERT_NAMES,
    load_alert_rules,
    needs_promtool,
    run_promtool,
)

Series = list[dict[str, str]]


@dataclass(frozen=True)
class Release:
    """One Helm release's series, labelled as the chart's ServiceMonitor labels them."""

    namespace: str
    name: str

    def _series(self, component: str, pod: str, metric: str, values: str, **labels: str) -> Series:
        service = f"{self.name}-llm-batcher-{component}"
        target = {"namespace": self.namespace, "release": self.name, "job": service}
        target |= {"service": service, "instance": f"{pod}:9090", "pod": pod}
        text = ",".join(f'{k}="{v}"' for k, v in (target | labels).items())
        return [{"series": f"{metric}{{{text}}}", "values": values}]

    def gauge(self, metric: str, values: str) -> Series:
        """A queue gauge from two API replicas: every replica exports the same value."""
        return self.api(metric, values, pod="api-1") + self.api(metric, values, pod="api-2")

    def api(self, metric: str, values: str, pod: str = "api-1", **labels: str) -> Series:
        return self._series("api", f"{self.name}-{pod}", metric, values, **labels)

    def worker(self, metric: str, values: str, pod: str = "worker-1", **labels: str) -> Series:
        return self._series("worker", f"{self.name}-{pod}", metric, values, **labels)

    def alert(self, component: str = "") -> dict[str, str]:
        """The labels of this release's alert (`job` for alerts on both components)."""
        labels = {"namespace": self.namespace, "release": self.name}
        return labels | ({"job": f"{self.name}-llm-batcher-{component}"} if component else {})

    def healthy(self) -> Series:
        """45 minutes of a release that serves its traffic and alerts on nothing."""
        return (
            self.gauge(DEPTH, "2+0x45")
            + self.gauge(LIVE, "2+0x45")
            + self.gauge(REDIS_UP, "1+0x45")
            + self.worker(REDIS_UP, "1+0x45")
            + self.worker(FINISHED, "0+20x45", state="done", code="")
            + self.worker(BATCHES, "0+10x45")
            + self.worker(LLM_FAILURES, "0+0x45", cause="crashed")
            + self.worker(DEAD_LETTERED, "0+0x45")
            + self.worker(CRASHES, "0+0x45", task="heartbeat")
            + self.api(CRASHES, "0+0x45", task="result-hub")
            + self.api(REQUESTS, "0+100x45", outcome="done", code="", endpoint="generate")
            + self.api(REQUESTS, "0+1x45", outcome="error", code="llm_failed", endpoint="generate")
            + durations(self, **{"1": "0+101x45", "60": "0+101x45", "inf": "0+101x45"})
        )


def durations(release: Release, **by_le: str) -> Series:
    """Buckets of llm_batcher_request_duration_seconds by upper bound ("inf": +Inf)."""
    return [
        s
        for le, values in by_le.items()
        for s in release.api(DURATION, values, le=le.replace("inf", "+Inf"))
    ]


DEPTH, LIVE = "llm_batcher_queue_depth", "llm_batcher_workers_live"
REDIS_UP, REQUESTS = "llm_batcher_redis_up", "llm_batcher_requests_total"
DURATION = "llm_batcher_request_duration_seconds_bucket"
FINISHED, BATCHES = "llm_batcher_tasks_finished_total", "llm_batcher_batch_size_count"
LLM_FAILURES, DEAD_LETTERED = (
    "llm_batcher_llm_failures_total",
    "llm_batcher_tasks_dead_lettered_total",
)
CRASHES = "llm_batcher_background_task_crashes_total"

CHAT = Release("ml", "chat")  # the release under test in every case
EMBED = Release("ml", "embed")  # a second release with trouble, in some cases
# Beside every case: the same namespace, and the same release name in another namespace.
HEALTHY = [Release("ml", "search"), Release("staging", "chat")]

# (alert, what the case shows, input series, [(evaluation time, labels of each firing alert)])
Case = tuple[str, str, Series, list[tuple[str, list[dict[str, str]]]]]
ALERT_CASES: list[Case] = [
    (
        "LlmBatcherQueueStuck",
        "waiting tasks and no finished task, while the other releases progress",
        CHAT.gauge(DEPTH, "5+0x30") + CHAT.gauge(LIVE, "1+0x30"),
        [("4m", []), ("12m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherQueueStuck",
        "the workers' finished tasks are progress of the API's queue (their jobs differ)",
        CHAT.gauge(DEPTH, "5+0x30") + CHAT.worker(FINISHED, "0+10x30", state="done", code=""),
        [("12m", [])],
    ),
    (
        "LlmBatcherQueueStuck",
        "a draining queue is progress",
        CHAT.gauge(DEPTH, "60-2x30"),
        [("12m", [])],
    ),
    (
        "LlmBatcherQueueStuck",
        "two releases stuck: one alert each",
        CHAT.gauge(DEPTH, "5+0x30") + EMBED.gauge(DEPTH, "3+0x30"),
        [("12m", [CHAT.alert(), EMBED.alert()])],
    ),
    (
        "LlmBatcherQueueBacklog",
        "50 waiting tasks per worker",
        CHAT.gauge(DEPTH, "100+0x30") + CHAT.gauge(LIVE, "2+0x30"),
        [("5m", []), ("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherQueueBacklog",
        "15 per worker: depth is max() over replicas, not sum()",
        CHAT.gauge(DEPTH, "30+0x30") + CHAT.gauge(LIVE, "2+0x30"),
        [("15m", [])],
    ),
    (
        "LlmBatcherQueueBacklog",
        "another release's many workers do not serve this release's queue",
        CHAT.gauge(DEPTH, "100+0x30")
        + CHAT.gauge(LIVE, "2+0x30")
        + EMBED.gauge(DEPTH, "10+0x30")
        + EMBED.gauge(LIVE, "20+0x30"),
        [("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherHighLatencyP99",
        "every request between 60 s and 120 s",
        durations(CHAT, **{"1": "0+0x30", "60": "0+0x30", "120": "0+10x30", "inf": "0+10x30"}),
        [("5m", []), ("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherHighLatencyP99",
        "every request under 1 s",
        durations(CHAT, **{"1": "0+10x30", "60": "0+10x30", "120": "0+10x30", "inf": "0+10x30"}),
        [("15m", [])],
    ),
    (
        "LlmBatcherHighErrorRate",
        "10% errors, abandoned requests left out of the ratio",
        CHAT.api(REQUESTS, "0+90x30", outcome="done", code="")
        + CHAT.api(REQUESTS, "0+10x30", outcome="error", code="llm_failed")
        + CHAT.api(REQUESTS, "0+100x30", outcome="disconnected", code="")
        + CHAT.api(REQUESTS, "0+100x30", outcome="cancelled", code=""),
        [("5m", []), ("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherHighErrorRate",
        "10% refused with queue_full, and no error series at all",
        CHAT.api(REQUESTS, "0+90x30", outcome="done", code="")
        + CHAT.api(REQUESTS, "0+10x30", outcome="rejected", code="queue_full"),
        [("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherHighErrorRate",
        "abandoned requests and client refusals are no errors",
        CHAT.api(REQUESTS, "0+96x30", outcome="done", code="")
        + CHAT.api(REQUESTS, "0+4x30", outcome="error", code="llm_failed")
        + CHAT.api(REQUESTS, "0+100x30", outcome="disconnected", code="")
        + CHAT.api(REQUESTS, "0+100x30", outcome="cancelled", code="")
        + CHAT.api(REQUESTS, "0+50x30", outcome="rejected", code="invalid_body"),
        [("15m", [])],
    ),
    (
        "LlmBatcherHighErrorRate",
        "10% errors on the OpenAI-compatible endpoints, on two API pods: every one counts",
        CHAT.api(REQUESTS, "0+60x30", outcome="done", code="", endpoint="generate")
        + CHAT.api(REQUESTS, "0+30x30", "api-2", outcome="done", code="", endpoint="chat")
        + CHAT.api(
            REQUESTS, "0+5x30", "api-2", outcome="error", code="llm_crashed", endpoint="chat"
        )
        + CHAT.api(
            REQUESTS, "0+5x30", outcome="rejected", code="queue_full", endpoint="completions"
        ),
        [("5m", []), ("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherNoLiveWorkers",
        "tasks waiting and no live worker, while the other releases have workers",
        CHAT.gauge(LIVE, "0+0x30") + CHAT.gauge(DEPTH, "3+0x30"),
        [("3m", []), ("7m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherNoLiveWorkers",
        "no live worker and no waiting task: scaled to zero",
        CHAT.gauge(LIVE, "0+0x30") + CHAT.gauge(DEPTH, "0+0x30"),
        [("10m", [])],
    ),
    (
        "LlmBatcherNoLiveWorkers",
        "scaled to zero, a task arrives at 10m and a worker is live 2m later",
        CHAT.gauge(LIVE, "0x11 1x20") + CHAT.gauge(DEPTH, "0x9 1x3 0x20"),
        [("11m", []), ("20m", [])],
    ),
    (
        "LlmBatcherNoLiveWorkers",
        "one live worker",
        CHAT.gauge(LIVE, "1+0x30") + CHAT.gauge(DEPTH, "3+0x30"),
        [("10m", [])],
    ),
    (
        "LlmBatcherNoLiveWorkers",
        "two releases without workers: one alert each",
        CHAT.gauge(LIVE, "0+0x30")
        + CHAT.gauge(DEPTH, "3+0x30")
        + EMBED.gauge(LIVE, "0+0x30")
        + EMBED.gauge(DEPTH, "1+0x30"),
        [("7m", [CHAT.alert(), EMBED.alert()])],
    ),
    (
        "LlmBatcherDeadLetters",
        "one dead letter at 3m, then none",
        CHAT.worker(DEAD_LETTERED, "0 0 0 1+0x30"),
        [("2m", []), ("5m", [CHAT.alert()]), ("25m", [])],
    ),
    (
        "LlmBatcherBackgroundTaskCrashes",
        "the pub/sub reader crashed once at 3m, then ran",
        CHAT.api(CRASHES, "0 0 0 1+0x30", task="result-hub"),
        [("2m", []), ("5m", [CHAT.alert("api")]), ("25m", [])],
    ),
    (
        "LlmBatcherBackgroundTaskCrashes",
        "the API's reader and a worker's heartbeat crashed: one alert per job",
        CHAT.api(CRASHES, "0 0 0 1+0x30", task="result-hub")
        + CHAT.worker(CRASHES, "0 0 0 2+0x30", task="heartbeat"),
        [("5m", [CHAT.alert("api"), CHAT.alert("worker")])],
    ),
    (
        "LlmBatcherLlmFailures",
        "20% of LLM runs fail",
        CHAT.worker(BATCHES, "0+10x30") + CHAT.worker(LLM_FAILURES, "0+2x30", cause="crashed"),
        [("5m", []), ("15m", [CHAT.alert()])],
    ),
    (
        "LlmBatcherLlmFailures",
        "every run fails, but fewer than 3 failures in 10m",
        CHAT.worker(BATCHES, "0+0.2x40") + CHAT.worker(LLM_FAILURES, "0+0.2x40", cause="hung"),
        [("15m", []), ("30m", [])],
    ),
    (
        "LlmBatcherRedisDown",
        "a worker lost Redis at 2m",
        CHAT.gauge(REDIS_UP, "1+0x30") + CHAT.worker(REDIS_UP, "1 1 0+0x28"),
        [("1m", []), ("4m", [CHAT.alert("worker")])],
    ),
    (
        "LlmBatcherRedisDown",
        "every process reaches Redis",
        CHAT.gauge(REDIS_UP, "1+0x30") + CHAT.worker(REDIS_UP, "1+0x30"),
        [("5m", [])],
    ),
]


def test_alert_cases_cover_every_alert() -> None:
    firing = {alert for alert, _, _, checks in ALERT_CASES if any(f for _, f in checks)}
    quiet = {alert for alert, _, _, checks in ALERT_CASES if not all(f for _, f in checks)}
    assert firing == ALERT_NAMES, "every alert needs a case where it fires"
    assert quiet == ALERT_NAMES, "every alert needs a case where it stays quiet"


def _promtool_test(tmp_path: Path, tests: list[dict[str, object]]) -> None:
    """Run `promtool test rules` on the alerts with these test groups."""
    # promtool compares annotations too: test a copy of the rules without them.
    rules = [{k: r[k] for k in ("alert", "expr", "for", "labels")} for r in load_alert_rules()]
    rules_path = tmp_path / "rules.yaml"  # JSON is YAML
    rules_path.write_text(json.dumps({"groups": [{"name": "llm-batcher", "rules": rules}]}))
    tests_path = tmp_path / "tests.yaml"
    tests_path.write_text(
        json.dumps({"rule_files": [str(rules_path)], "evaluation_interval": "1m", "tests": tests})
    )
    result = run_promtool("test", "rules", str(tests_path))
    assert result.returncode == 0, result.stdout + result.stderr


def _healthy() -> Series:
    return [s for release in HEALTHY for s in release.healthy()]


@needs_promtool
def test_alerts_fire_per_release_on_synthetic_series(tmp_path: Path) -> None:
    rule_labels = {r["alert"]: r["labels"] for r in load_alert_rules()}
    tests = [
        {
            "name": f"{alert}: {what}",
            "interval": "1m",
            "input_series": series + _healthy(),
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": rule_labels[alert] | f} for f in firing],
                }
                for at, firing in checks
            ],
        }
        for alert, what, series, checks in ALERT_CASES
    ]
    _promtool_test(tmp_path, tests)


@needs_promtool
def test_the_healthy_releases_alert_on_nothing(tmp_path: Path) -> None:
    """The background of every case is quiet on its own, so a case's alerts are its own."""
    checks = [
        {"eval_time": at, "alertname": alert, "exp_alerts": []}
        for alert in sorted(ALERT_NAMES)
        for at in ("5m", "15m", "40m")
    ]
    _promtool_test(
        tmp_path, [{"interval": "1m", "input_series": _healthy(), "alert_rule_test": checks}]
    )
