"""start / stop / restart / status as plain functions over observe/ and client.py.

``fix`` (stop + clean + start under one lock, with an audit trail) is ``control/fix.py``.

Every function that changes the service takes the lock (``control.lock``) first, looks at
the machine through ``observe.procs``, and returns a frozen result that ``mpsctl.render``
shows as a table or JSON. Failures are ``mpsctl.errors`` exceptions.

Signals go by pid, and each pid's create_time is checked right before it is signalled, so a
process that reused a pid is never hit. Never signalled: mpsctl or its ancestors, other users'
processes, and (without ``--match``) anything not named by the pidfile.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from mpsctl import __version__
from mpsctl.client import HealthCheck, ServiceClient
from mpsctl.control import logfile
from mpsctl.control.lock import service_lock
from mpsctl.control.pidfile import (
    PidRecord,
    atomic_write_json,
    default_pidfile_path,
    remove_pidfile,
    write_pidfile,
)
from mpsctl.errors import ConfigError, ServiceError, StatusExit
from mpsctl.observe import procs
from mpsctl.settings import Settings
from mpsctl.torch_env import (
    DEFAULT_HIGH_RATIO,
    command_checks,
    inherited_env_checks,
    service_env,
    torch_env,
)
from mpsctl.units import fmt_bytes, iso_utc, utc_now_iso

LAST_HEALTH = "last_health.json"
RECOMMENDED_MAX = "recommended_max.json"
LOG_TAIL_LINES = 20
#: how long to wait for processes to vanish after SIGKILL (a process in uninterruptible
#: sleep cannot die sooner; beyond this it is reported as a survivor)
KILL_GRACE_S = 2.0
#: how often stop looks for children born after the snapshot (a full process-table scan)
RESCAN_INTERVAL_S = 0.1


# --------------------------------------------------------------------------- progress seam
class Events(Protocol):
    """What a long operation tells the operator while it runs (stderr in the CLI)."""

    def warn(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def waiting(self, message: str) -> contextlib.AbstractContextManager[object]: ...


class SilentEvents:
    def warn(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def waiting(self, message: str) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


# --------------------------------------------------------------------------- memory limit
@dataclass(frozen=True)
class MemoryLimit:
    """The MPS limit the service will run under, in bytes where they can be known."""

    high: float | None
    low: float | None
    fallback: bool
    device: str
    recommended_max_bytes: int | None
    recommended_source: str | None  # "last health report" | "torch.mps" | None

    @property
    def limit_bytes(self) -> int | None:
        if self.high is None or self.high == 0.0 or self.recommended_max_bytes is None:
            return None
        return int(self.high * self.recommended_max_bytes)

    def describe(self) -> str:
        if self.high is None:
            return f"high: PyTorch's default ({DEFAULT_HIGH_RATIO:g})"
        if self.high == 0.0:
            return "high 0.00 = no limit"
        if self.recommended_max_bytes is None:
            return f"high {self.high:.2f} x recommendedMaxWorkingSetSize (not known yet)"
        return (
            f"high {self.high:.2f} x {fmt_bytes(self.recommended_max_bytes)} = "
            f"{fmt_bytes(self.limit_bytes)}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "high_watermark_ratio": self.high,
            "low_watermark_ratio": self.low,
            "mps_fallback": self.fallback,
            "recommended_max_bytes": self.recommended_max_bytes,
            "recommended_max_source": self.recommended_source,
            "limit_bytes": self.limit_bytes,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _recommended_from_health(home: Path) -> int | None:
    body = _read_json(home / LAST_HEALTH)
    with contextlib.suppress(LookupError, TypeError):
        value = body["memory"]["mps"]["recommended_max_bytes"]
        if isinstance(value, int) and value > 0:
            return value
    return None


def _venv_python(settings: Settings) -> str:
    venv = settings.service.venv
    if venv is not None and (venv / "bin" / "python").exists():
        return str(venv / "bin" / "python")
    return sys.executable


def _recommended_from_torch(settings: Settings) -> int | None:
    """One-off ``torch.mps.recommended_max_memory()`` in the service's venv (macOS only).

    Cached in MPSCTL_HOME: importing torch takes seconds and the figure is fixed per machine.
    """
    cached = _read_json(settings.home / RECOMMENDED_MAX)
    if isinstance(cached, dict) and isinstance(cached.get("recommended_max_bytes"), int):
        return int(cached["recommended_max_bytes"])
    code = "import torch; print(torch.mps.recommended_max_memory())"
    try:
        done = subprocess.run(
            [_venv_python(settings), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        value = int(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if value <= 0:
        return None
    with contextlib.suppress(OSError):
        atomic_write_json(settings.home / RECOMMENDED_MAX, {"recommended_max_bytes": value})
    return value


def memory_limit(settings: Settings, *, query_torch: bool = True) -> MemoryLimit:
    memory = settings.memory
    recommended = _recommended_from_health(settings.home)
    source = "last health report" if recommended is not None else None
    mps_possible = sys.platform == "darwin" and memory.device in ("auto", "mps")
    if recommended is None and query_torch and mps_possible:
        recommended = _recommended_from_torch(settings)
        source = "torch.mps" if recommended is not None else None
    return MemoryLimit(
        memory.high_watermark_ratio,
        memory.low_watermark_ratio,
        memory.mps_fallback,
        memory.device,
        recommended,
        source,
    )


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


# --------------------------------------------------------------------------- command and env
def service_argv(
    settings: Settings, *, device: str | None = None, model: str | None = None
) -> tuple[tuple[str, ...], list[str]]:
    """The argv to run, and warnings about flags that do not apply to it."""
    argv = list(settings.service.command)
    warnings: list[str] = []
    if not settings.reference_service:
        for flag, value in (("--device", device), ("--model", model)):
            if value is not None:
                warnings.append(
                    f"{flag} is ignored: it applies to the reference service only; "
                    "change service.command to pass it to your own service"
                )
        return tuple(argv), warnings
    if model is not None:
        argv = [a for a in argv if a != "--demo"]  # serve refuses --demo with --model
        argv += ["--model", model]
    if device is not None:
        argv += ["--device", device]
    return tuple(argv), warnings


def preflight_warnings(settings: Settings, argv: tuple[str, ...], limit: MemoryLimit) -> list[str]:
    checks = command_checks(argv, settings.service.host)
    checks += inherited_env_checks(settings, os.environ)
    warnings = [c.line() for c in checks]
    ram = physical_memory_bytes()
    if limit.limit_bytes is not None and ram is not None and limit.limit_bytes > ram:
        warnings.append(
            f"the MPS limit ({limit.describe()}) is above physical memory ({fmt_bytes(ram)}): "
            "macOS will swap instead of PyTorch raising an out-of-memory error"
        )
    return warnings


# --------------------------------------------------------------------------- health
def check_health(settings: Settings, timeout: float = 3.0) -> HealthCheck:
    client = ServiceClient(settings.service)
    try:
        return client.health(timeout=timeout)
    finally:
        client.close()


def _save_health(settings: Settings, check: HealthCheck) -> None:
    if isinstance(check.body, dict):
        with contextlib.suppress(OSError):
            atomic_write_json(
                settings.home / LAST_HEALTH, {**check.body, "saved_at": utc_now_iso()}
            )


# --------------------------------------------------------------------------- start
@dataclass(frozen=True)
class StartOptions:
    timeout: float | None = None  # default: service.start_timeout
    device: str | None = None
    model: str | None = None
    foreground: bool = False


@dataclass(frozen=True)
class StartResult:
    status: Literal["started", "already-running"]
    name: str
    pid: int
    argv: tuple[str, ...]
    url: str
    found_by: str | None
    log_file: Path
    pidfile: Path | None
    started_at: str
    #: seconds from spawn to the first healthy answer (None when already running)
    startup_s: float | None
    health_latency_ms: float | None
    torch_env: dict[str, str]
    limit: MemoryLimit
    warnings: tuple[str, ...] = ()
    log_rotated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.start/1",
            "status": self.status,
            "name": self.name,
            "pid": self.pid,
            "argv": list(self.argv),
            "url": self.url,
            "found_by": self.found_by,
            "log_file": str(self.log_file),
            "log_rotated": self.log_rotated,
            "pidfile": str(self.pidfile) if self.pidfile else None,
            "started_at": self.started_at,
            "startup_s": None if self.startup_s is None else round(self.startup_s, 3),
            "health_latency_ms": self.health_latency_ms,
            "env": self.torch_env,
            "memory": self.limit.to_json(),
            "warnings": list(self.warnings),
        }


class StartFailed(ServiceError):
    """The service did not become healthy; carries the last lines of its log."""

    def __init__(self, message: str, *, log_file: Path, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_file = log_file
        self.log_tail = log_tail


def _describe_holder(holder: procs.ProcInfo | int | None) -> str:
    if holder is None:
        return "a process this user may not inspect (try `sudo lsof -i`)"
    if isinstance(holder, int):
        return f"pid {holder}"
    command = shlex.join(holder.cmdline) if holder.cmdline else "?"
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {holder.pid} ({holder.username or 'unknown user'}): {command}"


def check_port_free(settings: Settings) -> None:
    """Refuse to start when something already listens on the service's port."""
    host, port = settings.service.host, settings.service.port
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            pass
    except OSError:
        return  # refused or unreachable: nothing listens there
    holder = procs.port_holder(host, port)
    raise ServiceError(
        f"port {port} on {host} is taken by {_describe_holder(holder)}; nothing started "
        "(stop it, or change service.url)"
    )


def start_service(
    settings: Settings,
    options: StartOptions | None = None,
    *,
    events: Events | None = None,
    lock_wait: float = 0.0,
) -> StartResult:
    """Start the service detached and wait for a healthy answer (takes the lock)."""
    with service_lock(settings.home, wait=lock_wait, purpose="start"):
        return start_while_locked(settings, options or StartOptions(), events or SilentEvents())


def _already_running(
    settings: Settings, snapshot: procs.ServiceSnapshot, argv: tuple[str, ...], limit: MemoryLimit
) -> StartResult:
    check = check_health(settings)
    root = snapshot.roots[0]
    how = "pidfile" if snapshot.found_by == "pidfile" else f"match {settings.service.match!r}"
    if not check.ok:
        raise ServiceError(
            f"{settings.service.name} is running (pid {root}, found by {how}) but not healthy: "
            f"{check.error}; try `mpsctl restart` or `mpsctl fix`"
        )
    _save_health(settings, check)
    info = next((p for p in snapshot.processes if p.pid == root), None)
    record = snapshot.pidfile
    return StartResult(
        status="already-running",
        name=settings.service.name,
        pid=root,
        argv=info.cmdline if info else argv,
        url=settings.service.url,
        found_by=snapshot.found_by,
        log_file=settings.service.log_file,
        pidfile=snapshot.pidfile_path if snapshot.found_by == "pidfile" else None,
        started_at=(record.started_at if record and record.started_at else None)
        or (iso_utc(info.create_time) if info else ""),
        startup_s=None,
        health_latency_ms=check.latency_ms,
        torch_env=(info.pytorch_env or {}) if info else {},
        limit=limit,
    )


def _seconds(value: float, what: str, *, allow_zero: bool) -> float:
    """A duration flag or setting: finite, and > 0 (or >= 0 where 0 means "at once")."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{what}: expected a finite number of seconds {bound}, got {value:g}")
    return value


def start_while_locked(settings: Settings, options: StartOptions, events: Events) -> StartResult:
    """start_service's body, for a caller that already holds the lock (restart, fix)."""
    service = settings.service
    timeout = _seconds(
        service.start_timeout if options.timeout is None else options.timeout,
        "start timeout (--timeout / service.start_timeout)",
        allow_zero=False,
    )
    argv, warnings = service_argv(settings, device=options.device, model=options.model)
    limit = memory_limit(settings)
    # the derived low watermark and a 0.0 high (no limit) are said where they are applied
    # (not when both ratios are mpsctl's defaults: a cron job would warn on every run)
    chosen = settings.sources.get("memory.high_watermark_ratio", "default") != "default"
    notes = list(settings.notes) if chosen else []
    warnings = notes + warnings + preflight_warnings(settings, argv, limit)
    for warning in warnings:
        events.warn(warning)
    if limit.recommended_max_bytes is not None or (
        sys.platform == "darwin" and settings.memory.device in ("auto", "mps")
    ):
        events.info(f"MPS memory limit: {limit.describe()}")

    snapshot = procs.find_service(settings)
    foreign = _foreign_pidfile(settings, snapshot)
    if foreign:
        raise ServiceError(f"{foreign}; nothing started")
    if snapshot.running:
        return _already_running(settings, snapshot, argv, limit)
    pidfile = snapshot.pidfile_path or default_pidfile_path(settings)
    if snapshot.pidfile_state in ("stale", "reused", "invalid") and _remove_bad_pidfile(
        pidfile, snapshot.pidfile_state
    ):
        events.info(f"removed a {snapshot.pidfile_state} pidfile {pidfile}")
    check_port_free(settings)
    if not service.workdir.is_dir():
        raise ServiceError(f"service.workdir {service.workdir} is not a directory; nothing started")
    if service.venv is not None and not (service.venv / "bin").is_dir():
        raise ServiceError(
            f"service.venv {service.venv} has no bin/ directory; nothing started "
            "(create the venv, or fix service.venv: it is relative to service.workdir)"
        )
    env = service_env(settings)

    if options.foreground:
        # launchd / systemd supervise the process themselves: become the service
        os.chdir(service.workdir)
        try:
            os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            raise ServiceError(f"cannot run {argv[0]}: {exc.strerror}") from None

    try:
        rotated = logfile.rotate_if_needed(
            service.log_file, service.log_max_bytes, service.log_backups
        )
    except OSError as exc:
        raise ServiceError(
            f"cannot rotate service.log_file {service.log_file}: {exc.strerror}; nothing started"
        ) from None
    try:
        fd = logfile.open_append(service.log_file)
    except OSError as exc:
        raise ServiceError(
            f"cannot open service.log_file {service.log_file}: {exc.strerror}; nothing started"
        ) from None
    started_at = utc_now_iso()
    try:
        offset = os.fstat(fd).st_size
        logfile.append_line(fd, f"--- mpsctl {__version__} start {started_at}: {shlex.join(argv)}")
    except OSError as exc:
        os.close(fd)
        raise ServiceError(
            f"cannot write to service.log_file {service.log_file}: {exc.strerror}; nothing started"
        ) from None
    spawned_at = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=service.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and group: our terminal's ^C never reaches it
            close_fds=True,
        )
    except OSError as exc:
        with contextlib.suppress(OSError):
            logfile.append_line(fd, f"--- mpsctl: cannot run {argv[0]}: {exc.strerror}")
        where = f"in {service.workdir}"
        if isinstance(exc, FileNotFoundError):
            where = (
                f"on PATH (with {service.venv / 'bin'} first)"
                if service.venv is not None
                else "on PATH (set service.venv to use a virtualenv's bin/)"
            )
        raise StartFailed(
            f"cannot run {argv[0]}: {exc.strerror} {where}; nothing started",
            log_file=service.log_file,
            log_tail=[],
        ) from None
    finally:
        os.close(fd)

    created = procs.create_time_of(proc.pid)
    record = PidRecord(
        pid=proc.pid,
        create_time=created if created is not None else time.time(),
        argv=argv,
        url=service.url,
        started_at=started_at,
        version=__version__,
        pgid=proc.pid,
    )
    try:
        write_pidfile(pidfile, record)
        with events.waiting(f"waiting for {service.health_url} (up to {timeout:g} s)"):
            check = _wait_healthy(proc, settings, timeout)
    except BaseException as exc:
        # a timeout, a crash, an unwritable pidfile or ^C: leave nothing behind that claims
        # to be the service
        _terminate_started(proc, record, settings)
        with contextlib.suppress(OSError, ServiceError):
            remove_pidfile(pidfile, pid=proc.pid)
        if isinstance(exc, _NotHealthy):
            tail = logfile.tail_lines(service.log_file, LOG_TAIL_LINES, offset=offset)
            raise StartFailed(str(exc), log_file=service.log_file, log_tail=tail) from None
        if isinstance(exc, OSError):
            raise ServiceError(
                f"cannot write the pidfile {pidfile}: {exc.strerror}; stopped what was started"
            ) from None
        raise
    startup = time.monotonic() - spawned_at
    _save_health(settings, check)
    return StartResult(
        status="started",
        name=service.name,
        pid=proc.pid,
        argv=argv,
        url=service.url,
        found_by="pidfile",
        log_file=service.log_file,
        pidfile=pidfile,
        started_at=started_at,
        startup_s=startup,
        health_latency_ms=check.latency_ms,
        torch_env=torch_env(settings.memory),
        limit=memory_limit(settings, query_torch=False),
        warnings=tuple(warnings),
        log_rotated=rotated,
    )


class _NotHealthy(Exception):
    pass


def _wait_healthy(proc: subprocess.Popen[bytes], settings: Settings, timeout: float) -> HealthCheck:
    """Poll health: 50 ms at first (a fast service answers at once), growing to 500 ms."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last_error = "no answer yet"
    client = ServiceClient(settings.service)

    def exited(code: int, when: str) -> _NotHealthy:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return _NotHealthy(f"{settings.service.name} {how} {when} {settings.service.health_url}")

    try:
        while True:
            code = proc.poll()
            if code is not None:
                raise exited(code, "before answering")
            remaining = deadline - time.monotonic()
            check = client.health(timeout=max(0.2, min(2.0, remaining)))
            if check.ok:
                # a process that daemonised (exited, leaving a child to answer) would leave
                # a pidfile naming a dead pid: the service must be the process we started
                code = proc.poll()
                if code is not None:
                    raise exited(
                        code,
                        "while a child answered (a command that daemonises cannot be tracked: "
                        "run it in the foreground) at",
                    )
                return check
            # the client's hint ("try `mpsctl start`") is wrong while start itself waits
            last_error = (check.error or last_error).split(" — try `mpsctl start`")[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _NotHealthy(
                    f"{settings.service.name} was not healthy within {timeout:g} s "
                    f"({last_error}); stopped it"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.5)
    finally:
        client.close()


def _terminate_started(
    proc: subprocess.Popen[bytes], record: PidRecord, settings: Settings
) -> None:
    """Stop what this start spawned: its tree while it lives, else what it left in its session.

    start_new_session made the service a session leader (sid == pgid == pid): a first
    process that exited early can leave workers behind that still hold the port.
    """
    if proc.poll() is None:
        targets = dict(procs.tree_identities(record.pid, record.create_time))
        pgid = record.pgid
    else:
        targets = procs.session_members(proc.pid, record.create_time)
        pgid = None
    if targets:
        timeout = max(0.0, min(settings.service.stop_timeout, 60.0))
        _signal_and_wait(targets, pgid=pgid, timeout=timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_S)


# --------------------------------------------------------------------------- stop
Outcome = Literal["SIGTERM", "SIGKILL", "exited", "survived", "would-signal", "not-signalled"]


@dataclass(frozen=True)
class StoppedProcess:
    pid: int
    command: str
    rss_bytes: int | None
    outcome: Outcome
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "command": self.command,
            "rss_bytes": self.rss_bytes,
            "outcome": self.outcome,
            "note": self.note,
        }


@dataclass(frozen=True)
class StopResult:
    status: Literal["stopped", "already-stopped", "dry-run", "refused", "failed"]
    name: str
    found_by: str | None
    pidfile_state: str
    processes: tuple[StoppedProcess, ...]
    elapsed_s: float
    timeout_s: float
    pidfile_removed: bool
    message: str = ""

    @property
    def freed_rss_bytes(self) -> int:
        gone = ("SIGTERM", "SIGKILL", "exited")
        return sum(p.rss_bytes or 0 for p in self.processes if p.outcome in gone)

    @property
    def ok(self) -> bool:
        return self.status in ("stopped", "already-stopped", "dry-run")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.stop/1",
            "status": self.status,
            "name": self.name,
            "found_by": self.found_by,
            "pidfile_state": self.pidfile_state,
            "processes": [p.to_json() for p in self.processes],
            "freed_rss_bytes": self.freed_rss_bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "timeout_s": self.timeout_s,
            "pidfile_removed": self.pidfile_removed,
            "message": self.message,
        }


def _reap(pids: Iterator[int] | list[int]) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux >= 5.3); None where there is none (macOS, old kernels).

    Raises ProcessLookupError when ``pid`` is gone.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS, EPERM under a seccomp profile, ...
        return None


def _send(pid: int, created: float, sig: signal.Signals) -> bool:
    """Signal ``pid`` only if it is still the process started at ``created``.

    With a pidfd the identity check and the signal name the same process, so a pid reused
    between the check and the kill cannot be hit; without one (macOS) the window between
    the check and ``kill`` is a few microseconds.
    """
    try:
        pidfd = _open_pidfd(pid)
    except ProcessLookupError:
        return False
    try:
        if not procs.is_alive(pid, created):
            return False
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _group_alive(pgid: int, targets: dict[int, float]) -> bool:
    """True while one of our own live targets is in ``pgid``: then the group id is ours.

    (The kernel does not hand out a pid that is still some group's id, so while a member
    lives, ``killpg(pgid)`` cannot reach a stranger.)
    """
    for pid, created in targets.items():
        if procs.is_alive(pid, created):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pgid:
                    return True
    return False


def _killpg(pgid: int | None, targets: dict[int, float], sig: signal.Signals) -> None:
    """Signal the service's group at once (children forked after the snapshot included),
    only while it is provably the service's and holds nobody else's process."""
    if pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return
    if _group_alive(pgid, targets) and procs.group_is_mine(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _signal_and_wait(
    targets: dict[int, float],
    *,
    pgid: int | None,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[int, Outcome]:
    """SIGTERM the tree (and its group), wait, SIGKILL survivors; pid -> how it ended.

    ``targets`` was snapshotted before any signal: a grandchild that left the group, or
    whose parent died and was re-parented to init, is still in it. Children born during
    the wait are found by re-scanning the live targets.
    """
    outcome: dict[int, Outcome] = {
        pid: "SIGTERM" if procs.is_alive(pid, created) else "exited"
        for pid, created in targets.items()
    }
    _killpg(pgid, targets, signal.SIGTERM)
    for pid, created in list(targets.items()):
        _send(pid, created, signal.SIGTERM)  # also those outside the group (setsid children)
    deadline = clock() + timeout
    delay = 0.005
    next_scan = clock() + RESCAN_INTERVAL_S
    protected = procs.protected_pids()
    while True:
        _reap(list(targets))
        alive = [pid for pid, created in targets.items() if procs.is_alive(pid, created)]
        if not alive:
            return outcome
        if clock() >= next_scan or clock() >= deadline:
            # children forked during shutdown (a worker respawned by its supervisor)
            live = {pid: targets[pid] for pid in alive}
            for child, created in procs.descendants(live).items():
                if child not in targets and child not in protected and procs.owned_by_me(child):
                    targets[child] = created
                    sent = _send(child, created, signal.SIGTERM)
                    outcome[child] = "SIGTERM" if sent else "exited"
                    alive.append(child)
            next_scan = clock() + RESCAN_INTERVAL_S
        if clock() >= deadline:
            break
        time.sleep(min(delay, max(0.0, deadline - clock())))
        delay = min(delay * 2, 0.1)

    _killpg(pgid, targets, signal.SIGKILL)
    for pid in alive:
        _send(pid, targets[pid], signal.SIGKILL)
        outcome[pid] = "SIGKILL"  # alive at the deadline: the group kill or this one ended it
    grace = clock() + KILL_GRACE_S
    while clock() < grace:
        _reap(list(targets))
        if not any(procs.is_alive(pid, c) for pid, c in targets.items()):
            break
        time.sleep(0.01)
    for pid, created in targets.items():
        if procs.is_alive(pid, created):
            outcome[pid] = "survived"
    return outcome


def _stoppable(
    infos: tuple[procs.ProcInfo, ...],
) -> tuple[list[procs.ProcInfo], list[StoppedProcess]]:
    protected = procs.protected_pids()
    allowed, refused = [], []
    for info in infos:
        if info.pid in protected:
            note = "mpsctl itself or its parent"
        elif not procs.owned_by_me(info.pid):
            note = f"belongs to {info.username or 'another user'}"
        else:
            allowed.append(info)
            continue
        refused.append(
            StoppedProcess(info.pid, info.command, info.rss_bytes, "not-signalled", note)
        )
    return allowed, refused


def stop_service(
    settings: Settings,
    *,
    timeout: float | None = None,
    use_match: bool = False,
    dry_run: bool = False,
    lock_wait: float = 0.0,
) -> StopResult:
    """Stop the service's whole tree (takes the lock; a dry run only looks, so it does not)."""
    if dry_run:
        return _stop_locked(settings, timeout=timeout, use_match=use_match, dry_run=True)
    with service_lock(settings.home, wait=lock_wait, purpose="stop"):
        return _stop_locked(settings, timeout=timeout, use_match=use_match, dry_run=dry_run)


def _remove_bad_pidfile(path: Path, state: str) -> bool:
    """Remove a stale, reused or unparseable pidfile; one we cannot read is an error."""
    if state == "invalid":
        try:
            path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ServiceError(
                f"cannot read the pidfile {path}: {exc.strerror}; it may name a running "
                "service: check it, then fix its permissions or remove it"
            ) from None
    return remove_pidfile(path)


def _foreign_pidfile(settings: Settings, snapshot: procs.ServiceSnapshot) -> str | None:
    """Why the live service in the pidfile is another configuration's, or None.

    Two configurations sharing one MPSCTL_HOME share its pidfile: the pidfile records the
    URL its service was started for, and a run for another URL must not stop (or take as
    its own) that service.
    """
    record = snapshot.pidfile
    if snapshot.found_by != "pidfile" or record is None or record.url is None:
        return None
    if record.url.rstrip("/") == settings.service.url.rstrip("/"):
        return None
    return (
        f"the pidfile {snapshot.pidfile_path} names pid {record.pid}, started for "
        f"{record.url}, but this configuration's service.url is {settings.service.url} "
        "(another service shares this MPSCTL_HOME: give each configuration its own "
        "MPSCTL_HOME, or use the configuration that started it)"
    )


def _stop_locked(
    settings: Settings, *, timeout: float | None, use_match: bool, dry_run: bool
) -> StopResult:
    started = time.monotonic()
    limit = _seconds(
        settings.service.stop_timeout if timeout is None else timeout,
        "stop timeout (--timeout / service.stop_timeout)",
        allow_zero=True,
    )
    name = settings.service.name
    snapshot = procs.find_service(settings)
    pidfile = snapshot.pidfile_path or default_pidfile_path(settings)

    def result(status: Any, rows: list[StoppedProcess], removed: bool, msg: str) -> StopResult:
        return StopResult(
            status, name, snapshot.found_by, snapshot.pidfile_state, tuple(rows),
            time.monotonic() - started, limit, removed, msg,
        )  # fmt: skip

    if not snapshot.running:
        removed = False
        if snapshot.pidfile_state in ("stale", "reused", "invalid") and not dry_run:
            removed = _remove_bad_pidfile(pidfile, snapshot.pidfile_state)
        record = snapshot.pidfile
        verb = "removed" if removed else "would remove" if dry_run else "left"
        detail = {
            "stale": f"; {verb} its stale pidfile {pidfile}",
            "reused": f"; pid {record.pid if record else '?'} in the pidfile belongs to another "
            f"process now (not signalled); {verb} the pidfile {pidfile}",
            "invalid": f"; {verb} the unparseable pidfile {pidfile}",
        }.get(snapshot.pidfile_state, "")
        return result("already-stopped", [], removed, f"{name} is not running{detail}")

    foreign = _foreign_pidfile(settings, snapshot)
    if foreign:
        rows = [
            StoppedProcess(p.pid, p.command, p.rss_bytes, "not-signalled", "another service")
            for p in snapshot.processes
        ]
        return result("refused", rows, False, f"{foreign}; nothing signalled")

    if snapshot.found_by == "pidfile":
        # the pidfile's root must itself be stoppable: a pidfile naming mpsctl's own shell
        # (hand-written, or copied from elsewhere) must not turn its siblings into targets
        root = next((p for p in snapshot.processes if p.pid == snapshot.roots[0]), None)
        if root is not None:
            _ok, root_refused = _stoppable((root,))
            if root_refused:
                why = root_refused[0].note
                rows = [
                    StoppedProcess(p.pid, p.command, p.rss_bytes, "not-signalled", why)
                    for p in snapshot.processes
                ]
                return result(
                    "refused",
                    rows,
                    False,
                    f"the pidfile {pidfile} names pid {root.pid} ({why}): not the service; "
                    "nothing signalled (check the pidfile, then remove it by hand)",
                )

    allowed, refused = _stoppable(snapshot.processes)
    if snapshot.found_by == "match" and not use_match:
        rows = refused + [
            StoppedProcess(p.pid, p.command, p.rss_bytes, "not-signalled", "found by match only")
            for p in allowed
        ]
        return result(
            "refused",
            rows,
            False,
            f"no pidfile names {name}; {len(allowed)} process(es) match "
            f"{settings.service.match!r}: pass --match to stop them",
        )
    if dry_run:
        rows = [StoppedProcess(p.pid, p.command, p.rss_bytes, "would-signal") for p in allowed]
        return result("dry-run", rows + refused, False, "dry run: nothing signalled")

    targets = {p.pid: p.create_time for p in allowed}
    record = snapshot.pidfile if snapshot.found_by == "pidfile" else None
    # the group is signalled only when it is the one start created (setsid: pgid == pid);
    # a pgid edited into the pidfile could name any group of this user
    pgid = record.pgid if record is not None and record.pgid == record.pid else None
    ends = _signal_and_wait(targets, pgid=pgid, timeout=limit)
    info = {p.pid: p for p in allowed}
    rows = []
    for pid, how in ends.items():
        known = info.get(pid)
        command = known.command if known else "(child born during the stop)"
        rows.append(StoppedProcess(pid, command, known.rss_bytes if known else None, how))
    survivors = [r for r in rows if r.outcome == "survived"]
    if survivors:
        pids = ", ".join(str(r.pid) for r in survivors)
        return result("failed", rows + refused, False, f"still alive after SIGKILL: {pids}")
    removed = remove_pidfile(pidfile, pid=snapshot.pidfile.pid) if snapshot.pidfile else False
    return result("stopped", rows + refused, removed, f"{name} stopped")


# --------------------------------------------------------------------------- restart
@dataclass(frozen=True)
class RestartResult:
    stop: StopResult
    start: StartResult

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.restart/1",
            "stop": self.stop.to_json(),
            "start": self.start.to_json(),
        }


def stop_while_locked(settings: Settings, *, timeout: float | None, use_match: bool) -> StopResult:
    """Stop for a caller that already holds the lock; ServiceError unless it ended stopped."""
    stopped = _stop_locked(settings, timeout=timeout, use_match=use_match, dry_run=False)
    if not stopped.ok:
        raise ServiceError(stopped.message)
    return stopped


def restart_service(
    settings: Settings,
    options: StartOptions | None = None,
    *,
    stop_timeout: float | None = None,
    use_match: bool = False,
    events: Events | None = None,
    lock_wait: float = 0.0,
) -> RestartResult:
    """stop + start under one lock, so no other run can slip in between."""
    with service_lock(settings.home, wait=lock_wait, purpose="restart"):
        stopped = stop_while_locked(settings, timeout=stop_timeout, use_match=use_match)
        started = start_while_locked(settings, options or StartOptions(), events or SilentEvents())
        return RestartResult(stopped, started)


# --------------------------------------------------------------------------- status
@dataclass(frozen=True)
class StatusResult:
    name: str
    state: Literal["running", "dead", "stopped", "unknown"]
    exit_code: StatusExit
    url: str
    snapshot: procs.ServiceSnapshot | None
    health: HealthCheck | None
    time: str
    error: str | None = None

    @property
    def pid(self) -> int | None:
        return self.snapshot.roots[0] if self.snapshot and self.snapshot.roots else None

    @property
    def uptime_s(self) -> float | None:
        if self.snapshot is None or self.pid is None:
            return None
        return next((p.uptime_s for p in self.snapshot.processes if p.pid == self.pid), None)

    def to_json(self) -> dict[str, Any]:
        snap = self.snapshot
        health = self.health
        return {
            "schema": "mpsctl.status/1",
            "time": self.time,
            "name": self.name,
            "state": self.state,
            "exit_code": int(self.exit_code),
            "url": self.url,
            "pid": self.pid,
            "found_by": snap.found_by if snap else None,
            "pidfile_state": snap.pidfile_state if snap else None,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 1),
            "rss_bytes": snap.total_rss_bytes if snap and snap.running else None,
            "footprint_bytes": snap.total_footprint_bytes if snap else None,
            "processes": len(snap.processes) if snap else None,
            "health": None
            if health is None
            else {
                "ok": health.ok,
                "status": health.status,
                "latency_ms": health.latency_ms,
                "error": health.error,
            },
            "error": self.error,
        }


def service_status(settings: Settings) -> StatusResult:
    """LSB status: 0 running, 1 dead but pidfile, 3 not running, 4 unknown. Reads only."""
    name, url, now = settings.service.name, settings.service.url, utc_now_iso()
    try:
        snapshot = procs.find_service(settings)
    except Exception as exc:  # status must answer 4 (unknown), whatever psutil raises
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, None, None, now, str(exc))
    health = check_health(settings)
    foreign = _foreign_pidfile(settings, snapshot)
    if foreign:
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, None, health, now, foreign)
    if snapshot.running:
        return StatusResult(name, "running", StatusExit.RUNNING, url, snapshot, health, now)
    if health.ok:
        # something answers, but no process we can name: not started by mpsctl, no match
        msg = "the service answers but its process is unknown (set service.match)"
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, snapshot, health, now, msg)
    if snapshot.pidfile_state in ("stale", "reused"):
        return StatusResult(name, "dead", StatusExit.DEAD_PIDFILE, url, snapshot, health, now)
    if snapshot.pidfile_state == "invalid":
        msg = (
            f"the pidfile {snapshot.pidfile_path or default_pidfile_path(settings)} cannot be "
            "read (`mpsctl stop` removes an unparseable one)"
        )
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, snapshot, health, now, msg)
    return StatusResult(name, "stopped", StatusExit.NOT_RUNNING, url, snapshot, health, now)
