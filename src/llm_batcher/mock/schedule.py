"""The mock's timeline: when each context of the batch writes each token, finishes or fails.

Pure: every context runs concurrently, the way a batched model serves them, so a batch of four
takes about as long as a batch of one. Times are integer milliseconds from the start.
"""

from __future__ import annotations

from enum import StrEnum

from llm_batcher.mock.directives import FailMode
from llm_batcher.records import Record

TYPE_CHECKING = False  # typing costs milliseconds on every batch; mypy honours a local one
if TYPE_CHECKING:
    from collections.abc import Sequence


class EventKind(StrEnum):
    TOKEN = "token"
    FINISH = "finish"
    FAIL = "fail"


class Event(Record):
    """One step of the timeline; ``payload`` is the token, the finish reason or the fail mode."""

    __slots__ = ("index", "kind", "payload", "t_ms")
    t_ms: int
    kind: EventKind
    index: int
    payload: str

    def __init__(self, t_ms: int, kind: EventKind, index: int, payload: str) -> None:
        self._set(t_ms=t_ms, kind=kind, index=index, payload=payload)


class ContextPlan(Record):
    """What one context writes and when; ``fail`` strikes once ``fail_after`` tokens are out;
    ``stamp`` puts the time of writing in front of each token."""

    __slots__ = ("fail", "fail_after", "itl_ms", "stamp", "tokens", "ttft_ms")
    tokens: tuple[str, ...]
    ttft_ms: int
    itl_ms: int
    fail: FailMode | None
    fail_after: int
    stamp: bool

    def __init__(
        self,
        tokens: tuple[str, ...],
        ttft_ms: int,
        itl_ms: int,
        fail: FailMode | None = None,
        fail_after: int = 0,
        stamp: bool = False,
    ) -> None:
        self._set(
            tokens=tokens,
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            fail=fail,
            fail_after=fail_after,
            stamp=stamp,
        )


def context_events(index: int, plan: ContextPlan) -> list[Event]:
    """The events of one context, in the order it performs them.

    Token ``i`` is written at ``ttft_ms + i * itl_ms`` and the finish right after the last token
    (at ``ttft_ms`` for an empty answer). The failure comes at the time token ``fail_after``
    would be written: `exit` and `hang` replace everything from there on, `garbage` slips in
    before it. A context with at most ``fail_after`` tokens finishes first, then fails.
    """
    count = len(plan.tokens)
    events = [
        Event(plan.ttft_ms + i * plan.itl_ms, EventKind.TOKEN, index, token)
        for i, token in enumerate(plan.tokens)
    ]
    finish_ms = plan.ttft_ms + max(count - 1, 0) * plan.itl_ms
    events.append(Event(finish_ms, EventKind.FINISH, index, "stop"))
    if plan.fail is None:
        return events
    k = plan.fail_after
    failure = Event(plan.ttft_ms + k * plan.itl_ms, EventKind.FAIL, index, plan.fail.value)
    if k >= count:
        return [*events, failure]
    if plan.fail is FailMode.GARBAGE:
        return [*events[:k], failure, *events[k:]]
    return [*events[:k], failure]


def build_timeline(plans: Sequence[ContextPlan]) -> list[Event]:
    """All contexts' events merged by time; ties go to the lower index, then to context order."""
    events = [event for index, plan in enumerate(plans) for event in context_events(index, plan)]
    return sorted(events, key=lambda event: (event.t_ms, event.index))
