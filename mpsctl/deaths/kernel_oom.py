"""The Linux kernel OOM killer's report of one kill, in every format since 3.x.

A kill is written over many lines, in this order, each part optional in a given log:

* ``<comm> invoked oom-killer: gfp_mask=..., order=0, oom_score_adj=0`` (the allocating task),
  then ``<comm> cpuset=<cg> mems_allowed=0`` (kernels < 4.19), ``CPU: n PID: p Comm: ...``, the
  call trace, Mem-Info, and for cgroup v1 ``Task in <cg> killed as a result of limit of <cg>``
  with ``memory: usage NkB, limit NkB, failcnt N``; the task table;
* ``oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=...,cpuset=...,mems_allowed=...,
  oom_memcg=...,task_memcg=...,task=<comm>,pid=N,uid=N`` (kernels >= 4.19);
* legacy: ``[Memory cgroup ]Out of memory: Kill process N (comm) score N or sacrifice child``;
* ``[Memory cgroup ]Out of memory: Killed process N (comm) total-vm:NkB, anon-rss:NkB,
  file-rss:NkB, shmem-rss:NkB, UID:N pgtables:NkB oom_score_adj:N`` -- the kill itself (older
  kernels: a bare ``Killed process`` line, no shmem-rss).

All of it is one ``KernelOomKill``. A report cut before its ``Killed process`` line still says
the killer ran: it is an event with ``complete=False`` and the fields seen so far.
``oom_reaper: reaped process N (comm), now anon-rss:0kB`` is the aftermath, not another kill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from mpsctl.deaths.line_prefix import has_time_prefix, prefix_time, to_int, uptime_seconds
from mpsctl.deaths.torch_errors import json_doc

_KB = 1024

# Stamps and syslog/journal fields in front of the kernel's own text.
_PREFIX = re.compile(
    r"^(?:\[[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ [\d:]{8} \d{4}\]\s*"  # dmesg -T
    r"|[A-Z][a-z]{2} +\d+ [\d:]{8}(?:\.\d+)? \S+ \S+?: "  # syslog / journalctl short
    r"|\d{4}-\d\d-\d\d[T ]\S+ \S+ \S+?: "  # rsyslog ISO / journalctl short-iso
    r"|[A-Z][a-z]{2} \d{4}-\d\d-\d\d [\d:.]+ \S+ \S+ \S+?: )?"  # journalctl short-full
    r"(?:\[\s*\d+\.\d+\]\s*)?"  # dmesg uptime
)
_KILLED = re.compile(
    r"(?:(?P<memcg>Memory cgroup out of memory)|Out of memory)?(?:: )?"
    r"Killed process (?P<pid>\d+) \((?P<comm>.*?)\)(?P<rest>(?: |,|$).*)"
)
_FIELD = re.compile(
    r"(total-vm|anon-rss|file-rss|shmem-rss|pgtables):(\d+)kB|UID:(\d+)|oom_score_adj:(-?\d+)"
)
_SACRIFICE = re.compile(
    r"(?:(Memory cgroup out of memory)|Out of memory): Kill process (\d+) \((.*?)\) "
    r"score (\d+) or sacrifice child"
)
_INVOKED = re.compile(r"^(.+?) invoked oom-killer: ")
_CPUSET = re.compile(r"^(.+?) cpuset=(\S+) mems_allowed=")
_CPU_LINE = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (\d+) Comm: ")
_OOM_KILL = re.compile(r"oom-kill:(constraint=\S*)")
_TASK_IN = re.compile(r"^Task in (\S+) killed as a result of limit of (\S+)")
_MEMCG_USAGE = re.compile(r"^memory: usage (\d+)kB, limit (\d+)kB")
#: a hard-wrapped continuation joins its line only when that line was at least this long
_WRAP_MIN = 64
#: one kill's lines are printed together: a part further than this from the kill's first
#: line (in lines, or in seconds between stamps) belongs to another kill, and a header whose
#: ``Killed process`` line never came is reported alone instead of taking a later kill's
KILL_MAX_LINES = 2000
KILL_MAX_SECONDS = 60.0
#: a fixed "now" to turn yearless syslog stamps into comparable times (only differences count)
_REFERENCE = datetime(2001, 7, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class KernelOomKill:
    """One kill by the kernel OOM killer. Sizes are bytes (the kernel prints kB = 1024 bytes)."""

    kind: ClassVar[str] = "kernel_oom_kill"
    raw: str  # the lines that carried these fields, joined by newlines
    pid: int | None = None  # the process killed
    process: str | None = None
    total_vm_bytes: int | None = None
    anon_rss_bytes: int | None = None
    file_rss_bytes: int | None = None
    shmem_rss_bytes: int | None = None
    pgtables_bytes: int | None = None
    uid: int | None = None
    oom_score_adj: int | None = None
    score: int | None = None  # legacy "score N or sacrifice child"
    constraint: str | None = None  # as printed, e.g. "CONSTRAINT_MEMCG", "CONSTRAINT_NONE"
    #: the kill was confined to a memory cgroup (its limit, not the machine's RAM, ran out)
    cgroup: bool = False
    memcg: str | None = None  # the cgroup whose limit was hit (oom_memcg / "limit of")
    task_memcg: str | None = None  # the victim's own cgroup
    cpuset: str | None = None
    memcg_limit_bytes: int | None = None  # cgroup v1 "memory: usage NkB, limit NkB"
    memcg_usage_bytes: int | None = None
    trigger: str | None = None  # the task whose allocation invoked the killer
    trigger_pid: int | None = None
    complete: bool = True  # False: the "Killed process" line was not in the text
    line: int | None = None
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


@dataclass
class _Pending:
    start: int
    stamp: float | None = None
    raw: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def build(self, complete: bool) -> tuple[int, KernelOomKill]:
        return self.start, KernelOomKill(raw="\n".join(self.raw), complete=complete, **self.values)


def _records(lines: list[str]) -> list[tuple[int, str, str]]:
    """``(index, kernel text, lines as logged)``, a hard-wrapped kernel line rejoined.

    Logs pasted or captured at a fixed width break ``Killed process`` mid-word onto lines with
    no stamp: such a line continues the previous stamped one when that one filled a width.
    """
    records: list[tuple[int, str, str]] = []
    previous_len = 0
    joinable = False
    for index, line in enumerate(lines):
        stamped = has_time_prefix(line)
        if not stamped and joinable and previous_len >= _WRAP_MIN and line.strip():
            start, text, logged = records[-1]
            records[-1] = (start, text + line, f"{logged}\n{line.rstrip()}")
            previous_len = len(line)
            continue
        prefix = _PREFIX.match(line)
        records.append((index, line[prefix.end() :] if prefix else line, line.rstrip()))
        joinable = stamped
        previous_len = len(line)
    return records


def find_kernel_kills(lines: list[str]) -> list[tuple[int, KernelOomKill]]:
    """``(0-based index of the kill's first line, event)`` for every kill in ``lines``."""
    found: list[tuple[int, KernelOomKill]] = []
    pending: _Pending | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            found.append(pending.build(complete=False))
            pending = None

    def open_or_continue(index: int, clash: str | None = None) -> _Pending:
        """The kill being read; a part it already holds means a new kill has started."""
        nonlocal pending
        if pending is not None and clash is not None and clash in pending.values:
            flush()
        if pending is None:
            pending = _Pending(start=index, stamp=_stamp(lines[index]))
        return pending

    for index, text, logged in _records(lines):
        if pending is not None and _too_far(pending, index, lines[index]):
            flush()
        invoked = _INVOKED.match(text) if "invoked oom-killer" in text else None
        if invoked:
            flush()
            current = open_or_continue(index)
            current.values["trigger"] = invoked.group(1)
            current.raw.append(logged)
            continue
        killed = _KILLED.search(text) if "Killed process" in text else None
        if killed:
            current = open_or_continue(index)
            _read_killed(current, killed)
            current.raw.append(logged)
            found.append(current.build(complete=True))
            pending = None
            continue
        if pending is not None and "trigger_pid" not in pending.values:
            cpu = _CPU_LINE.match(text)
            if cpu:
                pending.values["trigger_pid"] = to_int(cpu.group(1))
                continue
        if pending is not None and "cpuset" not in pending.values:
            cpuset = _CPUSET.match(text)
            if cpuset and "trigger" in pending.values:
                pending.values["cpuset"] = cpuset.group(2)
                pending.raw.append(logged)
                continue
        oom_kill = _OOM_KILL.search(text) if "oom-kill:" in text else None
        if oom_kill:
            current = open_or_continue(index, clash="constraint")
            _read_oom_kill(current, oom_kill.group(1))
            current.raw.append(logged)
            continue
        task_in = _TASK_IN.match(text)
        if task_in:
            current = open_or_continue(index, clash="task_memcg")
            current.values.update(task_memcg=task_in.group(1), memcg=task_in.group(2), cgroup=True)
            current.raw.append(logged)
            continue
        usage = _MEMCG_USAGE.match(text)
        if usage and pending is not None and "memcg_limit_bytes" not in pending.values:
            pending.values["memcg_usage_bytes"] = to_int(usage.group(1), _KB)
            pending.values["memcg_limit_bytes"] = to_int(usage.group(2), _KB)
            pending.raw.append(logged)
            continue
        sacrifice = _SACRIFICE.search(text) if "sacrifice child" in text else None
        if sacrifice:
            current = open_or_continue(index, clash="score")
            current.values["score"] = to_int(sacrifice.group(4))
            if sacrifice.group(1):
                current.values["cgroup"] = True
            current.raw.append(logged)
    flush()
    return found


def _stamp(line: str) -> float | None:
    """The line's time as comparable seconds (dmesg uptime or any wall-clock prefix), or None."""
    uptime = uptime_seconds(line)
    if uptime is not None:
        return uptime
    moment = prefix_time(line, now=_REFERENCE, zone=timezone.utc)
    return None if moment is None else moment.timestamp()


def _too_far(pending: _Pending, index: int, line: str) -> bool:
    if index - pending.start > KILL_MAX_LINES:
        return True
    if pending.stamp is None:
        return False
    stamp = _stamp(line)
    return stamp is not None and abs(stamp - pending.stamp) > KILL_MAX_SECONDS


def _read_killed(current: _Pending, killed: re.Match[str]) -> None:
    values = current.values
    values["pid"] = to_int(killed.group("pid"))
    values["process"] = killed.group("comm")
    if killed.group("memcg"):
        values["cgroup"] = True
    for match in _FIELD.finditer(killed.group("rest")):
        name, digits, uid, adj = match.groups()
        if name is not None:
            values[name.replace("-", "_") + "_bytes"] = to_int(digits, _KB)
        elif uid is not None:
            values["uid"] = to_int(uid)
        else:
            values["oom_score_adj"] = _signed(adj)


def _read_oom_kill(current: _Pending, text: str) -> None:
    """``constraint=...,nodemask=...,oom_memcg=...,task=...,pid=...,uid=...``."""
    parts = dict(part.partition("=")[::2] for part in text.split(","))
    values = current.values
    values["constraint"] = parts.get("constraint")
    if parts.get("constraint") == "CONSTRAINT_MEMCG":
        values["cgroup"] = True
    renames = {
        "oom_memcg": "memcg",
        "task_memcg": "task_memcg",
        "cpuset": "cpuset",
        "task": "process",
    }
    for key, name in renames.items():
        if parts.get(key):
            values[name] = parts[key]
    for key in ("pid", "uid"):
        if key in parts:
            values[key] = to_int(parts[key])


def _signed(text: str) -> int | None:
    if text.startswith("-"):
        value = to_int(text[1:])
        return None if value is None else -value
    return to_int(text)
