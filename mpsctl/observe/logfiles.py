"""The service's log files: which ones (``service.log_file`` + ``service.log_globs``), their
last lines (read backwards from the end, never the whole file) and following them.

One resolver serves ``mpsctl logs`` and ``mpsctl oom``. Dated names such as
``logs/error_2026-01-21.log`` sort newest first by the date in the name, then by mtime.
"""

from __future__ import annotations

import glob
import heapq
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from mpsctl.observe.logtime import line_time
from mpsctl.settings import Settings
from mpsctl.storage import open_regular

_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})[-_.]?(\d{2})[-_.]?(\d{2})(?!\d)")
_GLOB_CHARS = re.compile(r"[*?\[\]]")
BACK_BLOCK = 64 * 1024
#: while following, the longest a glob goes without being re-resolved (``_glob_due``)
REGLOB_S = 5.0
MAX_READ_PER_POLL = 8 * 1024 * 1024  # a burst is printed over several polls, not all at once
#: the most of one line kept for printing: a log with no newline in gigabytes is read in
#: blocks and shown as its first MiB and the count of bytes left out, never held whole
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LogSource:
    """A log: ``label`` (short name for prefixes), ``path`` (None: a glob matching nothing yet),
    ``pattern`` (absolute glob, re-resolved while following; None for a fixed file).

    Unpacks as ``label, path`` (the shape other modules were promised).
    """

    label: str
    path: Path | None
    pattern: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.label, self.path))


def date_in_name(name: str) -> str | None:
    """``error_2026-01-21.log`` -> ``"20260121"`` (comparable as text)."""
    match = _DATE_IN_NAME.search(name)
    return "".join(match.groups()) if match else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def matches(pattern: str) -> list[Path]:
    """Files matching an absolute glob, newest first: date in the name, then mtime."""
    found = [Path(p) for p in glob.glob(pattern) if os.path.isfile(p)]
    return sorted(found, key=lambda p: (date_in_name(p.name) or "", _mtime(p)), reverse=True)


def _label_of(pattern_or_name: str) -> str:
    """``logs/error_*.log`` -> ``error``; ``backend.log`` -> ``backend``."""
    name = os.path.basename(pattern_or_name)
    name = _DATE_IN_NAME.sub("", _GLOB_CHARS.sub("", name))
    name = re.sub(r"\.(log|txt|out|err)$", "", name)
    return name.strip("_-. ") or os.path.basename(pattern_or_name)


def _absolute(pattern: str, base: Path) -> str:
    expanded = os.path.expanduser(pattern)
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def _unique(sources: list[LogSource]) -> list[LogSource]:
    seen: dict[str, int] = {}
    out = []
    for source in sources:
        count = seen.get(source.label, 0)
        seen[source.label] = count + 1
        out.append(replace(source, label=f"{source.label}{count + 1}") if count else source)
    return out


def sources_from_globs(patterns: Iterable[str], base: Path) -> list[LogSource]:
    """One source per glob: its newest file (or None while nothing matches)."""
    out = []
    for pattern in patterns:
        absolute = _absolute(pattern, base)
        found = matches(absolute)
        out.append(LogSource(_label_of(pattern), found[0] if found else None, absolute))
    return _unique(out)


def resolve_logs(
    settings: Settings,
    *,
    newest_only: bool = True,
    select: Iterable[str] = (),
) -> list[LogSource]:
    """The configured logs: ``service.log_file`` then each of ``service.log_globs``.

    ``newest_only``: one file per glob (``logs``); else every match newest first, plus the
    log_file's rotated copies ``NAME.1`` ... (``oom``). ``select``: any of ``"backend"``
    (log_file), ``"error"``, ``"app"`` (globs whose file name contains the word); empty: all.
    """
    service = settings.service
    wanted = set(select)
    out: list[LogSource] = []
    if not wanted or "backend" in wanted:
        out.append(LogSource(_label_of(service.log_file.name), service.log_file))
        if not newest_only:
            for number in range(1, service.log_backups + 1):
                backup = service.log_file.with_name(f"{service.log_file.name}.{number}")
                if backup.is_file():
                    out.append(LogSource(f"{_label_of(service.log_file.name)}.{number}", backup))
    patterns = [
        p for p in service.log_globs if not wanted or any(w in os.path.basename(p) for w in wanted)
    ]
    if newest_only:
        out += sources_from_globs(patterns, service.workdir)
    else:
        for pattern in patterns:
            absolute = _absolute(pattern, service.workdir)
            found = matches(absolute)
            if not found:
                out.append(LogSource(_label_of(pattern), None, absolute))
            out += [LogSource(_label_of(pattern), path, absolute) for path in found]
    return out


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class LogLine:
    label: str
    text: str
    when: datetime | None  # its own timestamp, or that of the record it continues
    path: Path


@dataclass(frozen=True)
class Notice:
    """Something the operator should know (a file appeared, rotated, ...): for stderr."""

    message: str
    warning: bool = False  # a missing file; otherwise information (a switch to another file)


Keep = Callable[[str], bool]


def read_last_lines(
    handle: BinaryIO, end: int, count: int, keep: Keep | None = None, since: datetime | None = None
) -> list[str]:
    """The last ``count`` lines before offset ``end`` that pass ``keep``, oldest first.

    Reads backwards in blocks, so a multi-GB file costs only its tail. With ``since``, stops at
    the first (from the end) timestamped line older than it. Invalid UTF-8 is replaced.
    """
    return _last_lines(handle, end, count, keep, since)[0]


def _last_lines(
    handle: BinaryIO, end: int, count: int, keep: Keep | None, since: datetime | None
) -> tuple[list[str], int]:
    """``read_last_lines`` plus the offset where the first returned line starts."""
    found: list[str] = []
    first_offset = end
    pos = end
    # the start of the text read so far (maybe an incomplete line), as the blocks read, the
    # last block first: joined only once a newline before it is found, so a line of any
    # length costs O(length), not a re-copy per block
    rest: list[bytes] = []
    rest_bytes = 0
    cut = 0  # bytes left out of the end of the line that runs into ``rest``
    first = True
    while pos > 0 and len(found) < count:
        step = min(BACK_BLOCK, pos)
        pos -= step
        handle.seek(pos)
        block = handle.read(step)
        if pos > 0 and b"\n" not in block:
            rest.append(block)
            rest_bytes += len(block)
            while rest_bytes > MAX_LINE_BYTES and len(rest) > 1:
                dropped = rest.pop(0)  # the block nearest the line's end: its start is kept
                rest_bytes -= len(dropped)
                cut += len(dropped)
            continue
        data = block + b"".join(reversed(rest))
        rest_bytes = 0
        parts = data.split(b"\n")
        rest = [parts[0]]
        body = parts[1:]
        start = len(parts[0]) + 1  # offset of body[0] in data
        if first and body and body[-1] == b"":
            body.pop()  # the file's final newline
        first = False
        if pos == 0:
            body.insert(0, parts[0])
            rest = []
            start = 0
        starts = []
        for raw in body:
            starts.append(start)
            start += len(raw) + 1
        cut_line, line_cut, cut = (len(body) - 1 if cut else -1), cut, 0
        for index, raw, offset in zip(
            reversed(range(len(body))), reversed(body), reversed(starts), strict=True
        ):
            text = raw[:MAX_LINE_BYTES].decode("utf-8", errors="replace").rstrip("\r")
            left_out = max(0, len(raw) - MAX_LINE_BYTES) + (line_cut if index == cut_line else 0)
            if left_out:
                text += f" [... {left_out:,} more bytes of this line not shown]"
            if since is not None:
                when = line_time(text)
                if when is not None and when < since:
                    return found[::-1], first_offset
            if keep is None or keep(text):
                found.append(text)
                first_offset = pos + offset
                if len(found) >= count:
                    break
    return found[::-1], first_offset


def _time_before(handle: BinaryIO, offset: int) -> datetime | None:
    """The timestamp of the nearest stamped line before ``offset`` (within 64 KiB)."""
    start = max(offset - 64 * 1024, 0)
    handle.seek(start)
    lines = handle.read(offset - start).split(b"\n")
    if start > 0:
        lines = lines[1:]  # cut mid-line
    for raw in reversed(lines):
        when = line_time(raw.decode("utf-8", errors="replace"))
        if when is not None:
            return when
    return None


def _stamp(
    texts: list[str], before: datetime | None, fallback: datetime | None
) -> list[datetime | None]:
    """Each line's time: its own, else the previous line's (a traceback continues its record).
    Leading unstamped lines take ``before`` (the stamp above them in the file), else the first
    stamp in ``texts``; a file without any stamp takes ``fallback`` (its mtime)."""
    times = [line_time(t) for t in texts]
    current = before or next((t for t in times if t is not None), fallback)
    out: list[datetime | None] = []
    for when in times:
        current = when or current
        out.append(current)
    return out


@dataclass
class _Tracked:
    source: LogSource
    path: Path | None = None
    handle: BinaryIO | None = None
    identity: tuple[int, int] | None = None
    pos: int = 0
    partial: bytes = b""
    last_when: datetime | None = None
    reported_missing: bool = False
    #: the glob's directory as last seen (mtime_ns) and when the glob is due again anyway
    dir_stamp: int | None = None
    next_glob: float = 0.0


@dataclass
class LogView:
    """Several logs at once: ``tail(n)`` then ``poll()`` repeatedly (``follow`` loops it).

    Keeps each file open while following, so a file renamed away (rotation) is read to its
    end before the new one; notices say when it switches (newer dated file, rotation,
    truncation) and when a file is missing (once).
    """

    sources: list[LogSource]
    keep: Keep | None = None
    since: datetime | None = None
    _tracked: list[_Tracked] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tracked = [_Tracked(source=s, path=s.path) for s in self.sources]

    def open_count(self) -> int:
        """How many of the files are open (exist and are readable)."""
        return sum(1 for tracked in self._tracked if tracked.handle is not None)

    def close(self) -> None:
        for tracked in self._tracked:
            if tracked.handle is not None:
                tracked.handle.close()
                tracked.handle = None

    # ----------------------------------------------------------------- tail
    def tail(self, count: int) -> tuple[list[LogLine], list[Notice]]:
        """The last ``count`` lines of each file, merged in time order where lines carry one."""
        notices: list[Notice] = []
        per_file: list[list[tuple[datetime | None, int, int, LogLine]]] = []
        for index, tracked in enumerate(self._tracked):
            if not self._open(tracked, notices.append, at_end=True):
                continue
            assert tracked.handle is not None
            assert tracked.path is not None
            handle = tracked.handle
            texts, start = _last_lines(handle, tracked.pos, count, self.keep, self.since)
            mtime = datetime.fromtimestamp(os.fstat(handle.fileno()).st_mtime, timezone.utc)
            before = _time_before(handle, start) if texts and not line_time(texts[0]) else None
            times = _stamp(texts, before, mtime)
            tracked.last_when = times[-1] if times else None
            per_file.append(
                [
                    (when, index, n, LogLine(tracked.source.label, text, when, tracked.path))
                    for n, (text, when) in enumerate(zip(texts, times, strict=True))
                ]
            )
        # A merge, not a sort: each file keeps its own order even where its stamps go back
        # (several workers writing one log); ties go to the file listed first.
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        merged = heapq.merge(*per_file, key=lambda row: (row[0] or epoch, row[1], row[2]))
        return [row[3] for row in merged], notices

    # ----------------------------------------------------------------- follow
    def poll(self) -> list[LogLine | Notice]:
        """New complete lines since the last call, and notices, in order."""
        out: list[LogLine | Notice] = []
        for tracked in self._tracked:
            self._poll_one(tracked, out)
        return out

    def _glob_due(self, tracked: _Tracked, pattern: str) -> bool:
        """Re-glob when the pattern's directory changed (a file created, renamed or removed
        there: a new dated file, a rotation) and at least every ``REGLOB_S`` seconds (a
        wildcard directory, a file growing newer in place); a stat, not a listing, per poll."""
        try:
            stamp: int | None = os.stat(os.path.dirname(pattern)).st_mtime_ns
        except OSError:
            stamp = None
        now = time.monotonic()
        if stamp == tracked.dir_stamp and now < tracked.next_glob:
            return False
        tracked.dir_stamp, tracked.next_glob = stamp, now + REGLOB_S
        return True

    def _poll_one(self, tracked: _Tracked, out: list[LogLine | Notice]) -> None:
        pattern = tracked.source.pattern
        if pattern is not None and self._glob_due(tracked, pattern):
            found = matches(pattern)
            if found and found[0] != tracked.path:
                if tracked.handle is not None:
                    self._read(tracked, out, drain=True)
                    tracked.handle.close()
                    tracked.handle = None
                    out.append(Notice(f"{tracked.source.label} log: now following {found[0]}"))
                tracked.path = found[0]
        if tracked.handle is None:
            if not self._open(tracked, out.append, at_end=False):
                return
            if tracked.reported_missing:
                out.append(Notice(f"{tracked.source.label} log: {tracked.path} appeared"))
                tracked.reported_missing = False
        assert tracked.path is not None
        try:
            info = os.stat(tracked.path)
        except OSError:
            # renamed or removed: read what the old file still holds, wait for a new one
            self._read(tracked, out, drain=False)
            return
        if (info.st_dev, info.st_ino) != tracked.identity:
            self._read(tracked, out, drain=True)
            assert tracked.handle is not None
            tracked.handle.close()
            tracked.handle = None
            out.append(Notice(f"{tracked.source.label} log: {tracked.path} was replaced (rotated)"))
            if self._open(tracked, out.append, at_end=False):
                self._read(tracked, out, drain=False)
            return
        self._read(tracked, out, drain=False)

    def _open(self, tracked: _Tracked, report: Callable[[Notice], None], *, at_end: bool) -> bool:
        if tracked.path is None:
            if not tracked.reported_missing:
                pattern = tracked.source.pattern
                label = tracked.source.label
                report(Notice(f"no file matches {pattern} ({label} log)", warning=True))
                tracked.reported_missing = True
            return False
        try:
            # a regular file only: a FIFO would hang `logs`, a device would never end
            handle = os.fdopen(open_regular(tracked.path), "rb")
        except FileNotFoundError:
            if not tracked.reported_missing:
                report(
                    Notice(
                        f"{tracked.source.label} log: {tracked.path}: no such file", warning=True
                    )
                )
                tracked.reported_missing = True
            return False
        except OSError as exc:
            if not tracked.reported_missing:
                report(
                    Notice(
                        f"{tracked.source.label} log: {tracked.path}: {exc.strerror}", warning=True
                    )
                )
                tracked.reported_missing = True
            return False
        info = os.fstat(handle.fileno())
        tracked.handle = handle
        tracked.identity = (info.st_dev, info.st_ino)
        tracked.pos = info.st_size if at_end else 0
        tracked.partial = b""
        return True

    def _read(self, tracked: _Tracked, out: list[LogLine | Notice], *, drain: bool) -> None:
        handle = tracked.handle
        if handle is None or tracked.path is None:
            return
        size = os.fstat(handle.fileno()).st_size
        if size < tracked.pos:
            out.append(Notice(f"{tracked.source.label} log: {tracked.path} was truncated"))
            tracked.pos = 0
            tracked.partial = b""
        if size == tracked.pos and not (drain and tracked.partial):
            return
        handle.seek(tracked.pos)
        wanted = size - tracked.pos
        while True:  # a drain reads what is left in bounded blocks
            data = handle.read(min(wanted, MAX_READ_PER_POLL))
            tracked.pos += len(data)
            wanted -= len(data)
            more = drain and bool(data) and wanted > 0
            self._emit(tracked, tracked.path, out, data, last=drain and not more)
            if not more:
                return

    def _emit(
        self,
        tracked: _Tracked,
        path: Path,
        out: list[LogLine | Notice],
        data: bytes,
        *,
        last: bool,
    ) -> None:
        data = tracked.partial + data
        lines = data.split(b"\n")
        tracked.partial = lines.pop()  # an unfinished line waits for its newline
        if len(tracked.partial) > MAX_LINE_BYTES:
            # a line with no end in sight is shown in pieces, never held whole
            lines.append(tracked.partial)
            tracked.partial = b""
        if last and tracked.partial:
            lines.append(tracked.partial)
            tracked.partial = b""
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            when = line_time(text) or tracked.last_when
            tracked.last_when = when
            if self.since is not None and when is not None and when < self.since:
                continue
            if self.keep is None or self.keep(text):
                out.append(LogLine(tracked.source.label, text, when, path))


def follow(
    view: LogView,
    *,
    interval: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[LogLine | Notice]:
    """Poll ``view`` every ``interval`` seconds until ``should_stop()`` (Ctrl-C otherwise)."""
    while not should_stop():
        yield from view.poll()
        sleep(interval)
