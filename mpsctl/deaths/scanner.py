"""Find every memory failure in log files of any size, fast: byte needles, then regexes.

A first pass (``first_pass``) finds cheap byte needles: the system's ``rg``/``grep -F``
where there is one (``grep_pass``), else a Python search in big chunks. Only the windows
around a hit are decoded and parsed: caching-allocator messages by ``allocator``, every
other memory death (kernel OOM killer, systemd-oomd, jetsam, gunicorn, CPU allocator, CUDA
runtime, MPS array limits) by ``parsers``, whose hits are read in clusters so that one kill
written over many lines is one event. Each event gets its record's timestamp from the
nearest line above it that has one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.deaths import records
from mpsctl.deaths.allocator import NEEDLES, OomEvent, parse_oom
from mpsctl.deaths.counting import Found, counted, counts, merge, without_lines
from mpsctl.deaths.first_pass import (
    ALL_NEEDLES,
    PREFILTER_NEEDLES,
    Hit,
    find_in_range,
    parallel_hits,
)
from mpsctl.deaths.grep_pass import grep_hits, grep_hits_many
from mpsctl.deaths.parsers import find_deaths
from mpsctl.logtime import iso, line_time
from mpsctl.units import utc_now_iso

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

LOOKBACK_BYTES = 64 * 1024  # how far back a traceback line looks for its record's timestamp
LOOKBACK_LINES = 200
FORWARD_BYTES = 16 * 1024  # room for a message wrapped over its next lines
WINDOW_BYTES = 256 * 1024  # read around a hit at once, so dense hits share one read
CONTINUATION_LINES = 4
#: hits of deaths closer than this (bytes, lines) are read together: one kill's lines are
#: near each other; a header whose kill line is missing does not reach a kill much later
CLUSTER_GAP_BYTES = 64 * 1024
CLUSTER_GAP_LINES = 400
CLUSTER_MAX_BYTES = 1024 * 1024
#: a JetsamEvent report this small is read whole (its killed entries and its page size are
#: far apart); one is known by its header line's keys, never by a first "{" alone: a
#: JSON-lines log starts with "{" too and is scanned line by line like any log
WHOLE_JSON_BYTES = 8 * 1024 * 1024
_JETSAM_HEADER = re.compile(rb'^\s*\{\s*"bug_type"\s*:\s*"?298"?\s*[,}]')
#: lines read above a cluster's first hit: systemd-oomd names the pids it is about to kill
#: ("oomd attempting to kill N") just before its kill line
LOOK_ABOVE_LINES = 8
_OTHER_NEEDLES = tuple(n for n in ALL_NEEDLES if n != b"Tried to allocate")
#: how far a jetsam report's ``processes`` entry may reach around its "rpages" key
ENTRY_BYTES = 16 * 1024


def scan_found(
    path: str | os.PathLike[str],
    since: datetime | None = None,
    *,
    label: str | None = None,
    prefilter: bool = True,
) -> list[Found]:
    """Every memory failure in a log file, in file order (not yet merged: see ``merge``).

    Two passes that never hold the file in memory: (1) the needles' byte offsets and line
    numbers, from ``rg``/``grep -F`` (``prefilter``, where the system has one) or, as fallback
    and reference, ``first_pass.find_in_range`` (see there);
    (2) each hit is read back with its surroundings, decoded (``errors="replace"``) and
    parsed, joining a message wrapped over its next lines and taking the timestamp of its
    line or of the record it continues (a traceback).
    ``since``: skip events older than it; events without a time are kept unless the file
    was last written before ``since``. ``label`` names the file in events (default: path).
    """
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        return _found_in(handle, path, info, since, label, prefilter=prefilter)


def _too_old(info: os.stat_result, since: datetime | None) -> bool:
    """Nothing in a file last written before ``since`` can be newer."""
    return since is not None and datetime.fromtimestamp(info.st_mtime, timezone.utc) < since


def _found_in(
    handle: io.BufferedReader,
    path: str | os.PathLike[str],
    info: os.stat_result,
    since: datetime | None,
    label: str | None,
    *,
    prefilter: bool,
    hits: list[Hit] | None = None,
) -> list[Found]:
    if _too_old(info, since):
        return []
    name = label if label is not None else str(path)
    size = info.st_size  # a log still growing is scanned up to here
    found = scan_range(handle, path, info, 0, size, prefilter=prefilter, hits=hits)
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
    hits: list[Hit] | None = None,
) -> list[Found]:
    """The failures in ``[start, end)`` of an open file; lines count from ``start``.
    ``hits``: the first pass's, already found (one run of the tool for many files)."""
    now = datetime.fromtimestamp(info.st_mtime, timezone.utc)  # dates syslog's yearless stamps
    if start == 0 and 0 < end <= WHOLE_JSON_BYTES:
        handle.seek(0)
        if _JETSAM_HEADER.match(handle.read(256)):
            handle.seek(0)
            return _whole_text(handle.read(end), now)
    if hits is None and prefilter:
        hits = grep_hits(handle, start, end, PREFILTER_NEEDLES, ALL_NEEDLES)
    if hits is None and start == 0:
        hits = parallel_hits(path, info, end)
    if hits is None:
        hits = find_in_range(handle, start, end)[1]
    return _resolve(handle, end, hits, now)


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
    timestamps cannot say whether an OOM is recent (``cursor`` finds those once).
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
    return [without_lines(item).to_json() for item in counted(found)]


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
            replace(item, file=os.fsdecode(path))
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
    #: [first line's offset, its newlines before, last line's end, its newlines]
    cluster: list[int] = []
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
                above, back = _look_above(data, base, start, consumed_to, b'"rpages"' in line)
                cluster = [above, newlines - back, base + end, newlines]
            cluster[2], cluster[3] = base + end, newlines
            consumed_to = base + end
            continue
        if not event.complete:
            event, end = _join_continuation(data, text, end, event)
        when = _record_time(data, start, text, floor=0 if base == 0 else 1)
        consumed_to = base + end
        found.append(_marked(Found(event, None, newlines + 1, when), data, start, end, text))
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
    if b'"rpages"' in data[:cut]:
        cut = _entry_end(data, cut)
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
        if offsets is None:
            offsets = _line_offsets(data[:cut])
        pos = first + offsets[min(relative, len(offsets) - 1)]
        window, base = reader.around(pos)
        start = pos - base
        end = _line_end(window, start)
        line_text = window[start:end].decode("utf-8", errors="replace")
        when = event.time
        if when is None:
            when = _record_time(window, start, line_text, floor=0 if base == 0 else 1)
        item = Found(event, None, first_line + relative + 1, when)
        found.append(_marked(item, window, start, end, line_text, own=event.time is not None))
    return found


def _marked(
    item: Found, data: bytes, start: int, end: int, text: str, own: bool | None = None
) -> Found:
    """``item`` with the marks that tell its copies from new deaths (``records``)."""
    line = item.line or 0
    above = records.follows(data, start)
    below = records.leads(data, end)
    return replace(
        item,
        stamped=records.stamped(text) if own is None else own or records.stamped(text),
        follows=None if above is None else line - above,
        leads=None if below is None else line + below,
    )


def _look_above(data: bytes, base: int, start: int, floor: int, entry: bool) -> tuple[int, int]:
    """Where a cluster whose first hit line starts at ``data[start]`` begins, and how many
    lines above that line: up to ``LOOK_ABOVE_LINES`` lines (never into what an earlier
    message or cluster already read, ``floor``), or, for a jetsam entry's "rpages" line, the
    line that opens its JSON object."""
    low = max(floor - base, 0)
    if entry:
        depth = 0
        for index in range(start - 1, max(low, start - ENTRY_BYTES) - 1, -1):
            char = data[index]
            if char == 0x7D:  # "}"
                depth += 1
            elif char == 0x7B:  # "{"
                if depth == 0:
                    opening = data.rfind(b"\n", 0, index) + 1
                    return base + opening, data.count(b"\n", opening, start)
                depth -= 1
    at, back = start, 0
    while back < LOOK_ABOVE_LINES and at > low:
        previous = data.rfind(b"\n", 0, at - 1) + 1
        if previous < low or (previous == 0 and base > 0):
            break  # the window's first line may be cut: do not read half a line
        at, back = previous, back + 1
    return base + at, back


def _entry_end(data: bytes, cut: int) -> int:
    """The end of the line that closes the JSON object open at ``data[cut]``."""
    depth = 0
    for index in range(cut, min(len(data), cut + ENTRY_BYTES)):
        char = data[index]
        if char == 0x7B:
            depth += 1
        elif char == 0x7D:
            if depth == 0:
                return _line_end(data, index)
            depth -= 1
    return cut


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
        # a wrapped message's own tail ("Tried to allocate ...") is not another message
        if any(needle in line for needle in _OTHER_NEEDLES):
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
            # the events that are memory deaths, counted as every other path counts them
            # (not an invalid watermark setting, not a SIGKILL after gunicorn's own timeout)
            "deaths": sum(1 for item, _advice in self.events if counts(item)),
            "events": [dict(e.to_json(), advice=advice) for e, advice in self.events],
        }


def advice_for(
    item: Found, high_ratio: float | None, ram_bytes: int | None, plan: Plan | None = None
) -> list[str]:
    """Plain advice for any kind (``ram_bytes``: this machine's, for the kills' figures;
    ``plan``: the configured service's memory plan, cited in the allocator's advice)."""
    if isinstance(item.event, OomEvent):
        from mpsctl.deaths.allocator_advice import explain

        return explain(item.event, high_ratio, plan)
    from mpsctl.deaths import advice

    return advice.explain(item.event, ram_bytes=ram_bytes)


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
    recorded_here: bool = True,
) -> OomReport:
    """Scan each ``(label, path)``, merge copies of one failure, explain each. ``extra``:
    failures found elsewhere (the OS's kills of the service), read in ``system_logs``;
    ``high_ratio``: the service's; ``plan``: the configured service's memory plan, cited in
    the advice. ``ram_bytes`` (this machine's) is compared only with failures recorded here:
    ``extra``, and the files when ``recorded_here`` (the service's own logs, not a log
    brought from another machine).

    OSError names the file that could not be read.
    """
    files = tuple(targets)
    extra_list = list(extra)
    found: list[Found] = list(extra_list)
    with contextlib.ExitStack() as stack:
        opened = []
        for label, path in files:
            handle = stack.enter_context(open(path, "rb"))
            info = os.fstat(handle.fileno())
            if not _too_old(info, since):
                opened.append((label, path, handle, info))
        # many files: one run of rg/grep for all of them, not one process start per file
        batch: list[list[Hit] | None] = [None] * len(opened)
        if prefilter and len(opened) > 1:
            batch = grep_hits_many([o[2] for o in opened], [o[3].st_size for o in opened],
                                   PREFILTER_NEEDLES, ALL_NEEDLES)  # fmt: skip
        for (label, path, handle, info), hits in zip(opened, batch, strict=True):
            found += _found_in(handle, path, info, since, label, prefilter=prefilter, hits=hits)
    found.sort(
        key=lambda item: (item.when is None, item.when or datetime.min.replace(tzinfo=timezone.utc))
    )
    local = {item.file for item in extra_list}
    events = tuple(
        (
            item,
            advice_for(
                item, high_ratio, ram if recorded_here or item.file in local else None, plan
            ),
        )
        for item in merge(found)
        for ram in [ram_bytes]
    )
    labels = tuple(label for label, _ in files)
    return OomReport(utc_now_iso(), since, labels, events, tuple(system_logs))
