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

import ctypes
import ctypes.util
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import psutil

from mpsctl.observe.processes.match import argv_matches, is_the_service, matching, roots_of
from mpsctl.observe.processes.tree import (
    GONE,
    live_other,
    own_user,
    protected_pids,
    same_process,
    tree,
)
from mpsctl.settings import Settings
from mpsctl.torch_env import pytorch_vars

Clock = Callable[[], float]
FoundBy = Literal["pidfile", "match"]
PidfileState = Literal["ok", "missing", "stale", "reused", "invalid"]

PIDFILE_NAME = "service.pid"


# --------------------------------------------------------------------------- pidfile (read side)
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):  # unreadable, or bytes that are not text at all
        return "invalid"
    try:
        return PidRecord.from_json(json.loads(text))
    except ValueError:  # json.JSONDecodeError is a ValueError
        return "invalid"


# --------------------------------------------------------------------------- process facts
@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int | None
    cmdline: tuple[str, ...]
    username: str | None
    rss_bytes: int | None
    #: macOS phys_footprint (what Activity Monitor shows; includes Metal memory). None elsewhere.
    footprint_bytes: int | None
    #: None unless a sampling interval was asked for: a first psutil sample is always 0.0
    cpu_percent: float | None
    num_threads: int | None
    create_time: float
    uptime_s: float
    #: PYTORCH_* variables the process was started with; None when not readable
    pytorch_env: dict[str, str] | None
    status: str

    @property
    def command(self) -> str:
        return " ".join(self.cmdline)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "cmdline": list(self.cmdline),
            "username": self.username,
            "rss_bytes": self.rss_bytes,
            "footprint_bytes": self.footprint_bytes,
            "cpu_percent": self.cpu_percent,
            "num_threads": self.num_threads,
            "create_time": self.create_time,
            "uptime_s": round(self.uptime_s, 3),
            "pytorch_env": self.pytorch_env,
            "status": self.status,
        }


@dataclass(frozen=True)
class ServiceSnapshot:
    found_by: FoundBy | None
    pidfile_state: PidfileState
    pidfile: PidRecord | None
    roots: tuple[int, ...]
    #: the whole tree under the roots: a uvicorn reloader and its worker, multiprocessing children
    processes: tuple[ProcInfo, ...]
    pidfile_path: Path | None = None
    #: processes that match ``service.match`` but are not the service (they listen on
    #: another port, or on none long after start_timeout): shown, never signalled
    others: tuple[ProcInfo, ...] = ()

    @property
    def running(self) -> bool:
        return bool(self.roots) and bool(self.processes)

    @property
    def total_rss_bytes(self) -> int | None:
        """RSS of the tree; None (unknown) when no process's RSS was readable, never 0."""
        values = [p.rss_bytes for p in self.processes if p.rss_bytes is not None]
        return sum(values) if values else None

    @property
    def total_footprint_bytes(self) -> int | None:
        values = [p.footprint_bytes for p in self.processes if p.footprint_bytes is not None]
        return sum(values) if values else None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.processes)

    def to_json(self) -> dict[str, Any]:
        return {
            "found_by": self.found_by,
            "pidfile_state": self.pidfile_state,
            "pidfile": self.pidfile.to_json() if self.pidfile else None,
            "pidfile_path": str(self.pidfile_path) if self.pidfile_path else None,
            "running": self.running,
            "roots": list(self.roots),
            "total_rss_bytes": self.total_rss_bytes,
            "total_footprint_bytes": self.total_footprint_bytes,
            "processes": [p.to_json() for p in self.processes],
            "others": [p.to_json() for p in self.others],
        }


# --------------------------------------------------------------------------- macOS footprint
class _RusageInfoV2(ctypes.Structure):
    # struct rusage_info_v2 from <sys/resource.h>
    _fields_ = [
        ("ri_uuid", ctypes.c_uint8 * 16),
        ("ri_user_time", ctypes.c_uint64),
        ("ri_system_time", ctypes.c_uint64),
        ("ri_pkg_idle_wkups", ctypes.c_uint64),
        ("ri_interrupt_wkups", ctypes.c_uint64),
        ("ri_pageins", ctypes.c_uint64),
        ("ri_wired_size", ctypes.c_uint64),
        ("ri_resident_size", ctypes.c_uint64),
        ("ri_phys_footprint", ctypes.c_uint64),
        ("ri_proc_start_abstime", ctypes.c_uint64),
        ("ri_proc_exit_abstime", ctypes.c_uint64),
        ("ri_child_user_time", ctypes.c_uint64),
        ("ri_child_system_time", ctypes.c_uint64),
        ("ri_child_pkg_idle_wkups", ctypes.c_uint64),
        ("ri_child_interrupt_wkups", ctypes.c_uint64),
        ("ri_child_pageins", ctypes.c_uint64),
        ("ri_child_elapsed_abstime", ctypes.c_uint64),
        ("ri_diskio_bytesread", ctypes.c_uint64),
        ("ri_diskio_byteswritten", ctypes.c_uint64),
    ]


_RUSAGE_INFO_V2 = 2
_libproc: Any = None


def phys_footprint(pid: int) -> int | None:
    """macOS ``phys_footprint`` of ``pid`` (RSS misses Metal memory); None elsewhere or denied."""
    global _libproc  # noqa: PLW0603 - loaded once, on first use, on darwin only
    if sys.platform != "darwin":
        return None
    if _libproc is None:
        name = ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib"
        try:
            _libproc = ctypes.CDLL(name, use_errno=True)
        except OSError:
            _libproc = False
    if not _libproc:
        return None
    info = _RusageInfoV2()
    if _libproc.proc_pid_rusage(ctypes.c_int(pid), _RUSAGE_INFO_V2, ctypes.byref(info)) != 0:
        return None  # EPERM for another user's process, ESRCH when gone
    return int(info.ri_phys_footprint)


# --------------------------------------------------------------------------- reading processes
def _safe(getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except psutil.AccessDenied:
        return None


def proc_info(proc: psutil.Process, *, clock: Clock = time.time) -> ProcInfo | None:
    """One process's facts; None when it is gone or a zombie (a zombie holds no memory)."""
    try:
        with proc.oneshot():
            status = proc.status()
            if status == psutil.STATUS_ZOMBIE:
                return None
            created = proc.create_time()
            memory = _safe(proc.memory_info)
            environ = _safe(proc.environ)
            cmdline = _safe(proc.cmdline)
            return ProcInfo(
                pid=proc.pid,
                ppid=_safe(proc.ppid),
                cmdline=tuple(cmdline) if cmdline else (),
                username=_safe(proc.username),
                rss_bytes=int(memory.rss) if memory is not None else None,
                footprint_bytes=phys_footprint(proc.pid),
                cpu_percent=None,
                num_threads=_safe(proc.num_threads),
                create_time=created,
                uptime_s=max(0.0, clock() - created),
                pytorch_env=pytorch_vars(environ) if environ is not None else None,
                status=status,
            )
    except GONE:
        return None
    except psutil.AccessDenied:
        return None  # even status/create_time refused: nothing we could act on


def _sample_cpu(procs: list[psutil.Process], interval: float) -> dict[int, float]:
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except (*GONE, psutil.AccessDenied):
            pass
    time.sleep(interval)
    result: dict[int, float] = {}
    for proc in procs:
        try:
            result[proc.pid] = proc.cpu_percent(None)
        except (*GONE, psutil.AccessDenied):
            pass
    return result


def _task_cpu_ns(pid: int) -> int | None:
    """Linux: CPU nanoseconds of all the threads of ``pid`` (``/proc/PID/task/*/schedstat``).

    ``cpu_times()`` counts in clock ticks (10 ms): over a probe's few milliseconds that reads
    as 0 % or 100 %. schedstat's first field is the run time in nanoseconds.
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended between the listing and the read
    return total or None


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each pid still readable."""
    result: dict[int, float] = {}
    for pid in pids:
        nanos = _task_cpu_ns(pid) if sys.platform.startswith("linux") else None
        if nanos is not None:
            result[pid] = nanos / 1e9
            continue
        try:
            times = psutil.Process(pid).cpu_times()
        except (*GONE, psutil.AccessDenied):
            continue
        result[pid] = times.user + times.system
    return result


def with_cpu_percent(
    snapshot: ServiceSnapshot, before: dict[int, float], after: dict[int, float], wall_s: float
) -> ServiceSnapshot:
    """``snapshot`` with each process's CPU% between two :func:`cpu_seconds` readings taken
    ``wall_s`` apart (100 = one core busy); a process missing from either keeps None."""
    if wall_s <= 0:
        return snapshot
    procs = tuple(
        replace(p, cpu_percent=round(100.0 * max(0.0, after[p.pid] - before[p.pid]) / wall_s, 1))
        if p.pid in before and p.pid in after
        else p
        for p in snapshot.processes
    )
    return replace(snapshot, processes=procs)


def _snapshot_tree(
    roots: list[psutil.Process], *, clock: Clock, cpu_interval: float
) -> tuple[ProcInfo, ...]:
    procs = tree(roots)
    cpu = _sample_cpu(procs, cpu_interval) if cpu_interval > 0 else {}
    infos: list[ProcInfo] = []
    for proc in procs:
        info = proc_info(proc, clock=clock)
        if info is None:
            continue
        if proc.pid in cpu:
            info = replace(info, cpu_percent=cpu[proc.pid])
        infos.append(info)
    return tuple(infos)


def processes_info(
    identities: Iterable[tuple[int, float]], *, clock: Clock = time.time
) -> tuple[ProcInfo, ...]:
    """ProcInfo for each ``(pid, create_time)`` still alive (and still the same process)."""
    infos = []
    for pid, created in identities:
        proc = same_process(pid, created)
        info = proc_info(proc, clock=clock) if proc is not None else None
        if info is not None:
            infos.append(info)
    return tuple(infos)


def find_service(
    settings: Settings,
    *,
    pidfile_path: Path | None = None,
    pattern: str | None = None,
    clock: Clock = time.time,
    cpu_interval: float = 0.0,
) -> ServiceSnapshot:
    """Where the service is, and its whole process tree. Reads only."""
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
            procs = _snapshot_tree([root], clock=clock, cpu_interval=cpu_interval)
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
            for root in roots_of(matches):
                (roots if is_the_service(root, settings, clock) else strangers).append(root)
            others = _snapshot_tree(strangers, clock=clock, cpu_interval=0.0)
            procs = _snapshot_tree(roots, clock=clock, cpu_interval=cpu_interval)
            root_pids = tuple(p.pid for p in roots if any(i.pid == p.pid for i in procs))
            if root_pids:
                return ServiceSnapshot("match", state, pidrecord, root_pids, procs, path, others)
    return ServiceSnapshot(None, state, pidrecord, (), (), path, others)


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
