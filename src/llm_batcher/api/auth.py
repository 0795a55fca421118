"""API keys and admin keys: who may call /generate, resume a task, or see the full /stats.

Keys are compared in constant time against every key (hmac.compare_digest, no early exit), so
neither a key's content nor its position in the list shows in the answer's timing. A key is never
logged; what Redis stores of it, to tie a task to the key that submitted it, is a hash.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from llm_batcher.api.errors import ApiError
from llm_batcher.protocol.outcomes import ErrorCode

_BEARER = "bearer "
_OWNER_SALT = b"llm-batcher task owner\x00"


def owner_hash(key: str) -> str:
    """What a task's hash records of the key that submitted it."""
    return hashlib.sha256(_OWNER_SALT + key.encode()).hexdigest()[:32]


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if authorization is None or authorization[:7].lower() != _BEARER:
        return None
    return authorization[7:].strip().encode()


@dataclass(frozen=True, slots=True)
class KeyRing:
    """A set of keys, each with its owner hash."""

    keys: tuple[tuple[bytes, str], ...]

    @classmethod
    def of(cls, keys: Sequence[str]) -> KeyRing | None:
        """A ring of these keys; None when there are none (the feature is off)."""
        return cls(tuple((k.encode(), owner_hash(k)) for k in keys)) if keys else None

    def match(self, authorization: str | None) -> str | None:
        """The owner hash of the key in an Authorization header, or None."""
        token = bearer_token(authorization)
        if token is None:
            return None
        found = None
        for key, owner in self.keys:  # every key is compared: no early exit
            if hmac.compare_digest(token, key):
                found = owner
        return found

    def require(self, authorization: str | None) -> str:
        """The owner hash of the request's key; ApiError `unauthorized` (401) without one."""
        owner = self.match(authorization)
        if owner is None:
            message = (
                "an API key is required: Authorization: Bearer <key>"
                if authorization is None
                else "the API key is not valid"
            )
            raise ApiError(ErrorCode.UNAUTHORIZED, message)
        return owner
