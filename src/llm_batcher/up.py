"""`llm-batcher up`: the whole system on one machine (work in progress)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2)


def main(args: argparse.Namespace) -> int:
    raise SystemExit("llm-batcher up: not available yet")
