"""The audit trail of ``fix``: one JSON line per run in ``MPSCTL_HOME/history/fix.jsonl``.

Each line is written with a single ``write`` on an ``O_APPEND`` descriptor, so lines from
overlapping runs never interleave. The restart-loop guard reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mpsctl.errors import ServiceError
from mpsctl.storage import append_line, read_tail
from mpsctl.units import parse_time

FIX_HISTORY = Path("history") / "fix.jsonl"
#: bytes of the fix history read back: about 25,000 runs
MAX_READ = 8 * 1024 * 1024


def fix_history_path(home: Path) -> Path:
    return home / FIX_HISTORY


def append_record(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record, ensure_ascii=False, default=str), dir_mode=0o700)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every parseable line of the last ``MAX_READ`` bytes (the restart-loop guard needs the
    recent runs; a history grown huge, or replaced by a device, must not fill memory); a torn
    or hand-edited line is skipped, not fatal."""
    try:
        text = read_tail(path, MAX_READ, follow=False).decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        # without its history the restart-loop guard cannot count: say so, in one line
        raise ServiceError(
            f"cannot read the fix history {path}: {exc.strerror}; move it aside to start a new one"
        ) from None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def record_time(record: dict[str, Any]) -> float | None:
    """The record's time as a Unix timestamp; None when it has none."""
    moment = parse_time(record.get("time"))
    return moment.timestamp() if moment is not None else None


def restarts_within(path: Path, within_s: float, now: float) -> list[dict[str, Any]]:
    """The records of runs that restarted the service in the last ``within_s`` seconds."""
    found = []
    for record in read_records(path):
        when = record_time(record)
        if record.get("restarted") is True and when is not None and now - when <= within_s:
            found.append(record)
    return found
