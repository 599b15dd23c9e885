"""Probe figures as Prometheus gauges: a textfile-collector file, or a /metrics endpoint.

One list of samples (:func:`all_samples`) feeds both, so a rule that works on the exporter
works on the textfile too. A figure the probe could not
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

from mpsctl.control.audit import fix_history_path, read_records
from mpsctl.errors import MpsctlError
from mpsctl.observe.host import PRESSURE_LEVELS
from mpsctl.probe import ProbeResult, service_footprint_bytes, service_rss_bytes
from mpsctl.units import parse_time

MISSING = "Prometheus output needs prometheus_client: pip install 'mpsctl[metrics]'"

#: memory pressure (macOS's own level, Linux's PSI on that scale) as a number a rule compares
PRESSURE_VALUES = PRESSURE_LEVELS


@dataclass(frozen=True)
class Sample:
    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    #: "gauge" or "counter" (a counter's name has no ``_total``: prometheus_client adds it)
    kind: str = "gauge"


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
        add(
            "host_memory_pressure_level",
            "Memory pressure: 0 normal, 1 warn, 2 critical (macOS's level; Linux: PSI, "
            "see docs/monitoring.md).",
            PRESSURE_VALUES.get(host.pressure or ""),
        )
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
    add("probe_duration_seconds", "Seconds the probe took.", result.duration_s)
    for kind, total in sorted((result.oom_totals or {}).items()):
        out.append(
            Sample(
                "mpsctl_oom_events",
                "Memory failures found in the service logs since the first probe, by kind "
                "(see docs/monitoring.md; deleting MPSCTL_HOME/oom_totals.json resets it).",
                total,
                {**base, "kind": kind},
                "counter",
            )
        )
    return out


def all_samples(result: ProbeResult, home: Path | None) -> list[Sample]:
    """The probe's samples and, with ``home``, the watchdog's counters from its fix history."""
    samples = probe_samples(result)
    if home is not None:
        samples += watchdog_samples(home, result.service_name)
    return samples


def watchdog_samples(home: Path, service: str) -> list[Sample]:
    """Counters read back from ``fix``'s audit trail (``history/fix.jsonl``, never pruned).

    Restarts the watchdog (``fix --if-unhealthy``) made, and the runs where it gave up
    because its restart budget was spent. Both are present from the first scrape (0
    before any run) so that ``increase()`` sees the first event too.
    """
    restarts = refusals = 0
    for record in read_records(fix_history_path(home)):
        if record.get("trigger") != "if-unhealthy":
            continue
        restarts += record.get("restarted") is True
        refusals += record.get("result") == "refused"
    labels = {"service": service}
    return [
        Sample(
            "mpsctl_watchdog_restarts",
            "Restarts made by fix --if-unhealthy.",
            restarts,
            labels,
            "counter",
        ),
        Sample(
            "mpsctl_watchdog_refusals",
            "fix --if-unhealthy runs that refused to restart: the restart budget was spent.",
            refusals,
            labels,
            "counter",
        ),
    ]


def _epoch(text: str) -> float | None:
    moment = parse_time(text)
    return None if moment is None else moment.timestamp()


def _metric_families(samples: list[Sample]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: dict[str, Any] = {}
    label_names: dict[str, list[str]] = {}
    for sample in samples:
        if sample.name not in families:
            label_names[sample.name] = sorted(sample.labels)
            family = CounterMetricFamily if sample.kind == "counter" else GaugeMetricFamily
            families[sample.name] = family(
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


def write_textfile(path: Path, result: ProbeResult, home: Path | None = None) -> None:
    """Write the probe's samples (:func:`all_samples`) to ``path`` for node_exporter's
    textfile collector.

    ``write_to_textfile`` writes a temporary file and renames it over ``path``, so the
    collector never reads half a file.
    """
    _require_client()
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry(auto_describe=False)
    samples = all_samples(result, home)
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
        home: Path | None = None,
    ) -> None:
        self._probe = probe
        self._home = home
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
            samples = all_samples(self._probe(), self._home)
            self.probes += 1
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
    probe: Callable[[], ProbeResult],
    host: str,
    port: int,
    *,
    min_interval: float = 1.0,
    home: Path | None = None,
) -> Exporter:
    """Serve ``/metrics`` in a background thread; every scrape takes a (cached) probe.

    With ``home``, the watchdog's counters from that MPSCTL_HOME's fix history are served too.
    """
    _require_client()
    from prometheus_client import CollectorRegistry

    from mpsctl.monitor.exporter_server import start_bounded_server

    cache = CachedProbe(probe, min_interval, home=home)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProbeCollector(cache.samples))
    try:
        server, thread = start_bounded_server(host, port, registry)
    except OSError as exc:
        raise MpsctlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return Exporter(f"http://{shown}:{bound}/metrics", server, thread, cache)


def write_services_textfile(path: Path, results: list[ProbeResult]) -> None:
    """:func:`write_textfile` for several services: every service's gauges in one file,
    each labelled ``service="NAME"`` (one metric family per name, as the format requires)."""
    _require_client()
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry(auto_describe=False)
    samples = [sample for result in results for sample in probe_samples(result)]
    registry.register(ProbeCollector(lambda: samples))
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise MpsctlError(f"cannot write {path}: {exc.strerror or exc}") from None


def start_services_exporter(
    probes: list[tuple[Callable[[], ProbeResult], Path]],
    host: str,
    port: int,
    *,
    min_interval: float = 1.0,
) -> Exporter:
    """:func:`start_exporter` for several services: each scrape serves every service's
    (cached) probe and watchdog counters, labelled ``service="NAME"``, in one family per
    metric name."""
    _require_client()
    from prometheus_client import CollectorRegistry

    from mpsctl.monitor.exporter_server import start_bounded_server

    caches = [CachedProbe(probe, min_interval, home=home) for probe, home in probes]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProbeCollector(lambda: [s for c in caches for s in c.samples()]))
    try:
        # the one-service exporter's server: bounded threads, idle connections closed
        server, thread = start_bounded_server(host, port, registry)
    except OSError as exc:
        raise MpsctlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return Exporter(f"http://{shown}:{bound}/metrics", server, thread, caches[0])
