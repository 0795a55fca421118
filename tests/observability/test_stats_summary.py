"""The pure parts of /stats: quantiles, the window summary and the terminal table."""

from __future__ import annotations

from llm_batcher.protocol.tasks import PREVIEW_CHARS, context_preview
from llm_batcher.stats import (
    HISTOGRAM_LE_MS,
    format_table,
    histogram,
    public_view,
    quantiles,
    summarize,
)


def test_quantiles_use_the_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert quantiles(values) == {"p50": 50, "p90": 90, "p99": 99, "max": 100, "count": 100}
    assert quantiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7, "count": 1}
    assert quantiles([])["p50"] is None


def _record(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "task_id": f"t{i}", "at_ms": 1_700_000_000_000 + i, "outcome": "done", "code": "",
        "queue_ms": i, "ttft_ms": 10 * i, "total_ms": 100 * i, "batch_size": 4,
        "worker": "w1", "preview": f"context {i}",
    }  # fmt: skip
    base.update(kw)
    return base


def test_summary_counts_outcomes_and_lists_the_slowest_first() -> None:
    records = [_record(i) for i in range(1, 11)]
    records.append(_record(99, outcome="error", code="llm_crashed", ttft_ms=None, total_ms=50))
    records.append(_record(98, outcome="error", code="cancelled", ttft_ms=None, total_ms=5))
    report = summarize(records, window_s=300, slowest=3)
    assert report["requests"] == {
        "total": 12, "done": 10, "error": 2, "by_code": {"cancelled": 1, "llm_crashed": 1}
    }  # fmt: skip
    # quantiles are over completed requests only
    assert report["total_ms"]["count"] == 10
    assert report["total_ms"]["p50"] == 500
    assert report["ttft_ms"]["max"] == 100
    assert [s["task_id"] for s in report["slowest"]] == ["t10", "t9", "t8"]
    assert report["slowest"][0]["at"].endswith("Z")


def test_preview_is_truncated_and_hostile_text_stays_data() -> None:
    hostile = "<script>alert(1)</script>\n\r\x00" + "x" * 500
    assert context_preview("short") == "short"
    report = summarize([_record(1, preview=context_preview(hostile))], window_s=60, slowest=5)
    preview = report["slowest"][0]["context_preview"]
    assert preview.startswith("<script>") and preview.endswith("…")
    assert len(preview) == PREVIEW_CHARS + 1
    table = format_table({**report, "queue_depth": 3, "in_flight": 1, "workers": 2})
    assert "\x00" not in table and "\r" not in table  # JSON-escaped in the table
    assert "queue depth 3" in table and "live workers 2" in table


def test_table_shows_every_quantile_row() -> None:
    report = summarize([_record(i) for i in range(1, 5)], window_s=300, slowest=2)
    table = format_table({**report, "queue_depth": 0, "in_flight": 0, "workers": 1})
    lines = table.splitlines()
    assert any(line.startswith("ttft") and "40" in line for line in lines)
    assert any(line.startswith("total") and "400" in line for line in lines)
    assert "slowest 2:" in table and "t4" in table


def test_histogram_counts_each_value_in_its_bucket_and_overflow_last() -> None:
    counts = histogram([0, 1, 1.5, 2, 150, 200, 201, 10_000_000])
    assert len(counts) == len(HISTOGRAM_LE_MS) + 1
    assert counts[HISTOGRAM_LE_MS.index(1)] == 2  # 0 and 1: a bound belongs to its bucket
    assert counts[HISTOGRAM_LE_MS.index(2)] == 2
    assert counts[HISTOGRAM_LE_MS.index(200)] == 2
    assert counts[HISTOGRAM_LE_MS.index(500)] == 1
    assert counts[-1] == 1
    assert sum(counts) == 8


def test_the_public_view_keeps_the_histogram_and_it_names_nothing() -> None:
    records = [_record(i, preview=f"secret {i}") for i in range(1, 11)]
    records.append(_record(99, outcome="error", code="llm_crashed", total_ms=50))
    report = public_view(summarize(records, window_s=300, slowest=3))
    shown = report["histogram"]
    assert shown["le_ms"] == list(HISTOGRAM_LE_MS)
    assert sum(shown["total_ms"]) == 10  # completed requests only, like the quantiles
    assert shown["total_ms"][HISTOGRAM_LE_MS.index(1000)] == 5  # 600..1000 ms
    assert shown["queue_ms"][HISTOGRAM_LE_MS.index(10)] == 5  # 6..10 ms
    assert sum(shown["ttft_ms"]) == 10
    assert all(isinstance(n, int) for counts in shown.values() for n in counts)  # numbers only
