"""The system's ``grep -F`` as the scanner's first pass: byte offsets of candidate needles only.

Searching gigabytes for fixed strings is what grep is built for: it runs at the machine's
speed, while the same search in CPython costs one pass over the bytes per needle. grep is
given the already-open file as its stdin (at the scan's start offset), so a log rotated
while it runs cannot swap the file under it, and it prints only ``line:offset:needle`` per
match (``-o -b -n``), never the log's text. Where no usable grep exists, or it fails, the
caller falls back to the Python search, which stays the reference the tests compare with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import IO

#: (absolute offset of a needle, newlines in the file before it)
Hit = tuple[int, int]

_GREP: list[str | None] = []


def grep_path() -> str | None:
    """The grep to use (``MPSCTL_GREP`` names another; ``MPSCTL_GREP=`` disables it)."""
    if not _GREP:
        chosen = os.environ.get("MPSCTL_GREP")
        _GREP.append(shutil.which("grep") if chosen is None else (shutil.which(chosen) or None))
    return _GREP[0]


def grep_hits(
    handle: IO[bytes], start: int, end: int, needles: tuple[bytes, ...]
) -> list[Hit] | None:
    """Needle offsets in ``[start, end)`` of the open file, line counts from ``start``; None
    when grep is missing or failed (then the Python search runs instead)."""
    grep = grep_path()
    if grep is None or start >= end:
        return None if grep is None else []
    args = [grep, "-a", "-o", "-b", "-n", "-F"]
    for needle in needles:
        args += ["-e", needle.decode("ascii")]
    fd = handle.fileno()
    os.lseek(fd, start, os.SEEK_SET)
    try:
        proc = subprocess.run(
            args,
            stdin=fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},  # bytes, not characters: no UTF-8 decoding cost
            check=False,
        )
    except OSError:
        return None
    if proc.returncode == 1:
        return []
    if proc.returncode != 0:
        return None
    hits: list[Hit] = []
    limit = end - start
    for row in proc.stdout.split(b"\n"):
        if not row:
            continue
        number, _, rest = row.partition(b":")
        offset, _, _ = rest.partition(b":")
        try:
            at = int(offset)
            line = int(number)
        except ValueError:
            return None  # not the output this module asked for: trust the Python search
        if at < limit:
            hits.append((start + at, line - 1))
    hits.sort()
    return hits
