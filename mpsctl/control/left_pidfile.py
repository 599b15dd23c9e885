"""The pidfile a one-service configuration left in MPSCTL_HOME, after the file turned into
``[services.NAME]`` tables while that service still ran.

One service keeps its pidfile in ``MPSCTL_HOME/service.pid``; each of several keeps its own in
``MPSCTL_HOME/services/NAME/``. An operator who converts the file without stopping the
service first leaves it running with nothing that manages it: ``stop NAME`` says "not
running", ``start NAME`` finds the port taken. The service whose URL is the one the old
pidfile recorded takes that pidfile over (pid and start time still checked as always).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from mpsctl.observe.processes.pidfile import PIDFILE_NAME, PidRecord, read_pidfile
from mpsctl.observe.processes.tree import is_alive
from mpsctl.settings import Settings


@dataclass(frozen=True)
class LeftPidfile:
    """A live service from a one-service configuration, and who can take it over."""

    record: PidRecord
    owner: str | None  # the service at the recorded URL, if one is configured

    def notice(self, host: Settings) -> str:
        where = host.host_dir / PIDFILE_NAME
        if self.owner is None:
            return (
                f"{where} names pid {self.record.pid} (running, {self.record.url or 'no url'}), "
                "started when one service was configured; no [services.NAME] has its url: "
                f"stop it by hand (kill {self.record.pid}) or give a service that url"
            )
        return (
            f"{where} names pid {self.record.pid} (running), started when one service was "
            f"configured: it is service {self.owner}'s; `mpsctl stop {self.owner}` (or start, "
            f"restart, fix) moves the pidfile to {host.host_dir / 'services' / self.owner}"
        )


def _address(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    host = (parts.hostname or "").rstrip(".")
    return ("127.0.0.1" if host in ("localhost", "::1") else host, port)


def find_left_pidfile(host: Settings) -> LeftPidfile | None:
    """The live service a one-service pidfile in MPSCTL_HOME names, with several services
    configured; None when there is none (or one service: that pidfile is its own)."""
    if not host.members:
        return None
    record = read_pidfile(host.host_dir / PIDFILE_NAME)
    if not isinstance(record, PidRecord) or not is_alive(record.pid, record.create_time):
        return None
    owner = None
    if record.url is not None:
        owners = [m for m in host.members if _address(m.service.url) == _address(record.url)]
        owner = owners[0].service.name if len(owners) == 1 else None
    return LeftPidfile(record, owner)


def adopt_left_pidfile(host: Settings, name: str) -> str | None:
    """Move the one-service pidfile into service ``name``'s state directory when that
    service is its owner and has no pidfile of its own; the line to show, or None."""
    left = find_left_pidfile(host)
    if left is None or left.owner != name:
        return None
    member = next(m for m in host.members if m.service.name == name)
    target = member.home / PIDFILE_NAME
    if target.exists():
        return None
    source = host.host_dir / PIDFILE_NAME
    member.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError, FileExistsError):  # another run was first
        # a hard link refuses to replace a pidfile another run just wrote; then the old
        # name goes: the record is never lost, never duplicated for long
        os.link(source, target)
        source.unlink()
        return (
            f"{name}: took over pid {left.record.pid} from {source}, the pidfile of "
            "the one-service configuration"
        )
    return None
