"""Reading Prometheus metrics and SSE answers from real processes."""

from __future__ import annotations

import json

import httpx
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics endpoint: (name, sorted labels) -> value."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    """One sample's value (0 when absent: a labelled counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def generate(base_url: str, context: str) -> tuple[str, dict[str, object]]:
    """Stream one answer; returns the terminal event's type and data."""
    async with (
        httpx.AsyncClient(timeout=30) as client,
        aconnect_sse(client, "GET", f"{base_url}/generate", params={"context": context}) as sse,
    ):
        async for event in sse.aiter_sse():
            if event.event in ("done", "error"):
                return event.event, json.loads(event.data)
    raise AssertionError("stream ended without a terminal event")
