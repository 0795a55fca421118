"""Reading the Prometheus metrics of real processes."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Samples:
    """Every sample of a /metrics endpoint: (name, sorted labels) -> value."""
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        response = await client.get(url)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def exports(url: str, **expected: float) -> bool:
    """Whether the /metrics at ``url`` has these (unlabelled) samples at these values."""
    samples = await scrape(url)
    return all(value(samples, name) == wanted for name, wanted in expected.items())
