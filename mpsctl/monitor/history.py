"""Probe history: one compact JSON line per probe, one file per UTC day.

``MPSCTL_HOME/history/probe-YYYY-MM-DD.jsonl``. Lines are appended with a single
``O_APPEND`` write (``storage.append_line``), so a cron probe and a ``watch --record``
running at the same time never interleave. Day files make retention a matter of deleting
whole files, and let ``report --since 24h`` open only the last two.

The record is flat (``jq '.host_used_percent'``) and keeps ``null`` for every figure that
was unknown: a report must not average a missing reading as 0.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mpsctl.probe import ProbeResult, service_footprint_bytes, service_rss_bytes
from mpsctl.storage import append_line, bounded_lines, open_regular
from mpsctl.units import parse_time

SCHEMA = "mpsctl.history/1"
HISTORY_DIR = "history"
_DAY_FILE = re.compile(r"probe-(\d{4}-\d{2}-\d{2})\.jsonl")
#: OOM event times kept per record: enough to count distinct events, bounded if a log explodes
MAX_OOM_TIMES = 20
#: a probe record is a few KiB; a longer line is not one of ours
MAX_RECORD_BYTES = 1024 * 1024


def history_dir(home: Path) -> Path:
    return home / HISTORY_DIR


def day_file(home: Path, day: date) -> Path:
    return history_dir(home) / f"probe-{day.isoformat()}.jsonl"


def oom_count(result: ProbeResult) -> int | None:
    """OOM events in the probe's window; None when the log scan failed (unknown, not 0)."""
    if result.oom_events is None:
        return None
    return len(result.oom_events)


def history_record(result: ProbeResult, *, source: str = "probe") -> dict[str, Any]:
    """The compact line for one probe (see the module docstring)."""
    host = result.host
    snap = result.service
    running = None if snap is None else snap.running
    acc = result.accelerator
    swap_pct = None
    if host is not None and host.swap_total_bytes:
        swap_pct = round(100.0 * host.swap_used_bytes / host.swap_total_bytes, 1)
    # one entry per event: two deaths in the same second are two
    oom_times = sorted(str(e["time"]) for e in result.oom_events or () if e.get("time"))
    return {
        "schema": SCHEMA,
        "time": result.time,
        "source": source,
        "service": result.service_name,
        "verdict": result.verdict.name,
        "reasons": result.reasons,
        "host_total_bytes": host.total_bytes if host else None,
        "host_used_bytes": host.used_bytes if host else None,
        "host_available_bytes": host.available_bytes if host else None,
        "host_used_percent": host.percent if host else None,
        "swap_total_bytes": host.swap_total_bytes if host else None,
        "swap_used_bytes": host.swap_used_bytes if host else None,
        "swap_used_percent": swap_pct,
        "service_running": running,
        # a stopped service has no memory: null, not 0, so it does not drag the averages down
        "service_rss_bytes": service_rss_bytes(snap),
        "service_footprint_bytes": service_footprint_bytes(snap),
        "accelerator_device": acc.device,
        "accelerator_allocated_bytes": acc.allocated_bytes,
        "accelerator_held_bytes": acc.held_bytes,
        "accelerator_limit_bytes": acc.limit_bytes,
        "accelerator_limit_percent": (
            None if acc.limit_percent is None else round(acc.limit_percent, 1)
        ),
        "health_ok": result.health.ok if result.health.checked else None,
        "health_latency_ms": result.health.latency_ms,
        # events in the probe's 1 h window: consecutive records see the same events again
        "oom_events": oom_count(result),
        "oom_times": oom_times[-MAX_OOM_TIMES:],
        "death": None if result.death is None else result.death.get("text"),
    }


@dataclass(frozen=True)
class RecordOutcome:
    path: Path
    pruned: tuple[Path, ...]


def record_probe(
    home: Path,
    result: ProbeResult,
    *,
    retention_days: int,
    source: str = "probe",
    today: Callable[[], date] | None = None,
) -> RecordOutcome:
    """Append ``result`` to its day file and delete day files past the retention."""
    record = history_record(result, source=source)
    moment = parse_time(record["time"]) or datetime.now(timezone.utc)
    path = day_file(home, moment.date())
    append_line(path, json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    current = today() if today is not None else datetime.now(timezone.utc).date()
    return RecordOutcome(path, tuple(prune_history(home, retention_days, current)))


def prune_history(home: Path, retention_days: int, today: date) -> list[Path]:
    """Delete ``probe-*.jsonl`` older than ``retention_days`` days; other files are not ours."""
    oldest_kept = today - timedelta(days=retention_days - 1)
    removed = []
    for path, day in day_files(home):
        if day < oldest_kept:
            # only a regular file we could have written: not a directory or a symlink that
            # happens to carry the name (unlinking a link is harmless, but it is not ours)
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue
            except FileNotFoundError:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another recorder pruned it first
            removed.append(path)
    return removed


def day_files(home: Path) -> list[tuple[Path, date]]:
    """The history's day files, oldest first (nothing when the directory does not exist)."""
    directory = history_dir(home)
    try:
        names = sorted(p.name for p in directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        match = _DAY_FILE.fullmatch(name)  # match() + "$" would accept "...jsonl\n"
        if match:
            try:
                found.append((directory / name, date.fromisoformat(match.group(1))))
            except ValueError:
                continue
    return found


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every JSON object line of ``path``; a torn or hand-edited line is skipped, not fatal,
    and so is a line past ``MAX_RECORD_BYTES`` (never held whole) and a path that is not a
    regular file (a FIFO would hang ``report``)."""
    try:
        handle = os.fdopen(open_regular(path, follow=False), "rb")
    except OSError:
        return
    with handle:
        for line in bounded_lines(handle, MAX_RECORD_BYTES):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def read_history(
    home: Path, since: datetime, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Records with ``since <= time <= until``, oldest first; each gets a parsed ``_when``."""
    records = []
    for path, day in day_files(home):
        if day < since.date() or (until is not None and day > until.date()):
            continue
        for record in read_jsonl(path):
            when = parse_time(record.get("time"))
            if when is None or when < since or (until is not None and when > until):
                continue
            records.append({**record, "_when": when})
    records.sort(key=lambda r: r["_when"])
    return records
