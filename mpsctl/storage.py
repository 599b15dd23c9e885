"""Small, careful file writes: nothing mpsctl writes is ever truncated by mistake."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, text: str, *, mode: int = 0o644, dir_mode: int = 0o777) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never half of one.

    tmp + fsync + rename, then the directory is flushed: the rename itself is durable only
    once the directory entry is on disk. ``dir_mode`` applies to directories it creates.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, document: Any, *, mode: int = 0o600) -> None:
    """``atomic_write`` of a JSON document, private (0600, in a 0700 directory) by default."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, text, mode=mode, dir_mode=0o700)


def write_new_file(path: Path, text: str, *, force: bool = False) -> Path | None:
    """Create ``path``; with ``force`` replace it, keeping a ``.bak`` copy (returned).

    Raises FileExistsError when the file exists and ``force`` is false.
    """
    backup: Path | None = None
    if path.exists():
        if not force:
            raise FileExistsError(path)
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
    atomic_write(path, text)
    return backup


def append_line(path: Path, line: str, *, dir_mode: int = 0o777) -> None:
    """Append one line with a single O_APPEND write, so concurrent writers never interleave.

    A file that ends in a truncated line (a writer killed mid-write, a full disk) gets a
    newline first: the new line starts a line of its own instead of being glued onto the
    broken one, where a reader would drop both.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)
