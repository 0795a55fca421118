"""The line protocol between the worker and the LLM child process (docs/protocol.md, part 1).

Pure functions, standard library only: the mock imports this module, and its start-up time is
part of every batch's latency.
"""

from __future__ import annotations

import binascii
import json

from llm_batcher.records import Record


class ProtocolError(ValueError):
    """A line on the child's stdout that the protocol does not allow."""


class TokenLine(Record):
    __slots__ = ("index", "token")
    index: int
    token: str

    def __init__(self, index: int, token: str) -> None:
        self._set(index=index, token=token)


class FinishLine(Record):
    __slots__ = ("index", "reason")
    index: int
    reason: str

    def __init__(self, index: int, reason: str) -> None:
        self._set(index=index, reason=reason)


ChildLine = TokenLine | FinishLine


def encode_token(index: int, token: str) -> bytes:
    """One stdout line carrying a token; JSON escaping keeps any token on one line."""
    return json.dumps({"index": index, "token": token}, ensure_ascii=False).encode() + b"\n"


def encode_finish(index: int, reason: str = "stop") -> bytes:
    """One stdout line saying the context at ``index`` is complete."""
    return json.dumps({"index": index, "finish": reason}).encode() + b"\n"


def decode_line(line: bytes, batch_size: int) -> ChildLine:
    """Parse one stdout line (with or without its newline); raise ProtocolError if malformed."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {_preview(line)}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a JSON object: {_preview(line)}")
    index = obj.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < batch_size:
        raise ProtocolError(f"index out of range for a batch of {batch_size}: {_preview(line)}")
    if len(obj) == 2 and isinstance(obj.get("token"), str):
        return TokenLine(index, obj["token"])
    if len(obj) == 2 and isinstance(obj.get("finish"), str):
        return FinishLine(index, obj["finish"])
    raise ProtocolError(f"unknown line shape: {_preview(line)}")


def encode_context_file(context: str) -> bytes:
    """The content of a context file: UTF-8, then base64."""
    return binascii.b2a_base64(context.encode("utf-8"), newline=False)


def decode_context_file(data: bytes) -> str:
    """Inverse of encode_context_file; raises ValueError on bad base64 or UTF-8."""
    # binascii rather than base64, which imports re and struct: the mock reads these files.
    return binascii.a2b_base64(data.strip(), strict_mode=True).decode("utf-8")


def _preview(line: bytes, limit: int = 80) -> str:
    text = line[:limit].decode("utf-8", "replace")
    return repr(text) + ("…" if len(line) > limit else "")
