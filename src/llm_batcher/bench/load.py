"""The load generator: `python -m llm_batcher.bench.load JOB.json RESULT.json`.

It runs in a process of its own, so that its CPU time is not the API's and the API's is not its.
Closed loop: N clients, each sending its next request as soon as its last stream ended, or after
a random pause (exponential, with a given mean, and also before the first request, so that the
clients do not start in step; seeded, so that runs repeat). Open loop:
streams opened at a fixed rate, each on its own connection, all held until they end. Every
request has a context of its own, steered by a `@mock` line, so each answer is known in advance
and the model's time is exact. A JSON line of progress goes to stdout every half second; the
result, one record per request, goes to RESULT.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm_batcher.bench.client import Connection, Outcome

PROGRESS_EVERY_S = 0.5
WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One load run. ``words`` is the number of tokens of each answer."""

    name: str
    host: str
    port: int
    mode: str  # "closed" or "open"
    concurrency: int  # closed loop: clients
    requests: int
    ttft_ms: int
    itl_ms: int
    words: int
    open_rate: float = 1000.0  # open loop: streams opened per second
    think_ms: float = 0.0  # closed loop: mean pause before each request
    request_timeout_s: float = 300.0
    deadline_s: float = 900.0

    @classmethod
    def load(cls, path: Path) -> Job:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def make_context(job: Job, client: int, seq: int) -> tuple[str, str]:
    """(context, expected answer): a unique first word, then words from a fixed list."""
    words = [f"c{client}s{seq}"]
    words += [WORDS[(client * 7 + seq + k) % len(WORDS)] for k in range(job.words - 1)]
    body = " ".join(words)
    directive = f"@mock ttft_ms={job.ttft_ms} itl_ms={job.itl_ms} stamp=1"
    return f"{directive}\n{body}", body


def raise_open_file_limit() -> None:
    """Soft open-file limit up to the hard one: ten thousand streams need as many sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Budget:
    """The requests of a closed-loop run, shared by its clients: each takes the next after its
    pause, so every client keeps going to the end of the run; once they are all taken, the
    clients still pausing stop at once instead of finishing their pause."""

    left: int
    spent: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> bool:
        if self.left <= 0:
            self.spent.set()
            return False
        self.left -= 1
        return True

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.spent.wait(), seconds)


async def closed_client(job: Job, client: int, budget: Budget, outcomes: list[Outcome]) -> None:
    """One closed-loop client: requests one after the other, on one connection, each after a
    pause when the job has one, while the budget lasts."""
    conn = Connection(job.host, job.port)
    pauses = random.Random(client)
    try:
        for seq in range(job.requests):  # a client takes at most all of them
            if job.think_ms > 0:
                await budget.pause(pauses.expovariate(1000 / job.think_ms))
            if not budget.take():
                return
            context, body = make_context(job, client, seq)
            outcome = Outcome(sent_s=time.monotonic())
            outcomes.append(outcome)
            await conn.stream(context, body, outcome, job.request_timeout_s, keep_alive=True)
    finally:
        await conn.close()


async def closed_loop(job: Job, outcomes: list[Outcome]) -> None:
    budget = Budget(job.requests)
    async with asyncio.TaskGroup() as group:
        for client in range(min(job.concurrency, job.requests)):
            group.create_task(closed_client(job, client, budget, outcomes))


async def open_stream(job: Job, index: int, outcomes: list[Outcome]) -> None:
    conn = Connection(job.host, job.port)
    context, body = make_context(job, index, 0)
    outcome = Outcome(sent_s=time.monotonic())
    outcomes.append(outcome)
    try:
        await conn.stream(context, body, outcome, job.request_timeout_s, keep_alive=False)
    finally:
        await conn.close()


async def open_loop(job: Job, outcomes: list[Outcome]) -> None:
    """Open ``job.requests`` streams at ``job.open_rate`` a second and wait for all to end."""
    start_s = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for index in range(job.requests):
            delay_s = start_s + index / job.open_rate - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            group.create_task(open_stream(job, index, outcomes))


def progress(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Counts for the progress line: sent, given a task, holding it now, ended, failed, open."""
    tasked = sum(1 for o in outcomes if o.task_s is not None)
    ended = [o for o in outcomes if o.end_s is not None]
    failed = sum(1 for o in ended if not o.ok)
    holding = sum(1 for o in outcomes if o.task_s is not None and o.end_s is None)
    return {
        "sent": len(outcomes),
        "tasked": tasked,
        "holding": holding,
        "ended": len(ended),
        "failed": failed,
        "open": len(outcomes) - len(ended),
    }


async def report_progress(outcomes: list[Outcome]) -> None:
    while True:  # bounded by the job's deadline: cancelled when the run ends
        print(json.dumps(progress(outcomes)), flush=True)
        await asyncio.sleep(PROGRESS_EVERY_S)


async def run_job(job: Job) -> dict[str, object]:
    """Run the job within its deadline; the result as a JSON-ready dict."""
    outcomes: list[Outcome] = []
    started_s = time.monotonic()
    reporter = asyncio.create_task(report_progress(outcomes))
    timed_out = False
    try:
        async with asyncio.timeout(job.deadline_s):
            if job.mode == "closed":
                await closed_loop(job, outcomes)
            else:
                await open_loop(job, outcomes)
    except TimeoutError:
        timed_out = True
        late = f"still open at the run's deadline ({job.deadline_s:.0f} s)"
        for outcome in outcomes:
            if outcome.end_s is None:
                outcome.error = outcome.error or late
                outcome.end_s = time.monotonic()
    finally:
        reporter.cancel()
    print(json.dumps(progress(outcomes)), flush=True)
    return {
        "job": asdict(job),
        "wall_s": time.monotonic() - started_s,
        "timed_out": timed_out,
        "outcomes": [outcome_record(o, started_s) for o in outcomes],
    }


def outcome_record(outcome: Outcome, origin_s: float) -> dict[str, object]:
    """One request as JSON, its times in seconds from the start of the run."""
    record = asdict(outcome)
    for key in ("sent_s", "task_s", "first_s", "end_s"):
        if record[key] is not None:
            record[key] = round(record[key] - origin_s, 6)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m llm_batcher.bench.load JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = Job.load(Path(args[0]))
    raise_open_file_limit()
    result = asyncio.run(run_job(job))
    Path(args[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
