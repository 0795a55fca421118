"""The targets of the performance issue, as checks on the rows of a run.

1. saturation: throughput >= 0.97 x ideal at concurrency 8 and more, mean batch >= 3.9 (of 4);
2. added time to first token at concurrency 1: p50 <= 15 ms, p99 <= 40 ms; with 64 clients
   below saturation (4 workers): p50 <= 25 ms, p99 <= 60 ms;
3. relay with 64 streams open: p50 <= 2 ms, p99 <= 10 ms;
4. 10,000 streams held by one API process: all complete, RSS <= 1 GiB, <= 10 Redis connections,
   /healthz within 1 s;
5. zero-delay model: >= 15,000 SSE events per API CPU-second, <= 1 ms of CPU per request beyond
   its events.
Every scenario also checks that every answer was the request's own and none was dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_batcher.bench.report import FULL_STREAMS, MIB, Check, Row, cpu_split
from llm_batcher.bench.scenarios import CAPACITY, EFFICIENCY, LIGHT, SATURATION
from llm_batcher.bench.stack import StackConfig

MIN_RATIO = 0.97
BATCH_SLACK = 0.1  # mean batch >= max_batch - 0.1, i.e. 3.9 for batches of 4
ADDED_TTFT_MS = (15.0, 40.0)
LIGHT_ADDED_TTFT_MS = (25.0, 60.0)
RELAY_MS = (2.0, 10.0)
RELAY_STREAMS = 64
MAX_RSS_BYTES = 1024 * MIB
MAX_REDIS_CONNECTIONS = 10
MAX_HEALTHZ_S = 1.0
MIN_EVENTS_PER_CPU_S = 15_000.0
MAX_OVERHEAD_MS = 1.0


def at_most(target: str, value: float | None, limit: float, unit: str, digits: int = 1) -> Check:
    measured = "n/a" if value is None else f"{value:.{digits}f} {unit}".strip()
    met = None if value is None else value <= limit
    return Check(target, f"<= {limit:g} {unit}".strip(), measured, met)


def at_least(target: str, value: float | None, limit: float, unit: str, digits: int = 2) -> Check:
    measured = "n/a" if value is None else f"{value:.{digits}f} {unit}".strip()
    met = None if value is None else value >= limit
    return Check(target, f">= {limit:g} {unit}".strip(), measured, met)


def answers(row: Row) -> Check:
    measured = f"{row.ok}/{row.requests} correct"
    if row.errors:
        measured += "; " + ", ".join(f"{n}x {e}" for e, n in row.errors.items())
    return Check(f"{row.scenario}: every answer", "all correct, none dropped", measured,
                 row.ok == row.requests)  # fmt: skip


def saturation_checks(row: Row, config: StackConfig) -> list[Check]:
    name, c = row.scenario, row.concurrency
    checks = [answers(row)]
    if c == 1:
        checks += added_ttft(row, ADDED_TTFT_MS)
    if c >= 8:
        checks.append(at_least(f"{name}: throughput / ideal", row.ratio, MIN_RATIO, ""))
        batch = config.max_batch - BATCH_SLACK
        checks.append(at_least(f"{name}: mean batch", row.mean_batch, batch, ""))
    if c == RELAY_STREAMS:
        p50, p99 = row.relay_ms
        checks.append(at_most(f"{name}: relay p50", p50, RELAY_MS[0], "ms"))
        checks.append(at_most(f"{name}: relay p99", p99, RELAY_MS[1], "ms"))
    return checks


def added_ttft(row: Row, limits_ms: tuple[float, float]) -> list[Check]:
    p50, p99 = row.added_ttft_ms
    return [
        at_most(f"{row.scenario}: added TTFT p50", p50, limits_ms[0], "ms"),
        at_most(f"{row.scenario}: added TTFT p99", p99, limits_ms[1], "ms"),
    ]


def light_checks(row: Row) -> list[Check]:
    """Every answer and the added time; beside them, not targets, how many requests found
    every worker busy, which the added time's tail comes from, and the added time of the
    others: what the gateway adds while the model has room (docs/benchmarks.md)."""
    share = row.all_busy_share
    busy = Check(f"{row.scenario}: sent while every worker ran a batch", "-",
                 "n/a" if share is None else f"{share:.0%}", None)  # fmt: skip
    p50, p99 = row.free_worker_ttft_ms
    free = Check(f"{row.scenario}: added TTFT p50/p99 of the others", "-",
                 "n/a" if p50 is None or p99 is None else f"{p50:.1f} / {p99:.1f} ms",
                 None)  # fmt: skip
    return [answers(row), *added_ttft(row, LIGHT_ADDED_TTFT_MS), busy, free]


def capacity_checks(row: Row) -> list[Check]:
    name, api = row.scenario, row.api
    streams = row.concurrency
    full = streams >= FULL_STREAMS
    held = row.peak_open >= streams
    checks = [
        Check(f"{name}: streams", f"{FULL_STREAMS:,}", f"{streams:,}", True if full else None),
        Check(f"{name}: open at once", f"all {streams:,}", f"{row.peak_open:,}", held),
        answers(row),
        at_most(f"{name}: API RSS", _mib(api.rss_bytes), MAX_RSS_BYTES / MIB, "MiB"),
        at_most(f"{name}: Redis connections", api.redis_connections, MAX_REDIS_CONNECTIONS, "", 0),
    ]
    healthz = None if api.healthz_max_s is None else api.healthz_max_s * 1000
    if api.healthz_failures:
        checks.append(Check(f"{name}: /healthz", "<= 1000 ms",
                            f"{api.healthz_failures} failed or > 5 s", False))  # fmt: skip
    else:
        checks.append(at_most(f"{name}: /healthz max", healthz, MAX_HEALTHZ_S * 1000, "ms"))
    return checks


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def efficiency_checks(rows: Sequence[Row]) -> None:
    """Events per CPU-second on the shorter answers; the per-request overhead from both runs."""
    runs = [r for r in rows if r.kind == EFFICIENCY]
    for row in runs:
        row.checks.append(answers(row))
    if not runs:
        return
    short = runs[0]
    target = f"{short.scenario}: SSE events per API CPU-second"
    rate = short.events_per_cpu_s
    short.checks.append(at_least(target, rate, MIN_EVENTS_PER_CPU_S, "", digits=0))
    split = cpu_split(short, runs[1]) if len(runs) > 1 else None
    target, limit = "API CPU per request beyond its events", f"<= {MAX_OVERHEAD_MS:g} ms"
    if split is None:
        short.checks.append(Check(target, limit, "n/a", None))
        return
    overhead_ms, per_event_us = split
    measured = f"{overhead_ms:.2f} ms (and {per_event_us:.0f} µs per event)"
    short.checks.append(Check(target, limit, measured, overhead_ms <= MAX_OVERHEAD_MS))


def add_checks(rows: Sequence[Row], configs: Sequence[StackConfig]) -> None:
    """Attach the checks of every target to the rows they concern."""
    for row, config in zip(rows, configs, strict=True):
        if row.kind == SATURATION:
            row.checks = saturation_checks(row, config)
        elif row.kind == LIGHT:
            row.checks = light_checks(row)
        elif row.kind == CAPACITY:
            row.checks = capacity_checks(row)
    efficiency_checks(rows)
