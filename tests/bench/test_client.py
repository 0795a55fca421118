"""Checking one stream's events against the expected answer, and the request's bytes."""

from __future__ import annotations

from urllib.parse import unquote

from llm_batcher.bench.client import Outcome, Tracker, parse_head, request_bytes
from llm_batcher.bench.load import Job, make_context
from llm_batcher.contract import Event, done_event, error_event, task_event, token_event


def task(task_id: str = "t1") -> Event:
    return task_event(task_id, -1, retry_ms=1000)


def token(index: int, text: str, task_id: str = "t1") -> Event:
    return token_event(task_id, index, text)


def done(text: str, tokens: int, task_id: str = "t1") -> Event:
    data = {"task_id": task_id, "text": text, "tokens": tokens, "batch_size": 3, "batch_id": "b7"}
    return done_event(data)


def follow(expected: str, events: list[Event], now_ns: int = 0) -> Outcome:
    outcome = Outcome(sent_s=10.0)
    tracker = Tracker(expected, outcome)
    for i, event in enumerate(events):
        tracker.on_event(event, 11.0 + i, now_ns)
    return outcome


def test_a_correct_stamped_stream() -> None:
    raw = ["1000000|Hi ", "3000000|there"]
    events = [task(), token(0, raw[0]), token(1, raw[1]), done("".join(raw), 2)]
    outcome = follow("Hi there", events, now_ns=5_000_000)
    assert outcome.ok and outcome.error is None
    assert (outcome.task_s, outcome.first_s, outcome.end_s) == (11.0, 12.0, 14.0)
    assert outcome.relay_us == [4000, 2000]
    assert (outcome.tokens, outcome.events, outcome.batch_size, outcome.batch_id) == (2, 4, 3, "b7")


def test_unstamped_tokens_give_no_relay_sample() -> None:
    outcome = follow("Hi", [task(), token(0, "Hi"), done("Hi", 1)])
    assert outcome.ok and outcome.relay_us == []


def test_someone_elses_answer_is_wrong() -> None:
    outcome = follow("Hi there", [task(), token(0, "Bye"), done("Bye", 1)])
    assert not outcome.ok and outcome.error == "wrong answer"


def test_a_gap_in_token_ids_is_an_error() -> None:
    events = [task(), token(0, "a "), token(2, "c"), done("a c", 2)]
    outcome = follow("a c", events)
    assert not outcome.ok and outcome.error is not None and "out of order" in outcome.error


def test_a_done_event_of_another_task_is_an_error() -> None:
    outcome = follow("a", [task(), token(0, "a"), done("a", 1, task_id="t2")])
    assert not outcome.ok and outcome.error == "done event does not match the stream"


def test_an_error_event_ends_the_stream_as_a_failure() -> None:
    error = error_event("llm_crashed", "x")
    outcome = follow("a", [task(), error])
    assert (outcome.ok, outcome.error, outcome.end_s) == (False, "error llm_crashed", 12.0)


def test_an_event_after_the_terminal_one_is_an_error() -> None:
    outcome = follow("a", [task(), token(0, "a"), done("a", 1), token(1, "b")])
    assert not outcome.ok and outcome.error == "event after the terminal event"


def test_an_unknown_event_is_an_error() -> None:
    outcome = follow("a", [task(), Event("message", {"text": "hello"})])
    assert not outcome.ok and outcome.error == "unexpected event 'message'"


def test_request_bytes_carry_the_whole_context() -> None:
    context = "@mock ttft_ms=0 itl_ms=0 stamp=1\nc1s2 a&b=c %20"
    raw = request_bytes("127.0.0.1", 8000, context, keep_alive=False).decode()
    line = raw.split("\r\n")[0]
    assert line.startswith("GET /generate?context=") and line.endswith(" HTTP/1.1")
    assert unquote(line.removeprefix("GET /generate?context=").removesuffix(" HTTP/1.1")) == context
    assert "Connection: close\r\n" in raw and raw.endswith("\r\n\r\n")


def test_parse_head() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\nRetry-After: 5\r\n\r\n"
    assert parse_head(head) == (503, {"content-length": "12", "retry-after": "5"})


def test_contexts_are_unique_and_their_answer_is_their_body() -> None:
    job = Job("j", "127.0.0.1", 1, "closed", 4, 8, ttft_ms=300, itl_ms=25, words=9)
    made = [make_context(job, client, seq) for client in range(30) for seq in range(30)]
    assert len({body for _, body in made}) == len(made)
    context, body = made[0]
    assert context == f"@mock ttft_ms=300 itl_ms=25 stamp=1\n{body}"
    assert len(body.split(" ")) == 9
