"""The bench's measure of the API's CPU time (bench/probe.py): fine-grained where Linux gives it,
so a short run does not measure 0."""

from __future__ import annotations

import os
import sys
import time

import pytest

from llm_batcher.bench.probe import schedstat_cpu_s


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_schedstat_counts_this_process_cpu_time() -> None:
    before, cpu_before = schedstat_cpu_s(os.getpid()), time.process_time()
    assert before is not None and before > 0
    total = 0
    while time.process_time() - cpu_before < 0.02:  # 20 ms of CPU, bounded by CPU time itself
        total += sum(range(1000))
    after, cpu_after = schedstat_cpu_s(os.getpid()), time.process_time()
    assert after is not None
    spent = cpu_after - cpu_before
    # the kernel's two clocks of the same work: nanoseconds on a CPU against user + system ticks
    assert 0.5 * spent <= after - before <= 2 * spent + 0.02
    assert total > 0


def test_no_such_process_has_no_schedstat() -> None:
    assert schedstat_cpu_s(2**22 + 12345) is None
