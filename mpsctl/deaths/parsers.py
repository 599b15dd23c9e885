"""Memory deaths other processes record: kernel OOM killer, systemd-oomd, jetsam, gunicorn.

Pure parsers over log text (no psutil, no torch). ``find_deaths(text)`` returns every event in
a log excerpt, PyTorch's own memory failures (``torch_errors``) included; one kill written over
many lines (the ``invoked oom-killer`` header, call trace, Mem-Info and task tables, the
``oom-kill:`` summary and the ``Killed process`` line) is one event. Sizes that do not fit in
63 bits become None with the raw text kept; no line makes these functions raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any, ClassVar

from mpsctl.deaths.jetsam import JetsamKill, find_jetsam
from mpsctl.deaths.kernel_oom import KernelOomKill, find_kernel_kills
from mpsctl.deaths.line_prefix import prefix_time, to_int
from mpsctl.observe.logtime import line_time
from mpsctl.deaths.torch_errors import (
    CpuAllocFailure,
    DeviceError,
    NdarrayLimit,
    find_torch_errors,
    json_doc,
)

__all__ = [
    "KINDS",
    "CpuAllocFailure",
    "DeathEvent",
    "DeviceError",
    "JetsamKill",
    "KernelOomKill",
    "NdarrayLimit",
    "OomdKill",
    "WorkerKilled",
    "find_deaths",
    "is_memory_death",
    "parse_death",
    "pids_of",
]

_OOMD_KILL = re.compile(
    r"systemd-oomd(?:\[\d+\])?: (?P<verb>Killed|Marked) (?P<cgroup>/\S+)(?: for killing)? due to "
    r"(?P<trigger>memory pressure|swap used)(?: for (?P<monitored>/\S+))?"
    r"(?: being (?P<pressure>[\d.]+)% > (?P<limit>[\d.]+)%)?(?: for > (?P<duration>\w+))?"
)
_OOMD_ATTEMPT = re.compile(r"systemd-oomd(?:\[\d+\])?: oomd attempting to kill (\d+) with")
_OOMD_UNIT = re.compile(r"(?:systemd\[\d+\]: )?(\S+): systemd-oomd killed (\d+) process\(es\)")
_UNIT_OOM = re.compile(r"(\S+): A process of this unit has been killed by the OOM killer")

# gunicorn's arbiter, when it reaps a worker. "was sent SIGKILL! Perhaps out of memory?" (and
# "terminated due to signal 9") is printed for any SIGKILL, gunicorn's own included: after a
# "WORKER TIMEOUT" gunicorn sends SIGABRT (signal 6, "terminated due to signal 6"), and SIGKILL
# only if the worker still does not exit. Signal 6 is a hung worker, not a memory death, so it
# gives no event; a SIGKILL after a timeout for the same pid is reported with
# ``after_timeout=True`` because then memory is not what the log shows.
_GUNICORN_SIGKILL = re.compile(r"Worker \(pid:(\d+)\) was sent SIGKILL!")
_GUNICORN_SIGNAL = re.compile(r"Worker with pid (\d+) was terminated due to signal (\d+)")
_GUNICORN_TIMEOUT = re.compile(r"WORKER TIMEOUT \(pid:(\d+)\)")

#: cheap substring tests over the whole text before any line is parsed ("Killed" and
#: "Out of memory" also catch a kill line hard-wrapped inside "Killed process")
_NEEDLES = (
    "Killed", "Out of memory", "invoked oom-killer", "oom-kill:", "sacrifice child",
    "killed as a result",
    "memory: usage", "systemd-oomd", "killed by the OOM killer", "memorystatus", "jetsam",
    "exceeded mem limit", "Worker", "WORKER TIMEOUT", "CPUAllocator", "posix_memalign",
    "CUDA error", "cuda runtime error", "NDArray", '"reason"', "cpuset=", "PID:",
)  # fmt: skip


@dataclass(frozen=True)
class OomdKill:
    """A cgroup killed for memory, as systemd saw it.

    ``by="systemd-oomd"``: userspace oomd killed (or marked for killing) ``cgroup`` because of
    memory pressure or swap use. ``by="kernel"``: systemd's note that the kernel's OOM killer
    killed a process in ``unit`` (the kernel log has the details); systemd writes it for the
    unit and each slice above it at once, so adjacent lines form one event listing ``units``.
    """

    kind: ClassVar[str] = "oomd_kill"
    raw: str
    by: str  # "systemd-oomd" | "kernel"
    cgroup: str | None = None
    unit: str | None = None
    units: tuple[str, ...] = ()
    monitored_cgroup: str | None = None
    trigger: str | None = None  # "memory pressure" | "swap used"
    pressure_percent: str | None = None  # as printed, e.g. "51.07"
    limit_percent: str | None = None
    duration: str | None = None  # e.g. "20s"
    pids: tuple[int, ...] = ()  # "oomd attempting to kill N" just before
    processes_killed: int | None = None
    marked: bool = False  # newer wording: "Marked ... for killing"
    line: int | None = None
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


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


DeathEvent = (
    KernelOomKill
    | OomdKill
    | JetsamKill
    | WorkerKilled
    | CpuAllocFailure
    | DeviceError
    | NdarrayLimit
)


#: every ``kind`` this module reports, in the order the kinds are documented
KINDS = (
    KernelOomKill.kind, OomdKill.kind, JetsamKill.kind, WorkerKilled.kind,
    CpuAllocFailure.kind, DeviceError.kind, NdarrayLimit.kind,
)  # fmt: skip


def is_memory_death(event: DeathEvent) -> bool:
    """Whether the event shows memory ran out (to count it as an OOM).

    False only for a gunicorn SIGKILL that followed gunicorn's own WORKER TIMEOUT of that
    worker: a hang, which may or may not have had memory behind it.
    """
    return not (isinstance(event, WorkerKilled) and event.after_timeout)


def pids_of(event: DeathEvent) -> tuple[int, ...]:
    """The pids the event names as killed (to tie it to a service's pidfile); may be empty."""
    if isinstance(event, OomdKill):
        return event.pids
    pid = getattr(event, "pid", None)
    return () if pid is None else (pid,)


def parse_death(text: str) -> DeathEvent | None:
    """The first memory death in ``text`` (one message, a line or a few joined lines), or None."""
    found = find_deaths(text)
    return found[0] if found else None


def find_deaths(
    text: str,
    *,
    now: datetime | None = None,
    boot: datetime | None = None,
    zone: tzinfo | None = None,
) -> list[DeathEvent]:
    """Every memory death in ``text``, in order. Each has ``line`` (1-based) and ``time``.

    ``now``/``boot``/``zone`` date syslog lines (no year) and dmesg uptime stamps: see
    ``logprefix.prefix_time``. Without them such events have ``time=None``.
    """
    lines = text.splitlines()
    found: list[tuple[int, DeathEvent]] = []
    if not any(needle in text for needle in _NEEDLES):
        return []
    found.extend(find_kernel_kills(lines))
    found.extend(_find_oomd(lines))
    found.extend(find_jetsam(text, lines))
    found.extend(_find_gunicorn(lines))
    found.extend(find_torch_errors(lines))
    found.sort(key=lambda item: item[0])
    events: list[DeathEvent] = []
    for index, event in found:
        when = event.time
        if when is None and 0 <= index < len(lines):
            when = prefix_time(lines[index], now=now, boot=boot, zone=zone) or line_time(
                lines[index]
            )
        events.append(replace(event, line=index + 1, time=when))
    return events


def _find_oomd(lines: list[str]) -> list[tuple[int, DeathEvent]]:
    found: list[tuple[int, DeathEvent]] = []
    attempts: list[int] = []
    last_unit_line = -2
    for index, line in enumerate(lines):
        if "systemd-oomd" in line:
            attempt = _OOMD_ATTEMPT.search(line)
            if attempt:
                pid = to_int(attempt.group(1))
                if pid is not None:
                    attempts.append(pid)
                continue
            match = _OOMD_KILL.search(line)
            if match:
                cgroup = match.group("cgroup")
                found.append(
                    (
                        index,
                        OomdKill(
                            raw=line.rstrip(),
                            by="systemd-oomd",
                            cgroup=cgroup,
                            unit=cgroup.rsplit("/", 1)[-1],
                            units=(cgroup.rsplit("/", 1)[-1],),
                            monitored_cgroup=match.group("monitored"),
                            trigger=match.group("trigger"),
                            pressure_percent=match.group("pressure"),
                            limit_percent=match.group("limit"),
                            duration=match.group("duration"),
                            pids=tuple(attempts),
                            marked=match.group("verb") == "Marked",
                        ),
                    )
                )
                attempts = []
                continue
            counted = _OOMD_UNIT.search(line)
            if counted:
                _count_oomd(found, index, line, counted)
        elif "killed by the OOM killer" in line:
            match = _UNIT_OOM.search(line)
            if match is None:
                continue
            previous = found[-1] if found else None
            if (
                previous is not None
                and index == last_unit_line + 1
                and isinstance(previous[1], OomdKill)
                and previous[1].by == "kernel"
            ):
                event = previous[1]
                found[-1] = (
                    previous[0],
                    replace(
                        event, units=(*event.units, match.group(1)), raw=f"{event.raw}\n{line}"
                    ),
                )
            else:
                unit = match.group(1)
                found.append(
                    (index, OomdKill(raw=line.rstrip(), by="kernel", unit=unit, units=(unit,)))
                )
            last_unit_line = index
    return found


def _count_oomd(
    found: list[tuple[int, DeathEvent]], index: int, line: str, counted: re.Match[str]
) -> None:
    """Attach "<unit>: systemd-oomd killed N process(es)" to its kill, or report it alone."""
    unit, count = counted.group(1), to_int(counted.group(2))
    for position in range(len(found) - 1, -1, -1):
        start, event = found[position]
        if isinstance(event, OomdKill) and event.unit == unit and event.processes_killed is None:
            found[position] = (
                start,
                replace(event, processes_killed=count, raw=f"{event.raw}\n{line.rstrip()}"),
            )
            return
    found.append(
        (
            index,
            OomdKill(
                raw=line.rstrip(),
                by="systemd-oomd",
                unit=unit,
                units=(unit,),
                processes_killed=count,
            ),
        )
    )


def _find_gunicorn(lines: list[str]) -> list[tuple[int, DeathEvent]]:
    found: list[tuple[int, DeathEvent]] = []
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
