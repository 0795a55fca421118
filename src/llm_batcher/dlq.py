"""`llm-batcher dlq`: the dead letters, read from Redis (LLMB_REDIS_URL), and what an operator
does with them: list, show, requeue (one, or all), purge. Each change is logged with its task id.

A requeued task keeps its id: its client resumes it as any stream, with `Last-Event-ID:
<task_id>:-1` to read the new run's answer from its start (protocol/lua/requeue.lua).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llm_batcher.clock import now_ms
from llm_batcher.protocol.dead_letters import DeadLetter, Requeued
from llm_batcher.protocol.outcomes import RequeueOutcome
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

PREVIEW_COLUMN = 48
"""Characters of the context preview a table row shows."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dlq` subcommands and their flags."""
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the dead letters, newest first")
    show = actions.add_parser("show", help="one dead letter: its error, attempts and context")
    show.add_argument("task_id")
    requeue = actions.add_parser(
        "requeue", help="queue dead letters again, each as a fresh run under its own id"
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("task_id", nargs="?", help="the dead letter to requeue")
    which.add_argument("--all", action="store_true", help="requeue every dead letter")
    purge = actions.add_parser("purge", help="delete every dead letter (task and answer)")
    for action in (listing, show, requeue, purge):
        action.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, settings: ApiSettings) -> int:
    """Carry out one `dlq` action; the exit status (1: nothing to act on, or Redis refused)."""
    from llm_batcher.protocol.connection import REDIS_UNAVAILABLE

    try:
        return asyncio.run(_with_queue(settings, lambda queue: _act(args, settings, queue)))
    except REDIS_UNAVAILABLE as exc:
        print(f"llm-batcher dlq: cannot reach {settings.redis_url}: {exc}", file=sys.stderr)
        return 1


async def _with_queue(settings: ApiSettings, act: Callable[[TaskQueue], Awaitable[T]]) -> T:
    from llm_batcher.protocol.connection import make_redis
    from llm_batcher.protocol.keys import Keys

    redis = make_redis(settings, max_connections=2, socket_timeout_s=10)
    try:
        queue = TaskQueue.create(
            redis, Keys(settings.key_prefix), result_ttl_s=settings.result_ttl_s
        )
        return await act(queue)
    finally:
        await redis.aclose()


async def _act(args: argparse.Namespace, settings: ApiSettings, queue: TaskQueue) -> int:
    dead_letters = queue.dead_letters
    if args.action == "list":
        found = await dead_letters.entries()
        _print(args, [d.as_json() for d in found], format_table(found))
        return 0
    if args.action == "show":
        one = await dead_letters.get(args.task_id)
        if one is None:
            return _missing(args.task_id)
        _print(args, one.as_json(), format_one(one))
        return 0
    if args.action == "purge":
        purged = await dead_letters.purge()
        log.info("purged %d dead letter(s)", purged)
        _print(args, {"purged": purged}, f"purged {purged} dead letter(s)")
        return 0
    ids = await dead_letters.ids() if args.all else [args.task_id]
    done = [await _requeue(queue, task_id, settings.max_queue) for task_id in ids]
    _print(args, [_requeued_json(r) for r in done], format_requeued(done))
    if args.all:
        return 0 if all(r.outcome is RequeueOutcome.OK for r in done) else 1
    return 0 if done[0].outcome is RequeueOutcome.OK else 1


async def _requeue(queue: TaskQueue, task_id: str, max_queue: int) -> Requeued:
    requeued = await queue.dead_letters.requeue(task_id, now_ms=now_ms(), max_queue=max_queue)
    if requeued.outcome is RequeueOutcome.OK:
        log.info("dead letter %s requeued", task_id, extra={"task_id": task_id})
    else:
        log.warning(
            "dead letter %s not requeued: %s", task_id, requeued.outcome,
            extra={"task_id": task_id},
        )  # fmt: skip
    return requeued


def _missing(task_id: str) -> int:
    print(f"llm-batcher dlq: {task_id} is not a dead letter (or it expired)", file=sys.stderr)
    return 1


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


def _requeued_json(requeued: Requeued) -> dict[str, Any]:
    return {
        "task_id": requeued.task_id,
        "outcome": requeued.outcome.value,
        "deadline_ms": requeued.deadline_ms or None,
    }


# --- text output ----------------------------------------------------------------------------


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _one_line(text: str, limit: int) -> str:
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= limit else shown[: limit - 4] + '..."'


def format_table(found: list[DeadLetter]) -> str:
    """The dead letters as a table, newest first."""
    if not found:
        return "no dead letters"
    lines = [
        f"{'task':<36}  {'dead at':<20}  {'error':<15}  {'attempts':>8}  {'tokens':>6}  context"
    ]
    for d in found:
        lines.append(
            f"{d.task_id:<36}  {_utc(d.dead_ms):<20}  {d.code:<15}  {d.attempts:>8}  "
            f"{d.tokens:>6}  {_one_line(d.preview, PREVIEW_COLUMN)}"
        )
    lines.append(f"{len(found)} dead letter(s)")
    return "\n".join(lines)


def format_one(d: DeadLetter) -> str:
    """One dead letter, a field a line."""
    rows = [
        ("task", d.task_id),
        ("dead at", _utc(d.dead_ms)),
        ("created at", _utc(d.created_ms)),
        ("error", d.code),
        ("message", d.message),
        ("attempts", _attempts(d)),
        ("last worker", d.worker or "-"),
        ("tokens", f"{d.tokens} (deleted by a requeue)"),
        ("requeued before", str(d.requeues)),
        ("owner", d.owner or "- (API keys off)"),
        ("context", f"{d.context_bytes} bytes: {_one_line(d.preview, 200)}"),
    ]
    return "\n".join(f"{name + ':':<17}{value}" for name, value in rows)


def _attempts(d: DeadLetter) -> str:
    if not d.handed_back:
        return str(d.attempts)
    return f"{d.attempts} (and {d.handed_back} handed back by workers that stopped, not counted)"


def format_requeued(done: list[Requeued]) -> str:
    """What a requeue did, a line per task, then a count."""
    why = {
        RequeueOutcome.OK: "requeued: its client resumes with Last-Event-ID: {id}:-1",
        RequeueOutcome.NOT_DEAD: "not requeued: not a dead letter (or it expired)",
        RequeueOutcome.QUEUE_FULL: "not requeued: the queue is full (LLMB_MAX_QUEUE)",
    }
    lines = [f"{r.task_id}: {why[r.outcome].format(id=r.task_id)}" for r in done]
    ok = sum(r.outcome is RequeueOutcome.OK for r in done)
    lines.append(f"requeued {ok} of {len(done)} dead letter(s)")
    return "\n".join(lines)
