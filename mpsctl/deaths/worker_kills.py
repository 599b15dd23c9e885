"""gunicorn's arbiter reaping a worker killed with SIGKILL (what the kernel's OOM killer sends).

A pure parser over log lines. A SIGKILL that follows gunicorn's own WORKER TIMEOUT of the same
worker is a hang first: it is reported with ``after_timeout=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from mpsctl.deaths.torch_errors import json_doc
from mpsctl.units import to_int

# gunicorn's arbiter, when it reaps a worker. "was sent SIGKILL! Perhaps out of memory?" (and
# "terminated due to signal 9") is printed for any SIGKILL, gunicorn's own included: after a
# "WORKER TIMEOUT" gunicorn sends SIGABRT (signal 6, "terminated due to signal 6"), and SIGKILL
# only if the worker still does not exit. Signal 6 is a hung worker, not a memory death, so it
# gives no event; a SIGKILL after a timeout for the same pid is reported with
# ``after_timeout=True`` because then memory is not what the log shows.
_GUNICORN_SIGKILL = re.compile(r"Worker \(pid:(\d+)\) was sent SIGKILL!")
_GUNICORN_SIGNAL = re.compile(r"Worker with pid (\d+) was terminated due to signal (\d+)")
_GUNICORN_TIMEOUT = re.compile(r"WORKER TIMEOUT \(pid:(\d+)\)")


@dataclass(frozen=True)
class WorkerKilled:
    """gunicorn reaped a worker that died of SIGKILL (the kernel's OOM killer sends SIGKILL)."""

    kind: ClassVar[str] = "worker_killed"
    raw: str
    pid: int | None
    signal: int = 9
    #: gunicorn itself timed this worker out first: its SIGKILL follows a hang, memory unproven
    after_timeout: bool = False
    line: int | None = None
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


def find_worker_kills(lines: list[str]) -> list[tuple[int, WorkerKilled]]:
    found: list[tuple[int, WorkerKilled]] = []
    timed_out: set[str] = set()
    for index, line in enumerate(lines):
        if "Worker" not in line and "WORKER" not in line:
            continue
        timeout = _GUNICORN_TIMEOUT.search(line)
        if timeout:
            timed_out.add(timeout.group(1))
            continue
        killed = _GUNICORN_SIGKILL.search(line)
        pid_text: str | None = None
        if killed:
            pid_text = killed.group(1)
        else:
            signalled = _GUNICORN_SIGNAL.search(line)
            # signal 6 is gunicorn's own SIGABRT after WORKER TIMEOUT, 15 a normal stop
            if signalled and signalled.group(2) == "9":
                pid_text = signalled.group(1)
        if pid_text is None:
            continue
        found.append(
            (
                index,
                WorkerKilled(
                    raw=line.rstrip(), pid=to_int(pid_text), after_timeout=pid_text in timed_out
                ),
            )
        )
    return found
