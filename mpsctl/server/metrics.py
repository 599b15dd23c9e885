"""Prometheus metrics of one service instance, in a registry of its own.

A per-app ``CollectorRegistry`` (not the global one) so two apps in one process -- the
tests do that -- never collide, and an operator's own metrics stay separate.

Besides the service's own counters: the query latency as a histogram
(``mpsctl_query_duration_seconds_bucket``, by outcome), the process's standard metrics
(``process_start_time_seconds``, ``process_resident_memory_bytes``, CPU, open files: from
prometheus_client's ``ProcessCollector``, which reads ``/proc``; elsewhere the start time
alone), and the accelerator figures under the exporter's names
(``mpsctl_accelerator_allocated_bytes{device}`` ...), so one rule or panel reads both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric name, path into the memory report, help)
_MEMORY_GAUGES = (
    ("mpsctl_process_rss_bytes", ("rss_bytes",), "Resident set size of the service process"),
    (
        "mpsctl_mps_current_allocated_bytes",
        ("mps", "current_allocated_bytes"),
        "torch.mps.current_allocated_memory()",
    ),
    (
        "mpsctl_mps_driver_allocated_bytes",
        ("mps", "driver_allocated_bytes"),
        "torch.mps.driver_allocated_memory()",
    ),
    (
        "mpsctl_mps_recommended_max_bytes",
        ("mps", "recommended_max_bytes"),
        "torch.mps.recommended_max_memory()",
    ),
    ("mpsctl_mps_limit_bytes", ("mps", "limit_bytes"), "High watermark ratio x recommended max"),
    ("mpsctl_cuda_allocated_bytes", ("cuda", "allocated_bytes"), "torch.cuda.memory_allocated()"),
    ("mpsctl_cuda_reserved_bytes", ("cuda", "reserved_bytes"), "torch.cuda.memory_reserved()"),
    (
        "mpsctl_cuda_max_allocated_bytes",
        ("cuda", "max_allocated_bytes"),
        "torch.cuda.max_memory_allocated()",
    ),
    ("mpsctl_cuda_free_bytes", ("cuda", "free_bytes"), "torch.cuda.mem_get_info()[0]"),
    ("mpsctl_cuda_total_bytes", ("cuda", "total_bytes"), "torch.cuda.mem_get_info()[1]"),
)


#: query latency buckets: a token-by-token generation takes from tenths of a second to minutes
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# (exporter's name, path into the memory report, help): the exporter's names for the same
# figures (monitor/prometheus.py), labelled with the device
_ACCELERATOR_GAUGES = (
    ("mpsctl_accelerator_allocated_bytes", ("mps", "current_allocated_bytes"), "mps"),
    ("mpsctl_accelerator_driver_allocated_bytes", ("mps", "driver_allocated_bytes"), "mps"),
    ("mpsctl_accelerator_limit_bytes", ("mps", "limit_bytes"), "mps"),
    ("mpsctl_accelerator_recommended_max_bytes", ("mps", "recommended_max_bytes"), "mps"),
    ("mpsctl_accelerator_allocated_bytes", ("cuda", "allocated_bytes"), "cuda"),
    ("mpsctl_accelerator_reserved_bytes", ("cuda", "reserved_bytes"), "cuda"),
)
_ACCELERATOR_HELP = {
    "mpsctl_accelerator_allocated_bytes": "Bytes in live tensors (MPS/CUDA allocated).",
    "mpsctl_accelerator_driver_allocated_bytes": "MPS: all Metal memory of the process.",
    "mpsctl_accelerator_limit_bytes": "Allocator limit (MPS high ratio x recommended max).",
    "mpsctl_accelerator_recommended_max_bytes": "MPS recommendedMaxWorkingSetSize.",
    "mpsctl_accelerator_reserved_bytes": "CUDA caching allocator reserved.",
}


def _dig(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        document = document.get(key) if isinstance(document, dict) else None
    return document


class _StartTimeCollector(Collector):
    """``process_start_time_seconds`` where ProcessCollector cannot read ``/proc``."""

    def __init__(self, started: float) -> None:
        self._started = started

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=self._started,
        )


class _StateCollector(Collector):
    """Reads the memory report and limiter at scrape time; unknown figures are left out."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        memory = state.get("memory") or {}
        for name, path, help_text in _MEMORY_GAUGES:
            value = _dig(memory, path)
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=float(value))
        families: dict[str, GaugeMetricFamily] = {}
        for name, path, backend in _ACCELERATOR_GAUGES:
            value = _dig(memory, path)
            if value is None:
                continue
            device = str(memory.get("device") or backend)
            if name not in families:
                families[name] = GaugeMetricFamily(name, _ACCELERATOR_HELP[name], labels=["device"])
            families[name].add_metric([device], float(value))
        yield from families.values()
        for name, key, help_text in (
            ("mpsctl_model_loaded", "model_loaded", "1 when a model is loaded"),
            ("mpsctl_limiter_in_flight", "in_flight", "Queries being answered"),
            ("mpsctl_limiter_queued", "queued", "Queries waiting for a slot"),
            ("mpsctl_limiter_max_concurrent", "max_concurrent", "Query slots"),
            ("mpsctl_limiter_max_queue", "max_queue", "Queue capacity"),
            (
                "mpsctl_limiter_max_in_flight_seen",
                "max_in_flight_seen",
                "Most queries ever in flight at once since start",
            ),
            (
                "mpsctl_generation_max_active_seen",
                "max_active_seen",
                "Most generations ever running at once since start",
            ),
        ):
            if state.get(key) is not None:
                yield GaugeMetricFamily(name, help_text, value=float(state[key]))
        rejected = state.get("rejected")
        if rejected:
            family = CounterMetricFamily(
                "mpsctl_limiter_rejected", "Queries refused by the limiter", labels=["reason"]
            )
            for reason, count in rejected.items():
                family.add_metric([reason], float(count))
            yield family


class ServiceMetrics:
    def __init__(
        self, snapshot: Callable[[], dict[str, Any]], started: float | None = None
    ) -> None:
        """``started``: when the service started (Unix time; default now), the
        ``process_start_time_seconds`` of a system without ``/proc``."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "mpsctl_query_duration_seconds",
            "Seconds from a query's arrival to its answer, by outcome",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queries = Counter(
            "mpsctl_queries",
            "Queries by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.ooms = Counter(
            "mpsctl_out_of_memory", "Out-of-memory errors during queries", registry=self.registry
        )
        self.releases = Counter(
            "mpsctl_releases", "Memory releases by trigger", ["trigger"], registry=self.registry
        )
        self.registry.register(_StateCollector(snapshot))
        if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
            ProcessCollector(registry=self.registry)
        else:
            self.registry.register(_StartTimeCollector(started or time.time()))

    def observe_query(self, outcome: str, seconds: float) -> None:
        """One answered query: its outcome counted, its latency in the histogram."""
        self.queries.labels(outcome).inc()
        self.latency.labels(outcome).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
