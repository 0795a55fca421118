"""The judgement of a chaos soak (`llm-batcher bench --chaos`): pure, without I/O.

Each request is judged from what its client saw, over every connection it used (resumes
included), against the faults whose window it overlapped. Each invariant keeps a tally of passes
and failures; each error code is counted under the cause that explains it. A code that neither
the request's own directive nor a fault it lived through explains is a failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_batcher.contract import Event, EventKind, check
from llm_batcher.protocol.outcomes import ErrorCode

WORKER_KILL = "worker_kill"
API_KILL = "api_kill"
REDIS_RESTART = "redis_restart"
REDIS_FREEZE = "redis_freeze"
CLIENT_DISCONNECT = "client_disconnect"
FAULT_KINDS = (WORKER_KILL, CLIENT_DISCONNECT, API_KILL, REDIS_FREEZE, REDIS_RESTART)
"""Every kind of fault, in the order the soak injects them."""

DIRECTIVE_CODES: dict[str, ErrorCode] = {
    "crash": ErrorCode.LLM_CRASHED,
    "hang": ErrorCode.LLM_TIMEOUT,
    "garbage": ErrorCode.LLM_BAD_OUTPUT,
}
"""The one error a poison directive must end with; the other mixes must end with `done`."""

FAULT_CODES: dict[str, frozenset[ErrorCode]] = {
    # A takeover counts an attempt: a task that a crash already cost attempts may run out.
    WORKER_KILL: frozenset({ErrorCode.DEAD_LETTER}),
    API_KILL: frozenset(),
    # A request that reaches an API while Redis is away is refused (503, Retry-After).
    REDIS_RESTART: frozenset({ErrorCode.REDIS_UNAVAILABLE}),
    REDIS_FREEZE: frozenset({ErrorCode.REDIS_UNAVAILABLE}),
    CLIENT_DISCONNECT: frozenset(),
}
"""The codes a fault may explain, in a refusal or an `error` event, for a request it overlapped."""

SHARED_BATCH_FAILURES = frozenset(DIRECTIVE_CODES.values())
"""A task that takeovers brought to its last attempt is not retried alone when its batch fails
(worker/batch.py): it ends with the batch's failure, which a poison batch-mate caused. So a
request that lived through a worker kill may end with another directive's code, but only from a
shared batch: its error names the batch, and a solo run's id has `-solo-` in it."""
SOLO_MARK = "-solo-"

DISCONNECT_ENDS = frozenset({"done", ErrorCode.CANCELLED.value})
"""How the task of a client that hung up may end: finished unread, or cancelled if not started."""

EXPOSURE_GRACE_S = 3.0
"""How long after a fault's recovery a request still counts as exposed to it (a takeover is seen
a heartbeat timeout late)."""

ONE_TERMINAL = "one terminal event per request"
EXACT_ANSWER = "every done is the exact answer"
DOCUMENTED_CODE = "every error code matches its cause"
DISCONNECT_TASK = "a disconnected client's task ends"
NO_BATCH_FOLDER = "no batch folder left"
NO_LLM_CHILD = "no LLM child left"
REDIS_MEMORY = "Redis memory back to its baseline"
QUEUE_DEPTH = "queue depth back to 0"
NO_OPEN_STREAM = "no stream left open"
INVARIANTS = (ONE_TERMINAL, EXACT_ANSWER, DOCUMENTED_CODE, DISCONNECT_TASK, NO_BATCH_FOLDER,
              NO_LLM_CHILD, REDIS_MEMORY, QUEUE_DEPTH, NO_OPEN_STREAM)  # fmt: skip
EXAMPLES_KEPT = 5


@dataclass
class Fault:
    """One injected fault: from ``start_s`` until the stack was seen whole again (``end_s``)."""

    kind: str
    start_s: float
    end_s: float
    detail: str = ""


@dataclass
class Exchange:
    """Everything the client of one request saw, over all its connections."""

    index: int
    mix: str
    expected: str
    sent_s: float
    end_s: float | None = None
    events: list[Event] = field(default_factory=list)
    connections: int = 0
    refusals: list[str] = field(default_factory=list)  # codes of refused attempts (503 ...)
    problem: str | None = None  # what the client itself could not get past

    @property
    def terminals(self) -> list[Event]:
        return [e for e in self.events if e.is_terminal]

    @property
    def task_id(self) -> str | None:
        tasks = [e for e in self.events if e.kind == EventKind.TASK]
        return str(tasks[0].data.get("task_id")) if tasks else None


@dataclass
class Disconnect:
    """A client that hung up mid-stream, and how its task ended (None: not seen to end)."""

    index: int
    after: str  # "task" or "token": what the client read before it hung up
    sent_s: float
    end_s: float
    task_id: str | None = None
    ending: str | None = None  # "done" or the error code


@dataclass
class Tally:
    """Passes and failures of one invariant, with the first failures' reasons."""

    name: str
    passes: int = 0
    failures: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, ok: bool, why: str = "") -> None:
        if ok:
            self.passes += 1
            return
        self.failures += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(why)


@dataclass
class Judgement:
    tallies: dict[str, Tally] = field(default_factory=lambda: {n: Tally(n) for n in INVARIANTS})
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (cause, code) -> count
    outcomes: Counter[str] = field(default_factory=Counter)  # done, error, none

    @property
    def failed(self) -> bool:
        return any(t.failures for t in self.tallies.values())


def exposed_to(start_s: float, end_s: float, faults: Iterable[Fault]) -> set[str]:
    """The kinds of the faults whose window (plus the grace) overlaps ``[start_s, end_s]``."""
    return {f.kind for f in faults if start_s <= f.end_s + EXPOSURE_GRACE_S and f.start_s <= end_s}


def cause_of(code: str, mix: str, exposed: set[str], message: str = "") -> str | None:
    """What explains ``code`` (with its error ``message``) for a request of ``mix`` that lived
    through ``exposed``; None: nothing does."""
    if DIRECTIVE_CODES.get(mix) == code:
        return mix
    for kind in FAULT_KINDS:
        if kind in exposed and code in FAULT_CODES[kind]:
            return kind
    if WORKER_KILL in exposed and code in SHARED_BATCH_FAILURES and SOLO_MARK not in message:
        return f"{WORKER_KILL}, then a poison batch-mate"
    return None


def merged(events: Sequence[Event]) -> tuple[list[Event], str | None]:
    """One stream out of several connections: each resumed connection's `task` event must carry
    the last id seen before it, and is dropped. (events, the first problem or None)."""
    out: list[Event] = []
    last_id: str | None = None
    for event in events:
        if out and event.kind == EventKind.TASK:
            if event.id != last_id:
                return out, f"resumed at {event.id}, the last id seen was {last_id}"
            continue
        out.append(event)
        last_id = event.id or last_id
    return out, None


def judge_exchange(x: Exchange, faults: Sequence[Fault], j: Judgement) -> None:
    exposed = exposed_to(x.sent_s, x.end_s if x.end_s is not None else x.sent_s, faults)
    tag = f"request {x.index} ({x.mix}, task {x.task_id})"
    for code in x.refusals:
        cause = cause_of(code, x.mix, exposed)
        j.tallies[DOCUMENTED_CODE].add(cause is not None, f"{tag}: refused {code}, {exposed=}")
        j.codes[(f"refusal: {cause or 'unexplained'}", code)] += 1
    ends = x.terminals
    j.outcomes[str(ends[-1].kind) if ends else "none"] += 1
    one = len(ends) == 1 and x.events[-1] is ends[0]
    j.tallies[ONE_TERMINAL].add(one, f"{tag}: {len(ends)} terminal events; {x.problem or ''}")
    if not one:
        return
    events, problem = merged(x.events)
    terminal = ends[0]
    if terminal.kind == EventKind.DONE:
        verdict = check(events, expected_text=x.expected)
        why = problem or verdict.reason
        poison = x.mix in DIRECTIVE_CODES
        j.tallies[EXACT_ANSWER].add(verdict.ok and not problem and not poison, f"{tag}: {why}")
        return
    verdict = check(events, allow_error=True)
    code = str(terminal.data.get("code"))
    cause = cause_of(code, x.mix, exposed, str(terminal.data.get("message", "")))
    ok = verdict.ok and not problem and cause is not None
    j.tallies[DOCUMENTED_CODE].add(ok, f"{tag}: {code}, {problem or verdict.reason}, {exposed=}")
    j.codes[(cause or "unexplained", code)] += 1


def judge_disconnect(d: Disconnect, faults: Sequence[Fault], j: Judgement) -> None:
    ending = d.ending
    ok = ending in DISCONNECT_ENDS
    if ending is not None and not ok:
        ok = cause_of(ending, "disconnect", exposed_to(d.sent_s, d.end_s, faults)) is not None
    j.tallies[DISCONNECT_TASK].add(ok, f"disconnect {d.index} after {d.after}: ends {ending}")
    j.codes[("client_disconnect", ending or "not ended")] += 1


def judge(
    exchanges: Sequence[Exchange], disconnects: Sequence[Disconnect], faults: Sequence[Fault]
) -> Judgement:
    """The per-request invariants; the global ones are added with ``Judgement.tallies``."""
    j = Judgement()
    for x in exchanges:
        judge_exchange(x, faults, j)
    for d in disconnects:
        judge_disconnect(d, faults, j)
    return j


def fault_counts(faults: Sequence[Fault]) -> dict[str, int]:
    counts = Counter(f.kind for f in faults)
    return {kind: counts[kind] for kind in FAULT_KINDS}


def report_dict(
    j: Judgement, faults: Sequence[Fault], requests: int, meta: dict[str, Any]
) -> dict[str, Any]:
    """The whole report, JSON-ready."""
    return {
        **meta,
        "requests": requests,
        "outcomes": dict(j.outcomes),
        "faults": fault_counts(faults),
        "fault_log": [vars(f) | {"recovery_s": round(f.end_s - f.start_s, 2)} for f in faults],
        "invariants": [vars(t) for t in j.tallies.values()],
        "codes": [{"cause": c, "code": k, "count": n} for (c, k), n in sorted(j.codes.items())],
        "ok": not j.failed,
    }


def text_report(report: dict[str, Any]) -> str:
    """The report as a few aligned blocks of text."""
    lines = [f"chaos soak: {report['requests']} requests in {report['duration_s']:.0f} s, "
             f"outcomes {report['outcomes']}"]  # fmt: skip
    faults = ", ".join(f"{kind} {n}" for kind, n in report["faults"].items())
    lines += [f"faults: {faults}", "", f"{'invariant':<40} {'passes':>7} {'failures':>8}"]
    for t in report["invariants"]:
        lines.append(f"{t['name']:<40} {t['passes']:>7} {t['failures']:>8}")
        lines += [f"    {why}" for why in t["examples"]]
    lines += ["", "error codes by cause:"]
    lines += [f"    {c['cause']:<40} {c['code']:<20} {c['count']:>5}" for c in report["codes"]]
    lines.append("result: " + ("every invariant held" if report["ok"] else "INVARIANTS FAILED"))
    return "\n".join(lines)
