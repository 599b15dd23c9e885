"""Process identity and ownership: is pid X still the process that started at T, whose is it.

Every signal mpsctl sends is checked against these first: a pid with another create_time
is a reused pid, and a process of another user, mpsctl itself or one of its ancestors is
never a target. READ-ONLY.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mpsctl.observe import procfs

Clock = Callable[[], float]
LINUX = sys.platform.startswith("linux")

#: psutil derives create_time on Linux from the boot time in /proc/stat, which can move by up
#: to a second between two runs (clock adjustments); a reused pid within one second of the
#: original's start time is not a realistic case, a false "reused" after an NTP step is.
CREATE_TIME_TOLERANCE_S = 1.0

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live, non-zombie process ``pid`` if it is the one started at ``create_time``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if abs(proc.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return None
        return proc
    except (*GONE, psutil.AccessDenied):
        return None


def live_other(pid: int) -> bool:
    """A live, non-zombie process holds ``pid`` (called once the create_time did not match)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (*GONE, psutil.AccessDenied):
        return False


def is_alive(pid: int, create_time: float) -> bool:
    """True while ``pid`` is still the process started at ``create_time`` (zombies are gone)."""
    return same_process(pid, create_time) is not None


def tree_identities(pid: int, create_time: float) -> list[tuple[int, float]]:
    """``(pid, create_time)`` of the process and all its descendants, for signalling.

    Control code signals by pid and checks create_time again right before each signal, so a
    pid reused in between is never hit.
    """
    root = same_process(pid, create_time)
    if root is None:
        return []
    result: list[tuple[int, float]] = []
    for proc in tree([root]):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                result.append((proc.pid, proc.create_time()))
        except (*GONE, psutil.AccessDenied):
            continue
    return result


def descendants(roots: dict[int, float]) -> dict[int, float]:
    """``pid -> create_time`` of every live descendant of the live ``roots`` (the kernel's
    children lists where it has them, else one scan of the process table)."""
    if LINUX:
        listed = _descendants_from_kernel(roots)
        if listed is not None:
            return listed
    children: dict[int, list[tuple[int, float]]] = {}
    for proc in psutil.process_iter(["ppid", "create_time", "status"]):
        info = proc.info
        if info.get("status") == psutil.STATUS_ZOMBIE or info.get("create_time") is None:
            continue
        children.setdefault(info.get("ppid") or 0, []).append((proc.pid, info["create_time"]))
    found: dict[int, float] = {}
    stack = [pid for pid, created in roots.items() if is_alive(pid, created)]
    while stack:
        for pid, created in children.get(stack.pop(), []):
            if pid not in found and pid not in roots:
                found[pid] = created
                stack.append(pid)
    return found


def _descendants_from_kernel(roots: dict[int, float]) -> dict[int, float] | None:
    found: dict[int, float] = {}
    for pid, created in roots.items():
        root = same_process(pid, created)
        if root is None:
            continue
        kids = _kernel_children(root, procfs.children_of)
        if kids is None:
            return None
        for child in kids:
            try:
                if child.pid not in roots and child.status() != psutil.STATUS_ZOMBIE:
                    found[child.pid] = child.create_time()
            except (*GONE, psutil.AccessDenied):
                continue
    return found


def session_members(sid: int, since: float) -> dict[int, float]:
    """``pid -> create_time`` of this user's live processes in session ``sid`` born at or
    after ``since`` (what a service started with ``setsid`` left behind when its first
    process exited: daemonised workers, ``sh -c "... &"`` children). Never mpsctl itself.

    While such a process lives, the kernel does not hand ``sid`` out as a new pid, so the
    session cannot be a stranger's.
    """
    protected = protected_pids()
    found: dict[int, float] = {}
    for proc in psutil.process_iter(["create_time", "status"]):
        info = proc.info
        created = info.get("create_time")
        if proc.pid in protected or info.get("status") == psutil.STATUS_ZOMBIE or created is None:
            continue
        if created < since - CREATE_TIME_TOLERANCE_S:
            continue
        try:
            if os.getsid(proc.pid) != sid:
                continue
        except OSError:
            continue
        if own_user(proc):
            found[proc.pid] = float(created)
    return found


def group_is_mine(pgid: int) -> bool:
    """Every live member of process group ``pgid`` is this user's and none is mpsctl or one
    of its ancestors: only then may the whole group be signalled at once."""
    protected = protected_pids()
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue  # one system call: no process object for the (many) others
        except OSError:
            continue
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except GONE:
            continue
        except psutil.AccessDenied:
            return False  # a member we may not even inspect is not ours
        if pid in protected or not own_user(proc):
            return False
    return True


def living(pid: int) -> psutil.Process | None:
    """``pid``'s process, or None when it is gone, a zombie, or not even its identity can be
    read. A process whose state this user may not read is returned: its owner decides
    (``own_user``). Not for a safety check that must refuse what it cannot inspect."""
    try:
        proc = psutil.Process(pid)
    except (*GONE, psutil.AccessDenied):
        return None  # not even its identity can be read: nobody's to act on
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except GONE:
        return None
    except psutil.AccessDenied:
        pass
    return proc


def protected_pids() -> set[int]:
    """mpsctl itself and its ancestors: never the service, never signalled."""
    pids = {os.getpid()}
    try:
        pids.update(p.pid for p in psutil.Process().parents())
    except (*GONE, psutil.AccessDenied):
        pids.add(os.getppid())
    return pids


def create_time_of(pid: int) -> float | None:
    """The create_time psutil reports for ``pid`` (what the pidfile records); None when gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except (*GONE, psutil.AccessDenied):
        return None


def owned_by_me(pid: int) -> bool:
    """``pid`` runs as the current (real) user: the only processes mpsctl may signal."""
    try:
        return own_user(psutil.Process(pid))
    except (*GONE, psutil.AccessDenied):
        return False


def own_user(proc: psutil.Process) -> bool:
    try:
        return bool(proc.uids().real == os.getuid())
    except (*GONE, psutil.AccessDenied):
        return False


def tree(
    roots: Iterable[psutil.Process],
    children_of: Callable[[int], list[int] | None] = procfs.children_of,
) -> list[psutil.Process]:
    """The roots and all their descendants. Where the kernel lists a process's children
    itself (Linux's ``/proc/PID/task/TID/children``), only the tree is read; elsewhere
    psutil reads the whole process table once per root."""
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        seen.setdefault(root.pid, root)
        found = _kernel_children(root, children_of) if LINUX else None
        if found is None:
            try:
                found = root.children(recursive=True)
            except (*GONE, psutil.AccessDenied):
                continue
        for child in found:
            seen.setdefault(child.pid, child)
    return list(seen.values())


def _kernel_children(
    root: psutil.Process, children_of: Callable[[int], list[int] | None]
) -> list[psutil.Process] | None:
    """``root``'s descendants from the kernel's children lists; None where there are none.
    As in psutil's own ``children()``, a child must have started after its parent (a pid
    reused by an older process is not a child)."""
    found: list[psutil.Process] = []
    seen = {root.pid}
    stack = [root]
    while stack:
        parent = stack.pop()
        pids = children_of(parent.pid)
        if pids is None:
            if parent is root:
                return None
            continue  # ended since it was listed
        for pid in pids:
            try:
                child = psutil.Process(pid)
                if child.create_time() < parent.create_time():
                    continue
            except (*GONE, psutil.AccessDenied):
                continue
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                stack.append(child)
    return found


# --------------------------------------------------------------------------- busy
# Is a service that does not answer its health check working, or hung? Measured without its
# help, over the whole check window.
#
# The rule (``judge_busy``), first that applies:
#
# - **Scheduler time** (Linux, ``/proc/PID/task/TID/schedstat``): the seconds the tree's
#   threads were on a CPU plus the seconds they waited in a run queue for one, over the
#   window's wall seconds. A thread that computes is always one or the other, however loaded
#   the host (a busy loop on a 2-core host with ten busy neighbours: 0.2 s on a CPU and 0.8 s
#   waiting per second, 1.0 in all); a thread blocked on a lock, a socket or a stop signal is
#   neither. Busy when at least ``BUSY_FRACTION`` (half a thread's worth) of the window.
# - **CPU time** (elsewhere, e.g. macOS): the tree's user + system CPU seconds over the window
#   against the share of a core one runnable thread could get: 1.0 with idle cores,
#   ``cores / runnable`` on a loaded host (the 1-minute load average). Busy when at least
#   ``BUSY_FRACTION`` of that share.
# - **Threads**, when neither can be read: busy when at least half of the samples saw a
#   thread running (``R`` in /proc/PID/task/*/stat).
#
# A stopped process (SIGSTOP) is never busy; the watchdog checks that first.

#: the part of the CPU share the host could give it that a working service uses at least
BUSY_FRACTION = 0.5
PROC = Path("/proc")


@dataclass(frozen=True)
class BusySample:
    at: float  # time.monotonic()
    cpu_s: float | None  # the tree's user + system CPU seconds; None when not readable
    threads_running: int  # threads in state R
    threads: int  # threads seen
    runnable: float | None  # threads the host has ready to run (procs_running), or None
    #: thread id -> seconds on a CPU + seconds waiting for one (schedstat); empty: unknown
    sched: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BusyVerdict:
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


def busy_sample(pids: Iterable[int]) -> BusySample:
    pids = tuple(pids)
    states = [s for pid in pids for s in thread_states(pid)]
    running = procs_running()
    sched = {tid: t for pid in pids for tid, t in sched_seconds(pid).items()}
    return BusySample(
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


def judge_busy(samples: list[BusySample], cores: int | None = None) -> BusyVerdict:
    """Busy or not, from the samples of one check window (the rule in the module doc)."""
    if len(samples) < 2:
        return BusyVerdict(False, "no CPU measurement")
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
        return BusyVerdict(wanted >= BUSY_FRACTION, detail)
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
        return BusyVerdict(busy, detail)
    if seen:
        return BusyVerdict(running * 2 >= len(seen), f"CPU time not readable; {threads}")
    return BusyVerdict(False, "neither CPU time nor thread states readable")


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
