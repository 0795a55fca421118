"""From the generator's records and the API's figures to one row per scenario, with its targets.

Pure: the same records always give the same rows, so this is tested with made-up samples.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from llm_batcher.bench.scenarios import Scenario, ideal_rps
from llm_batcher.bench.stack import StackConfig

MIB = 1024 * 1024
FULL_STREAMS = 10_000


@dataclass(frozen=True)
class Check:
    """One target: what it asks, what was measured, whether it holds (None: not applicable)."""

    target: str
    requirement: str
    measured: str
    met: bool | None


@dataclass(frozen=True)
class ApiFigures:
    """What the API process did during the scenario, seen from outside."""

    cpu_s: float | None = None
    rss_bytes: int | None = None
    redis_connections: int | None = None
    healthz_max_s: float | None = None
    healthz_failures: int = 0


@dataclass
class Row:
    scenario: str
    kind: str
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int]
    throughput_rps: float | None
    ideal_rps: float | None
    ratio: float | None
    mean_batch: float | None
    batch_sizes: dict[int, int]
    added_ttft_ms: tuple[float | None, float | None]  # p50, p99
    relay_ms: tuple[float | None, float | None]
    peak_open: int
    events: int
    api: ApiFigures
    events_per_cpu_s: float | None
    cpu_ms_per_request: float | None
    checks: list[Check] = field(default_factory=list)
    all_busy_share: float | None = None  # of the answered requests, see sent_while_all_busy()
    # added TTFT p50, p99 of the requests sent while a worker was free (not all_busy)
    free_worker_ttft_ms: tuple[float | None, float | None] = (None, None)

    @property
    def met(self) -> bool | None:
        """False if a check failed, True if all applicable ones held, None if none applied."""
        verdicts = [c.met for c in self.checks if c.met is not None]
        if False in verdicts:
            return False
        return True if verdicts else None


@dataclass(frozen=True)
class Samples:
    """The distributions behind a row, for the plots."""

    added_ttft_ms: list[float]
    relay_ms: list[float]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` from 0 to 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def steady_throughput(end_times_s: Sequence[float]) -> float | None:
    """Requests a second in the steady part of a run: the least-squares slope of completions
    against time, over the 10th to the 90th percentile of completion times (which leaves out the
    ramp-up and the tail when clients run out of work).

    A slope and not (completions between two percentiles) ÷ (their span): batches complete in
    bursts of their size, and a span that starts at the end of one burst and stops at the start
    of another miscounts by up to a burst per worker, which in a short run is several percent
    either way."""
    ends = sorted(end_times_s)
    if len(ends) < 2:
        return None
    first = math.floor(0.1 * (len(ends) - 1))
    last = math.ceil(0.9 * (len(ends) - 1))
    times = ends[first : last + 1]
    mean_t = sum(times) / len(times)
    mean_n = (first + last) / 2
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread <= 0:
        return None
    return sum((t - mean_t) * (n - mean_n) for n, t in enumerate(times, first)) / spread


def peak_open(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an interval ending when another starts does not
    overlap it)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def batch_sizes(records: Sequence[Mapping[str, object]]) -> dict[int, int]:
    """How many batches had each size, counting each batch once."""
    sizes = {r["batch_id"]: r["batch_size"] for r in records if r.get("batch_id")}
    return dict(sorted(Counter(int(str(s)) for s in sizes.values() if s is not None).items()))


def sent_while_all_busy(
    records: Sequence[Mapping[str, object]], ttft_s: float, workers: int
) -> list[bool] | None:
    """For each answered request with a batch, whether it was sent while every worker was
    running a batch: those wait for one to end, whatever the window. A batch runs from its
    model's start (its first token's stamp, ``relay_us[0]`` before the client read it, less the
    model's time to first token) to its last answer's end; its set-up before the model starts
    is not counted, so the busy ones are a lower bound. None without stamped tokens."""
    answered = [r for r in records if r["ok"] and r.get("batch_id") and _ints(r["relay_us"])]
    batches: defaultdict[object, list[Mapping[str, object]]] = defaultdict(list)
    for r in answered:
        batches[r["batch_id"]].append(r)
    if not batches:
        return None
    starts, ends = [], []
    for members in batches.values():
        starts.append(min(_f(r["first_s"]) - _ints(r["relay_us"])[0] / 1e6 for r in members))
        ends.append(max(_f(r["end_s"]) for r in members))
    starts = sorted(t - ttft_s for t in starts)
    ends.sort()
    return [
        bisect_right(starts, t) - bisect_right(ends, t) >= workers
        for t in (_f(r["sent_s"]) for r in answered)
    ]


def all_busy_share(
    records: Sequence[Mapping[str, object]], ttft_s: float, workers: int
) -> float | None:
    """The share of answered requests sent while every worker was running a batch
    (sent_while_all_busy); None without stamped tokens."""
    busy = sent_while_all_busy(records, ttft_s, workers)
    return None if busy is None else sum(busy) / len(busy)


def free_worker_ttft(
    records: Sequence[Mapping[str, object]], ttft_s: float, workers: int
) -> tuple[float | None, float | None]:
    """Added time to first token (p50, p99, ms) of the answered requests sent while some worker
    was not running a batch (sent_while_all_busy): what the gateway adds when the model has
    room, without the wait for a busy worker."""
    busy = sent_while_all_busy(records, ttft_s, workers)
    if busy is None:
        return None, None
    answered = [r for r in records if r["ok"] and r.get("batch_id") and _ints(r["relay_us"])]
    added = [
        (_f(r["first_s"]) - _f(r["sent_s"]) - ttft_s) * 1000
        for r, all_busy in zip(answered, busy, strict=True)
        if not all_busy
    ]
    return percentile(added, 50), percentile(added, 99)


def summarise(
    scenario: Scenario,
    config: StackConfig,
    records: Sequence[Mapping[str, object]],
    api: ApiFigures,
) -> tuple[Row, Samples]:
    """One row (without its checks) and its samples from the generator's records."""
    ok = [r for r in records if r["ok"]]
    ttft_s = scenario.model.ttft_ms / 1000
    firsts = [(_f(r["first_s"]), _f(r["sent_s"])) for r in ok if r["first_s"] is not None]
    added = [(first - sent - ttft_s) * 1000 for first, sent in firsts]
    relay = [us / 1000 for r in ok for us in _ints(r["relay_us"])]
    held = [(_f(r["task_s"]), _f(r["end_s"])) for r in records if r["task_s"] is not None]
    sizes = batch_sizes(ok)
    batches = sum(sizes.values())
    throughput = steady_throughput([_f(r["end_s"]) for r in ok])
    ideal = ideal_rps(scenario, config)
    events = sum(int(str(r["events"])) for r in records)
    cpu = api.cpu_s
    row = Row(
        scenario=scenario.name,
        kind=scenario.kind,
        concurrency=scenario.concurrency,
        requests=len(records),
        ok=len(ok),
        errors=dict(Counter(str(r["error"]) for r in records if not r["ok"]).most_common(5)),
        throughput_rps=throughput,
        ideal_rps=ideal,
        ratio=throughput / ideal if throughput and ideal else None,
        mean_batch=sum(k * v for k, v in sizes.items()) / batches if batches else None,
        batch_sizes=sizes,
        added_ttft_ms=(percentile(added, 50), percentile(added, 99)),
        relay_ms=(percentile(relay, 50), percentile(relay, 99)),
        peak_open=peak_open(held),
        events=events,
        api=api,
        events_per_cpu_s=events / cpu if cpu else None,
        cpu_ms_per_request=cpu * 1000 / len(records) if cpu and records else None,
        all_busy_share=all_busy_share(ok, ttft_s, config.workers),
        free_worker_ttft_ms=free_worker_ttft(ok, ttft_s, config.workers),
    )
    return row, Samples(added, relay)


def _f(value: object) -> float:
    return float(str(value))


def _ints(value: object) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else []


def cpu_split(short: Row, long: Row) -> tuple[float, float] | None:
    """(CPU ms per request beyond its events, CPU µs per event) from two zero-delay runs whose
    answers differ only in length: cpu per request = overhead + events per request * per event."""
    if short.cpu_ms_per_request is None or long.cpu_ms_per_request is None:
        return None
    short_events, long_events = short.events / short.requests, long.events / long.requests
    if long_events <= short_events:
        return None
    per_event_ms = (long.cpu_ms_per_request - short.cpu_ms_per_request) / (
        long_events - short_events
    )
    return short.cpu_ms_per_request - short_events * per_event_ms, per_event_ms * 1000
