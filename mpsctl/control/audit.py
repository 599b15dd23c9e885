"""The audit trail of ``fix``: one JSON line per run in ``MPSCTL_HOME/history/fix.jsonl``.

Each line is written with a single ``write`` on an ``O_APPEND`` descriptor, so lines from
overlapping runs never interleave. The restart-loop guard reads it back.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from mpsctl.storage import append_line

FIX_HISTORY = Path("history") / "fix.jsonl"


def fix_history_path(home: Path) -> Path:
    return home / FIX_HISTORY


def append_record(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record, ensure_ascii=False, default=str), dir_mode=0o700)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every parseable line; a torn or hand-edited line is skipped, not fatal."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
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
    raw = record.get("time")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def restarts_within(path: Path, within_s: float, now: float) -> list[dict[str, Any]]:
    """The records of runs that restarted the service in the last ``within_s`` seconds."""
    found = []
    for record in read_records(path):
        when = record_time(record)
        if record.get("restarted") is True and when is not None and now - when <= within_s:
            found.append(record)
    return found
