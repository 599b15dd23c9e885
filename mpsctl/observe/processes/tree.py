"""Process identity and ownership: is pid X still the process that started at T, whose is it.

Every signal mpsctl sends is checked against these first: a pid with another create_time
is a reused pid, and a process of another user, mpsctl itself or one of its ancestors is
never a target. READ-ONLY.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import psutil

Clock = Callable[[], float]

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
    """``pid -> create_time`` of every live descendant of the live ``roots`` (one scan)."""
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


def tree(roots: Iterable[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        seen.setdefault(root.pid, root)
        try:
            for child in root.children(recursive=True):
                seen.setdefault(child.pid, child)
        except (*GONE, psutil.AccessDenied):
            continue
    return list(seen.values())
