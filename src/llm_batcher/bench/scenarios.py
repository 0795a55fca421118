"""What the bench runs: scenarios, grouped by the stack they need, and their ideal figures.

Every context carries a `@mock ttft_ms=.. itl_ms=..` line, so the model's time is exact whatever
the stack's mock settings: a batch takes ttft + (tokens - 1) * itl, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_batcher.bench.stack import StackConfig

SATURATION = "saturation"
LIGHT = "light"
CAPACITY = "capacity"
EFFICIENCY = "efficiency"
KINDS = (SATURATION, LIGHT, CAPACITY, EFFICIENCY)
FULL_CONCURRENCY = (1, 8, 64, 512)
QUICK_CONCURRENCY = (1, 8, 64)
THROUGHPUT_MAX_BATCH = 32  # batches of the zero-delay stack, as in the measurement
LIGHT_WORKERS = 4  # the light-load run's stack, as the target names it
LIGHT_CLIENTS = 64
LIGHT_LOAD = 0.6  # offered load of the light-load run, as a share of its stack's capacity
LIGHT_S = (60, 20)  # seconds of load of the light-load run: full, quick


@dataclass(frozen=True)
class Model:
    """The mock's delays for every context of a scenario, and the answer's length in tokens."""

    ttft_ms: int
    itl_ms: int
    words: int

    @property
    def batch_ms(self) -> int:
        """Model time of one batch, from spawn to its last token."""
        return self.ttft_ms + (self.words - 1) * self.itl_ms

    @property
    def events(self) -> int:
        """SSE events of one answer: task, one per token, done."""
        return self.words + 2


SATURATION_MODEL = Model(ttft_ms=300, itl_ms=25, words=9)
ZERO_SHORT = Model(ttft_ms=0, itl_ms=0, words=9)
ZERO_LONG = Model(ttft_ms=0, itl_ms=0, words=41)
CAPACITY_MODEL = Model(ttft_ms=0, itl_ms=0, words=3)


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    mode: str  # "closed": clients send one request after another; "open": streams at a rate
    concurrency: int  # closed: clients; open: streams held at once
    requests: int
    model: Model
    open_rate: float = 1000.0
    think_ms: float = 0.0  # closed loop: mean pause before each request (exponential)


@dataclass(frozen=True)
class Group:
    """Scenarios that share one stack. ``hold`` starts the workers only once the first
    scenario's streams are all open (its tasks wait in the queue until then)."""

    name: str
    config: StackConfig
    scenarios: tuple[Scenario, ...]
    hold: bool = False


@dataclass(frozen=True)
class Options:
    quick: bool
    workers: int
    max_batch: int
    window_ms: int | None
    concurrency: tuple[int, ...] | None
    streams: int | None
    open_rate: float
    kinds: tuple[str, ...]
    requests: int | None = None  # per closed-loop scenario, instead of the defaults
    env: tuple[tuple[str, str], ...] = ()  # more settings of a local stack
    light_load: float = LIGHT_LOAD  # offered load of the light-load run, share of capacity


def build_plan(opts: Options) -> list[Group]:
    """The groups to run, in order; empty groups are left out."""
    groups = []
    if SATURATION in opts.kinds:
        config = StackConfig(opts.workers, opts.max_batch, opts.window_ms, opts.env)
        levels = opts.concurrency or (QUICK_CONCURRENCY if opts.quick else FULL_CONCURRENCY)
        scenarios = tuple(saturation(c, config, opts.quick, opts.requests) for c in levels)
        groups.append(Group(SATURATION, config, scenarios))
    if LIGHT in opts.kinds:
        config = StackConfig(LIGHT_WORKERS, opts.max_batch, opts.window_ms, opts.env)
        scenario = light(config, opts.light_load, opts.quick, opts.requests)
        groups.append(Group(LIGHT, config, (scenario,)))
    rest = [s for s in (capacity(opts), *efficiency(opts)) if s is not None]
    if rest:
        config = StackConfig(opts.workers, THROUGHPUT_MAX_BATCH, opts.window_ms, opts.env)
        hold = rest[0].kind == CAPACITY
        groups.append(Group("zero-delay model", config, tuple(rest), hold))
    return groups


def saturation(
    concurrency: int, config: StackConfig, quick: bool, requests: int | None = None
) -> Scenario:
    """Closed loop at ``concurrency``: two rounds per client, and enough for many batches."""
    if requests is None:
        requests = default_requests(concurrency, config, quick)
    return Scenario(
        f"c{concurrency}", SATURATION, "closed", concurrency, requests, SATURATION_MODEL
    )


def default_requests(concurrency: int, config: StackConfig, quick: bool) -> int:
    if concurrency == 1:
        return 10 if quick else 30
    batches = 8 if quick else 32
    return max(2 * concurrency, batches * config.workers * config.max_batch)


def light(config: StackConfig, load: float, quick: bool, requests: int | None = None) -> Scenario:
    """LIGHT_CLIENTS closed-loop clients that pause between requests, so that they offer
    ``load`` (a share) of what the stack's full batches could serve, for about LIGHT_S
    seconds. The pauses are random (exponential), so arrivals are not in step with batches, as
    a crowd of independent users' are not."""
    model = SATURATION_MODEL
    capacity_rps = config.workers * config.max_batch * 1000 / model.batch_ms
    cycle_ms = LIGHT_CLIENTS / (load * capacity_rps) * 1000
    think_ms = max(0.0, cycle_ms - model.batch_ms)
    if requests is None:
        requests = max(LIGHT_CLIENTS, round(load * capacity_rps * LIGHT_S[quick]))
    name = f"c{LIGHT_CLIENTS} at {load:.0%}"
    return Scenario(name, LIGHT, "closed", LIGHT_CLIENTS, requests, model, think_ms=think_ms)


def capacity(opts: Options) -> Scenario | None:
    if CAPACITY not in opts.kinds:
        return None
    streams = opts.streams or (1000 if opts.quick else 10_000)
    return Scenario(
        f"{streams} streams", CAPACITY, "open", streams, streams, CAPACITY_MODEL, opts.open_rate
    )


def efficiency(opts: Options) -> Sequence[Scenario]:
    """Two zero-delay runs with answers of different lengths: the API's CPU per request and per
    event come from the difference."""
    if EFFICIENCY not in opts.kinds:
        return ()
    requests = opts.requests or (300 if opts.quick else 3000)
    return (
        Scenario(f"cpu {ZERO_SHORT.words} tok", EFFICIENCY, "closed", 64, requests, ZERO_SHORT),
        Scenario(f"cpu {ZERO_LONG.words} tok", EFFICIENCY, "closed", 64, requests, ZERO_LONG),
    )


def ideal_rps(scenario: Scenario, config: StackConfig) -> float | None:
    """Requests a second if every batch were full and started the moment the last one ended;
    with pauses between requests, what the clients offer if each answer took the model's time
    alone; None for a zero-delay model, whose ideal is unbounded."""
    if scenario.model.batch_ms == 0:
        return None
    if scenario.think_ms > 0:
        return scenario.concurrency * 1000 / (scenario.think_ms + scenario.model.batch_ms)
    in_flight = min(scenario.concurrency, config.workers * config.max_batch)
    return in_flight * 1000 / scenario.model.batch_ms


def expected_duration_s(scenario: Scenario, config: StackConfig) -> float:
    """A generous bound on the run's time, for its deadline."""
    ideal = ideal_rps(scenario, config)
    if ideal is None:
        return 60 + scenario.requests * 0.05
    return 60 + 4 * scenario.requests / ideal + scenario.requests / scenario.open_rate
