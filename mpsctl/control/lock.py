"""One lock for every run that changes the service: start, stop, restart, fix.

``fcntl.flock`` on ``MPSCTL_HOME/mpsctl.lock``: the kernel drops it when the holder exits,
even on SIGKILL, so a crashed run never leaves a stale lock behind. The holder writes its
pid into the file *after* taking the lock (truncating before would erase the current
holder's pid), so a refused run can name who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpsctl.errors import LockedError, ServiceError
from mpsctl.storage import open_state_file

LOCK_NAME = "mpsctl.lock"


def lock_path(home: Path) -> Path:
    return home / LOCK_NAME


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    if not pid.isdigit():
        return "another mpsctl run"
    return f"pid {pid}" + (f" ({what})" if what else "")


@contextmanager
def service_lock(home: Path, *, wait: float = 0.0, purpose: str = "mpsctl") -> Iterator[Path]:
    """Hold the lock for the ``with`` block; ``LockedError`` (exit 75) after ``wait`` seconds."""
    path = lock_path(home)
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_CLOEXEC: a service started while we hold the lock must not
        # inherit the descriptor, or the lock would live as long as the service. No O_TRUNC:
        # the file holds the current holder's pid until we hold the lock ourselves.
        fd = open_state_file(path, os.O_RDWR)
    except OSError as exc:
        raise ServiceError(
            f"cannot open the lock file {path}: {exc.strerror} (check MPSCTL_HOME)"
        ) from None
    try:
        deadline = time.monotonic() + max(0.0, wait)
        delay = 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait:g} s" if wait > 0 else ""
                    raise LockedError(
                        f"{_holder(fd)} holds {path}{waited}; try again later "
                        "or pass --wait SECONDS"
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.25)
        # held: now the holder line may be replaced (a failure to write it only costs the
        # name in a refused run's message)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {purpose}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the flock
