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

from mpsctl.deaths.line_prefix import has_time_prefix, prefix_time, uptime_seconds
from mpsctl.deaths.torch_errors import json_doc
from mpsctl.units import to_int

_KB = 1024

# Stamps and syslog/journal fields in front of the kernel's own text. An ISO stamp is followed
# by "host program: " only in syslog files; ``dmesg --time-format iso`` writes the kernel's
# text right after it, so the program part must be the kernel or a "name[pid]".
_PREFIX = re.compile(
    r"^(?:\[[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ [\d:]{8} \d{4}\]\s*"  # dmesg -T
    r"|[A-Z][a-z]{2} +\d+ [\d:]{8}(?:\.\d+)? \S+ \S+?: "  # syslog / journalctl short
    r"|\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-][\d:]+)?\s+(?:\S+ (?:kernel|\S+\[\d+\]): )?"
    r"|[A-Z][a-z]{2} \d{4}-\d\d-\d\d [\d:.]+ \S+ \S+ \S+?: )?"  # journalctl short-full
    r"(?:\[\s*\d+\.\d+\]\s*)?"  # dmesg uptime
)
#: any other prefix that ends in the kernel's name (``journalctl -k``'s "kernel: ", a syslog
#: in another language's month names): the kernel's text starts after it
_KERNEL_TAG = re.compile(r"^.{0,120}?\bkernel(?:\[\d+\])?: (?:\[\s*\d+\.\d+\]\s*)?")
# "Killed process N (comm) total-vm:..." since 2.6.32's "Killed process N, UID N, (comm)";
# a line cut after the pid still names the kill
_KILLED = re.compile(
    r"(?:(?P<memcg>Memory cgroup out of memory)|Out of memory)?(?:: )?"
    r"Killed process (?P<pid>\d+)(?:, UID (?P<uid>\d+),)?"
    r"(?: \((?P<comm>.*?)\)(?P<rest>(?: |,|$).*))?"
)
# figures as printed, digits possibly grouped with commas by whoever pasted them
_FIELD = re.compile(
    r"(total-vm|anon-rss|file-rss|shmem-rss|pgtables):(\d[\d,]*)kB"
    r"|UID:? ?(\d+)|oom_score_adj:(-?\d+)"
)
_SACRIFICE = re.compile(
    r"(?:(Memory cgroup out of memory)|Out of memory): Kill process (\d+) \((.*?)\) "
    r"score (\d+) or sacrifice ?child"
)
_INVOKED = re.compile(r"^(.+?) invoked oom-killer: ")
#: a task's name (comm) holds at most 15 characters (TASK_COMM_LEN), spaces allowed ("CPU 0/KVM")
_COMM_MAX = 15
#: where a longer text before "invoked" came from something around the kernel's line (a JSON
#: field, a quote): the name starts after the last of these
_COMM_START = re.compile(r'.*(?:\]\s*|["\'`>]|: )')
_CPUSET = re.compile(r"^(.+?) cpuset=(\S+) mems_allowed=")
#: "CPU: n PID: p Comm: ..." since 2.6.36; 2.6.32 (RHEL 6) writes "Pid: p, comm: ..."
_CPU_LINE = re.compile(r"^(?:CPU: \d+ (?:UID: \d+ )?PID: (\d+) Comm: |Pid: (\d+), comm: )")
#: a terminal's copy of a wrapped line keeps the padding it drew up to its width: a run this
#: long never occurs inside a kernel line (task-table columns are a few spaces apart)
_TERMINAL_PAD = re.compile(r"(?<=\S) {24,}(?=\S)")
_OOM_KILL = re.compile(r"oom-kill:(constraint=\S*)")
_TASK_IN = re.compile(r"Task in (\S+) killed as a result of limit of (\S+)")
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
        clean = _TERMINAL_PAD.sub("", line) if "   " in line else line
        prefix = _PREFIX.match(clean)
        text = clean[prefix.end() :] if prefix and prefix.end() else clean
        if text is clean:
            tag = _KERNEL_TAG.match(clean) if "kernel" in clean else None
            text = clean[tag.end() :] if tag else clean
        records.append((index, text, line.rstrip()))
        joinable = stamped
        previous_len = len(line)
    return records


def find_kernel_kills(lines: list[str]) -> list[tuple[int, KernelOomKill]]:
    """``(0-based index of the kill's first line, event)`` for every kill in ``lines``."""
    found: list[tuple[int, KernelOomKill]] = []
    pending: _Pending | None = None
    #: the last kill read whole: a later line naming its pid is the same kill seen again
    #: (memory.oom.group prints the victim's "Killed process" twice; a journal may write the
    #: "oom-kill:" summary after it; node-problem-detector quotes the line)
    last: tuple[int, _Pending] | None = None

    def same_kill(index: int, pid: str | None) -> _Pending | None:
        if pending is not None or last is None or pid is None:
            return None
        previous = last[1]
        if previous.values.get("pid") != to_int(pid) or _too_far(previous, index, lines[index]):
            return None
        return previous

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
            current.values["trigger"] = _comm(invoked.group(1))
            current.raw.append(logged)
            continue
        killed = _KILLED.search(text) if "Killed process" in text else None
        if killed:
            again = same_kill(index, killed.group("pid"))
            if again is not None and last is not None:
                _read_killed(again, killed, fill_only=True)
                again.raw.append(logged)
                found[last[0]] = again.build(complete=True)
                continue
            current = open_or_continue(index)
            _read_killed(current, killed)
            current.raw.append(logged)
            last = (len(found), current)
            found.append(current.build(complete=True))
            pending = None
            continue
        if pending is not None and "trigger_pid" not in pending.values:
            cpu = _CPU_LINE.match(text)
            if cpu:
                pending.values["trigger_pid"] = to_int(cpu.group(1) or cpu.group(2))
                continue
        if pending is not None and "cpuset" not in pending.values:
            cpuset = _CPUSET.match(text)
            if cpuset and "trigger" in pending.values:
                pending.values["cpuset"] = cpuset.group(2)
                pending.raw.append(logged)
                continue
        oom_kill = _OOM_KILL.search(text) if "oom-kill:" in text else None
        if oom_kill and last is not None:
            pid = re.search(r",pid=(\d+)", oom_kill.group(1))
            again = same_kill(index, pid.group(1) if pid else None)
            if again is not None:
                before = dict(again.values)
                _read_oom_kill(again, oom_kill.group(1))
                again.values.update(before)  # the kill line's own figures stand
                again.raw.append(logged)
                found[last[0]] = again.build(complete=True)
                continue
        if oom_kill:
            current = open_or_continue(index, clash="constraint")
            _read_oom_kill(current, oom_kill.group(1))
            current.raw.append(logged)
            continue
        task_in = _TASK_IN.search(text) if "killed as a result" in text else None
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
        sacrifice = _SACRIFICE.search(text) if "sacrifice" in text else None
        if sacrifice:
            current = open_or_continue(index, clash="score")
            current.values["score"] = to_int(sacrifice.group(4))
            if sacrifice.group(1):
                current.values["cgroup"] = True
            current.raw.append(logged)
    flush()
    return found


def _comm(before: str) -> str:
    """The allocating task's name from the text before "invoked oom-killer"."""
    if len(before) <= _COMM_MAX:
        return before
    start = _COMM_START.match(before)
    return before[start.end() :] if start else before


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


def _read_killed(current: _Pending, killed: re.Match[str], fill_only: bool = False) -> None:
    """The kill line's fields; ``fill_only``: the same kill seen again adds what was missing."""
    if fill_only:
        extra = _Pending(start=current.start)
        _read_killed(extra, killed)
        for key, value in extra.values.items():
            if current.values.get(key) is None:
                current.values[key] = value
        return
    values = current.values
    values["pid"] = to_int(killed.group("pid"))
    if killed.group("comm") is not None or "process" not in values:
        values["process"] = killed.group("comm")
    if killed.group("uid"):
        values["uid"] = to_int(killed.group("uid"))
    if killed.group("memcg"):
        values["cgroup"] = True
    for match in _FIELD.finditer(killed.group("rest") or ""):
        name, digits, uid, adj = match.groups()
        if name is not None:
            values[name.replace("-", "_") + "_bytes"] = to_int(digits.replace(",", ""), _KB)
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
