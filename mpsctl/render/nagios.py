"""The monitoring-plugin line with perfdata: plain text, no rich (a check runs every minute).

Every figure whose value can change the state carries its ``warn;crit`` thresholds in the
monitoring-plugin range format (``N``: alert above N; ``N:``: alert below N), so a plugin
parser reading the perfdata reaches the same state as the exit code. The line is plain
ASCII: Nagios strips some characters (backticks, by default ``illegal_macro_output_chars``)
and not every frontend decodes UTF-8.
"""

from __future__ import annotations

import unicodedata

from mpsctl.observe.host import PRESSURE_LEVELS
from mpsctl.probe import ProbeResult, service_memory_bytes
from mpsctl.units import GIB

#: characters the findings use, and their plain-ASCII spelling
_ASCII = str.maketrans(
    {"—": "-", "–": "-", "…": "...", "‘": "'", "’": "'", "“": '"', "”": '"', "`": "'",
     "×": "x", "≥": ">=", "≤": "<=", "→": "->", "µ": "u"}
)  # fmt: skip


def plain_ascii(text: str) -> str:
    """``text`` in ASCII: known symbols spelled out, accents dropped, anything else ``?``."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII))
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return kept.encode("ascii", "replace").decode("ascii")


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
        if host.swap_total_bytes:
            pct = 100.0 * host.swap_used_bytes / host.swap_total_bytes
            perf.append(
                f"swap_used_percent={pct:.1f}%;{th.swap_used_percent[0]:g};"
                f"{th.swap_used_percent[1]:g};0;100"
            )
        if host.pressure in PRESSURE_LEVELS:
            # 0 normal, 1 warn, 2 critical: WARNING above 0, CRITICAL above 1, as judged
            # ([thresholds] memory_pressure: "critical" judges only 2, "off" neither)
            warn, crit = {"warn": ("0", "1"), "critical": ("1", "1"), "off": ("", "")}[
                th.memory_pressure
            ]
            perf.append(f"memory_pressure={PRESSURE_LEVELS[host.pressure]};{warn};{crit};0;2")
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
    if result.health.checked:
        # a failing health check is CRITICAL whatever else holds: alert below 1
        perf.append(f"health_ok={int(result.health.ok)};;1:;0;1")
    if result.health.latency_ms is not None:
        perf.append(f"health_latency={result.health.latency_ms / 1000:.4f}s;;;0;")
    if result.oom_events is not None:
        # any event in the last hour is a WARNING: alert above 0
        perf.append(f"oom_events={len(result.oom_events)};0;;0;")
    # '|' separates perfdata: keep it out of the human part
    line = f"MPSCTL {verdict.name} - {summary.replace('|', '/')} | {' '.join(perf)}"
    return plain_ascii(line)


def _ok_summary(result: ProbeResult) -> str:
    parts = [f"service {result.service_name} running"]
    if result.host is not None:
        parts.append(f"host {result.host.percent:.0f}% used")
    return ", ".join(parts)
