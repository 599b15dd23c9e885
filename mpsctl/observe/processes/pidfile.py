"""The pidfile's read side: what ``start`` recorded about the service it launched.

The write side is ``mpsctl.control.pidfile``; reading stays here so that ``status`` and
``probe`` find the service without importing anything that changes the machine. READ-ONLY.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mpsctl.settings import Settings
from mpsctl.storage import read_regular

PIDFILE_NAME = "service.pid"
#: a pidfile is a few hundred bytes; past this it is not one
PIDFILE_MAX = 64 * 1024


@dataclass(frozen=True)
class PidRecord:
    """What ``start`` wrote to the pidfile (written by ``mpsctl.control.pidfile``)."""

    pid: int
    create_time: float
    argv: tuple[str, ...] = ()
    url: str | None = None
    started_at: str | None = None
    version: str | None = None
    pgid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "create_time": self.create_time,
            "argv": list(self.argv),
            "url": self.url,
            "started_at": self.started_at,
            "mpsctl_version": self.version,
            "pgid": self.pgid,
        }

    @classmethod
    def from_json(cls, data: Any) -> PidRecord:
        """Parse a pidfile document; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        pid, created = data.get("pid"), data.get("create_time")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError("no valid pid")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise ValueError("no valid create_time")
        try:
            created = float(created)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError("no valid create_time") from None
        if not math.isfinite(created):  # NaN would compare unequal to no start time
            raise ValueError("no valid create_time")
        argv = data.get("argv") or ()
        pgid = data.get("pgid")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        return cls(
            pid=pid,
            create_time=float(created),
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            url=text("url"),
            started_at=text("started_at"),
            version=text("mpsctl_version"),
            pgid=pgid if isinstance(pgid, int) and not isinstance(pgid, bool) else None,
        )


def default_pidfile_path(settings: Settings) -> Path:
    return settings.home / PIDFILE_NAME


def read_pidfile(path: Path) -> PidRecord | Literal["invalid"] | None:
    """The record, ``None`` when there is no file, ``"invalid"`` when it cannot be parsed."""
    try:
        # never a FIFO (status, stop and probe would hang) nor a device or a huge file
        text = read_regular(path, PIDFILE_MAX, follow=False).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):  # unreadable, or bytes that are not text at all
        return "invalid"
    try:
        return PidRecord.from_json(json.loads(text))
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; RecursionError:
        return "invalid"  # arrays nested thousands deep
