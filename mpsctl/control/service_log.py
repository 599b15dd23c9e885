"""The service's log: appended to (never truncated), rotated by size before a start.

Rotation happens only before ``start`` spawns the service, never while mpsctl's service
writes: the service holds an ``O_APPEND`` descriptor, so a rename under a still-running
writer (a service started elsewhere) only moves its lines into ``.1``; none are lost.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from mpsctl.storage import open_regular, open_state_file


def rotate_if_needed(path: Path, max_bytes: int, backups: int) -> bool:
    """``log -> log.1 -> log.2 ...`` when ``log`` is above ``max_bytes``; True when rotated.

    ``max_bytes == 0`` never rotates; so does ``backups == 0`` (rotating without a copy
    would throw the lines away).
    """
    if max_bytes <= 0 or backups <= 0:
        return False
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except (FileNotFoundError, NotADirectoryError):  # nothing to rotate (opening will say why)
        return False
    oldest = path.with_name(f"{path.name}.{backups}")
    oldest.unlink(missing_ok=True)
    for index in range(backups - 1, 0, -1):
        source = path.with_name(f"{path.name}.{index}")
        if source.exists():
            os.replace(source, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True


def open_append(path: Path) -> int:
    """A descriptor for the service's stdout/stderr: O_APPEND, so concurrent writers
    (the service, its workers, mpsctl's own marker lines) never overwrite each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_state_file(path, os.O_WRONLY | os.O_APPEND, 0o644)


def append_line(fd: int, line: str) -> None:
    os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))


def tail_lines(path: Path, count: int = 20, *, offset: int = 0) -> list[str]:
    """The last ``count`` lines written after byte ``offset`` (where this run began)."""
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            # read at most the last 64 KiB: enough for 20 lines, cheap on a huge log
            handle.seek(max(offset, size - 65536))
            data = handle.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return list(deque(lines, maxlen=count))
