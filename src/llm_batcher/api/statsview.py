"""/stats for the API: who sees which view, and one computation shared by every caller.

A full window holds up to 50,000 outcome records; reading and summarising them costs Redis and
this process real time, and the test page polls /stats every 2 s per tab. So the report is
computed at most once per MAX_AGE_S, by one caller at a time (single flight): callers that
arrive meanwhile wait for that computation instead of starting their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from llm_batcher.api.errors import ApiError
from llm_batcher.api.state import AppState
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.stats import collect, public_view

MAX_AGE_S = 1.0
"""How long one computed report answers /stats."""

Report = dict[str, Any]


class SharedReport:
    """A value computed at most once per max_age_s, by one caller at a time."""

    def __init__(self, compute: Callable[[], Awaitable[Report]], max_age_s: float) -> None:
        self._compute = compute
        self._max_age_s = max_age_s
        self._value: Report | None = None
        self._at = 0.0
        self._pending: asyncio.Future[Report] | None = None

    async def get(self) -> Report:
        loop = asyncio.get_running_loop()
        if self._value is not None and loop.time() - self._at < self._max_age_s:
            return self._value
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        # A caller that gives up (timeout, disconnect) must not cancel the others' computation.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> Report:
        try:
            value = await self._compute()
            self._value, self._at = value, asyncio.get_running_loop().time()
            return value
        finally:
            self._pending = None


def shared_report(state: AppState) -> SharedReport:
    """The full report of this API process, shared by its callers."""
    settings = state.settings
    return SharedReport(
        lambda: collect(
            state.queue,
            window_s=settings.stats_window_s,
            slowest=settings.stats_slowest,
            lease_ms=settings.lease_ms,
        ),
        MAX_AGE_S,
    )


def view_for(state: AppState, authorization: str | None) -> Callable[[Report], Report]:
    """Which view a request gets: the full one with an admin key, else the public one (if
    /stats is open to it; ApiError `unauthorized` otherwise)."""
    admins = state.admin_keys
    if admins is not None and admins.match(authorization) is not None:
        return lambda report: report
    if state.settings.stats_require_key:
        if state.api_keys is None:
            raise ApiError(ErrorCode.UNAUTHORIZED, "/stats needs an admin key")
        state.api_keys.require(authorization)
    return public_view
