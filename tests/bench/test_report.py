"""The report: figures from made-up records, the targets, the table, the files and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_batcher.bench import output, plots
from llm_batcher.bench.report import (
    MIB,
    ApiFigures,
    Row,
    Samples,
    all_busy_share,
    batch_sizes,
    cpu_split,
    free_worker_ttft,
    peak_open,
    percentile,
    steady_throughput,
    summarise,
)
from llm_batcher.bench.scenarios import (
    KINDS,
    LIGHT,
    SATURATION_MODEL,
    Model,
    Options,
    Scenario,
    build_plan,
    ideal_rps,
    light,
)
from llm_batcher.bench.stack import StackConfig
from llm_batcher.bench.targets import add_checks

CONFIG = StackConfig(workers=2, max_batch=4)


def record(i: int, *, ok: bool = True, batch: int = 0, size: int = 4, first_ms: float = 310,
           relay: tuple[int, ...] = (1000, 3000)) -> dict[str, object]:  # fmt: skip
    """A request sent at i/10 s whose first token came first_ms later and which ended 0.5 s
    after it was sent."""
    sent = i / 10
    return {
        "sent_s": sent, "task_s": sent + 0.001, "first_s": sent + first_ms / 1000,
        "end_s": sent + 0.5, "ok": ok, "error": None if ok else "wrong answer", "status": 200,
        "tokens": 9, "events": 11, "batch_id": f"b{batch}", "batch_size": size,
        "relay_us": list(relay),
    }  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 99, 100)] == [50, 99, 100]
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_steady_throughput_leaves_out_ramp_and_tail() -> None:
    ends = [0.0, 5.0, *[5.0 + i * 0.25 for i in range(1, 81)], 40.0, 90.0]
    # the 10th to 90th percentile span only the steady part: 4 a second
    assert steady_throughput(ends) == pytest.approx(4.0, rel=0.1)
    assert steady_throughput([1.0]) is None
    assert steady_throughput([2.0, 2.0, 2.0]) is None


def test_steady_throughput_is_not_fooled_by_bursts() -> None:
    # two workers, each completing a batch of 4 every 0.5 s, out of phase by 30 ms: 16 a second.
    # Counting completions between two percentiles gave 13.9 on such a run of 16 batches.
    ends = sorted(
        start + 0.5 * cycle + worker * 0.03
        for cycle in range(1, 9)
        for worker in range(2)
        for start in [0.0] * 4
    )
    assert steady_throughput(ends) == pytest.approx(16.0, rel=0.03)


def test_peak_open() -> None:
    assert peak_open([(0, 10), (1, 2), (1.5, 3), (5, 6)]) == 3
    assert peak_open([(0, 1), (1, 2)]) == 1
    assert peak_open([]) == 0


def test_batch_sizes_count_each_batch_once() -> None:
    records = [record(0, batch=1, size=2), record(1, batch=1, size=2), record(2, batch=2, size=1)]
    assert batch_sizes(records) == {1: 1, 2: 1}


def test_all_busy_share_counts_requests_sent_while_every_worker_ran_a_batch() -> None:
    # Each batch's model starts 9 ms after its request was sent (first token 310 ms later, read
    # 1 ms after its stamp, 300 ms to the first token) and ends 0.5 s after it was sent.
    records = [record(0, batch=0), record(1, batch=1), record(9, batch=2)]
    # one worker: the second request came while the first batch ran; the others found it free
    assert all_busy_share(records, 0.3, workers=1) == pytest.approx(1 / 3)
    assert all_busy_share(records, 0.3, workers=2) == 0.0
    unstamped = [record(0, relay=()), record(1, ok=False, batch=1)]
    assert all_busy_share(unstamped, 0.3, workers=1) is None


def test_free_worker_ttft_leaves_out_requests_that_found_every_worker_busy() -> None:
    # As above: each request's first token comes 310 ms after it was sent, 10 ms more than the
    # model's 300 ms; the one sent while the only worker ran a batch waited 400 ms more.
    records = [record(0, batch=0), record(1, batch=1), record(9, batch=2)]
    records[1] = {**records[1], "first_s": 0.81}
    assert free_worker_ttft(records, 0.3, workers=1) == (pytest.approx(10), pytest.approx(10))
    assert free_worker_ttft(records, 0.3, workers=2)[1] == pytest.approx(410)
    assert free_worker_ttft([record(0, relay=())], 0.3, workers=1) == (None, None)


def saturation_scenario(concurrency: int) -> Scenario:
    return Scenario(f"c{concurrency}", "saturation", "closed", concurrency, 40, SATURATION_MODEL)


def test_summarise_saturation() -> None:
    records = [record(i, batch=i // 4) for i in range(40)]
    row, samples = summarise(saturation_scenario(8), CONFIG, records, ApiFigures(cpu_s=0.44))
    assert (row.requests, row.ok, row.errors) == (40, 40, {})
    assert row.throughput_rps == pytest.approx(10.0)
    assert row.ideal_rps == 16.0  # 8 in flight, a batch takes 300 + 8 * 25 ms
    assert row.ratio == pytest.approx(10.0 / 16.0)
    assert (row.mean_batch, row.batch_sizes) == (4.0, {4: 10})
    assert row.added_ttft_ms[0] == pytest.approx(10.0)
    assert row.relay_ms == (1.0, 3.0)
    assert samples.relay_ms.count(3.0) == 40
    assert (row.events, row.events_per_cpu_s) == (440, pytest.approx(1000.0))
    assert row.cpu_ms_per_request == pytest.approx(11.0)


def test_summarise_counts_failures_and_leaves_them_out_of_latency() -> None:
    records = [record(0), record(1, ok=False, first_ms=9000)]
    row, samples = summarise(saturation_scenario(1), CONFIG, records, ApiFigures())
    assert (row.ok, row.errors) == (1, {"wrong answer": 1})
    assert samples.added_ttft_ms == [pytest.approx(10.0)]
    assert row.events_per_cpu_s is None and row.cpu_ms_per_request is None


def test_ideal_is_workers_times_batch_over_batch_time() -> None:
    assert ideal_rps(saturation_scenario(1), CONFIG) == 2.0
    assert ideal_rps(saturation_scenario(512), CONFIG) == 16.0
    zero = Scenario("z", "efficiency", "closed", 64, 10, Model(0, 0, 9))
    assert ideal_rps(zero, CONFIG) is None


def row(**changes: object) -> Row:
    base = Row(
        scenario="c8", kind="saturation", concurrency=8, requests=40, ok=40, errors={},
        throughput_rps=15.8, ideal_rps=16.0, ratio=15.8 / 16, mean_batch=3.95,
        batch_sizes={3: 1, 4: 19}, added_ttft_ms=(12.0, 30.0), relay_ms=(1.5, 8.0),
        peak_open=8, events=440, api=ApiFigures(0.5, 80 * MIB, 3, 0.01),
        events_per_cpu_s=880.0, cpu_ms_per_request=12.5,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def verdicts(r: Row) -> dict[str, bool | None]:
    return {c.target: c.met for c in r.checks}


def test_saturation_targets() -> None:
    rows = [row(scenario="c1", concurrency=1), row(), row(scenario="c64", concurrency=64,
            ratio=0.9, relay_ms=(2.5, 8.0))]  # fmt: skip
    add_checks(rows, [CONFIG] * 3)
    assert verdicts(rows[0]) == {
        "c1: every answer": True, "c1: added TTFT p50": True, "c1: added TTFT p99": True,
    }  # fmt: skip
    assert rows[1].met is True
    assert verdicts(rows[2]) == {
        "c64: every answer": True, "c64: throughput / ideal": False, "c64: mean batch": True,
        "c64: relay p50": False, "c64: relay p99": True,
    }  # fmt: skip
    assert rows[2].met is False


def test_a_dropped_answer_misses_the_target() -> None:
    rows = [row(ok=39, errors={"error llm_crashed": 1})]
    add_checks(rows, [CONFIG])
    assert verdicts(rows[0])["c8: every answer"] is False
    assert "1x error llm_crashed" in rows[0].checks[0].measured


def capacity_row(streams: int, held: int, **api: object) -> Row:
    figures = {"cpu_s": 50.0, "rss_bytes": 700 * MIB, "redis_connections": 8,
               "healthz_max_s": 0.2, **api}  # fmt: skip
    return row(scenario=f"{streams} streams", kind="capacity", concurrency=streams,
               requests=streams, ok=streams, peak_open=held, api=ApiFigures(**figures))  # type: ignore[arg-type]  # fmt: skip


def test_capacity_targets() -> None:
    rows = [capacity_row(10_000, 10_000), capacity_row(10_000, 9_000, rss_bytes=2048 * MIB,
            redis_connections=12, healthz_max_s=1.5)]  # fmt: skip
    add_checks(rows, [CONFIG] * 2)
    assert rows[0].met is True
    assert [c.met for c in rows[1].checks] == [True, False, True, False, False, False]


def test_a_reduced_capacity_run_says_so() -> None:
    rows = [capacity_row(1000, 1000)]
    add_checks(rows, [CONFIG])
    assert rows[0].checks[0].met is None and rows[0].met is True


def test_efficiency_splits_cpu_between_requests_and_events() -> None:
    # 2 ms per request plus 0.1 ms per event: 11 events -> 3.1 ms, 43 events -> 6.3 ms
    short = row(scenario="cpu 9 tok", kind="efficiency", requests=100, ok=100, events=1100,
                cpu_ms_per_request=3.1, events_per_cpu_s=1100 / 0.31)  # fmt: skip
    long = row(scenario="cpu 41 tok", kind="efficiency", requests=100, ok=100, events=4300,
               cpu_ms_per_request=6.3)  # fmt: skip
    split = cpu_split(short, long)
    assert split is not None
    assert split == (pytest.approx(2.0), pytest.approx(100.0))
    add_checks([short, long], [CONFIG] * 2)
    assert verdicts(short) == {
        "cpu 9 tok: every answer": True,
        "cpu 9 tok: SSE events per API CPU-second": False,
        "API CPU per request beyond its events": False,
    }
    assert verdicts(long) == {"cpu 41 tok: every answer": True}


def test_the_quick_plan_has_every_kind_and_small_counts() -> None:
    opts = Options(quick=True, workers=2, max_batch=4, window_ms=None, concurrency=None,
                   streams=None, open_rate=1000.0, kinds=KINDS)  # fmt: skip
    groups = build_plan(opts)
    names = [s.name for g in groups for s in g.scenarios]
    assert names == ["c1", "c8", "c64", "c64 at 60%", "1000 streams", "cpu 9 tok", "cpu 41 tok"]
    assert [g.hold for g in groups] == [False, False, True]
    assert [g.config.workers for g in groups] == [2, 4, 2]  # the light run: 4, as its target
    assert groups[2].config.max_batch == 32


def test_the_light_run_offers_its_share_of_full_batches() -> None:
    four = StackConfig(workers=4, max_batch=4)  # full batches: 16 every 0.5 s, 32 a second
    scenario = light(four, 0.6, quick=False)
    assert (scenario.name, scenario.kind, scenario.concurrency) == ("c64 at 60%", LIGHT, 64)
    # 64 clients, each pausing think_ms and then waiting 500 ms for its answer: 19.2 a second
    assert scenario.think_ms == pytest.approx(64 / 19.2 * 1000 - 500)
    assert ideal_rps(scenario, four) == pytest.approx(19.2)
    assert scenario.requests == round(19.2 * 60)  # a minute of load; a quick run's, 20 s
    assert light(four, 0.6, quick=True).requests == round(19.2 * 20)
    assert light(four, 0.15, quick=True, requests=7).requests == 7


def test_light_targets() -> None:
    rows = [row(scenario="c64 at 60%", kind=LIGHT, concurrency=64, added_ttft_ms=(20.0, 70.0),
                all_busy_share=0.25, free_worker_ttft_ms=(6.04, 21.0))]  # fmt: skip
    add_checks(rows, [StackConfig(workers=4, max_batch=4)])
    assert verdicts(rows[0]) == {
        "c64 at 60%: every answer": True, "c64 at 60%: added TTFT p50": True,
        "c64 at 60%: added TTFT p99": False,
        "c64 at 60%: sent while every worker ran a batch": None,  # shown, not a target
        "c64 at 60%: added TTFT p50/p99 of the others": None,
    }  # fmt: skip
    assert [c.measured for c in rows[0].checks[-2:]] == ["25%", "6.0 / 21.0 ms"]
    assert rows[0].met is False


def test_table_files_and_plots(tmp_path: Path) -> None:
    rows = [row(scenario="c1", concurrency=1), row(ratio=0.5), capacity_row(1000, 1000)]
    add_checks(rows, [CONFIG] * 3)
    table = output.text_table(rows)
    assert table.splitlines()[0].split()[0] == "scenario"
    assert "MISSED" in table and "missed: c8: throughput / ideal: 0.50" in table
    samples = [Samples(added_ttft_ms=[5.0, 12.0, 30.0], relay_ms=[0.5, 1.5, 8.0])] * 3
    plots.write_all(tmp_path, rows, samples, lambda c: min(c, 8) * 2.0)
    meta = {"commit": "abc123", "started": "now", "duration_s": 1.0, "machine": "m",
            "settings": {"quick": True}}  # fmt: skip
    output.write_json(tmp_path / "report.json", meta, rows)
    output.write_markdown(tmp_path / "report.md", meta, rows)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["commit"] == "abc123"
    assert [r["met"] for r in report["rows"]] == [True, False, True]
    assert report["rows"][1]["added_ttft_ms"] == [12.0, 30.0]
    markdown = (tmp_path / "report.md").read_text()
    assert "| c8 | 15.8 | 0.50 |" in markdown and "![throughput.png](throughput.png)" in markdown
    for name in output.PLOTS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
