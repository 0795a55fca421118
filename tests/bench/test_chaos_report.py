"""The judgement of the chaos soak, on made-up streams: what passes, what fails and why, and the
report built from the tallies. No timing: the streams and faults are given."""

from __future__ import annotations

import uuid

from llm_batcher.bench.chaos_client import PATTERN, make_request
from llm_batcher.bench.chaos_report import (
    API_KILL,
    DISCONNECT_TASK,
    DOCUMENTED_CODE,
    EXACT_ANSWER,
    FAULT_KINDS,
    INVARIANTS,
    ONE_TERMINAL,
    REDIS_FREEZE,
    REDIS_RESTART,
    WORKER_KILL,
    Disconnect,
    Exchange,
    Fault,
    Judgement,
    cause_of,
    exposed_to,
    judge,
    report_dict,
    text_report,
)
from llm_batcher.contract import DONE_FIELDS, Event, done_event, error_event, task_event
from llm_batcher.contract import token_event as token

TASK = str(uuid.uuid4())
TOKENS = ["alpha ", "beta ", "gamma"]
ANSWER = "".join(TOKENS)


def done(tokens: list[str] = TOKENS) -> Event:
    data = dict.fromkeys(DONE_FIELDS, 0)
    data.update(task_id=TASK, text="".join(tokens), tokens=len(tokens), worker="w")
    return done_event(data)


def answered(*connections: list[Event]) -> list[Event]:
    return [event for events in connections for event in events]


def exchange(events: list[Event], mix: str = "fast", **fields: object) -> Exchange:
    x = Exchange(index=7, mix=mix, expected=ANSWER, sent_s=10.0, end_s=12.0, events=events)
    for name, value in fields.items():
        setattr(x, name, value)
    return x


def tally(j: Judgement, name: str) -> tuple[int, int]:
    return j.tallies[name].passes, j.tallies[name].failures


WHOLE = [task_event(TASK, -1, 1000), *(token(TASK, i, t) for i, t in enumerate(TOKENS)), done()]


def test_an_exact_answer_passes() -> None:
    j = judge([exchange(WHOLE)], [], [])
    assert tally(j, ONE_TERMINAL) == (1, 0)
    assert tally(j, EXACT_ANSWER) == (1, 0)
    assert not j.failed


def test_a_resumed_answer_passes_when_it_continues_where_it_broke() -> None:
    first = [task_event(TASK, -1, 1000), token(TASK, 0, "alpha ")]
    second = [task_event(TASK, 0, 1000), token(TASK, 1, "beta "), token(TASK, 2, "gamma"), done()]
    j = judge([exchange(answered(first, second), connections=2)], [], [])
    assert tally(j, EXACT_ANSWER) == (1, 0)


def test_a_token_repeated_across_a_resume_fails() -> None:
    first = [task_event(TASK, -1, 1000), token(TASK, 0, "alpha ")]
    again = [task_event(TASK, -1, 1000), token(TASK, 0, "alpha "), token(TASK, 1, "beta ")]
    j = judge([exchange(answered(first, again, [token(TASK, 2, "gamma"), done()]))], [], [])
    assert tally(j, EXACT_ANSWER) == (0, 1)
    assert "resumed at" in j.tallies[EXACT_ANSWER].examples[0]


def test_a_wrong_answer_and_a_poison_that_answers_fail() -> None:
    wrong = exchange(WHOLE, expected="something else")
    poison = exchange(WHOLE, mix="crash")
    j = judge([wrong, poison], [], [])
    assert tally(j, EXACT_ANSWER) == (0, 2)


def test_no_terminal_or_two_terminals_fail() -> None:
    cut = exchange(WHOLE[:-1], problem="no terminal event within 90 s")
    twice = exchange([*WHOLE, error_event("lost", "gone")])
    j = judge([cut, twice], [], [])
    assert tally(j, ONE_TERMINAL) == (0, 2)
    assert "no terminal event" in j.tallies[ONE_TERMINAL].examples[0]
    assert j.outcomes == {"none": 1, "error": 1}


def crashed(code: str, message: str = "see the worker log of batch abc (after 1 tokens)") -> Event:
    return error_event(code, message)


def test_a_poison_directive_must_end_with_its_own_code() -> None:
    own = exchange([task_event(TASK, -1, 1000), crashed("llm_crashed")], mix="crash")
    other = exchange([task_event(TASK, -1, 1000), crashed("llm_timeout")], mix="crash")
    j = judge([own, other], [], [])
    assert tally(j, DOCUMENTED_CODE) == (1, 1)
    assert j.codes == {("crash", "llm_crashed"): 1, ("unexplained", "llm_timeout"): 1}


def test_a_transient_code_needs_the_fault_that_explains_it() -> None:
    error = [task_event(TASK, -1, 1000), crashed("redis_unavailable")]
    during = exchange(error)
    refused = exchange(WHOLE, refusals=["redis_unavailable"])
    freeze = Fault(REDIS_FREEZE, start_s=11.0, end_s=13.0)
    j = judge([during, refused], [], [freeze])
    assert tally(j, DOCUMENTED_CODE) == (2, 0)
    assert j.codes[(REDIS_FREEZE, "redis_unavailable")] == 1
    assert j.codes[(f"refusal: {REDIS_FREEZE}", "redis_unavailable")] == 1
    # the same, but the request ended before the fault began (and its grace does not reach back)
    j = judge([during, refused], [], [Fault(REDIS_FREEZE, start_s=20.0, end_s=22.0)])
    assert tally(j, DOCUMENTED_CODE) == (0, 2)


def test_exposure_is_the_fault_window_with_its_grace() -> None:
    faults = [Fault(API_KILL, 5.0, 6.0), Fault(REDIS_RESTART, 30.0, 31.0)]
    assert exposed_to(8.0, 9.0, faults) == {API_KILL}  # 2 s after its end: within the grace
    assert exposed_to(10.0, 20.0, faults) == set()
    assert exposed_to(0.0, 40.0, faults) == {API_KILL, REDIS_RESTART}


def test_a_mates_failure_is_explained_only_by_a_takeover_and_a_shared_batch() -> None:
    shared = "the LLM exited with status 3; see the worker log of batch 0137 (after 1 tokens)"
    solo = "the LLM exited with status 3; see the worker log of batch 0137-solo-7424 (after 2)"
    assert cause_of("llm_crashed", "slow", {WORKER_KILL}, shared) is not None
    assert cause_of("llm_crashed", "slow", {WORKER_KILL}, solo) is None
    assert cause_of("llm_crashed", "slow", {REDIS_RESTART}, shared) is None
    assert cause_of("dead_letter", "fast", {WORKER_KILL}) == WORKER_KILL
    assert cause_of("dead_letter", "fast", set()) is None


def test_a_disconnected_task_must_end_done_or_cancelled() -> None:
    ends = [Disconnect(i, "task", 1.0, 2.0, TASK, ending)
            for i, ending in enumerate(["done", "cancelled", None, "llm_crashed"])]  # fmt: skip
    j = judge([], ends, [])
    assert tally(j, DISCONNECT_TASK) == (2, 2)


def test_the_report_counts_every_fault_kind_and_every_invariant() -> None:
    faults = [Fault(WORKER_KILL, 1.0, 2.5, "worker-1"), Fault(WORKER_KILL, 9.0, 9.5)]
    j = judge([exchange(WHOLE)], [], faults)
    report = report_dict(j, faults, 1, {"duration_s": 60.0})
    assert report["faults"] == {kind: 2 if kind == WORKER_KILL else 0 for kind in FAULT_KINDS}
    assert [t["name"] for t in report["invariants"]] == list(INVARIANTS)
    assert report["fault_log"][0]["recovery_s"] == 1.5
    assert report["ok"] is True
    text = text_report(report)
    assert "worker_kill 2" in text and "every invariant held" in text
    j.tallies[ONE_TERMINAL].add(False, "request 3 (fast): no terminal event")
    failed = text_report(report_dict(j, faults, 1, {"duration_s": 60.0}))
    assert "INVARIANTS FAILED" in failed and "request 3 (fast): no terminal event" in failed


def test_every_kind_of_request_is_in_the_pattern_with_its_answer() -> None:
    mixes = {make_request(i)[0] for i in range(len(PATTERN))}
    assert mixes == {"fast", "slow", "crash", "garbage", "hang"}
    mix, context, expected = make_request(1)
    assert (mix, expected) == ("slow", " ".join(f"r1w{k}" for k in range(16)))
    assert context.startswith("@mock ") and context.endswith(expected)
