"""Is a service that does not answer its health check working, or hung? Measured without its
help, over the whole check window.

The rule (``judge``), first that applies:

- **Scheduler time** (Linux, ``/proc/PID/task/TID/schedstat``): the seconds the tree's
  threads were on a CPU plus the seconds they waited in a run queue for one, over the
  window's wall seconds. A thread that computes is always one or the other, however loaded
  the host (a busy loop on a 2-core host with ten busy neighbours: 0.2 s on a CPU and 0.8 s
  waiting per second, 1.0 in all); a thread blocked on a lock, a socket or a stop signal is
  neither. Busy when at least ``BUSY_FRACTION`` (half a thread's worth) of the window.
- **CPU time** (elsewhere, e.g. macOS): the tree's user + system CPU seconds over the window
  against the share of a core one runnable thread could get: 1.0 with idle cores,
  ``cores / runnable`` on a loaded host (the 1-minute load average). Busy when at least
  ``BUSY_FRACTION`` of that share.
- **Threads**, when neither can be read: busy when at least half of the samples saw a
  thread running (``R`` in /proc/PID/task/*/stat).

A stopped process (SIGSTOP) is never busy; the watchdog checks that first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: the part of the CPU share the host could give it that a working service uses at least
BUSY_FRACTION = 0.5
PROC = Path("/proc")


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu_s: float | None  # the tree's user + system CPU seconds; None when not readable
    threads_running: int  # threads in state R
    threads: int  # threads seen
    runnable: float | None  # threads the host has ready to run (procs_running), or None
    #: thread id -> seconds on a CPU + seconds waiting for one (schedstat); empty: unknown
    sched: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    busy: bool
    detail: str


def _cpu_seconds(pids: Iterable[int]) -> float | None:
    total, read = 0.0, False
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.Error, OSError):
            continue
        total += times.user + times.system
        read = True
    return total if read else None


def thread_states(pid: int, proc: Path = PROC) -> list[str]:
    """The state letter of each thread (``R``, ``S``, ``D``, ``T``...); [] when unknown."""
    states = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        # "tid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ")"
        rest = text.rpartition(")")[2].split()
        if rest:
            states.append(rest[0])
    return states


def sched_seconds(pid: int, proc: Path = PROC) -> dict[int, float]:
    """Thread id -> seconds on a CPU plus seconds waiting in a run queue (schedstat)."""
    found: dict[int, float] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            ran, waited = (task / "schedstat").read_text().split()[:2]
            found[int(task.name)] = (int(ran) + int(waited)) / 1e9
        except (OSError, ValueError):
            continue
    return found


def procs_running(proc: Path = PROC) -> float | None:
    """Threads ready to run on the host now (/proc/stat); the 1-minute load elsewhere."""
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("procs_running "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - every Unix has a load average
        return None


def sample(pids: Iterable[int]) -> Sample:
    pids = tuple(pids)
    states = [s for pid in pids for s in thread_states(pid)]
    running = procs_running()
    sched = {tid: t for pid in pids for tid, t in sched_seconds(pid).items()}
    return Sample(
        time.monotonic(), _cpu_seconds(pids), states.count("R"), len(states), running, sched
    )


def host_share(cores: int, runnable: float | None, own_running: float) -> float:
    """The part of one core a runnable thread can get: ``cores / runnable`` when the host
    has more runnable threads than cores, else 1.0. ``own_running`` (this measurement's own
    thread, counted in procs_running) is taken out."""
    if runnable is None or cores < 1:
        return 1.0
    wanting = runnable - own_running
    if wanting <= cores:
        return 1.0
    return cores / wanting


def judge(samples: list[Sample], cores: int | None = None) -> Verdict:
    """Busy or not, from the samples of one check window (the rule in the module doc)."""
    if len(samples) < 2:
        return Verdict(False, "no CPU measurement")
    first, last = samples[0], samples[-1]
    window = last.at - first.at
    seen = [s for s in samples if s.threads]
    running = sum(1 for s in seen if s.threads_running)
    threads = f"threads running in {running} of {len(seen)} samples"
    if first.sched and last.sched and window > 0:
        # a thread born in the window counts whole; one that ended in it is not counted
        wanted = sum(t - first.sched.get(tid, 0.0) for tid, t in last.sched.items()) / window
        detail = (
            f"wanted CPU {wanted:.2f} of the time over {window:.1f} s (on a CPU or waiting "
            f"for one; busy from {BUSY_FRACTION:.2f}); {threads}"
        )
        return Verdict(wanted >= BUSY_FRACTION, detail)
    if first.cpu_s is not None and last.cpu_s is not None and window > 0:
        used = (last.cpu_s - first.cpu_s) / window
        loads = [s.runnable for s in samples if s.runnable is not None]
        runnable = sum(loads) / len(loads) if loads else None
        share = host_share(cores or os.cpu_count() or 1, runnable, 1.0)
        busy = used >= BUSY_FRACTION * share
        detail = (
            f"CPU {used:.2f} core(s) over {window:.1f} s, {share:.2f} available "
            f"(busy from {BUSY_FRACTION * share:.2f}); {threads}"
        )
        return Verdict(busy, detail)
    if seen:
        return Verdict(running * 2 >= len(seen), f"CPU time not readable; {threads}")
    return Verdict(False, "neither CPU time nor thread states readable")


def open_connections(pids: Iterable[int], port: int | None) -> int | None:
    """Established TCP connections to ``port`` held by ``pids``: the clients a service is
    still talking to (an answer being computed, or a kept-alive idle one); None: unknown."""
    if port is None:
        return None
    count, read = 0, False
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        read = True
        count += sum(
            1 for c in conns
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )  # fmt: skip
    return count if read else None
