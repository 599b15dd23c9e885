"""``mpsctl report``: what the recorded probe history says about a period.

Figures: min / avg / p95 / max of each recorded figure (unknown readings are skipped, not
counted as 0), samples per verdict, OOM events and the restarts ``fix`` made (read from its
audit trail ``history/fix.jsonl``, written by :mod:`mpsctl.control.audit`, tolerantly: a
torn or foreign line is skipped). The plot is optional (``matplotlib``, the ``plot`` extra).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mpsctl.control.audit import fix_history_path
from mpsctl.errors import MpsctlError
from mpsctl.monitor.history import read_history, read_jsonl
from mpsctl.stress_results import percentile
from mpsctl.units import GIB, iso_utc, parse_time

SCHEMA = "mpsctl.report/1"
PLOT_MISSING = "--plot needs matplotlib: pip install 'mpsctl[plot]'"

#: record key -> (label, unit); unit "bytes" | "%" | "ms"
FIGURES: dict[str, tuple[str, str]] = {
    "host_used_percent": ("host memory used, % of RAM", "%"),
    "host_used_bytes": ("host memory used, bytes", "bytes"),
    "host_available_bytes": ("host memory available", "bytes"),
    "swap_used_bytes": ("swap used", "bytes"),
    "service_memory_bytes": ("service memory (footprint, else RSS)", "bytes"),
    "accelerator_held_bytes": ("accelerator held", "bytes"),
    "accelerator_allocated_bytes": ("accelerator allocated (tensors)", "bytes"),
    "accelerator_limit_percent": ("accelerator, % of its limit", "%"),
    "health_latency_ms": ("health latency", "ms"),
}
VERDICTS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclass(frozen=True)
class Stats:
    count: int
    min: float
    avg: float
    p95: float
    max: float

    def to_json(self, unit: str) -> dict[str, Any]:
        def value(x: float) -> float | int:
            return round(x) if unit == "bytes" else round(x, 2)

        return {
            "count": self.count,
            "min": value(self.min),
            "avg": value(self.avg),
            "p95": value(self.p95),
            "max": value(self.max),
        }


@dataclass(frozen=True)
class Restart:
    time: str
    trigger: str | None
    result: str | None
    message: str | None


@dataclass(frozen=True)
class Report:
    since: str
    until: str
    samples: int
    first: str | None
    last: str | None
    figures: dict[str, Stats | None]
    verdicts: dict[str, int]
    oom_events: int
    restarts: tuple[Restart, ...]
    fix_runs: dict[str, int]
    limit_bytes: int | None
    #: (time, figures) per sample, for the plot; not in JSON
    series: tuple[tuple[datetime, dict[str, Any]], ...] = ()
    #: how the service died, each cause once, as the probes found it (``deaths.how_it_died``)
    deaths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "since": self.since,
            "until": self.until,
            "samples": self.samples,
            "first": self.first,
            "last": self.last,
            "figures": {
                key: (
                    None
                    if stats is None
                    else {**stats.to_json(FIGURES[key][1]), "unit": FIGURES[key][1]}
                )
                for key, stats in self.figures.items()
            },
            "verdicts": self.verdicts,
            "oom_events": self.oom_events,
            "restarts": [asdict(r) for r in self.restarts],
            "fix_runs": self.fix_runs,
            "accelerator_limit_bytes": self.limit_bytes,
            "deaths": list(self.deaths),
        }


def stats_of(values: list[float]) -> Stats | None:
    if not values:
        return None
    return Stats(
        len(values),
        min(values),
        sum(values) / len(values),
        percentile(sorted(values), 95),
        max(values),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _figures(record: dict[str, Any]) -> dict[str, float | None]:
    service = record.get("service_footprint_bytes")
    if _number(service) is None:
        service = record.get("service_rss_bytes")
    values = {key: _number(record.get(key)) for key in FIGURES}
    values["service_memory_bytes"] = _number(service)
    return values


def count_oom_events(records: list[dict[str, Any]]) -> int:
    """Distinct OOM events seen by the probes.

    Each probe counts the events of the last hour, so consecutive records repeat them. With
    event times (``oom_times``, one per event) each time counts as often as one probe saw it
    (two deaths in one second are two); for records without them, only increases of the
    windowed count are added.
    """
    times: Counter[str] = Counter()  # deaths per stamp: the most any one probe saw
    untimed = 0
    previous = 0
    for record in records:
        count = record.get("oom_events")
        if not isinstance(count, int) or isinstance(count, bool):
            # unknown (the log scan failed): neither 0 events nor a reset of the window,
            # else the next known count would be added a second time
            continue
        stamps = record.get("oom_times")
        stamps = [s for s in stamps if isinstance(s, str)] if isinstance(stamps, list) else []
        for stamp, seen in Counter(stamps).items():
            times[stamp] = max(times[stamp], seen)
        unnamed = max(0, count - len(stamps))
        untimed += max(0, unnamed - previous)
        previous = unnamed
    return sum(times.values()) + untimed


def read_restarts(
    home: Path, since: datetime, until: datetime
) -> tuple[list[Restart], Counter[str]]:
    restarts: list[Restart] = []
    runs: Counter[str] = Counter()
    for record in read_jsonl(fix_history_path(home)):
        when = parse_time(record.get("time"))
        if when is None or not since <= when <= until:
            continue
        result = record.get("result")
        runs[result if isinstance(result, str) else "unknown"] += 1
        if record.get("restarted") is True:

            def text(key: str, rec: dict[str, Any] = record) -> str | None:
                value = rec.get(key)
                return value if isinstance(value, str) else None

            restarts.append(
                Restart(iso_utc(when.timestamp()), text("trigger"), text("result"), text("message"))
            )
    restarts.sort(key=lambda r: r.time)
    return restarts, runs


def build_report(home: Path, since: datetime, until: datetime) -> Report:
    records = read_history(home, since, until)
    series = []
    collected: dict[str, list[float]] = {key: [] for key in FIGURES}
    verdicts: Counter[str] = Counter()
    limit = None
    for record in records:
        values = _figures(record)
        for key, value in values.items():
            if value is not None:
                collected[key].append(value)
        verdict = record.get("verdict")
        verdicts[verdict if verdict in VERDICTS else "UNKNOWN"] += 1
        if _number(record.get("accelerator_limit_bytes")) is not None:
            limit = int(record["accelerator_limit_bytes"])  # the latest known limit
        series.append(
            (
                record["_when"],
                {
                    **values,
                    "limit_bytes": record.get("accelerator_limit_bytes"),
                    "verdict": record.get("verdict"),
                },
            )
        )
    restarts, runs = read_restarts(home, since, until)
    return Report(
        since=iso_utc(since.timestamp()),
        until=iso_utc(until.timestamp()),
        samples=len(records),
        first=records[0].get("time") if records else None,
        last=records[-1].get("time") if records else None,
        figures={key: stats_of(values) for key, values in collected.items()},
        verdicts={v: verdicts.get(v, 0) for v in VERDICTS},
        oom_events=count_oom_events(records),
        restarts=tuple(restarts),
        fix_runs=dict(sorted(runs.items())),
        limit_bytes=limit,
        series=tuple(series),
        deaths=tuple(dict.fromkeys(r["death"] for r in records if isinstance(r.get("death"), str))),
    )


# --------------------------------------------------------------------------- plot
def plot_report(report: Report, path: Path, *, title: str = "mpsctl: memory") -> None:
    """A PNG of memory over time, the accelerator limit and the restarts. Written atomically."""
    try:
        import matplotlib
    except ImportError:
        raise MpsctlError(PLOT_MISSING) from None
    matplotlib.use("Agg")  # no display: this runs from cron and over ssh
    import matplotlib.pyplot as plt

    fig = report_figure(report, title=title)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    _write_bytes_atomically(path, buffer.getvalue())


#: a pause longer than this many median sampling intervals is a gap: no line is drawn across
GAP_FACTOR = 3.0


def break_gaps(
    times: list[float], columns: list[list[float]]
) -> tuple[list[float], list[list[float]]]:
    """``times`` and each column with a NaN point inserted inside every gap (a pause longer
    than ``GAP_FACTOR`` x the median interval), so a line stops where sampling stopped
    instead of drawing a straight line across hours nobody measured."""
    if len(times) < 3:
        return times, columns
    steps = sorted(b - a for a, b in itertools.pairwise(times))
    limit = GAP_FACTOR * steps[len(steps) // 2]
    if limit <= 0:
        return times, columns
    out_times: list[float] = [times[0]]
    out_columns: list[list[float]] = [[column[0]] for column in columns]
    for i in range(1, len(times)):
        if times[i] - times[i - 1] > limit:
            out_times.append((times[i] + times[i - 1]) / 2)
            for out in out_columns:
                out.append(math.nan)
        out_times.append(times[i])
        for out, column in zip(out_columns, columns, strict=True):
            out.append(column[i])
    return out_times, out_columns


def report_figure(report: Report, *, title: str = "mpsctl: memory") -> Any:
    """The plot as a matplotlib Figure (matplotlib imported by the caller, Agg backend)."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    # matplotlib's date numbers: what its typed API takes for a datetime axis
    raw_times = [float(mdates.date2num(when)) for when, _ in report.series]

    def gib(key: str) -> list[float]:
        values = [_number(figures.get(key)) for _, figures in report.series]
        return [math.nan if v is None else v / GIB for v in values]

    keys = ("host_used_bytes", "service_memory_bytes", "accelerator_held_bytes", "limit_bytes")
    times, columns = break_gaps(raw_times, [gib(key) for key in keys])
    host, service, held, limits = columns
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    # markers: a reading between two unknown ones has no line to sit on
    style: dict[str, Any] = {"marker": ".", "markersize": 4, "linewidth": 1.5}
    for values, label, colour in (
        (host, "host used", "tab:blue"),
        (service, "service", "tab:green"),
        (held, "accelerator held", "tab:orange"),
    ):
        # a figure never measured in the period gets no line and no (empty) legend entry
        if any(not math.isnan(v) for v in values):
            ax.plot(times, values, label=label, color=colour, **style)
    if any(not math.isnan(v) for v in limits):
        ax.step(times, limits, where="post", linestyle="--", color="tab:red",
                label="accelerator limit")  # fmt: skip
    for number, restart in enumerate(report.restarts):
        when = parse_time(restart.time)
        if when is not None:
            ax.axvline(float(mdates.date2num(when)), color="black", linestyle=":", linewidth=1,
                       label="restart (fix)" if number == 0 else None)  # fmt: skip
    ax.set_title(f"{title} ({report.since} to {report.until})")
    ax.set_ylabel("GiB")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time (UTC)")
    ax.grid(True, alpha=0.3)
    if times:
        # each label at a resolution no coarser than the tick spacing (seconds when ticks
        # are seconds apart, the day when they are days apart): no two labels read the same
        locator = mdates.AutoDateLocator()
        formatter = mdates.AutoDateFormatter(locator)
        formatter.scaled = {
            365.0: "%Y",
            30.0: "%Y-%m",
            1.0: "%Y-%m-%d",
            1 / 24: "%m-%d %H:%M",
            1 / (24 * 60): "%m-%d %H:%M",
            1 / (24 * 3600): "%H:%M:%S",
            1 / (24 * 3600 * 1000): "%H:%M:%S.%f",
        }
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(formatter)
    else:
        ax.text(0.5, 0.5, "no samples recorded in this period", ha="center",
                transform=ax.transAxes)  # fmt: skip
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return fig


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise MpsctlError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
