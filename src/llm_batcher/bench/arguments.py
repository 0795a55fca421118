"""The arguments of `llm-batcher bench`, apart from the bench itself: the CLI builds its parser
in every image, where the bench's own dependencies (the `bench` extra) are not installed."""

from __future__ import annotations

import argparse

from llm_batcher.bench.scenarios import KINDS, LIGHT_CLIENTS, LIGHT_LOAD, LIGHT_WORKERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--quick", action="store_true", help="small counts: about a minute on 2 cores")
    add("--out", default="bench-results", help="folder of the report (default bench-results)")
    add("--workers", type=int, default=2, help="workers of the stack (default 2)")
    add("--max-batch", type=int, default=4, help="most tasks per batch (default 4)")
    add("--window-ms", type=int, help="batch window (default: the worker's default)")
    add("--concurrency", help="closed-loop clients of the saturation runs (default 1,8,64,512)")
    add("--streams", type=int, help="streams of the capacity run (default 10000, quick 1000)")
    add("--open-rate", type=float, default=1000.0, help="streams opened a second (default 1000)")
    add("--light-load", type=float, default=LIGHT_LOAD,
        help=f"load the light run's {LIGHT_CLIENTS} clients offer, as a share of what "
        f"{LIGHT_WORKERS} workers' full batches serve (default {LIGHT_LOAD})")  # fmt: skip
    add("--requests", type=int, help="requests of each closed-loop run (default: by scenario)")
    add(
        "--set",
        action="append",
        default=[],
        metavar="LLMB_NAME=VALUE",
        help="a setting of every process of the stack, e.g. to compare two policies (repeatable)",
    )
    add("--scenarios", default=",".join(KINDS), help=f"some of {','.join(KINDS)} (default all)")
    add("--chaos", action="store_true", help="the chaos soak instead of the scenarios: faults "
        "injected under load, every invariant tallied (docs/benchmarks.md)")  # fmt: skip
    add("--minutes", type=float, default=3.0, help="how long the chaos soak loads (default 3)")
    add("--url", help="measure the API at this URL instead of starting a stack "
        "(--workers and --max-batch must then describe it)")  # fmt: skip
