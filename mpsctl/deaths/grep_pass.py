"""The system's ``rg`` or ``grep -F`` as the scanner's first pass: candidate lines only.

Searching gigabytes for fixed strings is what these tools are built for. ripgrep is preferred:
its SIMD search for up to 16 literals costs about what one costs (~0.15 s per GiB here),
where GNU grep's multi-string search is ~1.2 s per GiB. The tool looks for a few *prefilter*
strings and prints each candidate line with its number and byte offset (``-b -n``); the
exact needles are then located in those lines in Python, so the hits equal the Python
pass's. The tool is given the already-open file as its stdin (at the scan's start offset),
so a log rotated while it runs cannot swap the file under it. Where rg fails, grep is tried;
where no usable tool exists, or it fails, or its output does not match the file's bytes, the
caller falls back to the Python search, which stays the reference the tests compare with.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from typing import IO

#: (absolute offset of a needle, newlines in the file before it)
Hit = tuple[int, int]

_GREP: list[str | None] = []
#: candidate lines compared with the file's bytes before the tool's output is trusted
_CHECKED_LINES = 64
#: bytes of candidate lines read from the tool; more means lines far longer than any log's
MAX_TOOL_OUTPUT = 64 * 1024 * 1024
#: the tool's heap (RLIMIT_DATA): enough for any real log's lines, not for one of gigabytes
MAX_TOOL_HEAP = 512 * 1024 * 1024


def bundled_rg() -> str | None:
    """The ``rg`` the ``ripgrep`` wheel (a dependency) installed beside this interpreter's
    scripts: found even when the environment is not activated (cron runs
    ``/path/to/venv/bin/mpsctl`` with a bare PATH)."""
    import sysconfig

    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "rg")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def grep_path() -> str | None:
    """The search tool to use: the bundled ``rg``, else ``rg`` on PATH, else ``grep``
    (``MPSCTL_GREP`` names another; ``MPSCTL_GREP=`` disables it)."""
    if not _GREP:
        chosen = os.environ.get("MPSCTL_GREP")
        if chosen is None:
            _GREP.append(bundled_rg() or shutil.which("rg") or shutil.which("grep"))
        else:
            _GREP.append(shutil.which(chosen) if chosen else None)
    return _GREP[0]


def _command(tool: str, prefilter: tuple[bytes, ...], *, stdin_path: bool) -> list[str]:
    if os.path.basename(tool).startswith("rg"):
        # --no-config: a user's ripgreprc may cap columns or add context lines;
        # --encoding none: a BOM must not make it transcode (the offsets would move)
        args = [tool, "--no-config", "-a", "-b", "-n", "-F", "--encoding", "none",
                "--color", "never", "--no-heading"]  # fmt: skip
    else:
        args = [tool, "-a", "-b", "-n", "-F"]
    for needle in prefilter:
        args += ["-e", needle.decode("ascii")]
    if stdin_path and args[1] == "--no-config" and os.path.exists("/dev/stdin"):
        # A path lets ripgrep map the file instead of copying it through read() (-25% CPU);
        # /dev/stdin still names the open file, not whatever the log's path names now.
        args.append("/dev/stdin")
    return args


def grep_hits(
    handle: IO[bytes],
    start: int,
    end: int,
    prefilter: tuple[bytes, ...],
    needles: tuple[bytes, ...],
) -> list[Hit] | None:
    """Every offset in ``[start, end)`` of the open file where one of ``needles`` starts,
    with the newlines from ``start`` before it, found via the lines that hold one of
    ``prefilter`` (each needle must contain one of them). None when the tool is missing or
    failed, or printed something other than the file's lines (then the Python search runs)."""
    tools = _tools()
    if not tools or start >= end:
        return None if not tools else []
    for tool in tools:
        hits = _search(tool, handle, start, end, prefilter, needles)
        if hits is not None:
            return hits
    return None


def _tools() -> list[str]:
    """The chosen tool, then grep where rg was chosen by default (an rg too old for an
    option, or broken, must not leave the slow Python pass as the only way)."""
    first = grep_path()
    if first is None:
        return []
    if os.environ.get("MPSCTL_GREP") is None and os.path.basename(first).startswith("rg"):
        grep = shutil.which("grep")
        return [first, grep] if grep else [first]
    return [first]


def _search(
    tool: str,
    handle: IO[bytes],
    start: int,
    end: int,
    prefilter: tuple[bytes, ...],
    needles: tuple[bytes, ...],
) -> list[Hit] | None:
    fd = handle.fileno()
    os.lseek(fd, start, os.SEEK_SET)
    output = _bounded_run(_command(tool, prefilter, stdin_path=start == 0), stdin=fd)
    if output is None:
        return None
    returncode, stdout = output
    if returncode == 1:
        return []
    if returncode != 0:
        return None
    return _parse(stdout.split(b"\n"), handle, start, end, needles)


#: files one run of the tool searches at most (each is an open descriptor passed to it)
BATCH_FILES = 128


def grep_hits_many(
    handles: list[IO[bytes]],
    ends: list[int],
    prefilter: tuple[bytes, ...],
    needles: tuple[bytes, ...],
) -> list[list[Hit] | None]:
    """:func:`grep_hits` for many whole files (from offset 0) with one run of the tool per
    :data:`BATCH_FILES` files instead of one per file (a process start costs 5-7 ms, more
    than searching a 2 MiB log). Each open file is passed as ``/dev/fd/N``, so a log rotated
    meanwhile is still the file opened. A file's entry is None where its hits could not be
    trusted (then the caller searches that file alone)."""
    results: list[list[Hit] | None] = [None] * len(handles)
    tools = _tools()
    if not tools or not os.path.isdir("/dev/fd"):
        return results
    for first in range(0, len(handles), BATCH_FILES):
        batch = range(first, min(first + BATCH_FILES, len(handles)))
        fds = [handles[i].fileno() for i in batch]
        for fd in fds:  # where /dev/fd/N is a dup (macOS), the search starts at the offset
            os.lseek(fd, 0, os.SEEK_SET)
        names = {f"/dev/fd/{fd}".encode(): i for fd, i in zip(fds, batch, strict=True)}
        for tool in tools:
            args = [
                *_command(tool, prefilter, stdin_path=False),
                "-H",
                "--",
                *map(os.fsdecode, names),
            ]
            output = _bounded_run(args, pass_fds=fds)
            if output is None:
                continue  # it could not run or went past a bound: each file alone
            returncode, stdout = output
            if returncode not in (0, 1):
                continue  # a file it could not read, or a tool that failed: the next tool
            rows: dict[int, list[bytes]] = {i: [] for i in batch}
            for row in stdout.split(b"\n"):
                name, _, rest = row.partition(b":")
                if row and name in names:
                    rows[names[name]].append(rest)
                elif row:
                    rows = {}
                    break  # not the output this module asked for
            if not rows:
                continue
            for i in batch:
                results[i] = _parse(rows[i], handles[i], 0, ends[i], needles)
            break
    return results


def _parse(
    rows: list[bytes], handle: IO[bytes], start: int, end: int, needles: tuple[bytes, ...]
) -> list[Hit] | None:
    """The hits in the tool's ``LINE:OFFSET:TEXT`` rows; None when they do not match the
    file's bytes."""
    hits: list[Hit] = []
    checked = 0
    previous = -1
    for row in rows:
        if not row:
            continue
        number, _, rest = row.partition(b":")
        offset, _, line = rest.partition(b":")
        try:
            at = start + int(offset)
            newlines = int(number) - 1
        except ValueError:
            return None  # not the output this module asked for: trust the Python search
        if at <= previous or newlines < 0:
            return None
        previous = at
        if at >= end:
            break
        if checked < _CHECKED_LINES:
            checked += 1
            if not _is_line_at(handle, start, at, line):
                return None
        for needle in needles:
            found = line.find(needle)
            while found >= 0 and at + found < end:
                hits.append((at + found, newlines))
                found = line.find(needle, found + 1)
    hits.sort()
    return hits


def _bounded_run(
    argv: list[str], *, stdin: int | None = None, pass_fds: list[int] | None = None
) -> tuple[int, bytes] | None:
    """Run the tool (reading ``stdin``, or the descriptors ``pass_fds`` named in ``argv``);
    its exit status and output, or None when it could not run
    or went past a bound. A candidate line is printed whole, so a log with no newline in
    gigabytes would have the tool buffer the whole of it and print it to us: its heap is
    capped (``MAX_TOOL_HEAP``, where the system enforces RLIMIT_DATA; a file it maps is not
    counted) and what it prints is read up to ``MAX_TOOL_OUTPUT``; past either the Python
    search, which reads in bounded blocks, takes over."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            pass_fds=pass_fds or (),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},  # bytes, not characters: no UTF-8 decoding cost
            preexec_fn=_cap_heap,  # noqa: PLW1509 - only setrlimit, async-signal-safe enough
        )
    except OSError:
        return None
    assert proc.stdout is not None
    chunks: list[bytes] = []
    got = 0
    with proc.stdout:
        while chunk := proc.stdout.read(1 << 20):
            chunks.append(chunk)
            got += len(chunk)
            if got > MAX_TOOL_OUTPUT:
                proc.kill()
                proc.wait()
                return None
    return proc.wait(), b"".join(chunks)


def _cap_heap() -> None:
    limit = getattr(resource, "RLIMIT_DATA", None)
    if limit is not None:
        with contextlib.suppress(ValueError, OSError):
            _soft, hard = resource.getrlimit(limit)
            cap = MAX_TOOL_HEAP if hard == resource.RLIM_INFINITY else min(MAX_TOOL_HEAP, hard)
            resource.setrlimit(limit, (cap, hard))


def _is_line_at(handle: IO[bytes], start: int, at: int, line: bytes) -> bool:
    """Whether the file holds ``line`` as a whole line at offset ``at`` (a tool that prints
    other fields, or counts otherwise, must not send the parser to the wrong bytes)."""
    low = max(at - 1, start)
    handle.seek(low)
    data = handle.read(at - low + len(line) + 1)
    head, body = data[: at - low], data[at - low :]
    return (
        head in (b"", b"\n")
        and body.startswith(line)
        and body[len(line) : len(line) + 1]
        in (
            b"",
            b"\n",
        )
    )
