"""``mpsctl start``: spawn the service with the settings' environment, wait until it is healthy.

Takes the lock (``control.lock``) first, looks at the machine through ``observe.processes`` and
returns a frozen result that ``mpsctl.render`` shows. Failures are ``mpsctl.errors``
exceptions."""

from __future__ import annotations

import contextlib
import http.client  # noqa: F401 - loaded before the wait, not after the first answer
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mpsctl import __version__
from mpsctl.client import HealthCheck, ServiceClient, health_now
from mpsctl.control import service_log
from mpsctl.control.events import Events, SilentEvents
from mpsctl.control.lock import service_lock
from mpsctl.control.memlimit import MemoryLimit, memory_limit
from mpsctl.control.pidfile import (
    PidRecord,
    corrupt_path,
    default_pidfile_path,
    foreign_pidfile,
    record_as_running,
    remove_bad_pidfile,
    remove_pidfile,
    write_pidfile,
)
from mpsctl.control.preflight import (
    check_port_free,
    preflight_warnings,
    service_argv,
)
from mpsctl.control.signals import KILL_GRACE_S, signal_and_wait
from mpsctl.control.startup_log import follow_phases
from mpsctl.durations import seconds_setting
from mpsctl.errors import ExitCode, ServiceError
from mpsctl.observe import processes
from mpsctl.paths import LAST_HEALTH
from mpsctl.service_env import service_env
from mpsctl.settings import Settings
from mpsctl.storage import atomic_write_json
from mpsctl.torch_env import torch_env
from mpsctl.units import iso_utc, utc_now_iso

LOG_TAIL_LINES = 20


# --------------------------------------------------------------------------- health
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

    def __init__(
        self, message: str, *, log_file: Path, log_tail: list[str], spawned: bool = True
    ) -> None:
        super().__init__(message)
        self.log_file = log_file
        self.log_tail = log_tail
        #: a process was started (and stopped again): the watchdog's budget counts it
        self.spawned = spawned


def start_service(
    settings: Settings,
    options: StartOptions | None = None,
    *,
    events: Events | None = None,
    lock_wait: float = 0.0,
) -> StartResult:
    """Start the service detached and wait for a healthy answer (takes the lock).

    ``--foreground`` runs it as a child instead and returns only when it ends: the lock is
    left first (``foreground.RunInForeground``), then this process ends as the child did.
    """
    from mpsctl.control.foreground import RunInForeground, end_like

    try:
        with service_lock(settings.home, wait=lock_wait, purpose="start"):
            return start_while_locked(settings, options or StartOptions(), events or SilentEvents())
    except RunInForeground as foreground:
        raise SystemExit(end_like(foreground.run.wait())) from None


def _already_running(
    settings: Settings,
    snapshot: processes.ServiceSnapshot,
    argv: tuple[str, ...],
    limit: MemoryLimit,
) -> StartResult:
    check = health_now(settings)
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


def start_while_locked(
    settings: Settings,
    options: StartOptions,
    events: Events,
    *,
    just_stopped: set[int] | None = None,
) -> StartResult:
    """start_service's body, for a caller that already holds the lock (restart, fix).

    ``just_stopped``: the pids a stop under the same lock has just ended; their port is
    waited for (up to service.stop_timeout) instead of refused.
    """
    service = settings.service
    timeout = seconds_setting(
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
    from mpsctl.plan.configured import start_notes  # stop and status need no plan

    plan_warnings, plan_infos = start_notes(settings, options.model)
    warnings += plan_warnings
    for warning in warnings:
        events.warn(warning)
    for info in plan_infos:
        events.info(info)
    if limit.recommended_max_bytes is not None or (
        sys.platform == "darwin" and settings.memory.device in ("auto", "mps")
    ):
        events.info(f"MPS memory limit: {limit.describe()}")

    snapshot = processes.find_service(settings)
    foreign = foreign_pidfile(settings, snapshot)
    if foreign:
        raise ServiceError(f"{foreign}; nothing started")
    if snapshot.running:
        if options.foreground:
            # a unit is about to supervise this process: a second copy would fight the
            # first for the port, and "already running" would make the unit think it ran
            raise ServiceError(
                f"{service.name} is already running (pid {snapshot.roots[0]}, found by "
                f"{snapshot.found_by}); stop it first (mpsctl stop), then let the unit start it",
                exit_code=ExitCode.ALREADY_RUNNING,
            )
        return _already_running(settings, snapshot, argv, limit)
    pidfile = snapshot.pidfile_path or default_pidfile_path(settings)
    if snapshot.pidfile_state in ("stale", "reused", "invalid") and remove_bad_pidfile(
        pidfile, snapshot.pidfile_state
    ):
        if snapshot.pidfile_state == "invalid":
            events.info(f"the pidfile {pidfile} was corrupt: moved it to {corrupt_path(pidfile)}")
        else:
            events.info(f"removed a {snapshot.pidfile_state} pidfile {pidfile}")
    check_port_free(
        settings,
        wait=service.stop_timeout if just_stopped is not None else 0.0,
        just_stopped=just_stopped,
    )
    if not service.workdir.is_dir():
        raise ServiceError(f"service.workdir {service.workdir} is not a directory; nothing started")
    if service.venv is not None and not (service.venv / "bin").is_dir():
        raise ServiceError(
            f"service.venv {service.venv} has no bin/ directory; nothing started "
            "(create the venv, or fix service.venv: it is relative to service.workdir)"
        )
    env = service_env(settings)
    if settings.reference_service and settings.host_dir != settings.home:
        # one of several services: `mpsctl serve` reads its own [services.NAME] table
        env["MPSCTL_SERVICE"] = service.name
        if settings.config_file is not None:
            env["MPSCTL_CONFIG"] = str(settings.config_file)
    from mpsctl.control.foreground import clear_stop_mark

    with contextlib.suppress(OSError):  # started again: the manager's stop no longer holds
        clear_stop_mark(settings.home)

    if options.foreground:
        from mpsctl.control.foreground import spawn

        spawn(settings, argv, env, pidfile)  # raises RunInForeground

    try:
        rotated = service_log.rotate_if_needed(
            service.log_file, service.log_max_bytes, service.log_backups
        )
    except OSError as exc:
        raise ServiceError(
            f"cannot rotate service.log_file {service.log_file}: {exc.strerror}; nothing started"
        ) from None
    try:
        fd = service_log.open_append(service.log_file)
    except OSError as exc:
        raise ServiceError(
            f"cannot open service.log_file {service.log_file}: {exc.strerror}; nothing started"
        ) from None
    started_at = utc_now_iso()
    try:
        offset = os.fstat(fd).st_size
        service_log.append_line(
            fd, f"--- mpsctl {__version__} start {started_at}: {shlex.join(argv)}"
        )
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
            service_log.append_line(fd, f"--- mpsctl: cannot run {argv[0]}: {exc.strerror}")
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
            spawned=False,
        ) from None
    finally:
        os.close(fd)

    created = processes.create_time_of(proc.pid)
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
        with (
            events.waiting(f"waiting for {service.health_url} (up to {timeout:g} s)"),
            follow_phases(service.log_file, offset, events.phase),
        ):
            check = _wait_healthy(proc, settings, timeout)
        record = record_as_running(record, pidfile)
    except BaseException as exc:
        # a timeout, a crash, an unwritable pidfile or ^C: leave nothing behind that claims
        # to be the service
        _terminate_started(proc, record, settings)
        with contextlib.suppress(OSError, ServiceError):
            remove_pidfile(pidfile, pid=proc.pid)
        if isinstance(exc, _NotHealthy):
            tail = service_log.tail_lines(service.log_file, LOG_TAIL_LINES, offset=offset)
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


#: seconds between two health checks while start waits: a refused connect on a bare socket
#: costs tens of microseconds, so polling this often costs well under 1 % of a core and
#: start returns within about 10 ms of the service's first answer
HEALTH_POLL_S = 0.01


class _NotHealthy(Exception):
    pass


def _wait_healthy(proc: subprocess.Popen[bytes], settings: Settings, timeout: float) -> HealthCheck:
    """Poll health every ``HEALTH_POLL_S`` until the service answers, exits or times out."""
    deadline = time.monotonic() + timeout
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
            time.sleep(min(HEALTH_POLL_S, remaining))
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
        targets = dict(processes.tree_identities(record.pid, record.create_time))
        pgid = record.pgid
    else:
        targets = processes.session_members(proc.pid, record.create_time)
        pgid = None
    if targets:
        timeout = max(0.0, min(settings.service.stop_timeout, 60.0))
        signal_and_wait(targets, pgid=pgid, timeout=timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_S)
