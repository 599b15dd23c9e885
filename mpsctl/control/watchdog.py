"""The watchdog's rules: when ``fix --if-unhealthy`` restarts, when it gives up, what it checks
before it stops anything.

- **Restart policy.** A restart happens only for the rules in ``[fix] restart_on``: the
  service is not running (``not-running``), its pidfile names a dead process
  (``dead-pidfile``), it failed ``health_retries`` consecutive health checks
  (``unhealthy``), or its memory is CRITICAL by the thresholds (``memory-critical``).
  WARNING findings (an OOM the service survived, host memory, swap) never restart a
  healthy service: they alert.
- **Health rule**, like a liveness probe: one failed check is not a death. After
  ``health_retries`` failed checks the service is busy, not dead, when its memory report
  shows queries in flight (``limiter.in_flight``), or, when no check had a body to read,
  when it wanted the CPU over the whole check window (``observe.processes.tree``: on a CPU or
  waiting for one, whatever the host's load). A stopped process (SIGSTOP, a debugger) is
  never busy, nor is one that the last runs already excused.
- **Budget.** Only restarts that happened count, only the watchdog's own, only since the
  last re-arm (a person's ``mpsctl fix`` or ``--reset-budget``). When it is spent and the
  service is down, the watchdog gives up: its own exit code, one alert.
- **Preflight.** The pidfile, the lock and the log must be writable (space and permission)
  before a running service is stopped: a full or read-only disk must not turn a running
  service into a dead one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mpsctl import __version__
from mpsctl.client import HealthCheck
from mpsctl.control import audit
from mpsctl.errors import ConfigError, ProbeExit
from mpsctl.observe.processes.tree import BusySample, busy_sample, judge_busy
from mpsctl.settings import Settings
from mpsctl.units import GIB, utc_now_iso

if TYPE_CHECKING:
    from mpsctl.probe import ProbeResult

#: the shortest window the busy rule measures CPU over (health_retries 1 has no retries)
MIN_BUSY_WINDOW_S = 1.0
#: consecutive watchdog runs that excuse a silent service as busy, at least; it is hung once
#: they also span more than service.request_timeout
BUSY_RUNS = 2
#: bytes a preflight writes to each state directory: room for a pidfile, an audit line, a lock
PREFLIGHT_BYTES = 16 * 1024


@dataclass(frozen=True)
class Decision:
    """Whether the watchdog restarts, and the rule (or the reason it does not) in words."""

    rule: str | None  # the restart rule that fired and is enabled, else None
    why: str
    fired: str | None = None  # a rule that fired, even one left out of restart_on


def in_flight(report: dict[str, Any] | None) -> int:
    """Queries in flight by the memory report (``limiter.in_flight``, the documented key)."""
    if not isinstance(report, dict):
        return 0
    limiter = report.get("limiter")
    value = limiter.get("in_flight") if isinstance(limiter, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _stopped(result: ProbeResult) -> bool:
    """A root process stopped by a signal (SIGSTOP, SIGTSTP) answers nothing, ever."""
    snap = result.service
    if snap is None:
        return False
    return any(p.status == "stopped" for p in snap.processes if p.pid in snap.roots)


def _health_rule(
    settings: Settings,
    result: ProbeResult,
    check: Callable[[Settings, float], HealthCheck],
    sleep: Callable[[float], None],
    measure: Callable[[tuple[int, ...]], BusySample] = busy_sample,
) -> tuple[bool, str]:
    """(dead, why) for a running service whose first health check failed.

    The CPU and thread samples span every retry: the window the service had to answer.
    """
    service = settings.service
    tries = service.health_retries
    pids = result.service.pids if result.service is not None else ()
    samples = [measure(pids)]
    last = result.health.error or "no answer"
    queries = in_flight(result.health.memory_report)
    for attempt in range(2, tries + 1):
        sleep(service.health_interval)
        answer = check(settings, service.health_timeout)
        if answer.ok:
            return False, f"health recovered on check {attempt} of {tries}"
        last = answer.error or last
        if isinstance(answer.body, dict):
            memory = answer.body.get("memory")
            queries = max(queries, in_flight(memory if isinstance(memory, dict) else None))
        samples.append(measure(pids))
    dead = f"unhealthy: {tries} consecutive failed health checks ({last})"
    if _stopped(result):
        return True, f"{dead}; stopped by a signal (SIGSTOP/SIGTSTP): it cannot answer"
    if excused_before(settings):
        return True, (
            f"{dead}; called busy by every run for more than {settings.service.request_timeout:g}"
            " s (service.request_timeout): hung, not busy"
        )
    if queries:
        return False, (
            f"busy, not dead: {tries} slow health checks while {queries} queries are in flight"
        )
    window = samples[-1].at - samples[0].at
    if window < MIN_BUSY_WINDOW_S:
        sleep(MIN_BUSY_WINDOW_S - window)
        samples.append(measure(pids))
    verdict = judge_busy(samples)
    if verdict.busy:
        return False, f"busy, not dead: {tries} slow health checks; {verdict.detail}"
    return True, f"{dead}; {verdict.detail}"


def excused_before(settings: Settings, now: float | None = None) -> bool:
    """The watchdog has called the service busy on its last BUSY_RUNS runs or more, over
    longer than one query may take (``service.request_timeout``): a service silent that long
    is hung, whatever its CPU or in-flight count says."""
    records = [
        r for r in audit.read_records(audit.fix_history_path(settings.home))
        if r.get("trigger") == "if-unhealthy"
    ]  # fmt: skip
    streak: list[dict[str, Any]] = []
    for record in reversed(records):
        if "busy, not dead" not in str(record.get("rule_detail") or ""):
            break
        streak.append(record)
    if len(streak) < BUSY_RUNS:
        return False
    first = audit.record_time(streak[-1])
    moment = time.time() if now is None else now
    return first is not None and moment - first > settings.service.request_timeout


def stopped_by_manager(home: Path) -> dict[str, Any] | None:
    """The record ``start --foreground`` leaves when its service manager stopped it cleanly
    (removed by the next start), or None."""
    from mpsctl.control.foreground import read_stop_mark

    return read_stop_mark(home)


def _memory_critical(settings: Settings, result: ProbeResult) -> str | None:
    from mpsctl.probe import service_memory_bytes

    limits = settings.thresholds
    size, label = service_memory_bytes(result.service)
    # above the threshold, as the probe's range rule: a value exactly at it is OK
    if size is not None and size / GIB > limits.service_memory_gib[1]:
        return (
            f"memory-critical: service {label} {size / GIB:.1f} GiB > "
            f"{limits.service_memory_gib[1]:g} GiB"
        )
    used = result.accelerator.limit_percent
    if used is not None and used > limits.accelerator_limit_percent[1]:
        return (
            f"memory-critical: {result.accelerator.device} at {used:.1f}% of its limit > "
            f"{limits.accelerator_limit_percent[1]:g}%"
        )
    return None


def decide(
    settings: Settings,
    result: ProbeResult,
    *,
    check: Callable[[Settings, float], HealthCheck],
    sleep: Callable[[float], None] = time.sleep,
) -> Decision:
    """Which restart rule fires for this probe; WARNING findings never make one."""
    snap = result.service
    fired: str | None = None
    why = ""
    if snap is None:
        return Decision(None, "no restart: the service's processes could not be inspected")
    if not snap.running:
        if result.health.ok:
            return Decision(None, "no restart: the service answers (its process is unknown)")
        if snap.pidfile_state in ("stale", "reused"):
            fired, why = "dead-pidfile", "dead-pidfile: the pidfile names a dead process"
        else:
            fired, why = "not-running", "not-running: no service process found"
        if result.health.error:
            why += f"; {result.health.error}"
        if snap.others:
            # a copy on another port, a neighbour loading its model: named, never touched
            pids = ", ".join(str(p.pid) for p in snap.others)
            why += f"; left alone (they match, but are not the service): pid {pids}"
    elif result.health.checked and not result.health.ok:
        dead, why = _health_rule(settings, result, check, sleep)
        if not dead:
            return Decision(None, f"no restart: {why}")
        fired = "unhealthy"
    else:
        memory = _memory_critical(settings, result)
        if memory is None:
            if result.verdict is ProbeExit.OK:
                return Decision(None, "probe verdict OK: nothing to do")
            return Decision(
                None, f"no restart: healthy, verdict {result.verdict.name} (WARNINGs only alert)"
            )
        fired, why = "memory-critical", memory
    if fired not in settings.fix.restart_on:
        return Decision(None, f"no restart: {why} (not in fix.restart_on)", fired)
    return Decision(fired, why, fired)


# --------------------------------------------------------------------------- budget
def _ts(record: dict[str, Any]) -> float:
    return audit.record_time(record) or 0.0


def budget_used(path: Path, within: float, now: float) -> list[dict[str, Any]]:
    """The watchdog's restarts within ``within`` seconds since the last re-arm."""
    records = audit.read_records(path)
    rearmed = max((_ts(r) for r in records if r.get("rearm") is True), default=0.0)
    return [
        r
        for r in audit.restarts_within(path, within, now)
        if r.get("trigger") != "manual" and _ts(r) > rearmed
    ]


def gave_up_alerted(path: Path) -> bool:
    """An alert for giving up was sent after the last restart or re-arm: do not repeat it."""
    records = audit.read_records(path)
    last = max(
        (_ts(r) for r in records if r.get("restarted") is True or r.get("rearm") is True),
        default=0.0,
    )
    return any(r.get("gave_up") is True and r.get("alerted") is True and _ts(r) >= last
               for r in records)  # fmt: skip


def last_death(records: list[dict[str, Any]], now_why: str) -> str:
    """How the service last died: the reason of the latest restart, else this run's."""
    for record in reversed(records):
        rule = record.get("rule_detail")
        if isinstance(rule, str) and rule:
            return rule
    return now_why


class AlertSender(Protocol):
    """How the watchdog's alerts leave. The watchdog decides what to alert; its caller (the
    ``fix`` command) hands in the sender, so that control/ never imports monitor/."""

    def send(self, document: dict[str, Any]) -> tuple[bool, str]:
        """Deliver one alert document to every target; (any delivered, details)."""
        ...

    def on_change(self, result: ProbeResult) -> int:
        """Alert when the probe's verdict changed (once per change); the number sent."""
        ...


def restart_text(rule: str | None, rule_detail: str | None, death: str | None) -> str:
    """The ``restarted`` alert's words: the rule that fired and how the service died."""
    how = death or "no evidence found"
    return f"restarted ({rule or 'unknown rule'}: {rule_detail or 'no detail'}); died: {how}"


def give_up_document(settings: Settings, text: str, verdict: str) -> dict[str, Any]:
    """The alert that says the watchdog gave up (the sender adds the alert schema)."""
    return alert_document(settings, "gave-up", text, verdict)


def alert_document(settings: Settings, kind: str, text: str, verdict: str) -> dict[str, Any]:
    """One watchdog alert, ``restarted`` or ``gave-up`` (the sender adds the alert schema)."""
    return {
        "kind": kind,
        "time": utc_now_iso(),
        "hostname": socket.gethostname(),
        "service": settings.service.name,
        "url": settings.service.url,
        "verdict": verdict,
        "previous_verdict": None,
        "reasons": [text],
        "text": f"{verdict}: {settings.service.name} on {socket.gethostname()}: {text}",
        "mpsctl_version": __version__,
    }


# --------------------------------------------------------------------------- preflight
def _writable_dir(directory: Path, what: str) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".mpsctl-preflight-", dir=directory)
    except OSError as exc:
        return f"cannot write {what} in {directory}: {exc.strerror}"
    try:
        try:
            os.write(fd, b"\0" * PREFLIGHT_BYTES)
            os.fsync(fd)
        except OSError as exc:
            return f"cannot write {what} in {directory}: {exc.strerror}"
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return None


def preflight(settings: Settings) -> str | None:
    """Why a restart would fail where the service is now running, or None.

    Checked before stopping anything: the pidfile and the lock (MPSCTL_HOME), the log
    (service.log_file) with room to write, the workdir, the venv, the service environment.
    """
    from mpsctl.service_env import service_env

    service = settings.service
    problem = _writable_dir(settings.home, "the pidfile and the lock")
    # before the log's directory is made: the log usually lives in the workdir, and making
    # it would hide a workdir that is gone
    if problem is None and not service.workdir.is_dir():
        problem = f"service.workdir {service.workdir} is not a directory"
    if problem is None:
        problem = _writable_dir(service.log_file.parent, "the service log")
    if problem is None and service.log_file.exists() and not os.access(service.log_file, os.W_OK):
        problem = f"cannot write the service log {service.log_file}: permission denied"
    if problem is None and service.venv is not None and not (service.venv / "bin").is_dir():
        problem = f"service.venv {service.venv} has no bin/ directory"
    if problem is None:
        try:
            service_env(settings)
        except ConfigError as exc:
            problem = str(exc)
    return problem
