"""`llm-batcher bench` end to end, on tiny scenarios: it runs, stops by itself, and reports.

No figure is asserted against a target: only that every figure is there and every answer right.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_batcher.bench.output import PLOTS

CLI = Path(sys.executable).parent / "llm-batcher"


@pytest.mark.timeout(200)
def test_a_tiny_bench_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = [str(CLI), "bench", "--quick", "--out", str(out), "--workers", "1",
            "--concurrency", "2", "--requests", "6", "--streams", "20"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[0] == "scenario"
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["quick"] is True
    rows = {row["scenario"]: row for row in report["rows"]}
    assert list(rows) == ["c2", "c64 at 60%", "20 streams", "cpu 9 tok", "cpu 41 tok"]
    for row in rows.values():
        assert (row["ok"], row["errors"]) == (row["requests"], {}), row["scenario"]
        assert row["throughput_rps"] > 0 and row["mean_batch"] >= 1
        assert row["relay_ms"][0] is not None and row["added_ttft_ms"][1] is not None
        assert row["api"]["rss_bytes"] > 0 and row["api"]["redis_connections"] >= 1
        assert row["events_per_cpu_s"] > 0 and row["checks"]
    assert rows["c2"]["ratio"] > 0 and rows["c2"]["events"] == 6 * 11
    assert rows["c64 at 60%"]["ideal_rps"] == pytest.approx(19.2)  # 0.6 of 4 workers' 32/s
    assert rows["20 streams"]["peak_open"] == 20
    markdown = (out / "report.md").read_text()
    assert "| scenario | req/s |" in markdown and "## Targets" in markdown
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
