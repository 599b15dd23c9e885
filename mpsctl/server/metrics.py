"""Prometheus metrics of one service instance, in a registry of its own.

A per-app ``CollectorRegistry`` (not the global one) so two apps in one process -- the
tests do that -- never collide, and an operator's own metrics stay separate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
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


class _StateCollector(Collector):
    """Reads the memory report and limiter at scrape time; unknown figures are left out."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        memory = state.get("memory") or {}
        for name, path, help_text in _MEMORY_GAUGES:
            value: Any = memory
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=float(value))
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
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
