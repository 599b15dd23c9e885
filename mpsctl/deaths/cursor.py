"""The probe's per-file cursor: each log's new bytes are scanned once, each failure counted once.

A line without a timestamp (uvicorn's stderr in the service log, a bare traceback) cannot
say whether it is recent, so a window over the tail would either miss it or count it again
every time. The cursor remembers, per log file, its identity (device + inode) and how far
it was read, and when; the next probe scans only the bytes written since. What it finds
there without a time is reported once, dated honestly: after the previous read, before
this one ("between 03:10 and 03:15"). Events with a time found there are kept in the cursor
while they are inside the probe's window, so the next probe need not read them again.

A file with another inode (rotated) or shorter than the offset (truncated) is read from its
start; a file never seen before is read from its tail, as the window scan does. The state
lives in ``MPSCTL_HOME/oom_cursor.json``, written atomically; when it cannot be written the
probe still answers (it then finds the same untimed events again next time).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mpsctl.observe.logtime import iso
from mpsctl.storage import atomic_write_json
from mpsctl.units import parse_time

SCHEMA = "mpsctl.oom_cursor/1"
STATE_NAME = "oom_cursor.json"
#: a first read (no cursor yet) looks back this far, like the window scan
FIRST_TAIL_BYTES = 64 * 1024 * 1024


def state_path(home: Path) -> Path:
    return home / STATE_NAME


def read_state(home: Path) -> dict[str, dict[str, Any]]:
    """The cursors by file path; empty when there is no state or it cannot be read."""
    try:
        doc = json.loads(state_path(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) else None
    return files if isinstance(files, dict) else {}


#: new bytes read in the probe's quick check (more go to the scanner, which reads big files
#: faster)
QUICK_CHECK_BYTES = 1024 * 1024


def nothing_new(home: Path, path: Path, *, now: datetime | None = None) -> bool:
    """True when the cursor has read ``path`` before, remembers no event inside the window,
    and the bytes written since hold none of the prefilter strings every memory failure's
    needle contains: then no event can be new, the cursor moves to the file's end and the
    scanner and parsers are not loaded. False: :func:`new_events` must run (the cursor is
    left as it was). A service log written all the time (its access log) is this case."""
    from mpsctl.deaths.prefilter import PREFILTER_NEEDLES

    key = os.fsdecode(path)
    cursor = read_state(home).get(key)
    if not cursor or cursor.get("recent"):
        return False
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            offset = cursor.get("offset")
            if (cursor.get("dev"), cursor.get("ino")) != (info.st_dev, info.st_ino):
                return False
            if not isinstance(offset, int) or not 0 <= offset <= info.st_size:
                return False
            if info.st_size - offset > QUICK_CHECK_BYTES:
                return False
            handle.seek(offset)
            data = handle.read(info.st_size - offset)
    except OSError:
        return False
    if any(needle in data for needle in PREFILTER_NEEDLES):
        return False
    moment = now or datetime.now(timezone.utc)
    state = {"dev": info.st_dev, "ino": info.st_ino, "offset": offset + len(data),
             "read_at": iso(moment), "recent": []}  # fmt: skip
    with contextlib.suppress(OSError):
        atomic_write_json(state_path(home), {"schema": SCHEMA, "files": {key: state}})
    return True


def new_events(
    home: Path,
    paths: list[Path],
    window_s: float,
    *,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The probe's memory failures as JSON dicts: timestamped ones inside the window (from
    the cursor's memory and the new bytes) and, once each, untimed ones in the new bytes."""
    from mpsctl.deaths.counting import Found, merge
    from mpsctl.deaths.scanner import _tail_start, counts, scan_range

    moment = now or datetime.now(timezone.utc)
    cutoff = moment - timedelta(seconds=window_s)
    state = read_state(home)
    fresh: dict[str, dict[str, Any]] = {}
    found: list[Found] = []
    kept: list[dict[str, Any]] = []
    for path in paths:
        key = os.fsdecode(path)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, after the scan
        except OSError:
            continue
        with handle:
            info = os.fstat(handle.fileno())
            cursor = state.get(key) or {}
            same = (cursor.get("dev"), cursor.get("ino")) == (info.st_dev, info.st_ino)
            offset = cursor.get("offset")
            if same and isinstance(offset, int) and 0 <= offset <= info.st_size:
                start = offset
                kept += [
                    e
                    for e in cursor.get("recent", [])
                    if (parse_time(e.get("time")) or cutoff) > cutoff
                ]
            elif cursor:
                start = 0  # rotated or truncated: all of it is new
            else:
                start = _tail_start(handle, info.st_size, cutoff, FIRST_TAIL_BYTES)
            after = parse_time(cursor.get("read_at")) if cursor else None
            items = (
                scan_range(handle, path, info, start, info.st_size) if start < info.st_size else []
            )
        new = []
        for raw in items:
            item = replace(raw, file=key, line=None)
            if item.when is None:
                if not cursor:
                    continue  # a first read cannot say when an untimed line was written
                item = replace(item, after=after, before=moment)
            elif item.when < cutoff:
                continue
            new.append(item)
        found += new
        fresh[key] = {
            "dev": info.st_dev,
            "ino": info.st_ino,
            "offset": info.st_size,
            "read_at": iso(moment),
            "recent": [
                *[e for e in kept if e.get("file") == key],
                *[i.to_json() for i in new if i.when is not None and counts(i)],
            ],
        }
    merged = [item.to_json() for item in merge(found) if counts(item)]
    seen = {(e.get("file"), e.get("time"), e.get("summary")) for e in merged}
    events = [e for e in kept if (e.get("file"), e.get("time"), e.get("summary")) not in seen]
    # a read-only home: the probe still answers; untimed events are then found again
    with contextlib.suppress(OSError):
        atomic_write_json(state_path(home), {"schema": SCHEMA, "files": fresh})
    return [*events, *merged]
