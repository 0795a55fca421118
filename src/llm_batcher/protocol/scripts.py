"""The Lua scripts that change a task's state atomically (docs/protocol.md, part 3).

Every state change of a task is one script, so that two writers (an API replica enforcing a
deadline, a worker that lost its lease, a worker that took the task over) can never interleave
half-done updates. A worker's writes carry the attempt number it was given when it started the
task: a fencing token, so a worker whose lease ran out cannot write into an answer that another
worker now owns.

Each script lives in `lua/<name>.lua`, which opens by naming its KEYS and ARGV. Key names come in
as KEYS; the fixed names of the schema (keys.py) and the enums' values (outcomes.py) are prepended
as Lua constants, so the scripts write none of them down again.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from functools import cache
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from llm_batcher.protocol import keys
from llm_batcher.protocol.outcomes import (
    DEAD_LETTER_CODES,
    ErrorCode,
    RequeueOutcome,
    StartOutcome,
    SubmitOutcome,
    TaskState,
    WriteResult,
)


class Script(StrEnum):
    """The scripts, by file name."""

    SUBMIT = "submit"
    START = "start"
    APPEND = "append"
    FINISH = "finish"
    ABORT = "abort"
    HAND_BACK = "hand_back"
    RENEW = "renew"
    DEPTH = "depth"
    TAKE_TURN = "take_turn"
    END_TURN = "end_turn"
    AHEAD_TURN = "ahead_turn"
    LEAD = "lead"
    HEARTBEAT = "heartbeat"
    TAKE_OVER = "take_over"
    REQUEUE = "requeue"
    PURGE = "purge"


_ENDING = frozenset({Script.START, Script.FINISH, Script.ABORT})
"""Scripts that can end a task, and so need the shared `finish` and `record` (ending.lua)."""

_JUDGING = frozenset({Script.TAKE_OVER, Script.TAKE_TURN})
"""Scripts that judge a worker dead by its heartbeat, and so need `beat`, `may_judge` and
`lapsed` (beats.lua)."""

_ALLOW_OOM = frozenset({Script.FINISH, Script.ABORT})
"""Scripts that run even when Redis refuses writes for lack of memory (maxmemory under
noeviction): those that end a task. Its terminal entry is small beside the context it drops, and
without it every stream running when Redis filled up would wait for its deadline, which is
written by ABORT too. Starting a task, its tokens and new tasks are refused (OutOfMemoryError).
A flagged script is checked by Redis against its declared keys and flags (`#!lua`, Redis 7)."""


def _lua_literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _constants() -> str:
    values: dict[str, str | int] = {
        "WORKER_GROUP": keys.WORKER_GROUP,
        "TERMINAL_ENTRY_ID": keys.TERMINAL_ENTRY_ID,
        "TOKEN_ENTRY_PREFIX": keys.TOKEN_ENTRY_PREFIX,
        "STATS_MAX_RECORDS": keys.STATS_MAX_RECORDS,
        "DEAD_LETTER_MAXLEN": keys.DEAD_LETTER_MAXLEN,
        "UNANSWERED_TTL_MS": keys.UNANSWERED_TTL_MS,
        "ARRIVALS_KEPT": keys.ARRIVALS_KEPT,
    }
    prefixes: list[tuple[str, type[Enum]]] = [
        ("STATE", TaskState),
        ("ERROR", ErrorCode),
        ("START", StartOutcome),
        ("WRITE", WriteResult),
        ("SUBMIT", SubmitOutcome),
        ("REQUEUE", RequeueOutcome),
    ]
    for prefix, enum in prefixes:
        values.update({f"{prefix}_{member.name}": member.value for member in enum})
    lines = [f"local {name} = {_lua_literal(value)}\n" for name, value in values.items()]
    # A set: DEAD_LETTER_CODES[code] is true for those codes, nil for any other.
    members = ", ".join(f"[{_lua_literal(code)}] = true" for code in sorted(DEAD_LETTER_CODES))
    lines.append(f"local DEAD_LETTER_CODES = {{{members}}}\n")
    return "".join(lines)


@cache
def source(script: Script) -> str:
    """The full Lua source of a script, constants (and the shared helpers) included."""
    lua = files("llm_batcher.protocol") / "lua"
    parts = ["#!lua flags=allow-oom"] if script in _ALLOW_OOM else []
    parts.append(_constants())
    if script in _ENDING:
        parts.append((lua / "ending.lua").read_text())
    if script in _JUDGING:
        parts.append((lua / "beats.lua").read_text())
    parts.append((lua / f"{script.value}.lua").read_text())
    return "\n".join(parts)


def register_all(redis: Redis) -> dict[Script, AsyncScript]:
    """Every script, registered on a client (loaded into Redis on first use, by SHA after)."""
    return {script: redis.register_script(source(script)) for script in Script}
