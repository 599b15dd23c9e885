"""One look at the host, the service and its accelerator, and a verdict.

``take_probe`` only reads: it never starts, stops or signals anything, so it is safe to
run from cron every minute. Each part that cannot be measured is ``None`` ("unknown"),
never 0; a part that fails becomes a reason, never a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.client import ServiceClient
from mpsctl.errors import ProbeExit
from mpsctl.observe.accelerator import AcceleratorFigures, accelerator_figures
from mpsctl.observe.host import HostMemory, host_memory
from mpsctl.observe.processes import ServiceSnapshot, find_service, with_cpu_since_snapshot
from mpsctl.settings import Settings, Thresholds
from mpsctl.units import GIB, fmt_bytes, utc_now_iso

if TYPE_CHECKING:
    from mpsctl.deaths.counting import Found
    from mpsctl.deaths.system_logs import Runner

SCHEMA = "mpsctl.probe/1"
OOM_WINDOW_S = 3600.0


@dataclass(frozen=True)
class HealthFigures:
    checked: bool
    ok: bool
    status: int | None
    latency_ms: float | None
    error: str | None
    service_status: str | None  # the service's own "ok" / "degraded", when it says
    memory_report: dict[str, Any] | None = None  # the service's own figures (accelerator)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            # not asked: unknown, not "unhealthy"
            "ok": self.ok if self.checked else None,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "service_status": self.service_status,
        }


@dataclass(frozen=True)
class Finding:
    level: ProbeExit
    message: str


@dataclass(frozen=True)
class ProbeResult:
    time: str
    service_name: str
    url: str
    host: HostMemory | None
    service: ServiceSnapshot | None
    health: HealthFigures
    accelerator: AcceleratorFigures
    #: None when the logs could not be scanned: unknown, not "no events"
    oom_events: tuple[dict[str, Any], ...] | None
    findings: tuple[Finding, ...]
    thresholds: Thresholds
    errors: tuple[str, ...] = field(default=())
    #: how the service died, when its pidfile names a process that is gone (``deaths.how_it_died``)
    death: dict[str, Any] | None = None
    #: memory failures by kind since the first probe (``oom_totals``); None when unknown
    oom_totals: dict[str, int] | None = None
    #: seconds the probe took (None for a result not made by ``take_probe``)
    duration_s: float | None = None

    @property
    def verdict(self) -> ProbeExit:
        levels = [f.level for f in self.findings]
        if not levels:
            return ProbeExit.OK
        # CRITICAL outranks UNKNOWN: a dead service is worse than a figure we could not read.
        order = (ProbeExit.CRITICAL, ProbeExit.UNKNOWN, ProbeExit.WARNING)
        return next(level for level in order if level in levels)

    @property
    def reasons(self) -> list[str]:
        return [f"{f.level.name}: {f.message}" for f in self.findings]

    def to_json(self) -> dict[str, Any]:
        service: dict[str, Any]
        if self.service is None:
            service = {"running": None, "processes": []}
        else:
            service = self.service.to_json()
        service = {
            **service,
            "name": self.service_name,
            "url": self.url,
            "rss_bytes": service_rss_bytes(self.service),
            "footprint_bytes": service_footprint_bytes(self.service),
            "env": _service_env(self.service),
        }
        return {
            "schema": SCHEMA,
            "time": self.time,
            "verdict": self.verdict.name,
            "exit_code": int(self.verdict),
            "reasons": self.reasons,
            "host": None if self.host is None else self.host.as_dict(),
            "service": service,
            "health": self.health.to_json(),
            "accelerator": self.accelerator.to_json(),
            "oom": {
                "window_s": OOM_WINDOW_S,
                "events": None if self.oom_events is None else list(self.oom_events),
            },
            "thresholds": {
                "host_used_percent": list(self.thresholds.host_used_percent),
                "swap_used_percent": list(self.thresholds.swap_used_percent),
                "service_memory_gib": list(self.thresholds.service_memory_gib),
                "accelerator_limit_percent": list(self.thresholds.accelerator_limit_percent),
            },
            "errors": list(self.errors),
            "death": self.death,
        }


def service_rss_bytes(snapshot: ServiceSnapshot | None) -> int | None:
    """RSS of the service's tree; None (unknown) when nothing runs or no RSS was readable.

    ``ServiceSnapshot.total_rss_bytes`` counts an unreadable RSS as 0; a probe must not.
    """
    if snapshot is None or not snapshot.running:
        return None
    values = [p.rss_bytes for p in snapshot.processes if p.rss_bytes is not None]
    return sum(values) if values else None


def service_footprint_bytes(snapshot: ServiceSnapshot | None) -> int | None:
    """phys_footprint of the tree (macOS); None elsewhere, when unreadable or not running."""
    if snapshot is None or not snapshot.running:
        return None
    return snapshot.total_footprint_bytes


def service_memory_bytes(snapshot: ServiceSnapshot | None) -> tuple[int | None, str]:
    """What the thresholds compare: footprint (includes Metal memory), else RSS."""
    footprint = service_footprint_bytes(snapshot)
    if footprint is not None:
        return footprint, "footprint"
    return service_rss_bytes(snapshot), "RSS"


def _service_env(snapshot: ServiceSnapshot | None) -> dict[str, str] | None:
    """The ``PYTORCH_*`` variables of the service's root process (None: unknown/unreadable)."""
    if snapshot is None or not snapshot.processes:
        return None
    roots = set(snapshot.roots) or {snapshot.processes[0].pid}
    for proc in snapshot.processes:
        if proc.pid in roots:
            return proc.pytorch_env
    return snapshot.processes[0].pytorch_env


def _level(value: float, pair: tuple[float, float]) -> ProbeExit | None:
    """The monitoring-plugin range rule the perfdata's ``warn;crit`` fields state: alert when
    the value is *above* the threshold; a value exactly at it is OK. Callers pass the value
    as the perfdata prints it (percentages to 0.1, bytes exact), so both always agree."""
    warn, crit = pair
    if value > crit:
        return ProbeExit.CRITICAL
    if value > warn:
        return ProbeExit.WARNING
    return None


def _gib_pair(pair: tuple[float, float]) -> tuple[float, float]:
    """GiB thresholds in whole bytes, as the perfdata prints them."""
    return float(int(pair[0] * GIB)), float(int(pair[1] * GIB))


def judge(
    host: HostMemory | None,
    service: ServiceSnapshot | None,
    health: HealthFigures,
    accelerator: AcceleratorFigures,
    oom_events: tuple[dict[str, Any], ...] | None,
    thresholds: Thresholds,
) -> list[Finding]:
    """The verdict's reasons, worst first. Pure: every input is already measured."""
    found: list[Finding] = []

    def add(level: ProbeExit | None, message: str) -> None:
        if level is not None:
            found.append(Finding(level, message))

    running = service is not None and service.running
    if service is None:
        add(ProbeExit.UNKNOWN, "could not inspect the service's processes")
    if running and health.checked and not health.ok:
        add(ProbeExit.CRITICAL, f"service running but unhealthy: {health.error}")
    elif service is not None and not running:
        detail = {
            "stale": " (stale pidfile: the process is gone)",
            "reused": " (the pidfile's pid now belongs to another process)",
        }.get(service.pidfile_state, "")
        if health.ok:
            # Something answers, but not a process we can name: started by hand without
            # a pidfile, and no `service.match` pattern to find it.
            add(
                ProbeExit.WARNING,
                "service answers but its processes were not found "
                "(started without mpsctl? set service.match)" + detail,
            )
        else:
            why = f": {health.error}" if health.checked and health.error else ""
            add(ProbeExit.CRITICAL, f"service not running{detail}{why}")
    elif service is None and health.checked and not health.ok:
        add(ProbeExit.CRITICAL, f"health check failed: {health.error}")
    if health.ok and health.service_status not in (None, "ok"):
        add(ProbeExit.WARNING, f"service reports status {health.service_status!r}")

    if host is None:
        add(ProbeExit.UNKNOWN, "host memory unreadable")
    else:
        add(
            _level(round(host.percent, 1), thresholds.host_used_percent),
            f"host memory {host.percent:.1f}% used (thresholds "
            f"{thresholds.host_used_percent[0]:g}/{thresholds.host_used_percent[1]:g}%)",
        )
        if host.swap_total_bytes:
            swap_pct = 100.0 * host.swap_used_bytes / host.swap_total_bytes
            swap_pct = round(swap_pct, 1)
            add(_level(swap_pct, thresholds.swap_used_percent), f"swap {swap_pct:.1f}% used")
        judged = thresholds.memory_pressure
        if host.pressure == "critical" and judged != "off":
            add(ProbeExit.CRITICAL, "memory pressure is critical")
        elif host.pressure == "warn" and judged == "warn":
            add(ProbeExit.WARNING, "memory pressure is elevated (warn)")

    if service is not None and service.running:
        # phys_footprint includes the Metal (GPU) memory of a process on Apple Silicon; RSS does not
        size, label = service_memory_bytes(service)
        if size is not None:
            add(
                _level(size, _gib_pair(thresholds.service_memory_gib)),
                f"service {label} {fmt_bytes(size)} (thresholds "
                f"{thresholds.service_memory_gib[0]:g}/{thresholds.service_memory_gib[1]:g} GiB)",
            )

    used_pct = accelerator.limit_percent
    if used_pct is not None:
        add(
            _level(round(used_pct, 1), thresholds.accelerator_limit_percent),
            f"{accelerator.device} {accelerator.held_name} {fmt_bytes(accelerator.held_bytes)}"
            f" = {used_pct:.1f}% of its limit {fmt_bytes(accelerator.limit_bytes)}",
        )
    if oom_events:
        add(
            ProbeExit.WARNING,
            f"{len(oom_events)} out-of-memory event(s) in the service logs in the last hour",
        )
    order = {ProbeExit.CRITICAL: 0, ProbeExit.UNKNOWN: 1, ProbeExit.WARNING: 2}
    return sorted(found, key=lambda f: order[f.level])


def health_figures(client: ServiceClient, timeout: float) -> HealthFigures:
    check = client.health(timeout=timeout)
    body = check.body if isinstance(check.body, dict) else {}
    status = body.get("status")
    memory = body.get("memory")
    return HealthFigures(
        checked=True,
        ok=check.ok,
        status=check.status,
        latency_ms=check.latency_ms,
        error=check.error,
        service_status=status if isinstance(status, str) else None,
        # a degraded service (503) still reports its memory: keep it
        memory_report=memory if isinstance(memory, dict) else None,
    )


def recent_oom_events(
    settings: Settings,
    window_s: float = OOM_WINDOW_S,
    *,
    runner: Runner | None = None,
    root: Path = Path("/"),
) -> list[dict[str, Any]]:
    """Memory failures of the last ``window_s`` seconds: those the service's logs hold (and,
    for an hour from when they were first seen, those without a time; ``deaths.cursor``), and
    the service's kills the operating system recorded (``deaths.attribution``; ``runner`` and
    ``root`` reach its logs, as in ``deaths.system_logs``). A kill gunicorn also reported is
    one event."""
    kills = _system_kills(settings, window_s, runner, root)
    events = _logged_events(settings, window_s, kills)
    # a worker kill logged by an earlier probe (the cursor's memory) and the kernel's kill of
    # that pid found now are still one death
    killed = {e.get("pid") for e in events if e.get("kind") == "kernel_oom_kill"}
    return [e for e in events if not (e.get("kind") == "worker_killed" and e.get("pid") in killed)]


def _system_kills(
    settings: Settings, window_s: float, runner: Runner | None, root: Path
) -> list[Found]:
    if not settings.oom.system_logs:
        return []
    from datetime import datetime, timezone

    from mpsctl.deaths.how_it_died import service_kills

    since = datetime.fromtimestamp(time.time() - window_s, timezone.utc)
    kills, _places = service_kills(settings, since, runner=runner, root=root)
    return kills


def _logged_events(settings: Settings, window_s: float, kills: list[Found]) -> list[dict[str, Any]]:
    """The logs' new failures and ``kills``, counted together by the one rule."""
    since = time.time() - window_s
    log_file = settings.service.log_file
    if not settings.service.log_globs and not kills:
        # One log, untouched within the window and since the cursor read it (or absent), and
        # no kill recorded: no event can be new, and a cron probe need not import the log
        # parsers to learn that.
        try:
            written = log_file.stat().st_mtime
            if written < since and written < _cursor_read_at(settings):
                return []
        except FileNotFoundError:
            return []
        except OSError:
            pass  # unreadable: let the scan report it
        from mpsctl.deaths.cursor import nothing_new

        if nothing_new(settings.home, log_file):
            return []
    from mpsctl.deaths.cursor import new_events
    from mpsctl.observe.logfiles import resolve_logs

    paths = [path for _label, path in resolve_logs(settings) if path is not None]
    return new_events(settings.home, paths, window_s, also=kills)


def _cursor_read_at(settings: Settings) -> float:
    """When the probe's cursor was last written (0 when never)."""
    from mpsctl.deaths.cursor import state_path

    try:
        return state_path(settings.home).stat().st_mtime
    except OSError:
        return 0.0


def take_probe(
    settings: Settings,
    *,
    health_timeout: float = 3.0,
    check_health_endpoint: bool = True,
    host_reader: Callable[[], HostMemory] = host_memory,
    sample_cpu: bool = True,
) -> ProbeResult:
    """One probe. The service's CPU% is measured over the probe's own run (from the process
    snapshot to the end of the log scan, the health request included): two readings the
    probe makes anyway, no sleep for a sampling window. ``sample_cpu=False`` leaves it None."""
    errors: list[str] = []
    began = time.perf_counter()
    try:
        host: HostMemory | None = host_reader()
    except Exception as exc:  # a probe must report, not crash, whatever psutil does
        host = None
        errors.append(f"host memory: {exc}")
    try:
        service: ServiceSnapshot | None = find_service(settings, cpu_window=sample_cpu)
    except Exception as exc:
        service = None
        errors.append(f"service processes: {exc}")
    pids = [p.pid for p in service.processes] if service is not None else []

    client = ServiceClient(settings.service)
    try:
        if check_health_endpoint:
            health = health_figures(client, health_timeout)
        else:
            health = HealthFigures(False, False, None, None, None, None)
    finally:
        client.close()

    accelerator = accelerator_figures(health.memory_report, pids)

    try:
        oom: tuple[dict[str, Any], ...] | None = tuple(recent_oom_events(settings))
    except Exception as exc:
        oom = None
        errors.append(f"log scan: {exc}")
    totals = None
    if oom is not None:
        from mpsctl.deaths.totals import count_events

        totals = count_events(settings.home, settings.service.name, oom, OOM_WINDOW_S)
    if service is not None:
        service = with_cpu_since_snapshot(service)

    findings = judge(host, service, health, accelerator, oom, settings.thresholds)
    death: dict[str, Any] | None = None
    if service is not None and service.pidfile_state in ("stale", "reused"):
        try:
            from mpsctl.deaths.how_it_died import how_it_died

            cause = how_it_died(settings, service)
        except Exception as exc:  # the probe reports; a failed search is one more error
            cause = None
            errors.append(f"how it died: {exc}")
        if cause is not None:
            death = cause.to_json()
            findings.append(Finding(ProbeExit.CRITICAL, cause.text))
    return ProbeResult(
        time=utc_now_iso(),
        service_name=settings.service.name,
        url=settings.service.url,
        host=host,
        service=service,
        health=health,
        accelerator=accelerator,
        oom_events=oom,
        findings=tuple(findings),
        thresholds=settings.thresholds,
        errors=tuple(errors),
        death=death,
        oom_totals=totals,
        duration_s=round(time.perf_counter() - began, 6),
    )
