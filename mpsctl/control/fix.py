"""fix: stop, clean and restart a service in trouble, safely, as one plain function.

Lock, probe, stop, clean the Python caches, start with the configured limits, verify health,
optionally ask a test question, probe again; the whole run is one line in
``MPSCTL_HOME/history/fix.jsonl`` (the audit trail the restart-loop guard reads back).
Stop and start are ``mpsctl.control.stop``'s and ``mpsctl.control.start``'s, run under
this function's lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mpsctl.ask import ask_once
from mpsctl.client import read_token
from mpsctl.control import audit, cache, supervisor, watchdog
from mpsctl.control.events import Events, SilentEvents
from mpsctl.control.lock import service_lock
from mpsctl.control.start import (
    StartFailed,
    StartOptions,
    StartResult,
    health_now,
    start_while_locked,
)
from mpsctl.control.stop import stop_while_locked
from mpsctl.control.supervisor import Runner, Supervision
from mpsctl.errors import ClientError, LockedError, ServiceError
from mpsctl.settings import Settings
from mpsctl.units import fmt_bytes, utc_now_iso

if TYPE_CHECKING:
    from mpsctl.probe import ProbeResult


@dataclass(frozen=True)
class FixAction:
    name: str
    ok: bool
    detail: str
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass(frozen=True)
class FixResult:
    #: skipped: the watchdog found no restart rule (busy, a WARNING, a rule left out of
    #: fix.restart_on); refused: the restart budget is spent (``gave_up`` when the service
    #: is down, the watchdog's own exit code)
    status: Literal["fixed", "healthy", "skipped", "failed", "refused"]
    trigger: str
    before: dict[str, Any]
    after: dict[str, Any] | None
    actions: tuple[FixAction, ...]
    restarted: bool
    healthy: bool
    message: str
    time: str
    answer: str | None = None
    #: the restart rule that fired (``not-running``, ``dead-pidfile``, ``unhealthy``,
    #: ``memory-critical``) and the rule in words
    rule: str | None = None
    rule_detail: str | None = None
    gave_up: bool = False
    alerted: bool = False
    #: the stop's drain: queries in flight, drained, cut (None: nothing was stopped)
    drain: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.fix/1",
            "time": self.time,
            "status": self.status,
            "trigger": self.trigger,
            "healthy": self.healthy,
            "restarted": self.restarted,
            "message": self.message,
            "rule": self.rule,
            "rule_detail": self.rule_detail,
            "gave_up": self.gave_up,
            "alerted": self.alerted,
            "drain": self.drain,
            "before": self.before,
            "after": self.after,
            "actions": [a.to_json() for a in self.actions],
            "answer": self.answer,
        }


@dataclass(frozen=True)
class FixOptions:
    if_unhealthy: bool = False
    max_restarts: int | None = None  # default: fix.max_restarts
    within: float | None = None  # default: fix.within
    ask: str | None = None
    use_match: bool = False
    stop_timeout: float | None = None
    start: StartOptions = field(default_factory=StartOptions)
    #: forget the watchdog's past restarts before this run (re-arm after a give-up)
    reset_budget: bool = False


def probe_figures(result: ProbeResult | None) -> dict[str, Any]:
    """The few probe figures worth a before/after row and a history line."""
    if result is None:
        return {"verdict": "UNKNOWN", "reasons": ["probe failed"]}
    snap = result.service
    held = result.accelerator.held_bytes
    return {
        "verdict": result.verdict.name,
        "reasons": result.reasons,
        "running": bool(snap and snap.running),
        "healthy": result.health.ok,
        "pid": snap.roots[0] if snap and snap.roots else None,
        "service_rss_bytes": snap.total_rss_bytes if snap and snap.running else None,
        "service_footprint_bytes": snap.total_footprint_bytes if snap else None,
        "accelerator_device": result.accelerator.device,
        "accelerator_held_bytes": held,
        "accelerator_limit_bytes": result.accelerator.limit_bytes,
        "host_used_percent": result.host.percent if result.host else None,
        "death": None if result.death is None else result.death.get("text"),
    }


def _probe(settings: Settings) -> ProbeResult:
    from mpsctl.probe import take_probe

    return take_probe(settings, health_timeout=settings.service.health_timeout)


def _window(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def fix_service(
    settings: Settings,
    options: FixOptions | None = None,
    *,
    events: Events | None = None,
    lock_wait: float = 0.0,
    probe: Callable[[Settings], ProbeResult] = _probe,
    supervise: Callable[[Settings], Supervision | None] | None = None,
    run_unit: Runner | None = None,
    alerts: watchdog.AlertSender | None = None,
) -> FixResult:
    """Lock, probe, stop, clean the cache, start with the configured limits, verify, probe.

    Under a systemd unit or launchd agent (``supervise``) the restart goes through the
    manager (``run_unit``): a copy started outside it would live in the fix job's own
    cgroup, which systemd kills when the job ends. Every run, refused or not, leaves one
    line in ``history/fix.jsonl``. ``alerts`` sends what the watchdog (``--if-unhealthy``)
    alerts on: a WARNING verdict change, giving up; without it nothing is sent.
    """
    opts = options or FixOptions()
    events = events or SilentEvents()
    trigger = "if-unhealthy" if opts.if_unhealthy else "manual"
    path = audit.fix_history_path(settings.home)
    now = utc_now_iso()
    try:
        with service_lock(settings.home, wait=lock_wait, purpose="fix"):
            if opts.reset_budget:
                audit.append_record(path, {"time": now, "pid": os.getpid(), "trigger": trigger,
                                           "result": "budget-reset", "restarted": False,
                                           "rearm": True})  # fmt: skip
            # looked up at call time: the seam through which tests answer for the manager
            unit = _Unit(
                supervise or supervisor.find_supervisor, run_unit or supervisor.run_command
            )
            result = _fix_locked(settings, opts, events, probe, trigger, unit, alerts)
            if trigger == "if-unhealthy" and result.restarted:
                # every restart the watchdog makes is news: one alert each, rule and death
                text = watchdog.restart_text(
                    result.rule, result.rule_detail, result.before.get("death")
                )
                document = watchdog.alert_document(
                    settings, "restarted", text, str(result.before.get("verdict"))
                )
                alerted, detail = (
                    alerts.send(document) if alerts is not None else (False, "no alert sender")
                )
                events.info(f"restart alert: {detail}")
                result = dataclasses.replace(result, alerted=alerted)
    except LockedError as exc:
        locked = {"time": now, "pid": os.getpid(), "trigger": trigger, "result": "locked"}
        audit.append_record(path, {**locked, "restarted": False, "message": str(exc)})
        raise
    record = {
        "time": result.time,
        "pid": os.getpid(),
        "trigger": trigger,
        "result": result.status,
        "restarted": result.restarted,
        "healthy": result.healthy,
        "message": result.message,
        "rule": result.rule,
        "rule_detail": result.rule_detail,
        "gave_up": result.gave_up,
        "alerted": result.alerted,
        "drain": result.drain,
        # a person's successful fix re-arms the watchdog's budget
        "rearm": trigger == "manual" and result.healthy,
        "before": result.before,
        "after": result.after,
        "actions": [a.to_json() for a in result.actions],
    }
    try:
        audit.append_record(path, record)
    except OSError as exc:  # a full or read-only MPSCTL_HOME: the result still stands
        events.warn(f"cannot append to the audit trail {path}: {exc.strerror}")
    return result


@dataclass(frozen=True)
class _Unit:
    detect: Callable[[Settings], Supervision | None]
    run: Runner


def _fix_locked(
    settings: Settings,
    opts: FixOptions,
    events: Events,
    probe: Callable[[Settings], ProbeResult],
    trigger: str,
    unit: _Unit,
    alerts: watchdog.AlertSender | None,
) -> FixResult:
    when = utc_now_iso()
    before_probe = probe(settings)
    before = probe_figures(before_probe)
    actions: list[FixAction] = []
    facts: dict[str, Any] = {"rule": None, "rule_detail": None, "drain": None}

    def done(status: Any, healthy: bool, msg: str, *, after: dict[str, Any] | None = None,
             restarted: bool = False, answer: str | None = None, gave_up: bool = False,
             alerted: bool = False) -> FixResult:  # fmt: skip
        return FixResult(status, trigger, before, after, tuple(actions), restarted, healthy, msg,
                         when, answer, facts["rule"], facts["rule_detail"], gave_up,
                         alerted, facts["drain"])  # fmt: skip

    max_restarts = settings.fix.max_restarts if opts.max_restarts is None else opts.max_restarts
    within = settings.fix.within if opts.within is None else opts.within
    history = audit.fix_history_path(settings.home)
    if opts.if_unhealthy:
        decision = watchdog.decide(settings, before_probe, check=health_now)
        facts["rule"], facts["rule_detail"] = decision.fired, decision.why
        if decision.rule is None:
            # WARNING findings alert (once per verdict change), they never restart
            if alerts is not None:
                alerts.on_change(before_probe)
            healthy = bool(before.get("healthy"))
            return done("healthy" if healthy else "skipped", healthy, decision.why)
        mark = watchdog.stopped_by_manager(settings.home)
        if decision.rule == "not-running" and mark is not None:
            facts["rule_detail"] = (
                f"{decision.why}; its service manager stopped it cleanly at {mark.get('time')} "
                f"({mark.get('how')}): not restarted (start it through the manager)"
            )
            return done("skipped", False, f"no restart: {facts['rule_detail']}")
        if decision.rule in ("not-running", "dead-pidfile"):
            managed = unit.detect(settings)
            if managed is not None and managed.stopped_by_operator:
                start = " ".join(managed.command("start"))
                facts["rule_detail"] = (
                    f"{decision.why}; {managed.describe()}: stopped by the operator, not "
                    f"failed; not restarted (start it with {start})"
                )
                return done("skipped", False, f"no restart: {facts['rule_detail']}")
        used = watchdog.budget_used(history, within, time.time())
        if len(used) >= max_restarts:
            text = (
                f"gave up after {len(used)} restart(s) in {_window(within)}; last death: "
                f"{watchdog.last_death(used, decision.why)}"
            )
            rearm = (
                "re-arm: run `mpsctl fix` by hand, or `mpsctl fix --if-unhealthy --reset-budget`"
            )
            if decision.rule == "memory-critical":  # the service is up: refuse, do not give up
                return done("refused", True, f"refusing to restart: {text}; {rearm}")
            alerted = False
            if not watchdog.gave_up_alerted(history):
                document = watchdog.give_up_document(settings, text, before["verdict"])
                alerted, detail = (
                    alerts.send(document) if alerts is not None else (False, "no alert sender")
                )
                events.info(f"give-up alert: {detail}")
            return done("refused", False, f"{text}; {rearm}", gave_up=True, alerted=alerted)
    elif opts.max_restarts is not None or opts.within is not None:
        recent = audit.restarts_within(history, within, time.time())
        if len(recent) >= max_restarts:
            return done(
                "refused",
                bool(before.get("healthy")),
                f"refusing to restart: {len(recent)} restart(s) in the last {within:g} s "
                f"(--max-restarts {max_restarts}); a restart loop hides the cause: "
                "see `mpsctl logs` and `mpsctl oom`",
            )

    if before.get("running"):
        problem = watchdog.preflight(settings)
        if problem is not None:
            return done(
                "failed",
                bool(before.get("healthy")),
                f"nothing stopped: {problem}; a restart could not bring the service back",
            )

    failures: list[Exception] = []

    def step(name: str, func: Callable[[], str]) -> bool:
        began = time.monotonic()
        try:
            detail = func()
        except Exception as exc:  # each step reports; the run ends with a verdict, not a trace
            failures.append(exc)
            detail = str(exc)
            if isinstance(exc, StartFailed) and exc.log_tail:
                # the audit trail should say why without a trip to the log
                detail += " | log: " + " / ".join(exc.log_tail[-3:])
            actions.append(FixAction(name, False, detail, time.monotonic() - began))
            return False
        actions.append(FixAction(name, True, detail, time.monotonic() - began))
        return True

    why = f" ({facts['rule_detail']})" if facts["rule_detail"] else ""
    managed = unit.detect(settings)
    if managed is not None:
        if not step("restart", lambda: _restart_through(settings, managed, unit.run)):
            msg = f"restart through {managed.unit} failed: {actions[-1].detail}"
            return done("failed", False, msg, restarted=True)
        return _verified(settings, probe, actions, done, f"restarted through {managed.unit}{why}")

    stopped_pids: set[int] = set()

    def do_stop() -> str:
        stopped = stop_while_locked(settings, timeout=opts.stop_timeout, use_match=opts.use_match)
        stopped_pids.update(p.pid for p in stopped.processes)
        facts["drain"] = None if stopped.drain is None else stopped.drain.to_json()
        if stopped.status == "already-stopped":
            return "was not running"
        drained = f"; {stopped.drain.text()}" if stopped.drain is not None else ""
        return (
            f"{len(stopped.processes)} process(es), freed {fmt_bytes(stopped.freed_rss_bytes)} "
            f"RSS{drained}"
        )

    def do_clean() -> str:
        cleaned = cache.clean_python_cache(settings.service.workdir, venv=settings.service.venv)
        return f"{cleaned.files_removed} file(s), {fmt_bytes(cleaned.freed_bytes)}"

    started: list[StartResult] = []

    def do_start() -> str:
        started.append(start_while_locked(settings, opts.start, events, just_stopped=stopped_pids))
        res = started[0]
        limit = f"; MPS {res.limit.describe()}" if res.limit.recommended_max_bytes else ""
        return f"pid {res.pid}, healthy after {res.startup_s or 0:.1f} s{limit}"

    if not step("stop", do_stop):
        return done("failed", False, f"stop failed: {actions[-1].detail}")
    step("clean-cache", do_clean)  # a failed cache clean does not block the restart
    if not step("start", do_start):
        # only a start that spawned a process is a restart (the budget counts those)
        spawned = isinstance(failures[-1], StartFailed) and failures[-1].spawned
        return done("failed", False, f"start failed: {actions[-1].detail}", restarted=spawned)

    answer: str | None = None
    if opts.ask is not None:
        answers: list[str] = []

        def do_ask() -> str:
            answers.append(ask_question(settings, opts.ask or ""))
            return answers[0][:80]

        step("ask", do_ask)
        answer = answers[0] if answers else None
    return _verified(settings, probe, actions, done, f"restarted{why}", answer=answer)


def _verified(
    settings: Settings,
    probe: Callable[[Settings], ProbeResult],
    actions: list[FixAction],
    done: Callable[..., FixResult],
    what: str,
    *,
    answer: str | None = None,
) -> FixResult:
    after = probe_figures(probe(settings))
    healthy = bool(after.get("healthy")) and all(a.ok for a in actions if a.name != "clean-cache")
    if healthy:
        msg = f"{what}; verdict {after['verdict']}"
        return done("fixed", True, msg, after=after, restarted=True, answer=answer)
    why = next((a.detail for a in actions if not a.ok and a.name != "clean-cache"), None)
    msg = f"not healthy after the restart: {why or '; '.join(after.get('reasons', []))}"
    return done("failed", False, msg, after=after, restarted=True, answer=answer)


def _restart_through(settings: Settings, managed: Supervision, run: Runner) -> str:
    """Restart through the service manager, then wait for a healthy answer."""
    argv = managed.command("restart")
    code, _out = run(argv)
    if code != 0:
        raise ServiceError(f"`{' '.join(argv)}` exited with status {code}")
    deadline = time.monotonic() + settings.service.start_timeout
    while True:
        check = health_now(settings, timeout=min(settings.service.health_timeout, 5.0))
        if check.ok:
            return f"{' '.join(argv)}; healthy"
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"`{' '.join(argv)}` ran, but {settings.service.name} was not healthy within "
                f"{settings.service.start_timeout:g} s: {check.error}"
            )
        time.sleep(0.5)


def ask_question(settings: Settings, question: str) -> str:
    """One test query, as ``mpsctl ask`` sends it; the answer text (or the reply excerpt)."""
    try:
        result = ask_once(settings.service, question, token=read_token(settings.service))
    except ClientError as exc:
        raise ServiceError(f"test query failed: {exc}") from None
    if result.answer is not None:
        return result.answer
    return json.dumps(dict(result.body), ensure_ascii=False)[:200]
