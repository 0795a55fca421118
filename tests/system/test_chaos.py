"""The chaos soak in CI: the same soak as `llm-batcher bench --chaos` (llm_batcher.bench.chaos),
for about a minute: every fault kind at least once under a steady mixed load, and not one
failure in any invariant's tally."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_batcher.bench.chaos import ChaosConfig, run_soak
from llm_batcher.bench.chaos_report import EXACT_ANSWER, FAULT_KINDS, ONE_TERMINAL, text_report

pytestmark = pytest.mark.system

LOAD_S = 25.0  # then the settling: the stack drains and the results expire (TTL 30 s)


@pytest.mark.timeout(300)
async def test_the_chaos_soak_keeps_every_invariant(tmp_path: Path) -> None:
    lines: list[str] = []
    log_path = tmp_path / "stack.log"
    with log_path.open("w") as log:
        report = await run_soak(ChaosConfig(load_s=LOAD_S), tmp_path / "soak", log, lines.append)
    shown = "\n".join([text_report(report), *lines])
    print(shown)  # pytest shows it with a failure; the stack's log is in tmp_path
    tallies = {t["name"]: t for t in report["invariants"]}
    assert all(t["failures"] == 0 for t in tallies.values()), shown
    assert all(report["faults"][kind] >= 1 for kind in FAULT_KINDS), report["faults"]
    # every request was judged, and most of them answered
    assert tallies[ONE_TERMINAL]["passes"] == report["requests"] > 0
    assert tallies[EXACT_ANSWER]["passes"] >= report["requests"] // 2
