"""One process's facts (memory, macOS footprint, CPU, its PyTorch variables) and the snapshot
of a whole tree. A process that vanishes, is a zombie or may not be inspected is skipped or
has ``None`` fields, never a crash. READ-ONLY.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import psutil

from mpsctl.masking import mask_argv
from mpsctl.observe.processes.pidfile import PidRecord
from mpsctl.observe.processes.tree import GONE, same_process, tree
from mpsctl.torch_env import pytorch_vars

Clock = Callable[[], float]
FoundBy = Literal["pidfile", "match"]
PidfileState = Literal["ok", "missing", "stale", "reused", "invalid"]


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
        """The command line for display (stop's table, fix's audit trail): credentials
        masked."""
        return " ".join(mask_argv(list(self.cmdline)))

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            # masked: this document is printed, kept in the probe history and the fix
            # audit trail, where a service's --api-key KEY must not be
            "cmdline": mask_argv(list(self.cmdline)),
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
    #: the tree's CPU seconds when the snapshot was taken, and when (``time.perf_counter``):
    #: where :func:`with_cpu_since_snapshot` measures from. Not part of the snapshot's JSON.
    cpu_start: tuple[dict[int, float], float] | None = field(
        default=None, compare=False, repr=False
    )

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
@cache
def _rusage_info_v2() -> Any:
    """``struct rusage_info_v2`` from <sys/resource.h>, built on first use: ctypes is loaded
    only on macOS, only when a footprint is read."""
    import ctypes

    class _RusageInfoV2(ctypes.Structure):
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

    return _RusageInfoV2


_RUSAGE_INFO_V2 = 2
_libproc: Any = None


def phys_footprint(pid: int) -> int | None:
    """macOS ``phys_footprint`` of ``pid`` (RSS misses Metal memory); None elsewhere or denied."""
    global _libproc  # noqa: PLW0603 - loaded once, on first use, on darwin only
    if sys.platform != "darwin":
        return None
    import ctypes
    import ctypes.util

    if _libproc is None:
        name = ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib"
        try:
            _libproc = ctypes.CDLL(name, use_errno=True)
        except OSError:
            _libproc = False
    if not _libproc:
        return None
    info = _rusage_info_v2()()
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


def start_cpu_window(snapshot: ServiceSnapshot) -> ServiceSnapshot:
    """``snapshot`` with its tree's CPU seconds read now: the start of a CPU% window."""
    if not snapshot.processes:
        return snapshot
    return replace(snapshot, cpu_start=(cpu_seconds(snapshot.pids), time.perf_counter()))


def with_cpu_since_snapshot(snapshot: ServiceSnapshot) -> ServiceSnapshot:
    """``snapshot`` with each process's CPU% from :func:`start_cpu_window` to now; as it is
    when no window was started or nothing was readable then."""
    if snapshot.cpu_start is None or not snapshot.cpu_start[0]:
        return snapshot
    before, began = snapshot.cpu_start
    wall = time.perf_counter() - began
    return with_cpu_percent(snapshot, before, cpu_seconds(before), wall)


def snapshot_tree(
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
