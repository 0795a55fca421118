"""The bench's outputs: the table it prints, `report.json` and `report.md`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from llm_batcher.bench.report import MIB, Row

COLUMNS = (
    ("scenario", 16),
    ("req/s", 7),
    ("/ideal", 6),
    ("batch", 5),
    ("+TTFT p50/p99 ms", 16),
    ("relay p50/p99 ms", 16),
    ("RSS MiB", 7),
    ("Redis", 5),
    ("ev/CPU-s", 8),
    ("CPU ms/req", 10),
    ("target", 6),
)
PLOTS = ("throughput.png", "latency_cdf.png", "batch_sizes.png")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(values: tuple[float | None, float | None]) -> str:
    return f"{_num(values[0])} / {_num(values[1])}"


def verdict(row: Row) -> str:
    met = row.met
    return "-" if met is None else ("met" if met else "MISSED")


def cells(row: Row) -> list[str]:
    """The row's figures, as the table shows them."""
    api = row.api
    return [
        row.scenario,
        _num(row.throughput_rps),
        _num(row.ratio, 2),
        _num(row.mean_batch, 2),
        _pair(row.added_ttft_ms),
        _pair(row.relay_ms),
        _num(None if api.rss_bytes is None else api.rss_bytes / MIB, 0),
        "-" if api.redis_connections is None else str(api.redis_connections),
        _num(row.events_per_cpu_s, 0),
        _num(row.cpu_ms_per_request, 2),
        verdict(row),
    ]


def text_table(rows: Sequence[Row]) -> str:
    """The table printed at the end of a run."""
    lines = ["  ".join(f"{name:>{width}}" for name, width in COLUMNS)]
    for row in rows:
        lines.append("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells(row), COLUMNS, strict=True)))
    missed = [c for row in rows for c in row.checks if c.met is False]
    for check in missed:
        lines.append(f"  missed: {check.target}: {check.measured} (target {check.requirement})")
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "|".join(" --- " for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def targets_table(rows: Sequence[Row]) -> str:
    lines = ["| target | requirement | measured | met |", "| --- | --- | --- | --- |"]
    for row in rows:
        for c in row.checks:
            met = "-" if c.met is None else ("yes" if c.met else "**no**")
            lines.append(f"| {c.target} | {c.requirement} | {c.measured} | {met} |")
    return "\n".join(lines)


def write_json(path: Path, meta: Mapping[str, object], rows: Sequence[Row]) -> None:
    records = []
    for row in rows:
        record = asdict(row)
        record["met"] = row.met
        records.append(record)
    path.write_text(json.dumps({**meta, "rows": records}, indent=2) + "\n")


def write_markdown(path: Path, meta: Mapping[str, object], rows: Sequence[Row]) -> None:
    settings = meta.get("settings", {})
    lines = [
        "# llm-batcher bench",
        "",
        f"Commit `{meta.get('commit')}`, {meta.get('started')}, {meta.get('machine')}; "
        f"{meta.get('duration_s', 0):.0f} s.",
        "",
        f"Settings: `{json.dumps(settings)}`",
        "",
        markdown_table(rows),
        "",
        "## Targets",
        "",
        targets_table(rows),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in PLOTS if (path.parent / name).exists()),
        "",
    ]
    path.write_text("\n".join(lines))
