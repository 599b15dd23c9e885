"""The only psutil process code: find the service and snapshot its process tree. READ-ONLY.

A process that vanishes (``NoSuchProcess``), is a zombie (``ZombieProcess``) or belongs to
someone we may not inspect (``AccessDenied``) is an expected outcome: its field is ``None`` or
the process is skipped, never a crash (the nvitop rule).

How the service is found, in order:

1. the pidfile ``start`` wrote: the pid *and* its create_time must match, otherwise the pid
   was reused by an unrelated process (``pidfile_state == "reused"``) and that process is not
   the service;
   A live pid whose command line is not the one recorded (a pidfile written by hand, or a
   pid reused by a process started in the same second) is "reused" too, and PID 1 and
   mpsctl's own ancestors are never the service;
2. otherwise ``service.match``, a regex over command lines, limited to the current user's
   processes and never mpsctl itself or its ancestors (``mpsctl stop`` run from a shell whose
   command line mentions the pattern must not find its own shell). A relative program path
   (``venv/bin/uvicorn``) is also tried made absolute against the process's cwd. A match is
   the service only if it (or a descendant) listens on the service's port, or it listens on
   no port and is younger than ``start_timeout`` (still loading): a staging copy of the same
   app on another port matches the pattern too, and is listed as ``others``, never used.

When the pidfile names a live service the pattern is not used at all, so a process whose
command line merely mentions the pattern (``grep uvicorn``, an editor) is never taken for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from mpsctl.observe.processes.facts import (
    Clock,
    FoundBy,
    PidfileState,
    ProcInfo,
    ServiceSnapshot,
    cpu_seconds,
    phys_footprint,
    proc_info,
    processes_info,
    snapshot_tree,
    start_cpu_window,
    with_cpu_percent,
    with_cpu_since_snapshot,
)
from mpsctl.observe.processes.matching import (
    compile_match,
    is_the_service,
    listening_ports,
    matching,
    roots_of,
)
from mpsctl.observe.processes.pidfile import (
    PIDFILE_NAME,
    PidRecord,
    default_pidfile_path,
    read_pidfile,
)
from mpsctl.observe.processes.tree import (
    CREATE_TIME_TOLERANCE_S,
    GONE,
    create_time_of,
    descendants,
    group_is_mine,
    is_alive,
    live_other,
    own_user,
    owned_by_me,
    protected_pids,
    same_process,
    session_members,
    tree,
    tree_identities,
)
from mpsctl.observe.procfs import argv_matches
from mpsctl.settings import Settings
from mpsctl.settings_services import SERVICES_DIR

__all__ = [
    "CREATE_TIME_TOLERANCE_S",
    "GONE",
    "PIDFILE_NAME",
    "Clock",
    "FoundBy",
    "PidRecord",
    "PidfileState",
    "ProcInfo",
    "ServiceSnapshot",
    "argv_matches",
    "compile_match",
    "cpu_seconds",
    "create_time_of",
    "default_pidfile_path",
    "descendants",
    "find_service",
    "group_is_mine",
    "is_alive",
    "is_the_service",
    "listening_ports",
    "live_other",
    "matching",
    "own_user",
    "owned_by_me",
    "phys_footprint",
    "port_holder",
    "proc_info",
    "processes_info",
    "protected_pids",
    "read_pidfile",
    "roots_of",
    "same_process",
    "session_members",
    "snapshot_tree",
    "start_cpu_window",
    "tree",
    "tree_identities",
    "with_cpu_percent",
    "with_cpu_since_snapshot",
]


def find_service(
    settings: Settings,
    *,
    pidfile_path: Path | None = None,
    pattern: str | None = None,
    clock: Clock = time.time,
    cpu_interval: float = 0.0,
    cpu_window: bool = False,
) -> ServiceSnapshot:
    """Where the service is, and its whole process tree. Reads only.

    ``cpu_window``: also read the tree's CPU seconds now, so that a later
    :func:`with_cpu_since_snapshot` gives each process's CPU% over the time between.
    """
    found = _find(settings, pidfile_path, pattern, clock, cpu_interval)
    return start_cpu_window(found) if cpu_window else found


def _find(
    settings: Settings,
    pidfile_path: Path | None,
    pattern: str | None,
    clock: Clock,
    cpu_interval: float,
) -> ServiceSnapshot:
    path = pidfile_path if pidfile_path is not None else default_pidfile_path(settings)
    record = read_pidfile(path)
    state: PidfileState
    if record is None:
        state = "missing"
    elif record == "invalid":
        state = "invalid"
    else:
        root = same_process(record.pid, record.create_time)
        if root is not None and not _impostor(root, record):
            procs = snapshot_tree([root], clock=clock, cpu_interval=cpu_interval)
            return ServiceSnapshot("pidfile", "ok", record, (root.pid,), procs, path)
        state = "reused" if root is not None or live_other(record.pid) else "stale"
    pidrecord = record if isinstance(record, PidRecord) else None

    regex = pattern if pattern is not None else settings.service.match
    others: tuple[ProcInfo, ...] = ()
    if regex:
        matches = matching(regex)
        if matches:
            roots: list[psutil.Process] = []
            strangers: list[psutil.Process] = []
            siblings = sibling_pids(settings)
            for root in roots_of(matches):
                # a sibling service loading (no port yet) matches a shared pattern too
                ours = root.pid not in siblings and is_the_service(root, settings, pidrecord)
                (roots if ours else strangers).append(root)
            others = snapshot_tree(strangers, clock=clock, cpu_interval=0.0)
            procs = snapshot_tree(roots, clock=clock, cpu_interval=cpu_interval)
            root_pids = tuple(p.pid for p in roots if any(i.pid == p.pid for i in procs))
            if root_pids:
                return ServiceSnapshot("match", state, pidrecord, root_pids, procs, path, others)
    return ServiceSnapshot(None, state, pidrecord, (), (), path, others)


def sibling_pids(settings: Settings) -> set[int]:
    """The live processes the host's other services recorded in their pidfiles (several
    services only): never this service's, whatever its ``match`` says."""
    if settings.home == settings.host_dir:
        return set()
    try:
        dirs = [d for d in (settings.host_dir / SERVICES_DIR).iterdir() if d != settings.home]
    except OSError:
        return set()
    pids = set()
    for directory in dirs:
        record = read_pidfile(directory / PIDFILE_NAME)
        if (
            isinstance(record, PidRecord)
            and same_process(record.pid, record.create_time) is not None
        ):
            pids.add(record.pid)
    return pids


def _impostor(root: psutil.Process, record: PidRecord) -> bool:
    """PID 1, mpsctl's own ancestors, or a process whose command line is not the recorded
    one: never the service, whatever the pidfile says."""
    if root.pid == 1 or root.pid in protected_pids():
        return True
    try:
        cmdline = tuple(root.cmdline())
    except (*GONE, psutil.AccessDenied):
        return False
    return not argv_matches(record.argv, cmdline)


# --------------------------------------------------------------------------- ports
def port_holder(host: str, port: int, *, clock: Clock = time.time) -> ProcInfo | int | None:
    """Who listens on ``port``: a ProcInfo when we may see it, a bare pid, or None.

    ``psutil.net_connections`` needs root on macOS; then only our own processes are looked at,
    which is still the common case (the service started by hand by this user).
    """
    wanted = {host, "0.0.0.0", "::", ""}
    if host == "localhost":
        wanted |= {"127.0.0.1", "::1"}

    def listening(conns: Iterable[Any]) -> Any:
        for conn in conns:
            if conn.status != psutil.CONN_LISTEN or not conn.laddr:
                continue
            if conn.laddr.port == port and (conn.laddr.ip in wanted or host in ("0.0.0.0", "::")):
                return conn
        return None

    try:
        conn = listening(psutil.net_connections(kind="inet"))
        if conn is not None and conn.pid:
            try:
                return proc_info(psutil.Process(conn.pid), clock=clock) or int(conn.pid)
            except (*GONE, psutil.AccessDenied):
                return int(conn.pid)
        if conn is not None:
            return None
    except psutil.AccessDenied:
        pass
    for proc in psutil.process_iter():
        if not own_user(proc):
            continue
        try:
            if listening(proc.net_connections(kind="inet")) is not None:
                return proc_info(proc, clock=clock) or proc.pid
        except (*GONE, psutil.AccessDenied):
            continue
    return None
