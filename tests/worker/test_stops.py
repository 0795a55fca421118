"""Stop sequences in the worker: the answer ends before the first one, which is never relayed,
even when it spans tokens; tokens that cannot begin one are relayed at once."""

from __future__ import annotations

import pytest

from llm_batcher.worker.stops import StopScan


def run(stops: list[str], tokens: list[str]) -> tuple[list[list[str]], bool]:
    """What the scan relays after each token, and whether a stop sequence ended the answer
    (then the tokens after it are never fed, as in the worker); the held rest is flushed."""
    scan, relayed = StopScan(stops), []
    for token in tokens:
        out, stopped = scan.feed(token)
        relayed.append(out)
        if stopped:
            return relayed, True
    relayed.append(scan.flush())
    return relayed, False


def test_without_a_match_every_token_goes_out_at_once() -> None:
    relayed, stopped = run(["STOP"], ["Hello ", "batching ", "world"])
    assert relayed == [["Hello "], ["batching "], ["world"], []]
    assert not stopped


def test_a_stop_inside_a_token_cuts_that_token() -> None:
    relayed, stopped = run(["."], ["Hello ", "world. ", "Bye"])
    assert relayed == [["Hello "], ["world"]]
    assert stopped


def test_a_stop_spanning_tokens_is_held_back_and_never_relayed() -> None:
    relayed, stopped = run(["o w"], ["Hello ", "world ", "again"])
    # "Hello " ends with "o ", which may begin "o w": held until "world " shows it does.
    assert relayed == [[], ["Hell"]]
    assert stopped


def test_held_tokens_go_out_when_the_sequence_does_not_complete() -> None:
    relayed, stopped = run(["o w"], ["Hello ", "there ", "now"])
    assert relayed == [[], ["Hello ", "there "], ["now"], []]
    assert not stopped
    assert "".join(t for out in relayed for t in out) == "Hello there now"


def test_the_earliest_of_several_stops_wins() -> None:
    relayed, stopped = run(["world", "lo"], ["Hello ", "world"])
    assert relayed == [["Hel"]]
    assert stopped


def test_a_stop_at_the_very_start_gives_an_empty_answer() -> None:
    relayed, stopped = run(["He"], ["Hello "])
    assert relayed == [[]]
    assert stopped


@pytest.mark.parametrize("stops", [[""], []])
def test_empty_stop_lists_change_nothing(stops: list[str]) -> None:
    relayed, stopped = run(stops, ["a ", "b"])
    assert relayed == [["a "], ["b"], []]
    assert not stopped
