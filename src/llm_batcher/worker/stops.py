"""Stop sequences: the answer ends before the first one, which is never relayed.

A stop sequence may span tokens, so a token that could be the start of one is held back until the
next tokens show whether it is: then the answer is cut where the sequence begins (the token that
holds that position is shortened, what follows is dropped), or the held tokens go out. Only the
tail that could still grow into a stop sequence is held, so an answer without one streams as
before, at most a few tokens late. Pure: no I/O, so it tests on its own.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScan:
    """Holds back the tokens of one answer that may begin a stop sequence."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held: list[str] = []

    def feed(self, token: str) -> tuple[list[str], bool]:
        """The tokens now safe to relay, and whether a stop sequence ended the answer (then
        those tokens end right before it, and nothing more may be relayed)."""
        self.held.append(token)
        text = "".join(self.held)
        found = [at for stop in self.stops if (at := text.find(stop)) >= 0]
        if found:
            released = _cut(self.held, min(found))
            self.held = []
            return released, True
        keep_from = self._possible_start(text)
        released, end = [], 0
        while self.held and end + len(self.held[0]) <= keep_from:
            end += len(self.held[0])
            released.append(self.held.pop(0))
        return released, False

    def flush(self) -> list[str]:
        """The held tokens, when the answer ends without a stop sequence."""
        released, self.held = self.held, []
        return released

    def _possible_start(self, text: str) -> int:
        """The first position of ``text`` where a stop sequence may begin, with more text to
        come (len(text) when there is none)."""
        longest = max(map(len, self.stops), default=0)
        for at in range(max(0, len(text) - longest + 1), len(text)):
            tail = text[at:]
            if any(stop.startswith(tail) for stop in self.stops):
                return at
        return len(text)


def _cut(tokens: list[str], at: int) -> list[str]:
    """The tokens that make up the first ``at`` characters of their text; the last is shortened
    to end there, and an empty one is left out."""
    kept, end = [], 0
    for token in tokens:
        if end + len(token) >= at:
            if at > end:
                kept.append(token[: at - end])
            break
        kept.append(token)
        end += len(token)
    return kept
