"""Find out-of-memory messages in log files of any size, fast: byte needles, then regexes.

A first pass looks for cheap byte needles in big chunks (in parallel for very large files);
only the windows around a hit are decoded and parsed. Each event gets its record's
timestamp from the nearest line above it that has one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.observe.logtime import iso, line_time
from mpsctl.observe.oom import NEEDLES, OomEvent, parse_oom
from mpsctl.observe.oom_advice import explain
from mpsctl.units import utc_now_iso

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

#: read size of the first pass (one reused buffer; 64 KiB-4 MiB measured the same)
CHUNK_BYTES = 256 * 1024
LOOKBACK_BYTES = 64 * 1024  # how far back a traceback line looks for its record's timestamp
LOOKBACK_LINES = 200
FORWARD_BYTES = 16 * 1024  # room for a message wrapped over its next lines
WINDOW_BYTES = 256 * 1024  # read around a hit at once, so dense hits share one read
CONTINUATION_LINES = 4
_MAX_NEEDLE = max(len(n) for n in NEEDLES)

#: (absolute offset of a needle, newlines in the file before it)
Hit = tuple[int, int]


def scan_file(
    path: str | os.PathLike[str],
    since: datetime | None = None,
    *,
    label: str | None = None,
) -> Iterator[OomEvent]:
    """Every OOM / invalid-watermark message in a log file, in file order.

    Two passes that never hold the file in memory: (1) in 256 KiB chunks, a ``bytes``
    search for ``NEEDLES`` and a newline count (for line numbers) -- nothing is decoded;
    a needle cut by a chunk boundary is found by ``_edge_hits``; a file of
    ``PARALLEL_MIN_BYTES`` or more is split in ranges searched by spawned worker processes
    (see ``_parallel_hits``), else one process does it all;
    (2) each hit is read back with its surroundings, decoded
    (``errors="replace"``) and parsed, joining a message wrapped over its next lines and
    taking the timestamp of its line or of the record it continues (a traceback).
    ``since``: skip events older than it; events without a time are kept unless the file
    was last written before ``since``. ``label`` names the file in events (default: path).
    """
    name = label if label is not None else str(path)
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if since is not None and datetime.fromtimestamp(info.st_mtime, timezone.utc) < since:
            return  # nothing in it can be newer than its last write
        size = info.st_size  # a log still growing is scanned up to here
        hits = _parallel_hits(path, info, size)
        if hits is None:
            hits = _find_in_range(handle, 0, size)[1]  # this handle: a rotation cannot swap files
        for event in _resolve(handle, size, hits):
            if since is not None and event.when is not None and event.when < since:
                continue
            yield replace(event, file=name)


#: below this, one process is faster than starting workers (each costs ~0.1 s)
PARALLEL_MIN_BYTES = 256 * 1024 * 1024
PARALLEL_MAX_WORKERS = 8


def _range_hits(
    path: str, start: int, end: int, identity: tuple[int, int]
) -> tuple[int, list[Hit]] | None:
    """A worker's share: ``_find_in_range`` on ``[start, end)`` of the same file (None if the
    path now names another file: it was rotated after the parent opened it)."""
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if (info.st_dev, info.st_ino) != identity:
            return None
        return _find_in_range(handle, start, end)


def _parallel_hits(
    path: str | os.PathLike[str], info: os.stat_result, size: int, workers: int | None = None
) -> list[Hit] | None:
    """Hits of a large file found by worker processes, one range each; None to scan alone.

    The search is CPU-bound and CPython's ``bytes.find``/``count`` hold the GIL, so threads
    would not help. Workers are *spawned*, never forked: fork without exec is unsafe on
    macOS and in a process with threads. A needle across two ranges is found by the range it
    starts in (``_find_in_range`` looks past its end), and each range's newline count is
    offset by the ranges before it, so the result equals a single pass.
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, PARALLEL_MAX_WORKERS)
    if workers < 2 or size < PARALLEL_MIN_BYTES:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    bounds = [size * i // workers for i in range(workers + 1)]
    where = os.path.abspath(os.fspath(path))
    identity = (info.st_dev, info.st_ino)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(
                pool.map(_range_hits, [where] * workers, bounds[:-1], bounds[1:],
                         [identity] * workers)
            )  # fmt: skip
    except (OSError, BrokenProcessPool):
        return None  # no processes to be had here: the single pass still works
    hits: list[Hit] = []
    before = 0
    for part in parts:
        if part is None:
            return None
        newlines, found = part
        hits += [(offset, before + count) for offset, count in found]
        before += newlines
    return hits


def _edge_hits(tail: bytes, head: bytes | bytearray, offset: int, newlines: int) -> list[Hit]:
    """Needles that start in ``tail`` (ending at ``offset``) and end in ``head``."""
    hits = []
    for needle in NEEDLES:
        k = len(needle) - 1
        found = (tail[-k:] + head[:k]).find(needle)
        if 0 <= found < len(tail[-k:]):
            # a needle holds no newline, so none lies between it and `offset`
            hits.append((offset - len(tail[-k:]) + found, newlines))
    return hits


def _find_in_range(handle: io.BufferedReader, start: int, end: int) -> tuple[int, list[Hit]]:
    """Newlines in ``[start, end)`` and the needles starting there (newlines counted from
    ``start``). The hot loop: per chunk one search per needle and one newline count."""
    hits: list[Hit] = []
    newlines = 0
    # One reused buffer: a fresh bytes object per read costs an allocation and page faults.
    buffer = bytearray(max(min(CHUNK_BYTES, end - start), 1))
    tail = b""  # the last bytes before the chunk, for a needle across the chunk boundary
    handle.seek(start)
    pos = start
    while pos < end:
        size = min(handle.readinto(buffer), end - pos)
        if size <= 0:
            break
        chunk = buffer if size == len(buffer) else buffer[:size]
        hits += _edge_hits(tail, chunk[: _MAX_NEEDLE - 1], pos, newlines)
        found_at = []
        for needle in NEEDLES:
            found = chunk.find(needle)
            while found >= 0:
                found_at.append(found)
                found = chunk.find(needle, found + 1)
        counted, counted_to = newlines, 0
        for found in sorted(found_at):  # incremental: a log full of OOMs stays linear
            counted += chunk.count(b"\n", counted_to, found)
            counted_to = found
            hits.append((pos + found, counted))
        newlines += chunk.count(b"\n")
        tail = bytes(chunk[-(_MAX_NEEDLE - 1) :])
        pos += size
    if pos == end and tail:
        handle.seek(end)
        hits += _edge_hits(tail, handle.read(_MAX_NEEDLE - 1), end, newlines)
    return newlines, sorted(hits)


def recent_events(
    paths: Iterable[str | os.PathLike[str] | None],
    since: float | datetime,
    *,
    max_tail_bytes: int = 64 * 1024 * 1024,
) -> list[dict[str, Any]]:
    """Events newer than ``since`` (epoch seconds or datetime) in each log's tail, as JSON
    dicts (``line`` is None: the head of the file is not read). For the probe: cheap.

    Only events with a timestamp count (their line's, or their record's): a log without
    timestamps cannot say whether an OOM is recent. Unreadable or missing files are skipped.
    """
    cutoff = since if isinstance(since, datetime) else datetime.fromtimestamp(since, timezone.utc)
    found: list[dict[str, Any]] = []
    for path in paths:
        if path is None:
            continue
        try:
            found += [e.as_dict() for e in _tail_events(path, cutoff, max_tail_bytes)]
        except OSError:
            continue
    return found


def _tail_events(
    path: str | os.PathLike[str], cutoff: datetime, max_tail_bytes: int
) -> Iterator[OomEvent]:
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if datetime.fromtimestamp(info.st_mtime, timezone.utc) < cutoff:
            return
        size = info.st_size
        start = _tail_start(handle, size, cutoff, max_tail_bytes)
        hits = _find_in_range(handle, start, size)[1]
        for event in _resolve(handle, size, hits):
            if event.when is not None and event.when >= cutoff:
                yield replace(event, file=os.fsdecode(path), line=None)


def _tail_start(handle: Any, size: int, cutoff: datetime, max_tail_bytes: int) -> int:
    """Step back 1 MiB at a time until a stamped line older than ``cutoff`` (or the cap)."""
    step = 1024 * 1024
    pos = size
    while pos > 0 and size - pos < max_tail_bytes:
        pos = max(pos - step, 0)
        handle.seek(pos)
        lines = handle.read(8192).split(b"\n")
        for raw in lines[1 if pos else 0 : -1]:
            when = line_time(raw.decode("utf-8", errors="replace"))
            if when is not None:
                if when < cutoff:
                    return pos
                break
    return pos


class _Reader:
    """Windows of the file around hits; consecutive hits reuse the same read."""

    def __init__(self, handle: Any, size: int) -> None:
        self.handle = handle
        self.size = size
        self.start = 0
        self.data = b""

    def around(self, pos: int) -> tuple[bytes, int]:
        """Bytes covering ``pos - LOOKBACK_BYTES`` to ``pos + FORWARD_BYTES`` and their offset."""
        low = max(pos - LOOKBACK_BYTES, 0)
        high = min(pos + FORWARD_BYTES, self.size)
        if not (self.start <= low and high <= self.start + len(self.data)):
            self.start = low
            self.handle.seek(low)
            self.data = self.handle.read(min(LOOKBACK_BYTES + WINDOW_BYTES, self.size - low))
        return self.data, self.start


def _resolve(handle: Any, size: int, hits: list[Hit]) -> Iterator[OomEvent]:
    reader = _Reader(handle, size)
    consumed_to = 0  # lines up to here belong to a message already reported
    for pos, newlines in hits:
        if pos < consumed_to:
            continue
        data, base = reader.around(pos)
        rel = pos - base
        start = data.rfind(b"\n", 0, rel) + 1
        end = _line_end(data, rel)
        text = data[start:end].decode("utf-8", errors="replace")
        event = parse_oom(text)
        if event is None:
            consumed_to = base + end
            continue
        if not event.complete:
            event, end = _join_continuation(data, text, end, event)
        when = _record_time(data, start, text, floor=0 if base == 0 else 1)
        consumed_to = base + end
        yield replace(
            event, line=newlines + 1, time=iso(when) if when is not None else None, when=when
        )


def _line_end(data: bytes, pos: int) -> int:
    end = data.find(b"\n", pos)
    return len(data) if end < 0 else end


def _join_continuation(data: bytes, text: str, end: int, event: OomEvent) -> tuple[OomEvent, int]:
    """A message wrapped over its next lines; stops before a line holding another hit."""
    joined, pos = text, end
    for _ in range(CONTINUATION_LINES):
        if pos >= len(data):
            break
        next_end = _line_end(data, pos + 1)
        line = data[pos + 1 : next_end]
        if any(needle in line for needle in NEEDLES):
            break
        joined += "\n" + line.decode("utf-8", errors="replace")
        attempt = parse_oom(joined)
        if attempt is not None and attempt.complete:
            return attempt, next_end
        pos = next_end
    return event, end


def _record_time(data: bytes, start: int, text: str, floor: int) -> datetime | None:
    """The line's own timestamp, else that of the record it continues (a traceback):
    the nearest stamped line above it, within the window. ``floor``: 1 when ``data[0]``
    may be in the middle of a line (so the first partial line is not trusted)."""
    when = line_time(text)
    if when is not None:
        return when
    pos = start
    for _ in range(LOOKBACK_LINES):
        if pos <= 0:
            return None
        prev_start = data.rfind(b"\n", 0, pos - 1) + 1
        if prev_start == 0 and floor:
            return None
        when = line_time(data[prev_start : pos - 1].decode("utf-8", errors="replace"))
        if when is not None:
            return when
        pos = prev_start
    return None


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class OomReport:
    """What ``mpsctl oom`` found: each event with its advice, over the files it read."""

    generated_at: str
    since: datetime | None
    files: tuple[str, ...]
    events: tuple[tuple[OomEvent, list[str]], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.oom/1",
            "generated_at": self.generated_at,
            "since": iso(self.since) if self.since else None,
            "files": list(self.files),
            "count": len(self.events),
            "events": [dict(e.as_dict(), advice=advice) for e, advice in self.events],
        }


def find_events(
    targets: Iterable[tuple[str, Path]],
    since: datetime | None = None,
    *,
    high_ratio: float | None = None,
    plan: Plan | None = None,
) -> OomReport:
    """Scan each ``(label, path)`` and explain every event (``high_ratio``: the service's;
    ``plan``: the configured service's memory plan, cited in the advice).

    OSError names the file that could not be read.
    """
    files = tuple(targets)
    found: list[tuple[OomEvent, list[str]]] = []
    for label, path in files:
        found += [(e, explain(e, high_ratio, plan)) for e in scan_file(path, since, label=label)]
    return OomReport(utc_now_iso(), since, tuple(label for label, _ in files), tuple(found))
