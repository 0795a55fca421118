"""Redis ACL users for the API and the workers (Redis 6+ and Valkey): what each may touch.

Both run the same Lua scripts, so both need the same commands; each gets a user of its own so
that a leaked password can be revoked alone and `ACL LOG` names the process. A user reaches only
the keys and the result channels under its deployment's prefix, and no dangerous command (no
KEYS, FLUSHALL, CONFIG, DEBUG, ...). SECURITY.md shows the commands for the default prefix.
"""

from __future__ import annotations

COMMAND_RULES = (
    "-@all",
    "+@connection",  # HELLO, AUTH, CLIENT SETINFO, PING, SELECT
    "+@read",
    "+@write",
    "+@stream",
    "+@pubsub",
    "+eval",
    "+evalsha",
    "+script|load",
    "+script|exists",
    "+time",
    "-@dangerous",
)
"""What the API and the workers run: reads, writes, streams, pub/sub and the Lua scripts."""


def user_rules(prefix: str, password: str) -> list[str]:
    """The ACL rules of one llm-batcher user under ``prefix`` (ACL SETUSER <name> <rules...>)."""
    return [
        "on",
        "resetpass",
        f">{password}",
        "resetkeys",
        f"~{prefix}:*",
        "resetchannels",
        f"&{prefix}:result:*",
        *COMMAND_RULES,
    ]
