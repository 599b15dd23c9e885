"""The pidfile: pid + create_time (the PID-reuse guard), written atomically.

The read side (``PidRecord``, ``read_pidfile``) lives in ``mpsctl.observe.processes`` because
finding the service is an observation; only writing and removing it live here.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mpsctl.errors import ServiceError
from mpsctl.observe import processes
from mpsctl.observe.processes import PidRecord, default_pidfile_path, read_pidfile
from mpsctl.observe.processes.pidfile import PIDFILE_MAX
from mpsctl.storage import atomic_write_json, read_regular

if TYPE_CHECKING:
    from mpsctl.settings import Settings

__all__ = [
    "PidRecord",
    "default_pidfile_path",
    "read_pidfile",
    "record_as_running",
    "remove_pidfile",
    "write_pidfile",
]


def write_pidfile(path: Path, record: PidRecord) -> None:
    atomic_write_json(path, record.to_json())
    # every run's pid, kept after the pidfile moves on: a kill recorded by the OS names it
    from mpsctl.deaths.attribution import record_run

    record_run(path.parent, record.pid, record.create_time, record.argv)


def record_as_running(record: PidRecord, path: Path) -> PidRecord:
    """The pidfile again with the command line the service shows now, when it is not the
    one started: a wrapper script that ``exec``s uvicorn keeps its pid and start time but
    not its argv, and every later run would otherwise call the pidfile reused (and leave the
    service running with nothing managing it)."""
    live = processes.same_process(record.pid, record.create_time)
    try:
        seen = tuple(live.cmdline()) if live is not None else ()
    except Exception:  # gone or unreadable since: the record stays as written
        return record
    if not seen or processes.argv_matches(record.argv, seen):
        return record
    updated = replace(record, argv=seen)
    write_pidfile(path, updated)
    return updated


def remove_pidfile(path: Path, *, pid: int | None = None) -> bool:
    """Remove the pidfile; with ``pid``, only while it still names that pid.

    The check keeps a slow ``stop`` from deleting the pidfile of a service another run has
    started in the meantime. Returns True when a file was removed.
    """
    if pid is not None:
        current = read_pidfile(path)
        if isinstance(current, PidRecord) and current.pid != pid:
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # a directory in its place, a read-only MPSCTL_HOME
        raise ServiceError(f"cannot remove the pidfile {path}: {exc.strerror}") from None
    return True


def foreign_pidfile(settings: Settings, snapshot: processes.ServiceSnapshot) -> str | None:
    """Why the live service in the pidfile is another configuration's, or None.

    Two configurations sharing one MPSCTL_HOME share its pidfile: the pidfile records the
    URL its service was started for, and a run for another URL must not stop (or take as
    its own) that service.
    """
    record = snapshot.pidfile
    if snapshot.found_by != "pidfile" or record is None or record.url is None:
        return None
    if record.url.rstrip("/") == settings.service.url.rstrip("/"):
        return None
    return (
        f"the pidfile {snapshot.pidfile_path} names pid {record.pid}, started for "
        f"{record.url}, but this configuration's service.url is {settings.service.url} "
        "(another service shares this MPSCTL_HOME: give each configuration its own "
        "MPSCTL_HOME, or use the configuration that started it)"
    )


def corrupt_path(path: Path) -> Path:
    """Where a corrupt pidfile is moved: kept for a look, out of every later run's way."""
    return path.with_name(path.name + ".corrupt")


def remove_bad_pidfile(path: Path, state: str) -> bool:
    """Remove a stale or reused pidfile; move a corrupt one (not JSON, not UTF-8) aside to
    :func:`corrupt_path`. One we cannot read at all is an error: it may name a live service."""
    if state == "invalid":
        try:
            read_regular(path, PIDFILE_MAX, follow=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            # a link, a FIFO, a device or a huge file is no pidfile: moved aside like a corrupt
            # one (the rename moves the link itself, never its target); a permission error
            # may hide a real one, and a directory may hold someone's files
            not_one = exc.errno in (errno.ELOOP, errno.EMLINK, errno.EINVAL, errno.EFBIG)
            if not not_one or path.is_dir():
                raise ServiceError(
                    f"cannot read the pidfile {path}: {exc.strerror}; it may name a running "
                    "service: check it, then fix its permissions or remove it"
                ) from None
        try:
            path.replace(corrupt_path(path))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ServiceError(
                f"cannot move the corrupt pidfile {path} aside: {exc.strerror}"
            ) from None
        return True
    return remove_pidfile(path)
