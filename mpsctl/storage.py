"""Small, careful file writes: nothing mpsctl writes is ever truncated by mistake."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def open_state_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """A descriptor on the regular file ``path``, created with O_EXCL when it is new.

    Never through a symbolic link (O_NOFOLLOW): whoever can write in a state directory could
    otherwise point ``mpsctl.lock`` or a history file at ``/etc/...`` and have a root operator's
    next run write there. Never on a FIFO or a device either (O_NONBLOCK so opening a FIFO
    cannot hang; then refused). ``flags``: the access flags (``O_RDWR | O_APPEND``...).
    """
    safe = flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, safe | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        try:
            fd = os.open(path, safe)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's answer
                raise OSError(
                    exc.errno, "a symbolic link (mpsctl never writes through one)", str(path)
                ) from None
            raise
    return _regular_or_closed(fd, path)


def _regular_or_closed(fd: int, path: Path) -> int:
    """``fd`` when it is a regular file, back in blocking mode; else closed and OSError."""
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        raise OSError(errno.EINVAL, f"not a regular file ({file_kind(kind)})", str(path))
    # a regular file: O_NONBLOCK has done its job (a service inheriting this as its stdout
    # must see an ordinary descriptor)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


#: what a settings, token, env or state file may weigh: far above any real one, far below
#: what would exhaust memory (``/dev/zero`` or a runaway writer)
SMALL_FILE_MAX = 4 * 1024 * 1024


def open_regular(path: Path, *, follow: bool = True) -> int:
    """A read-only descriptor on ``path``, refused (OSError, one-line ``strerror``) unless
    it is a regular file: a FIFO would hang the reader (O_NONBLOCK makes opening one return
    at once), a device such as ``/dev/zero`` never ends. ``follow=False``: a symbolic link
    is refused too (state files mpsctl itself wrote are never links)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow and exc.errno in (errno.ELOOP, errno.EMLINK):
            raise OSError(
                exc.errno, "a symbolic link (mpsctl never reads its state through one)", str(path)
            ) from None
        raise
    return _regular_or_closed(fd, path)


def read_regular(path: Path, max_bytes: int = SMALL_FILE_MAX, *, follow: bool = True) -> bytes:
    """The whole of the regular file ``path``, at most ``max_bytes``; OSError (one-line
    ``strerror``) when it is not a regular file or is larger."""
    fd = open_regular(path, follow=follow)
    try:
        data = _read_upto(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {_size(max_bytes)}", str(path))
    return data


def _read_upto(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = os.read(fd, min(1 << 20, limit - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_tail(path: Path, max_bytes: int, *, follow: bool = True) -> bytes:
    """The last ``max_bytes`` of the regular file ``path``, starting at a line boundary
    (the partial first line is dropped), for append-only files whose recent lines matter."""
    fd = open_regular(path, follow=follow)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = os.pread(fd, max_bytes, start)
    finally:
        os.close(fd)
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    return data


def bounded_lines(handle: BinaryIO, max_len: int) -> Iterator[bytes]:
    """The lines of ``handle`` (without their newline), each read in pieces of at most
    ``max_len`` bytes: a line longer than that is skipped whole without ever being held, so a
    JSON-lines file with no newline in gigabytes costs ``max_len`` of memory."""
    while True:
        line = handle.readline(max_len + 1)
        if not line:
            return
        if len(line) <= max_len or line.endswith(b"\n"):
            yield line.rstrip(b"\n")
            continue
        while line and not line.endswith(b"\n"):  # too long: drop the rest of it
            line = handle.readline(max_len + 1)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


def file_kind(kind: int) -> str:
    """A person's name for ``stat.S_IFMT(st_mode)``."""
    names = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket",
        stat.S_IFDIR: "a directory",
        stat.S_IFLNK: "a symbolic link",
    }
    return names.get(kind, "not a regular file")


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
    fd = open_state_file(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)
