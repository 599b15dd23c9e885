"""The results of a stress run: exact latency percentiles, memory spans, the exit status.

Percentiles use the **nearest-rank** method over the latencies of the requests that
succeeded: the p-th percentile is the ``ceil(p/100 * N)``-th smallest latency, so it is
always a latency that was measured (no interpolation). Failed requests (a 503 from the limiter
returns in microseconds) are counted by status and kind but kept out of the latency figures.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mpsctl.ask import KIND_EXIT, AskExit

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already-sorted values (p in 0-100]."""
    if not sorted_values:
        raise ValueError("no values")
    # p * n / 100, not p / 100 * n: 0.07 * 100 is 7.000000000000001, whose ceil is 8
    rank = max(1, math.ceil(p * len(sorted_values) / 100))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class LatencyStats:
    count: int
    min_s: float
    mean_s: float
    max_s: float
    #: percentile (50, 90, 95, 99) -> seconds, nearest-rank
    percentiles_s: Mapping[int, float]

    @classmethod
    def of(cls, latencies: Sequence[float]) -> LatencyStats | None:
        if not latencies:
            return None
        ordered = sorted(latencies)
        return cls(
            count=len(ordered),
            min_s=ordered[0],
            mean_s=math.fsum(ordered) / len(ordered),
            max_s=ordered[-1],
            percentiles_s={p: percentile(ordered, p) for p in PERCENTILES},
        )


@dataclass(frozen=True)
class RequestRecord:
    """One request of a stress run, as a worker saw it."""

    started_s: float  # since the run began
    latency_s: float
    status: int | None  # None when no HTTP answer came back
    kind: str | None  # ClientError kind; None when it succeeded
    tokens: int | None


@dataclass(frozen=True)
class MemorySample:
    at_s: float  # since the run began (negative: before)
    tree_rss_bytes: int | None
    tree_footprint_bytes: int | None  # macOS phys_footprint of the tree (Metal included)
    reported_rss_bytes: int | None  # the service's own report: its process RSS
    accel_allocated_bytes: int | None  # MPS current_allocated / CUDA allocated
    accel_held_bytes: int | None  # MPS driver_allocated / CUDA reserved (cache included)
    device: str | None
    in_flight: int | None  # the limiter's own counts, when it reports them
    queued: int | None
    #: the limiter's high-water mark since the service started, when it reports one
    max_in_flight_seen: int | None = None


MEMORY_FIELDS = (
    "tree_rss_bytes",
    "tree_footprint_bytes",
    "reported_rss_bytes",
    "accel_allocated_bytes",
    "accel_held_bytes",
)


def peak_in_flight(samples: Sequence[MemorySample]) -> int | None:
    """The most queries in flight at once during the run, or None when it is not known.

    Sampling ``in_flight`` misses a peak between two samples, and a short run may have no
    sample during the load at all (the before and after samples both read 0). The service's
    high-water mark settles it: risen during the run, the new mark is the run's peak; not
    risen, the peak is the old mark only if a sample saw it, and unknown otherwise. Without
    that counter, only samples taken during the load count (never the idle before/after).
    """
    if len(samples) < 2:
        return None
    first, last = samples[0].max_in_flight_seen, samples[-1].max_in_flight_seen
    during = [s.in_flight for s in samples[1:-1] if s.in_flight is not None]
    if first is not None and last is not None:
        if last > first:
            return last
        return last if last in during else None
    return max(during) if during else None


@dataclass(frozen=True)
class Span:
    before: int | None
    peak: int | None  # highest of every sample, before and after included
    after: int | None


@dataclass(frozen=True)
class MemoryStats:
    samples: int
    interval_s: float
    device: str | None
    spans: Mapping[str, Span]  # MEMORY_FIELDS -> Span
    peak_in_flight: int | None
    peak_queued: int | None

    @classmethod
    def of(cls, samples: Sequence[MemorySample], interval_s: float) -> MemoryStats:
        spans = {}
        for name in MEMORY_FIELDS:
            values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
            first = getattr(samples[0], name) if samples else None
            last = getattr(samples[-1], name) if len(samples) > 1 else None
            spans[name] = Span(first, max(values) if values else None, last)
        devices = [s.device for s in samples if s.device]
        queues = [s.queued for s in samples if s.queued is not None]
        return cls(
            samples=len(samples),
            interval_s=interval_s,
            device=devices[-1] if devices else None,
            spans=spans,
            peak_in_flight=peak_in_flight(samples),
            peak_queued=max(queues) if queues else None,
        )

    @property
    def peak_bytes(self) -> int | None:
        """The one figure a sweep table shows: footprint where known (macOS), else RSS."""
        for name in ("tree_footprint_bytes", "tree_rss_bytes", "reported_rss_bytes"):
            if self.spans[name].peak is not None:
                return self.spans[name].peak
        return None


@dataclass(frozen=True)
class StressResult:
    url: str
    started_at: str
    concurrency: int
    requests_limit: int | None
    duration_limit_s: float | None
    stopped_by: str  # "count" | "duration" | "interrupt"
    elapsed_s: float
    total: int
    ok: int
    by_status: Mapping[str, int]  # "200" -> n; requests with no HTTP answer are not here
    errors: Mapping[str, int]  # ClientError kind -> n
    error_examples: Mapping[str, str]  # kind -> the first message of that kind
    latency: LatencyStats | None  # successful requests only
    tokens_total: int | None
    memory: MemoryStats
    records: tuple[RequestRecord, ...] = field(repr=False, default=())

    @property
    def interrupted(self) -> bool:
        return self.stopped_by == "interrupt"

    @property
    def requests_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens_total is None or self.elapsed_s <= 0:
            return None
        return self.tokens_total / self.elapsed_s


@dataclass(frozen=True)
class SweepResult:
    levels: tuple[StressResult, ...]
    interrupted: bool
    #: the served model's memory plan for these questions (``mpsctl plan``), or None
    plan: Plan | None = None
    #: why there is no plan (a hub id, a model without config.json)
    plan_note: str | None = None

    def predicted_peak_bytes(self, concurrency: int) -> int | None:
        """The plan's total at ``concurrency``: weights + overhead + n x (KV cache + peak)."""
        return None if self.plan is None else self.plan.figures.total_bytes(concurrency)


def stress_exit(results: Sequence[StressResult], *, partial_is_failure: bool = True) -> int:
    """0 all answered; the kind's own code when every request failed the same way (a stopped
    service exits 3 as a single ask would); otherwise 1 (stress) or 0 (sweep, whose point is
    to push past the limit); 130 after Ctrl-C."""
    if any(r.interrupted for r in results):
        return AskExit.INTERRUPTED
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result.errors)
    if not errors:
        return AskExit.OK
    if not any(r.ok for r in results) and len(errors) == 1:
        return KIND_EXIT.get(next(iter(errors)), AskExit.FAILURE)
    return AskExit.FAILURE if partial_is_failure else AskExit.OK
