"""Probe figures as Prometheus gauges: a textfile-collector file, or a /metrics endpoint.

One list of samples (:func:`probe_samples`) feeds both. A figure the probe could not
measure is left out, never written as 0: a 0 would read as "the service uses no memory"
and silence every alert rule built on it. ``prometheus_client`` is the optional ``metrics``
extra and is imported inside the functions that need it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsctl.errors import MpsctlError
from mpsctl.monitor.history import oom_count, parse_time
from mpsctl.observe.probe import ProbeResult, service_footprint_bytes, service_rss_bytes

MISSING = "Prometheus output needs prometheus_client: pip install 'mpsctl[metrics]'"


@dataclass(frozen=True)
class Sample:
    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def probe_samples(result: ProbeResult) -> list[Sample]:
    """Every known figure of ``result`` as a gauge sample; unknown figures are omitted."""
    base = {"service": result.service_name}
    out: list[Sample] = []

    def add(name: str, help_text: str, value: float | None, **labels: str) -> None:
        if value is not None:
            out.append(Sample(f"mpsctl_{name}", help_text, float(value), {**base, **labels}))

    add("verdict", "Probe verdict: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.", int(result.verdict))
    add("probe_timestamp_seconds", "When the probe ran (Unix time).", _epoch(result.time))
    host = result.host
    if host is not None:
        add("host_memory_total_bytes", "Physical memory.", host.total_bytes)
        add("host_memory_used_bytes", "Host memory used (psutil's used).", host.used_bytes)
        add("host_memory_available_bytes", "Host memory available.", host.available_bytes)
        add("host_memory_wired_bytes", "Wired memory (macOS).", host.wired_bytes)
        add(
            "host_memory_compressed_bytes",
            "Memory held by the compressor (macOS).",
            host.compressed_bytes,
        )
        add("host_swap_total_bytes", "Swap size.", host.swap_total_bytes)
        add("host_swap_used_bytes", "Swap used.", host.swap_used_bytes)
    snap = result.service
    if snap is not None:
        add("service_up", "1 when the service's processes were found.", int(snap.running))
        if snap.running:
            add(
                "service_rss_bytes",
                "RSS of the service's process tree (no Metal memory).",
                service_rss_bytes(snap),
            )
            add(
                "service_footprint_bytes",
                "phys_footprint of the service's tree (macOS).",
                service_footprint_bytes(snap),
            )
    acc = result.accelerator
    device = {"device": acc.device} if acc.device else {}
    add(
        "accelerator_allocated_bytes",
        "Bytes in live tensors (MPS/CUDA allocated).",
        acc.allocated_bytes,
        **device,
    )
    add(
        "accelerator_driver_allocated_bytes",
        "MPS: all Metal memory of the process.",
        acc.driver_allocated_bytes,
        **device,
    )
    add(
        "accelerator_reserved_bytes",
        "CUDA caching allocator reserved.",
        acc.reserved_bytes,
        **device,
    )
    add(
        "accelerator_limit_bytes",
        "Allocator limit (MPS high ratio x recommended max).",
        acc.limit_bytes,
        **device,
    )
    add(
        "accelerator_recommended_max_bytes",
        "MPS recommendedMaxWorkingSetSize.",
        acc.recommended_max_bytes,
        **device,
    )
    health = result.health
    if health.checked:
        add("health_ok", "1 when the health endpoint answered OK.", int(health.ok))
        latency = None if health.latency_ms is None else health.latency_ms / 1000
        add("health_latency_seconds", "Health request latency.", latency)
    add(
        "oom_events",
        "Out-of-memory events in the service logs in the last hour.",
        oom_count(result),
    )
    return out


def _epoch(text: str) -> float | None:
    moment = parse_time(text)
    return None if moment is None else moment.timestamp()


def _metric_families(samples: list[Sample]) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    families: dict[str, Any] = {}
    label_names: dict[str, list[str]] = {}
    for sample in samples:
        if sample.name not in families:
            label_names[sample.name] = sorted(sample.labels)
            families[sample.name] = GaugeMetricFamily(
                sample.name, sample.help, labels=label_names[sample.name]
            )
        names = label_names[sample.name]
        families[sample.name].add_metric([sample.labels.get(n, "") for n in names], sample.value)
    yield from families.values()


class ProbeCollector:
    """A prometheus_client collector: ``collect()`` yields the gauges of one probe."""

    def __init__(self, samples: Callable[[], list[Sample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[Any]:
        yield from _metric_families(self._samples())

    def describe(self) -> list[Any]:
        # An empty description: registering must not run a probe.
        return []


def _require_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MpsctlError(MISSING) from None


def write_textfile(path: Path, result: ProbeResult) -> None:
    """Write the probe's gauges to ``path`` for node_exporter's textfile collector.

    ``write_to_textfile`` writes a temporary file and renames it over ``path``, so the
    collector never reads half a file.
    """
    _require_client()
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry(auto_describe=False)
    samples = probe_samples(result)
    registry.register(ProbeCollector(lambda: samples))
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise MpsctlError(f"cannot write {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- exporter
class CachedProbe:
    """One probe per scrape, serialised; scrapes closer than ``min_interval`` share one.

    Two Prometheus servers (or a browser tab) scraping at once must not start two probes,
    and a burst of scrapes must not turn into a burst of health requests.
    """

    def __init__(
        self,
        probe: Callable[[], ProbeResult],
        min_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, list[Sample]] | None = None
        self.probes = 0

    def samples(self) -> list[Sample]:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last[0] < self._min_interval:
                return self._last[1]
            started = time.perf_counter()
            samples = probe_samples(self._probe())
            self.probes += 1
            samples.append(
                Sample(
                    "mpsctl_probe_duration_seconds",
                    "Seconds the probe behind this scrape took.",
                    round(time.perf_counter() - started, 6),
                    dict(samples[0].labels) if samples else {},
                )
            )
            self._last = (now, samples)
            return samples


@dataclass(frozen=True)
class Exporter:
    url: str
    server: Any  # wsgiref server from prometheus_client
    thread: threading.Thread
    cache: CachedProbe

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_exporter(
    probe: Callable[[], ProbeResult], host: str, port: int, *, min_interval: float = 1.0
) -> Exporter:
    """Serve ``/metrics`` in a background thread; every scrape takes a (cached) probe."""
    _require_client()
    from prometheus_client import CollectorRegistry, start_http_server

    cache = CachedProbe(probe, min_interval)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProbeCollector(cache.samples))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MpsctlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return Exporter(f"http://{shown}:{bound}/metrics", server, thread, cache)
