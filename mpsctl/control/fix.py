"""fix: stop, clean and restart a service in trouble, safely, as one plain function.

Lock, probe, stop, clean the Python caches, start with the configured limits, verify health,
optionally ask a test question, probe again; the whole run is one line in
``MPSCTL_HOME/history/fix.jsonl`` (the audit trail the restart-loop guard reads back).
Stop and start are ``mpsctl.control.stop``'s and ``mpsctl.control.start``'s, run under
this function's lock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mpsctl.ask import ask_once
from mpsctl.client import read_token
from mpsctl.control import audit, cache
from mpsctl.control.events import Events, SilentEvents
from mpsctl.control.lock import service_lock
from mpsctl.control.start import StartFailed, StartOptions, StartResult, start_while_locked
from mpsctl.control.stop import stop_while_locked
from mpsctl.errors import ClientError, LockedError, ServiceError
from mpsctl.settings import Settings
from mpsctl.units import fmt_bytes, utc_now_iso

if TYPE_CHECKING:
    from mpsctl.observe.probe import ProbeResult


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
    status: Literal["fixed", "healthy", "failed", "refused"]
    trigger: str
    before: dict[str, Any]
    after: dict[str, Any] | None
    actions: tuple[FixAction, ...]
    restarted: bool
    healthy: bool
    message: str
    time: str
    answer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.fix/1",
            "time": self.time,
            "status": self.status,
            "trigger": self.trigger,
            "healthy": self.healthy,
            "restarted": self.restarted,
            "message": self.message,
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
        "accelerator_held_bytes": held,
        "accelerator_limit_bytes": result.accelerator.limit_bytes,
        "host_used_percent": result.host.percent if result.host else None,
        "death": None if result.death is None else result.death.get("text"),
    }


def _probe(settings: Settings) -> ProbeResult:
    from mpsctl.observe.probe import take_probe

    return take_probe(settings)


def fix_service(
    settings: Settings,
    options: FixOptions | None = None,
    *,
    events: Events | None = None,
    lock_wait: float = 0.0,
    probe: Callable[[Settings], ProbeResult] = _probe,
) -> FixResult:
    """Lock, probe, stop, clean the cache, start with the configured limits, verify, probe.

    Every run, refused or not, leaves one line in ``history/fix.jsonl``.
    """
    opts = options or FixOptions()
    trigger = "if-unhealthy" if opts.if_unhealthy else "manual"
    path = audit.fix_history_path(settings.home)
    now = utc_now_iso()
    try:
        with service_lock(settings.home, wait=lock_wait, purpose="fix"):
            result = _fix_locked(settings, opts, events or SilentEvents(), probe, trigger)
    except LockedError as exc:
        locked = {"time": now, "pid": os.getpid(), "trigger": trigger, "result": "locked"}
        audit.append_record(path, {**locked, "restarted": False, "message": str(exc)})
        raise
    audit.append_record(
        path,
        {
            "time": result.time,
            "pid": os.getpid(),
            "trigger": trigger,
            "result": result.status,
            "restarted": result.restarted,
            "healthy": result.healthy,
            "message": result.message,
            "before": result.before,
            "after": result.after,
            "actions": [a.to_json() for a in result.actions],
        },
    )
    return result


def _fix_locked(
    settings: Settings,
    opts: FixOptions,
    events: Events,
    probe: Callable[[Settings], ProbeResult],
    trigger: str,
) -> FixResult:
    when = utc_now_iso()
    before_probe = probe(settings)
    before = probe_figures(before_probe)
    actions: list[FixAction] = []

    def done(status: Any, healthy: bool, msg: str, *, after: dict[str, Any] | None = None,
             restarted: bool = False, answer: str | None = None) -> FixResult:  # fmt: skip
        return FixResult(status, trigger, before, after, tuple(actions), restarted, healthy, msg,
                         when, answer)  # fmt: skip

    if opts.if_unhealthy and before["verdict"] == "OK":
        return done("healthy", True, "probe verdict OK: nothing to do")

    max_restarts = settings.fix.max_restarts if opts.max_restarts is None else opts.max_restarts
    within = settings.fix.within if opts.within is None else opts.within
    recent = audit.restarts_within(audit.fix_history_path(settings.home), within, time.time())
    if opts.if_unhealthy:
        # The guard stops an automatic restart loop: a person's own `mpsctl fix` runs
        # (trigger "manual") do not use up the watchdog's budget.
        recent = [r for r in recent if r.get("trigger") != "manual"]
    guarded = opts.if_unhealthy or opts.max_restarts is not None or opts.within is not None
    if guarded and len(recent) >= max_restarts:
        return done(
            "refused",
            bool(before.get("healthy")),
            f"refusing to restart: {len(recent)} restart(s) in the last {within:g} s "
            f"(fix.max_restarts = {max_restarts}); a restart loop hides the cause: "
            "see `mpsctl logs` and `mpsctl oom`",
        )

    def step(name: str, func: Callable[[], str]) -> bool:
        began = time.monotonic()
        try:
            detail = func()
        except Exception as exc:  # each step reports; the run ends with a verdict, not a trace
            detail = str(exc)
            if isinstance(exc, StartFailed) and exc.log_tail:
                # the audit trail should say why without a trip to the log
                detail += " | log: " + " / ".join(exc.log_tail[-3:])
            actions.append(FixAction(name, False, detail, time.monotonic() - began))
            return False
        actions.append(FixAction(name, True, detail, time.monotonic() - began))
        return True

    def do_stop() -> str:
        stopped = stop_while_locked(settings, timeout=opts.stop_timeout, use_match=opts.use_match)
        if stopped.status == "already-stopped":
            return "was not running"
        return (
            f"{len(stopped.processes)} process(es), freed {fmt_bytes(stopped.freed_rss_bytes)} RSS"
        )

    def do_clean() -> str:
        cleaned = cache.clean_python_cache(settings.service.workdir, venv=settings.service.venv)
        return f"{cleaned.files_removed} file(s), {fmt_bytes(cleaned.bytes_freed)}"

    started: list[StartResult] = []

    def do_start() -> str:
        started.append(start_while_locked(settings, opts.start, events))
        res = started[0]
        limit = f"; MPS {res.limit.describe()}" if res.limit.recommended_max_bytes else ""
        return f"pid {res.pid}, healthy after {res.startup_s or 0:.1f} s{limit}"

    if not step("stop", do_stop):
        return done("failed", False, f"stop failed: {actions[-1].detail}")
    step("clean-cache", do_clean)  # a failed cache clean does not block the restart
    if not step("start", do_start):
        return done("failed", False, f"start failed: {actions[-1].detail}", restarted=True)

    answer: str | None = None
    if opts.ask is not None:
        answers: list[str] = []

        def do_ask() -> str:
            answers.append(ask_question(settings, opts.ask or ""))
            return answers[0][:80]

        step("ask", do_ask)
        answer = answers[0] if answers else None

    after_probe = probe(settings)
    after = probe_figures(after_probe)
    healthy = bool(after.get("healthy")) and all(a.ok for a in actions if a.name != "clean-cache")
    if healthy:
        msg = f"restarted; verdict {after['verdict']}"
        return done("fixed", True, msg, after=after, restarted=True, answer=answer)
    why = next((a.detail for a in actions if not a.ok and a.name != "clean-cache"), None)
    msg = f"not healthy after the restart: {why or '; '.join(after.get('reasons', []))}"
    return done("failed", False, msg, after=after, restarted=True, answer=answer)


def ask_question(settings: Settings, question: str) -> str:
    """One test query, as ``mpsctl ask`` sends it; the answer text (or the reply excerpt)."""
    try:
        result = ask_once(settings.service, question, token=read_token(settings.service))
    except ClientError as exc:
        raise ServiceError(f"test query failed: {exc}") from None
    if result.answer is not None:
        return result.answer
    return json.dumps(dict(result.body), ensure_ascii=False)[:200]
