"""Rendering for watch (sparklines + the probe's tables), report and doctor."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mpsctl.monitor.doctor import DoctorReport
from mpsctl.monitor.report import FIGURES, Report, Stats
from mpsctl.probe import ProbeResult, service_memory_bytes
from mpsctl.render.probe import (
    STYLES,
    accelerator_table,
    health_table,
    host_table,
    service_table,
    verdict_text,
)
from mpsctl.render.screen import Section
from mpsctl.units import fmt_bytes, fmt_percent

BLOCKS = "▁▂▃▄▅▆▇█"
WINDOW = 60


def sparkline(
    values: Sequence[float | None], lo: float | None = None, hi: float | None = None
) -> str:
    """One block character per value, scaled to ``lo..hi`` (default: the values' range).

    An unknown value is a blank, not the lowest block: "no reading" must not look like 0.
    """
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return " " * len(values)
    low = min(known) if lo is None else lo
    high = max(known) if hi is None else hi
    span = high - low
    out = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(" ")
        elif span <= 0:
            out.append(BLOCKS[len(BLOCKS) // 2])
        else:
            fraction = min(1.0, max(0.0, (value - low) / span))
            out.append(BLOCKS[round(fraction * (len(BLOCKS) - 1))])
    return "".join(out)


class Trends:
    """The last ``WINDOW`` readings of the figures watch draws (a rolling buffer, not a result)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.host_percent: deque[float | None] = deque(maxlen=window)
        self.service_bytes: deque[float | None] = deque(maxlen=window)
        self.accel_bytes: deque[float | None] = deque(maxlen=window)
        self.accel_limit: int | None = None
        self.ram_bytes: int | None = None

    def add(self, result: ProbeResult) -> None:
        self.host_percent.append(result.host.percent if result.host else None)
        self.service_bytes.append(service_memory_bytes(result.service)[0])
        self.accel_bytes.append(result.accelerator.held_bytes)
        if result.accelerator.limit_bytes:
            self.accel_limit = result.accelerator.limit_bytes
        if result.host is not None and result.host.total_bytes:
            self.ram_bytes = result.host.total_bytes

    def table(self) -> Table:
        table = Table(
            title=f"Last {len(self.host_percent)} samples (bars: 0 to the whole in brackets)",
            title_justify="left",
            box=None,
            pad_edge=False,
        )
        for name, justify in (
            ("figure", "left"),
            ("trend", "left"),
            ("now", "right"),
            ("min", "right"),
            ("max", "right"),
        ):
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]

        def row(
            name: str, values: Sequence[float | None], line: str, show: Callable[[float], str]
        ) -> None:
            known = [v for v in values if v is not None]
            last = values[-1] if values else None
            table.add_row(
                name,
                line,
                show(last) if last is not None else "unknown",
                show(min(known)) if known else "-",
                show(max(known)) if known else "-",
            )

        # One scale rule for every bar: 0 to a whole that bounds the figure, named in the
        # label: RAM for host and service memory, the limit for the accelerator (RAM when
        # the limit is unknown). A bar never scales to its own range, where a flat 19 MiB
        # would draw full next to a limit 92 % used.
        ram = self.ram_bytes
        host = list(self.host_percent)
        row("host used (of RAM)", host, sparkline(host, 0, 100), fmt_percent)
        service = list(self.service_bytes)
        row(f"service memory (of {fmt_bytes(ram)} RAM)", service, _bar(service, ram), fmt_bytes)
        accel = list(self.accel_bytes)
        whole: int | None
        if self.accel_limit:
            whole, label = (
                self.accel_limit,
                f"accelerator held (of {fmt_bytes(self.accel_limit)} limit)",
            )
        else:
            whole, label = ram, f"accelerator held (of {fmt_bytes(ram)} RAM)"
        row(label, accel, _bar(accel, whole), fmt_bytes)
        return table


def _bar(values: Sequence[float | None], whole: float | None) -> str:
    """``values`` as a share of ``whole``; without a whole, no bar (blanks), never a guess."""
    if not whole:
        return " " * len(values)
    return sparkline(values, 0, whole)


def watch_sections(result: ProbeResult, trends: Trends, interval: float) -> list[Section]:
    """The dashboard as sections, each with the data it shows as its key: a section whose
    key equals the previous frame's is not rendered again (:class:`LineScreen`)."""

    def header() -> Text:
        text = Text(f"mpsctl watch - {result.time} - every {interval:g} s - Ctrl-C to stop  ")
        text.append(result.verdict.name, style=STYLES[result.verdict])
        return text

    history = (tuple(trends.host_percent), tuple(trends.service_bytes),
               tuple(trends.accel_bytes), trends.accel_limit)  # fmt: skip
    return [
        ((result.time, result.verdict, interval), header),
        (history, trends.table),
        ((result.verdict, tuple(result.reasons), result.errors), lambda: verdict_text(result)),
        (result.host, lambda: host_table(result)),
        ((result.service, result.service_name, result.url), lambda: service_table(result)),
        (result.accelerator, lambda: accelerator_table(result)),
        ((result.health, result.oom_events), lambda: health_table(result)),
    ]


# --------------------------------------------------------------------------- report
def _fmt(value: float, unit: str) -> str:
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.1f} ms"


def print_report(console: Console, report: Report) -> None:
    console.print(
        Text(
            f"History {report.since} to {report.until}: {report.samples} "
            f"sample{'' if report.samples == 1 else 's'}"
            + (f" ({report.first} .. {report.last})" if report.first else "")
        )
    )
    figures = Table(title="Figures", title_justify="left")
    for name, justify in (
        ("figure", "left"),
        ("min", "right"),
        ("avg", "right"),
        ("p95", "right"),
        ("max", "right"),
        ("n", "right"),
    ):
        figures.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, stats in report.figures.items():
        label, unit = FIGURES[key]
        figures.add_row(label, *_stat_cells(stats, unit))
    console.print(figures)
    verdicts = "  ".join(f"{name} {count}" for name, count in report.verdicts.items())
    console.print(Text(f"Verdicts: {verdicts}"))
    console.print(Text(f"OOM events: {report.oom_events}"))
    for death in report.deaths:
        console.print(Text(f"  {death}"))
    if report.limit_bytes is not None:
        console.print(Text(f"Accelerator limit (latest): {fmt_bytes(report.limit_bytes)}"))
    runs = ", ".join(f"{k} {v}" for k, v in report.fix_runs.items()) or "none"
    console.print(Text(f"Restarts by fix: {len(report.restarts)} (fix runs: {runs})"))
    for restart in report.restarts:
        console.print(
            Text(
                f"  {restart.time}  {restart.trigger or '?'}  {restart.result or '?'}"
                f"  {restart.message or ''}".rstrip()
            )
        )


def _stat_cells(stats: Stats | None, unit: str) -> list[str]:
    if stats is None:
        return ["unknown"] * 4 + ["0"]
    return [
        _fmt(stats.min, unit),
        _fmt(stats.avg, unit),
        _fmt(stats.p95, unit),
        _fmt(stats.max, unit),
        str(stats.count),
    ]


# --------------------------------------------------------------------------- doctor
DOCTOR_STYLES = {"ok": "green", "info": "cyan", "warning": "bold yellow", "error": "bold red"}


def print_doctor(console: Console, report: DoctorReport) -> None:
    # One finding per line, its fix indented under it: readable in an 80-column terminal and
    # greppable, which a table with four wrapped columns is not.
    for check in report.checks:
        line = Text(f"{check.level.upper():<8}", style=DOCTOR_STYLES[check.level])
        line.append(f"{check.id}: {check.message}")
        console.print(line)
        if check.fix:
            console.print(Text(f"{'':8}fix: {check.fix}"))
    counts = report.counts()
    summary = ", ".join(f"{counts[k]} {k}" for k in ("error", "warning", "info", "ok"))
    verdict = "problems found" if report.problems else "no problems found"
    style = "bold red" if report.problems else "bold green"
    console.print(Text(f"{verdict}: {summary}", style=style))
