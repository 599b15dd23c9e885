"""The monitoring-plugin line with perfdata: plain text, no rich (a check runs every minute)."""

from __future__ import annotations

from mpsctl.probe import ProbeResult, service_memory_bytes
from mpsctl.units import GIB


def nagios_line(result: ProbeResult) -> str:
    """``MPSCTL OK - summary | perfdata`` (monitoring-plugin guidelines)."""
    verdict = result.verdict
    summary = "; ".join(f.message for f in result.findings) or _ok_summary(result)
    th = result.thresholds
    perf: list[str] = []
    host = result.host
    if host is not None:
        perf.append(
            f"host_used={host.percent:.1f}%;{th.host_used_percent[0]:g};"
            f"{th.host_used_percent[1]:g};0;100"
        )
        perf.append(f"host_available={host.available_bytes}B;;;0;{host.total_bytes}")
        perf.append(f"swap_used={host.swap_used_bytes}B;;;0;{host.swap_total_bytes}")
    size, _label = service_memory_bytes(result.service)
    if size is not None:  # unknown: no perfdata at all, never a 0 that graphs as real
        perf.append(
            f"service_memory={size}B;{int(th.service_memory_gib[0] * GIB)};"
            f"{int(th.service_memory_gib[1] * GIB)};0;"
        )
    acc = result.accelerator
    if acc.held_bytes is not None:
        perf.append(f"accelerator_used={acc.held_bytes}B;;;0;{acc.limit_bytes or ''}")
    if acc.limit_percent is not None:
        perf.append(
            f"accelerator_limit={acc.limit_percent:.1f}%;"
            f"{th.accelerator_limit_percent[0]:g};{th.accelerator_limit_percent[1]:g};0;"
        )
    if result.health.latency_ms is not None:
        perf.append(f"health_latency={result.health.latency_ms / 1000:.4f}s;;;0;")
    if result.oom_events is not None:
        perf.append(f"oom_events={len(result.oom_events)};;;0;")
    # '|' separates perfdata: keep it out of the human part
    return f"MPSCTL {verdict.name} - {summary.replace('|', '/')} | {' '.join(perf)}"


def _ok_summary(result: ProbeResult) -> str:
    parts = [f"service {result.service_name} running"]
    if result.host is not None:
        parts.append(f"host {result.host.percent:.0f}% used")
    return ", ".join(parts)
