"""Whose kill a kill is: the operating system's kills that are the service's, and the others.

The kernel, systemd-oomd and jetsam record every process they kill, the service's and any
other's (another service named ``python3`` too). A kill is the service's when:

1. its pid is one the service ran as: the pidfile's, or a pid an earlier run of it recorded
   (``start`` appends each run to ``MPSCTL_HOME/history/runs.jsonl``), at a time that run
   was alive (or at no time the log gives); or
2. its process name is the service's (what the kernel keeps of it, 15 characters) AND it
   happened while a run of the service was alive: after that run started and before the next
   one started or its own main process was killed (a worker dies under a live parent).

Everything else is another process's: listed only when asked for (``mpsctl oom --all``) and
labelled so. Times come from the log (dmesg's uptime stamps read with the boot time), so a
kill with no time can only be tied by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.storage import append_line

if TYPE_CHECKING:
    from mpsctl.deaths.counting import Found

RUNS = Path("history") / "runs.jsonl"
#: the kernel keeps 15 characters of a process name (TASK_COMM_LEN - 1)
COMM_LEN = 15
#: log stamps have whole seconds: a kill may carry the start's own second
_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class Run:
    """One run of the service: its main pid, when it started, the names the kernel gives it."""

    pid: int
    started: datetime
    names: frozenset[str]


def runs_path(home: Path) -> Path:
    return home / RUNS


def names_of(argv: Iterable[str]) -> frozenset[str]:
    """The process names the kernel would print for a command (its first words' basenames)."""
    names = set()
    for word in list(argv)[:3]:
        base = os.path.basename(word)
        if base and not base.startswith("-"):
            names.add(base[:COMM_LEN])
    return frozenset(names)


def record_run(home: Path, pid: int, create_time: float, argv: Iterable[str]) -> None:
    """Append one run (best effort: a read-only home loses the record, not the start)."""
    line = json.dumps({"pid": pid, "create_time": create_time, "argv": list(argv)})
    with contextlib.suppress(OSError):
        append_line(runs_path(home), line, dir_mode=0o700)


def read_runs(home: Path, current: Any = None) -> list[Run]:
    """Every recorded run, oldest first, with the pidfile's ``current`` one (a PidRecord)."""
    records: list[dict[str, Any]] = []
    try:
        text = runs_path(home).read_text(encoding="utf-8")
    except OSError:
        text = ""
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a torn or hand-edited line
        if isinstance(doc, dict):
            records.append(doc)
    if current is not None and hasattr(current, "pid"):
        records.append(
            {"pid": current.pid, "create_time": current.create_time, "argv": list(current.argv)}
        )
    runs: dict[tuple[int, float], Run] = {}
    for doc in records:
        pid, created, argv = doc.get("pid"), doc.get("create_time"), doc.get("argv")
        if not isinstance(pid, int) or not isinstance(created, (int, float)):
            continue
        words = [w for w in argv if isinstance(w, str)] if isinstance(argv, list) else []
        started = datetime.fromtimestamp(float(created), timezone.utc)
        runs[(pid, round(float(created), 2))] = Run(pid, started, names_of(words))
    return sorted(runs.values(), key=lambda run: run.started)


def _ends(runs: list[Run], kills: list[Found]) -> list[datetime | None]:
    """When each run ended, as far as the logs say: the next start, or its own kill."""
    if not kills:  # nothing read: the parsers need not load
        return [runs[i + 1].started if i + 1 < len(runs) else None for i in range(len(runs))]
    from mpsctl.deaths.parsers import pids_of

    ends: list[datetime | None] = []
    for position, run in enumerate(runs):
        end = runs[position + 1].started if position + 1 < len(runs) else None
        for item in kills:
            after = item.when is not None and item.when >= run.started - _SLACK
            if after and item.when is not None and run.pid in pids_of(item.event):  # type: ignore[arg-type]
                end = item.when if end is None else min(end, item.when)
        ends.append(end)
    return ends


def split(
    kills: list[Found], runs: list[Run], names: frozenset[str]
) -> tuple[list[Found], list[Found]]:
    """``(the service's kills, other processes' kills)`` (see the module docstring); ``names``:
    the service's process names from its configuration, for runs that recorded none."""
    ends = _ends(runs, kills)
    mine: list[Found] = []
    others: list[Found] = []
    for item in kills:
        (mine if _is_mine(item, runs, ends, names) else others).append(item)
    return mine, others


def _is_mine(
    item: Found, runs: list[Run], ends: list[datetime | None], names: frozenset[str]
) -> bool:
    from mpsctl.deaths.parsers import pids_of

    when = item.when
    pids = pids_of(item.event)  # type: ignore[arg-type]
    for position, run in enumerate(runs):
        end = ends[position]
        alive = when is not None and when >= run.started - _SLACK and (end is None or when <= end)
        if run.pid in pids and (when is None or alive):
            return True
    process = getattr(item.event, "process", None)
    if not isinstance(process, str) or when is None:
        return False
    for position, run in enumerate(runs):
        end = ends[position]
        alive = when >= run.started - _SLACK and (end is None or when < end)
        if alive and process[:COMM_LEN] in (run.names or names):
            return True
    return False
