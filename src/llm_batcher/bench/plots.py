"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm_batcher.bench.report import Row, Samples
from llm_batcher.bench.scenarios import SATURATION

IdealCurve = Callable[[int], float]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput(path: Path, rows: Sequence[Row], ideal: IdealCurve | None) -> None:
    """Throughput against concurrency, with the ideal line."""
    points = [r for r in rows if r.kind == SATURATION and r.throughput_rps is not None]
    if not points:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = [r.concurrency for r in points]
    if ideal is not None:
        dense = sorted({*levels, *range(1, max(levels) + 1)})
        ax.plot(dense, [ideal(c) for c in dense], "--", color="grey", label="ideal")
    ax.plot(levels, [r.throughput_rps for r in points], "o-", label="measured")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests / s")
    ax.set_title("Throughput against concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf(ax: Any, values: Sequence[float], label: str) -> None:
    ordered = sorted(v for v in values if v > 0)
    if ordered:
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)


def latency_cdf(path: Path, rows: Sequence[Row], samples: Sequence[Samples]) -> None:
    """Distribution of the added time to first token and of the relay delay, per scenario."""
    plt = _pyplot()
    fig, (ttft_ax, relay_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row, sample in zip(rows, samples, strict=True):
        _cdf(ttft_ax, sample.added_ttft_ms, row.scenario)
        _cdf(relay_ax, sample.relay_ms, row.scenario)
    for ax, title in ((ttft_ax, "added time to first token"), (relay_ax, "relay delay")):
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of samples")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def batch_sizes(path: Path, rows: Sequence[Row]) -> None:
    """Share of batches of each size, per scenario."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        total = sum(row.batch_sizes.values())
        if total:
            sizes = sorted(row.batch_sizes)
            shares = [row.batch_sizes[s] / total for s in sizes]
            ax.plot(sizes, shares, "o-", label=row.scenario)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tasks in the batch")
    ax.set_ylabel("share of batches")
    ax.set_title("Batch sizes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(
    out_dir: Path,
    rows: Sequence[Row],
    samples: Sequence[Samples],
    ideal: IdealCurve | None,
) -> None:
    throughput(out_dir / "throughput.png", rows, ideal)
    latency_cdf(out_dir / "latency_cdf.png", rows, samples)
    batch_sizes(out_dir / "batch_sizes.png", rows)
