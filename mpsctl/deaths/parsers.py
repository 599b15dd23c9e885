"""Every memory-death parser over one log excerpt, and the type of what they find.

One module per source: the kernel's OOM killer (``kernel_oom``), systemd-oomd
(``systemd_oomd``), macOS jetsam (``jetsam``), gunicorn worker kills (``worker_kills``) and
PyTorch's own memory failures (``torch_errors``). Pure parsers over log text (no psutil, no torch).
``find_deaths(text)`` returns every event in a log excerpt; one kill written over many lines
(the ``invoked oom-killer`` header, call trace, Mem-Info and task tables, the ``oom-kill:``
summary and the ``Killed process`` line) is one event. Sizes that do not fit in 63 bits
become None with the raw text kept; no line makes these functions raise.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, tzinfo

from mpsctl.deaths.jetsam import JetsamKill, find_jetsam
from mpsctl.deaths.kernel_oom import KernelOomKill, find_kernel_kills
from mpsctl.deaths.line_prefix import prefix_time
from mpsctl.deaths.systemd_oomd import OomdKill, find_oomd
from mpsctl.deaths.torch_errors import (
    CpuAllocFailure,
    DeviceError,
    MpsSizeLimit,
    NdarrayLimit,
    find_torch_errors,
)
from mpsctl.deaths.worker_kills import WorkerKilled, find_worker_kills
from mpsctl.observe.logtime import line_time

__all__ = [
    "KINDS",
    "CpuAllocFailure",
    "DeathEvent",
    "DeviceError",
    "JetsamKill",
    "KernelOomKill",
    "MpsSizeLimit",
    "NdarrayLimit",
    "OomdKill",
    "WorkerKilled",
    "find_deaths",
    "is_memory_death",
    "parse_death",
    "pids_of",
]

#: cheap substring tests over the whole text before any line is parsed ("Killed" and
#: "Out of memory" also catch a kill line hard-wrapped inside "Killed process")
_NEEDLES = (
    "Killed", "Out of memory", "invoked oom-killer", "oom-kill:", "sacrifice child",
    "killed as a result",
    "memory: usage", "systemd-oomd", "killed by the OOM killer", "memorystatus", "jetsam",
    "exceeded mem limit", "Worker", "WORKER TIMEOUT", "CPUAllocator", "posix_memalign",
    "CUDA error", "cuda runtime error", "NDArray", '"reason"', "cpuset=", "PID:",
    "Invalid buffer size", "Output size of the matrix", "killing_", "for killing",
)  # fmt: skip


DeathEvent = (
    KernelOomKill
    | OomdKill
    | JetsamKill
    | WorkerKilled
    | CpuAllocFailure
    | DeviceError
    | NdarrayLimit
    | MpsSizeLimit
)


#: every ``kind`` this module reports, in the order the kinds are documented
KINDS = (
    KernelOomKill.kind, OomdKill.kind, JetsamKill.kind, WorkerKilled.kind,
    CpuAllocFailure.kind, DeviceError.kind, NdarrayLimit.kind, MpsSizeLimit.kind,
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
    ``line_prefix.prefix_time``. Without them such events have ``time=None``.
    """
    lines = text.splitlines()
    found: list[tuple[int, DeathEvent]] = []
    if not any(needle in text for needle in _NEEDLES):
        return []
    found.extend(find_kernel_kills(lines))
    found.extend(find_oomd(lines))
    found.extend(find_jetsam(text, lines))
    found.extend(find_worker_kills(lines))
    found.extend(find_torch_errors(lines))
    found.sort(key=lambda item: item[0])
    found = _fold_unit_notes(found)
    events: list[DeathEvent] = []
    for index, event in found:
        when = event.time
        if when is None and 0 <= index < len(lines):
            when = prefix_time(lines[index], now=now, boot=boot, zone=zone) or line_time(
                lines[index]
            )
        events.append(replace(event, line=index + 1, time=when))
    return events


#: systemd writes "A process of this unit has been killed by the OOM killer" next to the
#: kernel's report of that kill (before or after it, by journal order): within this many lines
#: it is where the kill was seen, not another kill
UNIT_NOTE_LINES = 400


def _fold_unit_notes(found: list[tuple[int, DeathEvent]]) -> list[tuple[int, DeathEvent]]:
    """systemd's notes of a kernel kill, folded into the kernel's report of it (raw kept)."""
    kills = [i for i, (_, e) in enumerate(found) if isinstance(e, KernelOomKill)]
    if not kills:
        return found
    notes: dict[int, list[str]] = {}
    dropped: set[int] = set()
    for position, (index, event) in enumerate(found):
        if not (isinstance(event, OomdKill) and event.by == "kernel"):
            continue
        nearest = min(kills, key=lambda k: abs(found[k][0] - index))
        if abs(found[nearest][0] - index) <= UNIT_NOTE_LINES:
            notes.setdefault(nearest, []).append(event.raw)
            dropped.add(position)
    result = []
    for position, (index, event) in enumerate(found):
        if position in dropped:
            continue
        noted = event
        if position in notes:
            noted = replace(event, raw="\n".join([event.raw, *notes[position]]))
        result.append((index, noted))
    return result
