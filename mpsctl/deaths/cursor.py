"""The probe's per-file cursor: each log's new bytes are scanned once, each failure counted once.

A line without a timestamp (uvicorn's stderr in the service log, a bare traceback) cannot
say whether it is recent, so a window over the tail would either miss it or count it again
every time. The cursor remembers, per log file, its identity (device + inode) and how far
it was read, and when; the next probe scans only the bytes written since. What it finds
there without a time is dated honestly: after the previous read, before this one ("between
03:10 and 03:15"). Events found there are kept in the cursor while they are inside the
probe's window, so the next probe need not read them again; one without a time stays for a
window's length from when it was first seen.

A file with another inode (rotated), shorter than the offset (truncated), or whose bytes
just before the offset are no longer the ones read (truncated in place, then grown past the
old offset before this probe: a fingerprint of those bytes tells) is read from its start; a
file never seen before is read from its tail, as the window scan does. The state lives in
``MPSCTL_HOME/oom_cursor.json``, written atomically after every probe; when it cannot be
written the probe still answers (it then finds the same untimed events again next time). An
entry that is not what this module writes (hand-edited, another version's) counts as no
cursor for that file and is replaced by a good one at the end of the same probe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.logtime import iso
from mpsctl.storage import atomic_write_json, open_regular, read_regular
from mpsctl.units import parse_time

if TYPE_CHECKING:
    from mpsctl.deaths.counting import Found

SCHEMA = "mpsctl.oom_cursor/1"
STATE_NAME = "oom_cursor.json"
#: a first read (no cursor yet) looks back this far, like the window scan
FIRST_TAIL_BYTES = 64 * 1024 * 1024


def state_path(home: Path) -> Path:
    return home / STATE_NAME


#: bytes before the offset whose hash tells a log truncated and regrown from one that grew
FINGERPRINT_BYTES = 4096
#: the state is a few KiB per log; past this it is not ours
STATE_MAX = 4 * 1024 * 1024


def read_state(home: Path) -> dict[str, dict[str, Any]]:
    """The well-formed cursors by file path; empty when there is no state or it cannot be
    read (a FIFO, a device, a link, not JSON); malformed entries are left out."""
    try:
        doc = json.loads(read_regular(state_path(home), STATE_MAX, follow=False))
    except (OSError, ValueError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        return {}
    return {key: entry for key, entry in files.items() if _well_formed(entry)}


def _well_formed(entry: Any) -> bool:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return (
        isinstance(entry, dict)
        and all(whole(entry.get(k)) for k in ("dev", "ino", "offset"))
        and isinstance(entry.get("read_at"), str)
        and parse_time(entry.get("read_at")) is not None
        and isinstance(entry.get("recent", []), list)
        and all(isinstance(e, dict) for e in entry.get("recent", []))
        and isinstance(entry.get("fingerprint", ""), str)
    )


def fingerprint(fd: int, offset: int) -> str:
    """A hash of the ``FINGERPRINT_BYTES`` before ``offset`` (all of them when fewer)."""
    start = max(0, offset - FINGERPRINT_BYTES)
    data = os.pread(fd, offset - start, start)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


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
        # a regular file only: a FIFO configured as a log must not hang the probe
        with os.fdopen(open_regular(path), "rb") as handle:
            info = os.fstat(handle.fileno())
            offset = cursor["offset"]
            if (cursor["dev"], cursor["ino"]) != (info.st_dev, info.st_ino):
                return False
            if not 0 <= offset <= info.st_size or info.st_size - offset > QUICK_CHECK_BYTES:
                return False
            # truncated in place and regrown past the offset: the scanner reads it all
            if cursor.get("fingerprint") not in (None, fingerprint(handle.fileno(), offset)):
                return False
            handle.seek(offset)
            data = handle.read(info.st_size - offset)
            if len(data) != info.st_size - offset:
                return False
            mark = fingerprint(handle.fileno(), info.st_size)
    except OSError:
        return False
    if any(needle in data for needle in PREFILTER_NEEDLES):
        return False
    moment = now or datetime.now(timezone.utc)
    state = {"dev": info.st_dev, "ino": info.st_ino, "offset": info.st_size,
             "fingerprint": mark, "read_at": iso(moment), "recent": []}  # fmt: skip
    with contextlib.suppress(OSError):
        atomic_write_json(state_path(home), {"schema": SCHEMA, "files": {key: state}})
    return True


def new_events(
    home: Path,
    paths: list[Path],
    window_s: float,
    *,
    now: datetime | None = None,
    also: list[Found] | None = None,
) -> list[dict[str, Any]]:
    """The probe's memory failures as JSON dicts: timestamped ones inside the window (from
    the cursor's memory and the new bytes) and, once each, untimed ones in the new bytes.
    ``also``: failures found elsewhere (the OS's kill records), counted with the new ones by
    the one rule, so a kill the service's log also reported is one event."""
    from mpsctl.deaths.counting import counted, without_lines
    from mpsctl.deaths.scanner import _tail_start, scan_range

    moment = now or datetime.now(timezone.utc)
    cutoff = moment - timedelta(seconds=window_s)
    state = read_state(home)
    fresh: dict[str, dict[str, Any]] = {}
    found: list[Found] = []
    kept: list[dict[str, Any]] = []
    for path in paths:
        key = os.fsdecode(path)
        try:
            # a regular file only: a FIFO configured as a log must not hang the probe
            handle = os.fdopen(open_regular(path), "rb")
        except OSError:
            continue
        with handle:
            info = os.fstat(handle.fileno())
            cursor = state.get(key) or {}
            same = (cursor.get("dev"), cursor.get("ino")) == (info.st_dev, info.st_ino)
            offset = cursor.get("offset")
            if (
                same
                and isinstance(offset, int)
                and 0 <= offset <= info.st_size
                and cursor.get("fingerprint") in (None, fingerprint(handle.fileno(), offset))
            ):
                start = offset
                kept += [
                    e
                    for e in cursor.get("recent", [])
                    if (parse_time(e.get("time") or e.get("first_seen")) or cutoff) > cutoff
                ]
            elif cursor:
                start = 0  # rotated, truncated, or truncated and regrown: all of it is new
            else:
                start = _tail_start(handle, info.st_size, cutoff, FIRST_TAIL_BYTES)
            after = parse_time(cursor.get("read_at")) if cursor else None
            items = (
                scan_range(handle, path, info, start, info.st_size) if start < info.st_size else []
            )
            mark = fingerprint(handle.fileno(), info.st_size)
        new = []
        for raw in items:
            item = replace(raw, file=key)
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
            "fingerprint": mark,
            "read_at": iso(moment),
            "recent": [
                *[e for e in kept if e.get("file") == key],
                *[_remembered(i, moment) for i in counted(new)],
            ],
        }
    merged = [without_lines(item).to_json() for item in counted([*found, *(also or [])])]
    seen = {(e.get("file"), e.get("time"), e.get("summary")) for e in merged}
    events = [
        {k: v for k, v in e.items() if k != "first_seen"}
        for e in kept
        if e.get("time") is None or (e.get("file"), e.get("time"), e.get("summary")) not in seen
    ]
    # a read-only home: the probe still answers; untimed events are then found again
    with contextlib.suppress(OSError):
        atomic_write_json(state_path(home), {"schema": SCHEMA, "files": fresh})
    return [*events, *merged]


def _remembered(item: Found, moment: datetime) -> dict[str, Any]:
    """An event as the cursor keeps it: with ``first_seen`` when it has no time of its own."""
    from mpsctl.deaths.counting import without_lines

    doc = without_lines(item).to_json()
    if item.when is None:
        doc["first_seen"] = iso(moment)
    return doc
