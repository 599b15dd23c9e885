"""Probe output: rich tables (the monitoring-plugin line is in render/nagios.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mpsctl.errors import ProbeExit
from mpsctl.host_probe import HostProbe
from mpsctl.probe import (
    ProbeResult,
    service_footprint_bytes,
    service_rss_bytes,
)
from mpsctl.units import fmt_bytes, fmt_percent, fmt_seconds

STYLES = {
    ProbeExit.OK: "bold green",
    ProbeExit.WARNING: "bold yellow",
    ProbeExit.CRITICAL: "bold red",
    ProbeExit.UNKNOWN: "bold magenta",
}


def _kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def host_table(result: ProbeResult) -> Table:
    host = result.host
    if host is None:
        return _kv_table("Host memory", [("status", "unknown (unreadable)")])
    # macOS-only figures: "n/a" elsewhere; "unknown" on a Mac whose tool did not answer
    mac_only = "unknown" if host.platform == "darwin" else "n/a on this OS"
    rows = [
        ("total", fmt_bytes(host.total_bytes)),
        ("used", f"{fmt_bytes(host.used_bytes)} ({fmt_percent(host.percent)})"),
        ("available", fmt_bytes(host.available_bytes)),
        ("free", fmt_bytes(host.free_bytes)),
        ("wired", fmt_bytes(host.wired_bytes, unknown=mac_only)),
        ("compressed", fmt_bytes(host.compressed_bytes, unknown=mac_only)),
        (
            "swap",
            f"{fmt_bytes(host.swap_used_bytes)} of {fmt_bytes(host.swap_total_bytes)}"
            if host.swap_total_bytes
            else "none configured",
        ),
        # macOS's own level, or Linux's PSI on that scale (observe.host.parse_psi_memory)
        ("pressure", host.pressure or "unknown"),
    ]
    physmem = getattr(host, "physmem", None)
    if physmem:
        rows.append(("top PhysMem", _physmem_line(physmem)))
    return _kv_table("Host memory", rows)


def _physmem_line(physmem: dict[str, Any]) -> str:
    parts = [f"{fmt_bytes(physmem.get('used_bytes'))} used"]
    if physmem.get("wired_bytes") is not None:
        parts.append(f"{fmt_bytes(physmem['wired_bytes'])} wired")
    if physmem.get("compressor_bytes") is not None:
        parts.append(f"{fmt_bytes(physmem['compressor_bytes'])} compressor")
    parts.append(f"{fmt_bytes(physmem.get('unused_bytes'))} unused")
    return ", ".join(parts)


def service_table(result: ProbeResult) -> Table:
    snap = result.service
    title = f"Service {result.service_name} ({result.url})"
    table = Table(title=title, title_justify="left")
    for column, justify in (("pid", "right"), ("ppid", "right"), ("RSS", "right"),
                            ("footprint", "right"), ("CPU%", "right"), ("up", "right"),
                            ("command", "left")):  # fmt: skip
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    if snap is None:
        table.caption = "processes could not be inspected"
        return table
    if not snap.running:
        return _kv_table(title, [("state", f"not running (pidfile: {snap.pidfile_state})")])
    for proc in snap.processes:
        table.add_row(
            str(proc.pid),
            str(proc.ppid),
            fmt_bytes(proc.rss_bytes),
            fmt_bytes(proc.footprint_bytes, unknown="n/a"),
            "?" if proc.cpu_percent is None else f"{proc.cpu_percent:.0f}",
            fmt_seconds(proc.uptime_s),
            " ".join(proc.cmdline) or "?",
        )
    footprint = service_footprint_bytes(snap)
    table.caption = f"found by {snap.found_by}; tree RSS {fmt_bytes(service_rss_bytes(snap))}" + (
        f", footprint {fmt_bytes(footprint)}" if footprint is not None else ""
    )
    return table


#: what the Accelerator table (and fix's before/after table) says for a service on the CPU
CPU_ACCELERATOR = "none: the service runs on the CPU"


def accelerator_table(result: ProbeResult) -> Table:
    acc = result.accelerator
    if acc.source is None:
        return _kv_table(
            "Accelerator",
            [("figures", "unknown: the service did not report them (no memory report in "
                         "its health answer) and NVML saw nothing")],
        )  # fmt: skip
    rows = [("source", acc.source), ("device", acc.device or "unknown")]
    if acc.device == "mps":
        rows += [
            ("MPS allocated", fmt_bytes(acc.allocated_bytes)),
            ("driver allocated", fmt_bytes(acc.driver_allocated_bytes)),
            ("recommended max", fmt_bytes(acc.recommended_max_bytes)),
        ]
        if acc.high_watermark_ratio is not None and acc.recommended_max_bytes is not None:
            rows.append(
                (
                    "max allowed",
                    f"high {acc.high_watermark_ratio:.2f} x "
                    f"{fmt_bytes(acc.recommended_max_bytes)} = {fmt_bytes(acc.limit_bytes)}",
                )
            )
        else:
            rows.append(("max allowed", fmt_bytes(acc.limit_bytes)))
    elif acc.device == "cuda":
        rows += [
            ("allocated", fmt_bytes(acc.allocated_bytes)),
            ("reserved", fmt_bytes(acc.reserved_bytes)),
            ("free / total", f"{fmt_bytes(acc.free_bytes)} / {fmt_bytes(acc.total_bytes)}"),
            ("limit", fmt_bytes(acc.limit_bytes)),
        ]
    elif acc.device == "cpu":
        rows.append(("figures", f"{CPU_ACCELERATOR} (see the RSS above)"))
    else:
        rows.append(("figures", "unknown: the service's report names no device"))
    if acc.limit_percent is not None:
        # the one figure the verdict and the thresholds use, named
        rows.append(("of limit", f"{acc.held_name} {fmt_percent(acc.limit_percent)}"))
    return _kv_table("Accelerator", rows)


def health_table(result: ProbeResult) -> Table:
    health = result.health
    if not health.checked:
        return _kv_table("Health", [("checked", "no")])
    rows = [
        ("answer", "ok" if health.ok else (health.error or "failed")),
        ("HTTP", "none" if health.status is None else str(health.status)),
        ("latency", "n/a" if health.latency_ms is None else f"{health.latency_ms:.1f} ms"),
    ]
    if health.service_status:
        rows.append(("service says", health.service_status))
    oom = "unknown (logs unreadable)" if result.oom_events is None else str(len(result.oom_events))
    rows.append(("OOM events (1h)", oom))
    return _kv_table("Health", rows)


def verdict_text(result: ProbeResult) -> Text:
    verdict = result.verdict
    text = Text(f"Verdict: {verdict.name}", style=STYLES[verdict])
    for reason in result.reasons:
        text.append(f"\n  - {reason}", style="")
    for error in result.errors:
        text.append(f"\n  ! {error}", style="")
    return text


def print_probe(console: Console, result: ProbeResult) -> None:
    console.print(
        Group(host_table(result), "", service_table(result), "", accelerator_table(result),
              "", health_table(result), "", verdict_text(result))
    )  # fmt: skip


def print_host_probe(console: Console, view: HostProbe) -> None:
    """Several services: the host once, each service's tables and verdict, then the sum."""
    if not view.probes:
        return
    parts: list[Any] = [host_table(view.probes[0])]
    for result in view.probes:
        parts += ["", Text(f"== {result.service_name}", style="bold"), service_table(result),
                  "", accelerator_table(result), "", health_table(result), "",
                  verdict_text(result)]  # fmt: skip
    ram = view.ram_bytes
    rows = [
        ("services' memory", f"{fmt_bytes(view.services_memory_bytes)} of {fmt_bytes(ram)} RAM")
    ]
    if view.accelerator_held_bytes is not None or view.accelerator_ceiling_bytes is not None:
        rows.append(("accelerator held", f"{fmt_bytes(view.accelerator_held_bytes)} of "
                     f"{fmt_bytes(view.accelerator_ceiling_bytes)} shared"))  # fmt: skip
        rows.append(("accelerator limits", fmt_bytes(view.accelerator_limits_bytes)))
    parts += ["", _kv_table("Host: every service together", rows)]
    text = Text(f"Host verdict: {view.verdict.name}", style=STYLES[view.verdict])
    if view.blame:
        text.append(f" (look at {view.blame} first)", style="")
    for reason in view.reasons:
        text.append(f"\n  - {reason}", style="")
    parts += ["", text]
    console.print(Group(*parts))
