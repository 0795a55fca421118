"""Latency quantiles and the slowest requests over a sliding window, shared by all API replicas.

Every task's outcome is recorded in Redis where the task ends (protocol/lua/ending.lua), so any
replica computes the same figures. The summary itself is a pure function of the records.

Two views: the full one (`llm-batcher stats`, or /stats with an admin key) names each slow task
and shows the start of its context; the public one keeps every figure but neither, since a task
id is enough to read the task's answer when API keys are off.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import Any

from llm_batcher.clock import now_ms
from llm_batcher.protocol.queue import TaskQueue

MAX_RECORDS_READ = 10_000
"""Most outcome records one report reads (about 2 MB): the figures then come from the latest
ones of the window, and `sampled` says how many."""

PRIVATE_FIELDS = ("task_id", "context_preview")
"""What the public view leaves out of each slow request."""


def quantiles(values: list[float]) -> dict[str, float | int | None]:
    """p50, p90, p99 (nearest rank) and max of the values, and their count."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": ordered[-1],
        "count": len(ordered),
    }


def summarize(
    records: list[dict[str, Any]], *, window_s: float, slowest: int, in_window: int | None = None
) -> dict[str, Any]:
    """The /stats figures of the records of one window (``in_window``: how many tasks ended in
    it, when ``records`` holds only the latest of them)."""
    done = [r for r in records if r.get("outcome") == "done"]
    codes = Counter(r.get("code") or "" for r in records if r.get("outcome") != "done")
    by_total = sorted(records, key=lambda r: r.get("total_ms") or 0, reverse=True)
    return {
        "window_s": window_s,
        "ttft_ms": quantiles([r["ttft_ms"] for r in done if r.get("ttft_ms") is not None]),
        "total_ms": quantiles([r["total_ms"] for r in done if r.get("total_ms") is not None]),
        "queue_ms": quantiles([r["queue_ms"] for r in done if r.get("queue_ms") is not None]),
        "sampled": len(records),
        "requests": {
            "total": len(records) if in_window is None else max(in_window, len(records)),
            "done": len(done),
            "error": sum(codes.values()),
            "by_code": dict(sorted(codes.items())),
        },
        "slowest": [_slow_entry(r) for r in by_total[:slowest]],
    }


def _slow_entry(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_id": record.get("task_id"),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((record.get("at_ms") or 0) / 1000)),
        "context_preview": str(record.get("preview") or ""),
        "outcome": record.get("outcome"),
        "code": record.get("code") or None,
        "queue_ms": record.get("queue_ms"),
        "ttft_ms": record.get("ttft_ms"),
        "total_ms": record.get("total_ms"),
        "batch_size": record.get("batch_size"),
        "worker": record.get("worker"),
    }


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what names a task or shows its context."""
    slowest = [
        {k: v for k, v in entry.items() if k not in PRIVATE_FIELDS}
        for entry in report.get("slowest") or []
    ]
    return {**report, "slowest": slowest}


async def collect(
    queue: TaskQueue, *, window_s: float, slowest: int, lease_ms: int
) -> dict[str, Any]:
    """Everything /stats shows, in the full view: the window's figures, queue depth and live
    workers."""
    records, in_window = await queue.results.outcome_records(window_s, MAX_RECORDS_READ)
    report = summarize(records, window_s=window_s, slowest=slowest, in_window=in_window)
    unseen = [s for s in report["slowest"] if not s["context_preview"] and s["task_id"]]
    for entry, preview in zip(
        unseen, await queue.results.previews([s["task_id"] for s in unseen]), strict=True
    ):
        entry["context_preview"] = preview
    depth = await queue.claims.depth(lease_ms)
    report["queue_depth"] = depth.waiting
    report["in_flight"] = depth.in_flight
    report["workers"] = await queue.claims.live_workers(now_ms(), lease_ms)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The /stats report as text tables for the terminal."""
    lines = [
        f"window {report.get('window_s')} s · queue depth {report.get('queue_depth')} · "
        f"in flight {report.get('in_flight')} · live workers {report.get('workers')}",
    ]
    requests = report.get("requests") or {}
    codes = ", ".join(f"{k or '?'}={v}" for k, v in (requests.get("by_code") or {}).items())
    lines.append(
        f"requests {requests.get('total', 0)}: done {requests.get('done', 0)}, "
        f"error {requests.get('error', 0)}" + (f" ({codes})" if codes else "")
    )
    lines += ["", f"{'ms':<10}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'count':>8}"]
    for name in ("queue_ms", "ttft_ms", "total_ms"):
        q = report.get(name) or {}
        cells = "".join(f"{_cell(q.get(k)):>9}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{name.removesuffix('_ms'):<10}{cells}{q.get('count', 0):>8}")
    slowest = report.get("slowest") or []
    if slowest:
        lines += ["", f"slowest {len(slowest)}:"]
        lines.append(
            f"{'total':>7} {'ttft':>7} {'queue':>7} {'batch':>5} {'outcome':<8} "
            f"{'at':<20} {'task':<36} context"
        )
        for s in slowest:
            preview = json.dumps(s.get("context_preview") or "", ensure_ascii=False)
            lines.append(
                f"{_cell(s.get('total_ms')):>7} {_cell(s.get('ttft_ms')):>7} "
                f"{_cell(s.get('queue_ms')):>7} {_cell(s.get('batch_size')):>5} "
                f"{(s.get('code') or s.get('outcome') or ''):<8} {s.get('at') or '':<20} "
                f"{s.get('task_id') or '':<36} {preview}"
            )
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
