"""Find every memory failure in log files of any size, fast: byte needles, then regexes.

A first pass looks for cheap byte needles: the system's ``grep -F`` where there is one
(``scan_grep``), else a Python search in big chunks (in parallel for very large files). Only
the windows around a hit are decoded and parsed: caching-allocator messages by ``oom``, every
other memory death (kernel OOM killer, systemd-oomd, jetsam, gunicorn, CPU allocator, CUDA
runtime, MPS array limits) by ``deaths``, whose hits are read in clusters so that one kill
written over many lines is one event. Each event gets its record's timestamp from the
nearest line above it that has one.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.observe.deaths import find_deaths
from mpsctl.observe.logtime import iso, line_time
from mpsctl.observe.oom import NEEDLES, OomEvent, parse_oom
from mpsctl.observe.oom_events import Found, merge
from mpsctl.observe.scan_grep import grep_hits
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
#: bytes that start (or, for the kernel, head) every memory death ``deaths`` reads; fixed
#: strings, so grep and ``bytes.find`` agree. "Killed process" and "Out of memory" also catch a
#: kill line hard-wrapped after them. Long needles on purpose: a multi-string search skips
#: ahead by up to the shortest needle's length, so one short needle slows every byte.
#: (A JetsamEvent .ips report is small and read whole: see ``WHOLE_JSON_BYTES``.)
DEATH_NEEDLES = (
    b"Out of memory", b"Killed process", b"invoked oom-killer", b"oom-kill:constraint",
    b"systemd-oomd", b"by the OOM killer", b"memorystatus", b"killed by jetsam",
    b"exceeded mem limit", b"was sent SIGKILL", b"due to signal 9", b"WORKER TIMEOUT",
    b"CPUAllocator", b"posix_memalign", b"CUBLAS_STATUS_ALLOC", b"NDArray initWithDevice",
    b"killed as a result",
)  # fmt: skip
ALL_NEEDLES = NEEDLES + DEATH_NEEDLES
_MAX_NEEDLE = max(len(n) for n in ALL_NEEDLES)
#: hits of deaths closer than this (bytes, lines) are read together: one kill's lines are
#: near each other; a header whose kill line is missing does not reach a kill much later
CLUSTER_GAP_BYTES = 64 * 1024
CLUSTER_GAP_LINES = 400
CLUSTER_MAX_BYTES = 1024 * 1024
#: a file this small that starts with "{" is a JSON report (JetsamEvent .ips): read whole
WHOLE_JSON_BYTES = 8 * 1024 * 1024

#: (absolute offset of a needle, newlines in the file before it)
Hit = tuple[int, int]


def scan_found(
    path: str | os.PathLike[str],
    since: datetime | None = None,
    *,
    label: str | None = None,
    prefilter: bool = True,
) -> list[Found]:
    """Every memory failure in a log file, in file order (not yet merged: see ``merge``).

    Two passes that never hold the file in memory: (1) the needles' byte offsets and line
    numbers, from ``grep -F`` (``prefilter``, where the system has it) or, as fallback and
    reference, ``_find_in_range``: 256 KiB chunks, a ``bytes`` search per needle and a newline
    count (a needle cut by a chunk boundary is found by ``_edge_hits``; a file of
    ``PARALLEL_MIN_BYTES`` or more is split in ranges searched by spawned workers);
    (2) each hit is read back with its surroundings, decoded (``errors="replace"``) and
    parsed, joining a message wrapped over its next lines and taking the timestamp of its
    line or of the record it continues (a traceback).
    ``since``: skip events older than it; events without a time are kept unless the file
    was last written before ``since``. ``label`` names the file in events (default: path).
    """
    name = label if label is not None else str(path)
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if since is not None and datetime.fromtimestamp(info.st_mtime, timezone.utc) < since:
            return []  # nothing in it can be newer than its last write
        size = info.st_size  # a log still growing is scanned up to here
        found = scan_range(handle, path, info, 0, size, prefilter=prefilter)
    return [
        replace(item, file=name)
        for item in found
        if since is None or item.when is None or item.when >= since
    ]


def scan_range(
    handle: io.BufferedReader,
    path: str | os.PathLike[str],
    info: os.stat_result,
    start: int,
    end: int,
    *,
    prefilter: bool = True,
) -> list[Found]:
    """The failures in ``[start, end)`` of an open file; lines count from ``start``."""
    now = datetime.fromtimestamp(info.st_mtime, timezone.utc)  # dates syslog's yearless stamps
    if start == 0 and 0 < end <= WHOLE_JSON_BYTES:
        head = handle.read(64).lstrip()
        if head.startswith(b"{"):
            handle.seek(0)
            return _whole_text(handle.read(end), now)
    hits = grep_hits(handle, start, end, ALL_NEEDLES) if prefilter else None
    if hits is not None and not _needles_at(handle, hits):
        hits = None  # a grep whose output means something else: the Python pass decides
    if hits is None and start == 0:
        hits = _parallel_hits(path, info, end)
    if hits is None:
        hits = _find_in_range(handle, start, end)[1]
    return _resolve(handle, end, hits, now)


def _needles_at(handle: io.BufferedReader, hits: list[Hit]) -> bool:
    """Whether a needle starts at each offset grep gave (a grep that prints its fields in
    another order, or counts otherwise, must not send the parser to the wrong bytes)."""
    for pos, _newlines in hits[:64]:
        handle.seek(pos)
        head = handle.read(_MAX_NEEDLE)
        if not any(head.startswith(needle) for needle in ALL_NEEDLES):
            return False
    return True


def _whole_text(data: bytes, now: datetime) -> list[Found]:
    """A JSON report read at once: its killed entries span many lines."""
    text = data.decode("utf-8", errors="replace")
    return [Found(event, None, event.line, event.time) for event in find_deaths(text, now=now)]


def scan_file(
    path: str | os.PathLike[str],
    since: datetime | None = None,
    *,
    label: str | None = None,
) -> Iterator[OomEvent]:
    """The caching allocator's OOM / invalid-watermark messages only (see ``scan_found``)."""
    for item in scan_found(path, since, label=label):
        if isinstance(item.event, OomEvent):
            when = item.when
            yield replace(
                item.event,
                file=item.file,
                line=item.line,
                time=None if when is None else iso(when),
                when=when,
            )


#: Workers for the Python pass (used only where grep is missing): each costs ~0.1 s to spawn
#: and the parent's resolve pass stays serial. Measured on 2 busy cores (bench_oom_scan.py
#: --python): at 256 and 512 MiB the workers were no faster than one process (median wall
#: 3.92 s vs 4.24 s, 8.11 s vs 7.96 s) and cost 20% more CPU, so they run only on larger
#: files and machines with cores to spare.
PARALLEL_MIN_BYTES = 1024 * 1024 * 1024
PARALLEL_MIN_CPUS = 4
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
        cpus = os.cpu_count() or 1
        workers = min(cpus, PARALLEL_MAX_WORKERS) if cpus >= PARALLEL_MIN_CPUS else 1
        if os.environ.get("MPSCTL_OOM_WORKERS", "").isdigit():  # benchmarks compare 0 / n
            workers = min(workers, int(os.environ["MPSCTL_OOM_WORKERS"]))
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
    for needle in ALL_NEEDLES:
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
        for needle in ALL_NEEDLES:
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
    """Memory failures newer than ``since`` (epoch seconds or datetime) in each log's tail,
    merged, as JSON dicts (``line`` is None: the head of the file is not read). For the
    probe: cheap. Only memory deaths count (not a gunicorn kill after its own timeout).

    Only events with a timestamp count (their line's, or their record's): a log without
    timestamps cannot say whether an OOM is recent (``oom_cursor`` finds those once).
    Unreadable or missing files are skipped.
    """
    cutoff = since if isinstance(since, datetime) else datetime.fromtimestamp(since, timezone.utc)
    found: list[Found] = []
    for path in paths:
        if path is None:
            continue
        try:
            found += _tail_events(path, cutoff, max_tail_bytes)
        except OSError:
            continue
    return [item.to_json() for item in merge(found) if counts(item)]


def counts(item: Found) -> bool:
    """Whether a found event is a memory failure (what the probe and report count)."""
    from mpsctl.observe.deaths import is_memory_death

    if isinstance(item.event, OomEvent):
        return item.event.kind == "oom"
    return is_memory_death(item.event)


def _tail_events(
    path: str | os.PathLike[str], cutoff: datetime, max_tail_bytes: int
) -> list[Found]:
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if datetime.fromtimestamp(info.st_mtime, timezone.utc) < cutoff:
            return []
        size = info.st_size
        start = _tail_start(handle, size, cutoff, max_tail_bytes)
        return [
            replace(item, file=os.fsdecode(path), line=None)
            for item in scan_range(handle, path, info, start, size)
            if item.when is not None and item.when >= cutoff
        ]


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


def _resolve(handle: Any, size: int, hits: list[Hit], now: datetime) -> list[Found]:
    reader = _Reader(handle, size)
    found: list[Found] = []
    cluster: list[int] = []  # [first line's offset, its newlines before, last line's end]
    consumed_to = 0  # lines up to here belong to a message already reported
    for pos, newlines in hits:
        if pos < consumed_to:
            continue
        data, base = reader.around(pos)
        rel = pos - base
        start = data.rfind(b"\n", 0, rel) + 1
        end = _line_end(data, rel)
        line = data[start:end]
        event = None
        if any(needle in line for needle in NEEDLES):
            text = line.decode("utf-8", errors="replace")
            event = parse_oom(text)
        if event is None:
            # a memory death's line: read with its neighbours (a kill spans many lines)
            if cluster and (
                base + start - cluster[2] > CLUSTER_GAP_BYTES
                or base + end - cluster[0] > CLUSTER_MAX_BYTES
                or newlines - cluster[3] > CLUSTER_GAP_LINES
            ):
                found += _cluster_deaths(reader, cluster, now)
                cluster = []
            if not cluster:
                cluster = [base + start, newlines, base + end, newlines]
            cluster[2], cluster[3] = base + end, newlines
            consumed_to = base + end
            continue
        if not event.complete:
            event, end = _join_continuation(data, text, end, event)
        when = _record_time(data, start, text, floor=0 if base == 0 else 1)
        consumed_to = base + end
        found.append(Found(event, None, newlines + 1, when))
    if cluster:
        found += _cluster_deaths(reader, cluster, now)
    found.sort(key=lambda item: item.line or 0)
    return found


def _cluster_deaths(reader: _Reader, cluster: list[int], now: datetime) -> list[Found]:
    """Deaths in the lines from ``cluster``'s first hit to its last, plus up to
    ``CONTINUATION_LINES`` lines after that hold no needle (a hard-wrapped kill line)."""
    first, first_line, last_end = cluster[0], cluster[1], cluster[2]
    reader.handle.seek(first)
    data = reader.handle.read(min(last_end + FORWARD_BYTES, reader.size) - first)
    cut = last_end - first
    for _ in range(CONTINUATION_LINES):
        if cut >= len(data):
            break
        next_end = _line_end(data, cut + 1)
        if any(needle in data[cut + 1 : next_end] for needle in ALL_NEEDLES):
            break
        cut = next_end
    text = data[:cut].decode("utf-8", errors="replace")
    found = []
    offsets: list[int] | None = None
    for event in find_deaths(text, now=now):
        relative = (event.line or 1) - 1
        when = event.time
        if when is None:
            if offsets is None:
                offsets = _line_offsets(data[:cut])
            pos = first + offsets[min(relative, len(offsets) - 1)]
            window, base = reader.around(pos)
            start = pos - base
            line_text = window[start : _line_end(window, start)].decode("utf-8", errors="replace")
            when = _record_time(window, start, line_text, floor=0 if base == 0 else 1)
        found.append(Found(event, None, first_line + relative + 1, when))
    return found


def _line_offsets(data: bytes) -> list[int]:
    offsets = [0]
    at = data.find(b"\n")
    while at >= 0:
        offsets.append(at + 1)
        at = data.find(b"\n", at + 1)
    return offsets


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
        if any(needle in line for needle in ALL_NEEDLES):
            break
        joined += "\n" + line.decode("utf-8", errors="replace")
        attempt = parse_oom(joined)
        if attempt is not None and attempt.complete:
            return attempt, next_end
        pos = next_end
    return event, end


def _record_time(data: bytes, start: int, text: str, floor: int) -> datetime | None:
    """The line's own timestamp, else that of the record it continues (a traceback):
    the nearest stamped line above it, within the window, when that line reports a failure
    (``log.exception``'s ERROR record). A stamped line that reports none (an INFO line hours
    before uvicorn's untimed stderr) says nothing about when this line was written: None.
    ``floor``: 1 when ``data[0]`` may be in the middle of a line (so the first partial line
    is not trusted)."""
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
        previous = data[prev_start : pos - 1].decode("utf-8", errors="replace")
        when = line_time(previous)
        if when is not None:
            return when if _FAILURE_RECORD.search(previous) else None
        pos = prev_start
    return None


#: words of a log record that announces the traceback below it (level names, logger text)
_FAILURE_RECORD = re.compile(r"(?i)error|exception|critical|fatal|traceback|failed|\bERR\b")


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class OomReport:
    """What ``mpsctl oom`` found: each failure once, with its advice, over the files it read."""

    generated_at: str
    since: datetime | None
    files: tuple[str, ...]
    events: tuple[tuple[Found, list[str]], ...]
    #: the OS's logs looked in for kills of the service, each with what came of it
    system_logs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.oom/1",
            "generated_at": self.generated_at,
            "since": iso(self.since) if self.since else None,
            "files": list(self.files),
            "system_logs": list(self.system_logs),
            "count": len(self.events),
            "events": [dict(e.to_json(), advice=advice) for e, advice in self.events],
        }


def advice_for(
    item: Found, high_ratio: float | None, ram_bytes: int | None, plan: Plan | None = None
) -> list[str]:
    """Plain advice for any kind (``ram_bytes``: this machine's, for the kills' figures;
    ``plan``: the configured service's memory plan, cited in the allocator's advice)."""
    if isinstance(item.event, OomEvent):
        from mpsctl.observe.oom_advice import explain

        return explain(item.event, high_ratio, plan)
    from mpsctl.observe import death_advice

    return death_advice.explain(item.event, ram_bytes=ram_bytes)


def find_events(
    targets: Iterable[tuple[str, Path]],
    since: datetime | None = None,
    *,
    high_ratio: float | None = None,
    ram_bytes: int | None = None,
    prefilter: bool = True,
    extra: Iterable[Found] = (),
    system_logs: Iterable[str] = (),
    plan: Plan | None = None,
) -> OomReport:
    """Scan each ``(label, path)``, merge copies of one failure, explain each. ``extra``:
    failures found elsewhere (the OS's kills of the service), read in ``system_logs``;
    ``high_ratio``: the service's; ``plan``: the configured service's memory plan, cited in
    the advice.

    OSError names the file that could not be read.
    """
    files = tuple(targets)
    found: list[Found] = list(extra)
    for label, path in files:
        found += scan_found(path, since, label=label, prefilter=prefilter)
    found.sort(
        key=lambda item: (item.when is None, item.when or datetime.min.replace(tzinfo=timezone.utc))
    )
    events = tuple((item, advice_for(item, high_ratio, ram_bytes, plan)) for item in merge(found))
    labels = tuple(label for label, _ in files)
    return OomReport(utc_now_iso(), since, labels, events, tuple(system_logs))
