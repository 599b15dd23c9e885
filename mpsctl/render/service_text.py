"""``status`` and ``stop`` as text. A line needs no rich: it is loaded only for stop's table
of signalled processes, so that a status or a stop of nothing costs no console."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from mpsctl.render.console import printable
from mpsctl.units import fmt_bytes, fmt_seconds

if TYPE_CHECKING:
    from rich.console import Console

    from mpsctl.control.status import StatusResult
    from mpsctl.control.stop import StopResult


def write_line(text: str) -> None:
    """``text`` and a newline on stdout; control characters made visible on a terminal."""
    out = sys.stdout
    out.write((printable(text) if out.isatty() else text) + "\n")
    out.flush()


def short_command(command: str, width: int = 70) -> str:
    return command if len(command) <= width else command[: width - 3] + "..."


_OUTCOME = {
    "SIGTERM": "stopped (SIGTERM)",
    "SIGKILL": "killed (SIGKILL)",
    "exited": "already gone",
    "survived": "STILL ALIVE",
    "would-signal": "would be signalled",
    "not-signalled": "left alone",
}


def render_stop(result: StopResult, console: Callable[[], Console]) -> None:
    """A table of what was signalled (through ``console()``, rich), else one plain line."""
    if result.processes:
        from rich.table import Table

        out = console()
        table = Table(title=f"{result.name}: {result.status}", title_justify="left")
        table.add_column("pid", justify="right")
        table.add_column("outcome")
        table.add_column("RSS", justify="right")
        table.add_column("command", overflow="fold")
        for row in result.processes:
            outcome = _OUTCOME[row.outcome] + (f" ({row.note})" if row.note else "")
            command = short_command(row.command, 200)  # the port and app are at the end: keep them
            table.add_row(str(row.pid), outcome, fmt_bytes(row.rss_bytes), command)
        out.print(table)
    if result.status == "stopped":
        write_line(
            f"{result.name} stopped in {fmt_seconds(result.elapsed_s)}: "
            f"{fmt_bytes(result.freed_rss_bytes)} RSS freed"
            + ("; pidfile removed" if result.pidfile_removed else "")
        )
    if result.drain is not None and result.status in ("stopped", "failed"):
        note = f" ({result.drain.note})" if result.drain.note else ""
        write_line(f"queries in flight: {result.drain.text()}{note}")
    if result.status in ("already-stopped", "dry-run"):
        write_line(result.message)


def status_line(result: StatusResult) -> str:
    parts = [f"{result.name}: {result.state}"]
    snap = result.snapshot
    if result.pid is not None and snap is not None:
        how = "" if snap.found_by == "pidfile" else f", found by {snap.found_by}"
        parts.append(f"pid {result.pid}{how}, up {fmt_seconds(result.uptime_s)}")
        size = snap.total_footprint_bytes
        label = "footprint"
        if size is None:
            size, label = snap.total_rss_bytes, "RSS"
        parts.append(f"{label} {fmt_bytes(size)} in {len(snap.processes)} process(es)")
    elif snap is not None and snap.pidfile_state in ("stale", "reused"):
        parts.append(f"pidfile {snap.pidfile_state}")
    health = result.health
    if health is not None and (result.state == "running" or health.ok):
        if health.ok:
            parts.append(f"healthy ({health.latency_ms:g} ms)")
        else:
            # the process runs: a refused connection means it does not listen (yet)
            error = (
                "not listening yet (still starting?)" if health.kind == "refused" else health.error
            )
            parts.append(f"UNHEALTHY ({error})")
    parts.append(result.url)
    if result.error:
        parts.append(result.error)
    if result.death is not None:
        parts.append(result.death.text)
    others = result.snapshot.others if result.snapshot else ()
    if others:
        pids = ", ".join(str(p.pid) for p in others)
        parts.append(f"not the service (they match): pid {pids}")
    return ", ".join(parts)
