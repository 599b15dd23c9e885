"""The watchdog's decisions, in process: restart or not, busy or dead, the budget, the give-up,
one alert. Each rule and its boundary, with exact values and whole messages (the scenario
suite proves the same end to end, in subprocesses a mutation run cannot see).

The probe results here are plain data (what ``take_probe`` returns); the health checks and
CPU samples the rule asks for are given as data too, so each boundary is exact.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mpsctl.client import HealthCheck
from mpsctl.control import audit, watchdog
from mpsctl.errors import ProbeExit
from mpsctl.monitor.alerts import WatchdogAlerts
from mpsctl.observe.accelerator import AcceleratorFigures
from mpsctl.observe.processes import ProcInfo, ServiceSnapshot
from mpsctl.observe.processes.tree import BusySample as Sample
from mpsctl.probe import Finding, HealthFigures, ProbeResult
from mpsctl.settings import Settings, Thresholds, load_settings

GIB = 1024**3
TIMEOUT = "timed out after 1 s"


def settings(write_config: Callable[..., Path], extra: str = "", **service: Any) -> Settings:
    keys = {"health_timeout": 1, "health_retries": 3, "health_interval": 0.5, **service}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    alerts = Path(os.environ["MPSCTL_HOME"]).parent / "alerts.jsonl"
    write_config(
        '[service]\nname = "mvp"\ncommand = ["uvicorn", "app.main:app"]\n'
        f'url = "http://127.0.0.1:9"\n{lines}'
        f'[alerts]\ncommand = "tee -a {alerts}"\n{extra}'
    )
    return load_settings()


def proc(pid: int = 4242, status: str = "sleeping", rss: int | None = GIB) -> ProcInfo:
    return ProcInfo(
        pid, 1, ("uvicorn", "app.main:app"), "op", rss, None, None, 4, 0.0, 10.0, {}, status
    )


def probe(
    *,
    running: bool = True,
    pidfile_state: str = "ok",
    checked: bool = True,
    ok: bool = True,
    error: str | None = None,
    memory: dict[str, Any] | None = None,
    status: str = "sleeping",
    rss: int | None = GIB,
    accelerator: AcceleratorFigures | None = None,
    findings: tuple[Finding, ...] = (),
    service: bool = True,
) -> ProbeResult:
    snap = ServiceSnapshot(
        "pidfile" if running else None,
        pidfile_state,  # type: ignore[arg-type]
        None,
        (4242,) if running else (),
        (proc(status=status, rss=rss),) if running else (),
    )
    health = HealthFigures(checked, ok, 200 if ok else None, 5.0, error, None, memory)
    return ProbeResult(
        "2026-01-01T00:00:00Z",
        "mvp",
        "http://127.0.0.1:9",
        None,
        snap if service else None,
        health,
        accelerator or AcceleratorFigures(None, None, None, None, None, None),
        (),
        findings,
        Thresholds((80, 90), (8, 16), (85, 95), (50, 80)),
    )


def failing(*errors: str, body: Any = None) -> Callable[[Settings, float], HealthCheck]:
    """Answers the retries in order: each error a failed check, "ok" a healthy one."""
    answers = list(errors)
    asked: list[float] = []

    def check(_settings: Settings, timeout: float) -> HealthCheck:
        asked.append(timeout)
        error = answers.pop(0)
        if error == "ok":
            return HealthCheck(True, 200, 3.0, {"status": "ok"}, None)
        return HealthCheck(False, 503 if body else None, None, body, error)

    check.asked = asked  # type: ignore[attr-defined]
    return check


def samples(*points: tuple[float, float | None, int, int, float | None]) -> Callable[..., Sample]:
    """CPU samples in order: (monotonic, cpu seconds, threads running, threads, runnable)."""
    queue = [Sample(*p) for p in points]

    def measure(_pids: tuple[int, ...]) -> Sample:
        return queue.pop(0)

    return measure


def no_sleep(slept: list[float] | None = None) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if slept is not None:
            slept.append(seconds)

    return sleep


# --------------------------------------------------------------------------- decide
def test_a_healthy_service_with_an_ok_verdict_is_left_alone(write_config) -> None:
    decision = watchdog.decide(settings(write_config), probe(), check=failing())
    assert decision == watchdog.Decision(None, "probe verdict OK: nothing to do", None)


def test_warnings_alert_but_never_restart(write_config) -> None:
    warning = (Finding(ProbeExit.WARNING, "an out-of-memory error in the log"),)
    decision = watchdog.decide(settings(write_config), probe(findings=warning), check=failing())
    assert decision == watchdog.Decision(
        None, "no restart: healthy, verdict WARNING (WARNINGs only alert)", None
    )


def test_a_snapshot_that_could_not_be_taken_restarts_nothing(write_config) -> None:
    decision = watchdog.decide(settings(write_config), probe(service=False), check=failing())
    assert decision == watchdog.Decision(
        None, "no restart: the service's processes could not be inspected", None
    )


def test_an_answering_service_without_a_known_process_is_not_restarted(write_config) -> None:
    decision = watchdog.decide(settings(write_config), probe(running=False), check=failing())
    assert decision == watchdog.Decision(
        None, "no restart: the service answers (its process is unknown)", None
    )


@pytest.mark.parametrize(
    ("state", "rule", "why"),
    [
        ("stale", "dead-pidfile", "dead-pidfile: the pidfile names a dead process"),
        ("reused", "dead-pidfile", "dead-pidfile: the pidfile names a dead process"),
        ("missing", "not-running", "not-running: no service process found"),
        ("invalid", "not-running", "not-running: no service process found"),
    ],
)
def test_a_dead_service_restarts_by_its_rule(write_config, state: str, rule: str, why: str) -> None:
    down = probe(running=False, pidfile_state=state, ok=False, error="connection refused")
    decision = watchdog.decide(settings(write_config), down, check=failing())
    assert decision == watchdog.Decision(rule, f"{why}; connection refused", rule)
    quiet = probe(running=False, pidfile_state=state, ok=False)
    assert watchdog.decide(settings(write_config), quiet, check=failing()).why == why


def test_a_rule_left_out_of_restart_on_fires_but_does_not_restart(write_config) -> None:
    s = settings(write_config, '[fix]\nrestart_on = ["unhealthy"]\n')
    down = probe(running=False, pidfile_state="stale", ok=False)
    decision = watchdog.decide(s, down, check=failing())
    assert decision == watchdog.Decision(
        None,
        "no restart: dead-pidfile: the pidfile names a dead process (not in fix.restart_on)",
        "dead-pidfile",
    )


def test_a_health_check_not_asked_is_no_failure(write_config) -> None:
    decision = watchdog.decide(
        settings(write_config), probe(checked=False, ok=False), check=failing()
    )
    assert decision.rule is None
    assert decision.why == "probe verdict OK: nothing to do"


# --------------------------------------------------------------------------- memory
def test_memory_critical_at_and_below_the_service_threshold(write_config) -> None:
    s = settings(write_config)  # service_memory_gib critical at 16 GiB by the probe above
    s = Settings(**{**s.__dict__, "thresholds": Thresholds((80, 90), (8, 16), (85, 95), (50, 80))})
    above = watchdog.decide(s, probe(rss=16 * GIB + 1), check=failing())
    assert above == watchdog.Decision(
        "memory-critical", "memory-critical: service RSS 16.0 GiB > 16 GiB", "memory-critical"
    )
    # exactly at the threshold is OK, the probe's own range rule
    assert watchdog.decide(s, probe(rss=16 * GIB), check=failing()).rule is None
    assert watchdog.decide(s, probe(rss=None), check=failing()).rule is None


def test_memory_critical_by_the_accelerator_limit(write_config) -> None:
    s = settings(write_config)
    s = Settings(**{**s.__dict__, "thresholds": Thresholds((80, 90), (8, 16), (85, 95), (50, 80))})

    def mps(held: int) -> AcceleratorFigures:
        return AcceleratorFigures("service", "mps", None, held, None, 1000)

    above = watchdog.decide(s, probe(accelerator=mps(951)), check=failing())
    assert above == watchdog.Decision(
        "memory-critical", "memory-critical: mps at 95.1% of its limit > 95%", "memory-critical"
    )
    assert watchdog.decide(s, probe(accelerator=mps(950)), check=failing()).rule is None


# --------------------------------------------------------------------------- health rule
def test_one_recovered_check_is_not_a_death(write_config) -> None:
    check = failing("ok")
    slept: list[float] = []
    measure = samples((0.0, 1.0, 0, 4, 1.0))
    s = settings(write_config, health_retries=3, health_interval=0.5, health_timeout=1.5)
    dead, why = watchdog._health_rule(
        s, probe(ok=False, error=TIMEOUT), check, no_sleep(slept), measure
    )
    assert (dead, why) == (False, "health recovered on check 2 of 3")
    assert slept == [0.5]
    assert check.asked == [1.5]  # type: ignore[attr-defined]


def test_the_last_check_recovering_is_not_a_death(write_config) -> None:
    measure = samples((0.0, 1.0, 0, 4, 1.0), (1.0, 1.0, 0, 4, 1.0))
    dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error=TIMEOUT),
        failing(TIMEOUT, "ok"),
        no_sleep(),
        measure,
    )
    assert (dead, why) == (False, "health recovered on check 3 of 3")


def test_queries_in_flight_by_the_documented_key_are_busy(write_config) -> None:
    """The memory report's ``limiter.in_flight``; a top-level key is not the report's."""
    s = settings(write_config)
    body = {"status": "degraded", "memory": {"limiter": {"in_flight": 2}}}
    points = [(0.0, 1.0, 0, 4, 1.0), (1.0, 1.0, 0, 4, 1.0), (2.0, 1.0, 0, 4, 1.0)]
    dead, why = watchdog._health_rule(
        s,
        probe(ok=False, error="HTTP 503"),
        failing("HTTP 503", "HTTP 503", body=body),
        no_sleep(),
        samples(*points),
    )
    assert (dead, why) == (
        False,
        "busy, not dead: 3 slow health checks while 2 queries are in flight",
    )

    wrong = {"status": "degraded", "memory": {"in_flight": 2}, "in_flight": 2}
    dead, why = watchdog._health_rule(
        s,
        probe(ok=False, error="HTTP 503"),
        failing("HTTP 503", "HTTP 503", body=wrong),
        no_sleep(),
        samples(*points),
    )
    assert dead is True
    assert why.startswith("unhealthy: 3 consecutive failed health checks (HTTP 503); CPU 0.00")


def test_in_flight_reads_only_an_integer_at_limiter_in_flight() -> None:
    assert watchdog.in_flight({"limiter": {"in_flight": 3}}) == 3
    assert watchdog.in_flight({"limiter": {"in_flight": 0}}) == 0
    assert watchdog.in_flight({"limiter": {"in_flight": True}}) == 0
    assert watchdog.in_flight({"limiter": {"in_flight": "2"}}) == 0
    assert watchdog.in_flight({"limiter": None}) == 0
    assert watchdog.in_flight({"in_flight": 2}) == 0
    assert watchdog.in_flight(None) == 0


def test_in_flight_seen_by_the_first_check_counts(write_config) -> None:
    memory = {"limiter": {"in_flight": 1}}
    points = [(0.0, 1.0, 0, 4, 1.0), (1.0, 1.0, 0, 4, 1.0), (2.0, 1.0, 0, 4, 1.0)]
    dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error="HTTP 503", memory=memory),
        failing(TIMEOUT, TIMEOUT),
        no_sleep(),
        samples(*points),
    )
    assert (dead, why) == (
        False,
        "busy, not dead: 3 slow health checks while 1 queries are in flight",
    )


def test_the_highest_in_flight_of_the_window_is_reported(write_config) -> None:
    bodies = iter(
        [{"memory": {"limiter": {"in_flight": 3}}}, {"memory": {"limiter": {"in_flight": 1}}}]
    )

    def check(_s: Settings, _t: float) -> HealthCheck:
        return HealthCheck(False, 503, 4.0, next(bodies), "HTTP 503")

    points = [(0.0, 1.0, 0, 4, 1.0), (1.0, 1.0, 0, 4, 1.0), (2.0, 1.0, 0, 4, 1.0)]
    _dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error="HTTP 503"),
        check,
        no_sleep(),
        samples(*points),
    )
    assert why == "busy, not dead: 3 slow health checks while 3 queries are in flight"


def test_a_timed_out_service_burning_cpu_is_busy(write_config) -> None:
    # 2 s window, 1.9 CPU s on an idle host: 0.95 core of 1.0 available
    measure = samples((10.0, 5.0, 1, 4, 1.0), (11.0, 6.0, 1, 4, 1.0), (12.0, 6.9, 1, 4, 1.0))
    dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error=TIMEOUT),
        failing(TIMEOUT, TIMEOUT),
        no_sleep(),
        measure,
    )
    assert (dead, why) == (
        False,
        "busy, not dead: 3 slow health checks; CPU 0.95 core(s) over 2.0 s, 1.00 available "
        "(busy from 0.50); threads running in 3 of 3 samples",
    )


def test_a_full_core_on_a_loaded_two_core_host_is_busy(write_config) -> None:
    """The case that was killed: 0.47 core measured while two busy loops share 2 cores."""
    # runnable 4 = the service, two busy loops, this measurement: 2 / 3 = 0.67 available
    measure = samples((0.0, 0.0, 1, 4, 4.0), (1.5, 0.7, 1, 4, 4.0), (3.0, 1.41, 0, 4, 4.0))
    dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error=TIMEOUT),
        failing(TIMEOUT, TIMEOUT),
        no_sleep(),
        measure,
    )
    assert dead is False
    assert "CPU 0.47 core(s) over 3.0 s" in why
    assert ", 0.67 available (busy from 0.33)" in why or os.cpu_count() != 2


def test_a_silent_idle_service_is_dead(write_config) -> None:
    measure = samples((0.0, 3.0, 0, 4, 1.0), (1.0, 3.01, 0, 4, 1.0), (2.0, 3.02, 0, 4, 1.0))
    dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error=TIMEOUT),
        failing(TIMEOUT, "connection reset"),
        no_sleep(),
        measure,
    )
    assert (dead, why) == (
        True,
        "unhealthy: 3 consecutive failed health checks (connection reset); CPU 0.01 core(s) "
        "over 2.0 s, 1.00 available (busy from 0.50); threads running in 0 of 3 samples",
    )


def test_the_busy_boundary_is_half_the_available_share(write_config) -> None:
    def rule(cpu_end: float) -> bool:
        measure = samples((0.0, 0.0, 0, 1, 1.0), (1.0, 0.0, 0, 1, 1.0), (2.0, cpu_end, 0, 1, 1.0))
        dead, _why = watchdog._health_rule(
            settings(write_config),
            probe(ok=False, error=TIMEOUT),
            failing(TIMEOUT, TIMEOUT),
            no_sleep(),
            measure,
        )
        return dead

    assert rule(1.0) is False  # 0.50 core: busy
    assert rule(0.999) is True


def test_a_stopped_process_is_dead_whatever_it_reports(write_config) -> None:
    memory = {"limiter": {"in_flight": 4}}
    busy_cpu = [(0.0, 0.0, 1, 1, 1.0), (1.0, 1.0, 1, 1, 1.0), (2.0, 2.0, 1, 1, 1.0)]
    dead, why = watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error=TIMEOUT, memory=memory, status="stopped"),
        failing(TIMEOUT, TIMEOUT),
        no_sleep(),
        samples(*busy_cpu),
    )
    assert (dead, why) == (
        True,
        f"unhealthy: 3 consecutive failed health checks ({TIMEOUT}); stopped by a signal "
        "(SIGSTOP/SIGTSTP): it cannot answer",
    )


def test_busy_excuses_end_after_two_runs_spanning_more_than_a_query(write_config) -> None:
    """Called busy by every run for longer than a query may take (request_timeout 60 s, at
    least 2 runs): hung."""
    s = settings(write_config, request_timeout=60)
    path = audit.fix_history_path(s.home)
    now = 1_000_000.0

    def record(at: float, detail: str | None, trigger: str = "if-unhealthy") -> None:
        audit.append_record(path, {"time": _at(at), "trigger": trigger, "rule_detail": detail})

    busy = "busy, not dead: 3 slow health checks while 1 queries are in flight"
    record(now - 100, busy)
    assert watchdog.excused_before(s, now) is False  # one run only
    record(now - 90, "manual fix", "manual")  # not the watchdog's: ignored
    record(now - 50, busy)
    assert watchdog.excused_before(s, now) is True  # 2 runs over 100 s
    assert watchdog.excused_before(s, now - 40) is False  # 60 s: not more than a query
    assert watchdog.excused_before(s, now - 39.9) is True
    record(now - 30, "probe verdict OK: nothing to do")
    assert watchdog.excused_before(s, now) is False  # it answered in between
    for back in (20, 10, 5):
        record(now - back, busy)
    assert watchdog.excused_before(s, now) is False  # 3 runs, but only 15 s
    assert watchdog.excused_before(s, now + 45.1) is True


def test_a_hung_service_is_dead_even_with_queries_in_flight(write_config) -> None:
    s = settings(write_config, request_timeout=60)
    path = audit.fix_history_path(s.home)
    busy = "busy, not dead: 3 slow health checks while 1 queries are in flight"
    memory = {"limiter": {"in_flight": 1}}
    points = [(0.0, 0.0, 1, 1, 1.0), (1.0, 1.0, 1, 1, 1.0), (2.0, 2.0, 1, 1, 1.0)]

    def run() -> tuple[bool, str]:
        return watchdog._health_rule(
            s, probe(ok=False, error=TIMEOUT, memory=memory), failing(TIMEOUT, TIMEOUT),
            no_sleep(), samples(*points),
        )  # fmt: skip

    now = time.time()
    for back in (30, 20):
        audit.append_record(path, {"time": _at(now - back), "trigger": "if-unhealthy",
                                   "rule_detail": busy})  # fmt: skip
    assert run() == (False, busy)
    audit.append_record(path, {"time": _at(now - 200), "trigger": "if-unhealthy",
                               "rule_detail": "probe verdict OK: nothing to do"})  # fmt: skip
    for back in (100, 50):
        audit.append_record(path, {"time": _at(now - back), "trigger": "if-unhealthy",
                                   "rule_detail": busy})  # fmt: skip
    assert run() == (
        True,
        f"unhealthy: 3 consecutive failed health checks ({TIMEOUT}); called busy by every run "
        "for more than 60 s (service.request_timeout): hung, not busy",
    )


def test_one_check_only_still_measures_a_whole_second(write_config) -> None:
    slept: list[float] = []
    measure = samples((0.0, 0.0, 1, 1, 1.0), (1.0, 0.8, 1, 1, 1.0))
    s = settings(write_config, health_retries=1)
    dead, why = watchdog._health_rule(
        s, probe(ok=False, error=TIMEOUT), failing(), no_sleep(slept), measure
    )
    assert slept == [watchdog.MIN_BUSY_WINDOW_S] == [1.0]
    assert (dead, why) == (
        False,
        "busy, not dead: 1 slow health checks; CPU 0.80 core(s) over 1.0 s, 1.00 available "
        "(busy from 0.50); threads running in 2 of 2 samples",
    )


def test_a_window_longer_than_the_minimum_is_not_extended(write_config) -> None:
    slept: list[float] = []
    measure = samples((0.0, 0.0, 0, 1, 1.0), (1.0, 0.0, 0, 1, 1.0), (2.0, 0.0, 0, 1, 1.0))
    watchdog._health_rule(
        settings(write_config),
        probe(ok=False, error=TIMEOUT),
        failing(TIMEOUT, TIMEOUT),
        no_sleep(slept),
        measure,
    )
    assert slept == [0.5, 0.5]


def test_decide_restarts_an_unhealthy_idle_service(write_config) -> None:
    s = settings(write_config, health_retries=1)
    result = probe(ok=False, error=TIMEOUT, status="stopped")
    decision = watchdog.decide(s, result, check=failing(), sleep=no_sleep())
    assert decision.rule == decision.fired == "unhealthy"
    assert decision.why == (
        f"unhealthy: 1 consecutive failed health checks ({TIMEOUT}); stopped by a signal "
        "(SIGSTOP/SIGTSTP): it cannot answer"
    )
    recovered = watchdog.decide(
        s,
        probe(ok=False, error=None, memory={"limiter": {"in_flight": 1}}),
        check=failing(),
        sleep=no_sleep(),
    )
    assert recovered == watchdog.Decision(
        None, "no restart: busy, not dead: 1 slow health checks while 1 queries are in flight"
    )


# --------------------------------------------------------------------------- budget
def _at(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_the_budget_counts_the_watchdogs_restarts_since_the_last_rearm(tmp_path: Path) -> None:
    path = tmp_path / "fix.jsonl"
    now = 1_000_000.0
    rows = [
        {"time": _at(now - 4000), "trigger": "if-unhealthy", "restarted": True},  # too old
        {"time": _at(now - 3000), "trigger": "if-unhealthy", "restarted": True},
        {"time": _at(now - 2500), "trigger": "manual", "restarted": True},  # a person's
        {"time": _at(now - 2000), "trigger": "if-unhealthy", "restarted": False},
        {"time": _at(now - 1000), "trigger": "if-unhealthy", "restarted": True},
    ]
    for row in rows:
        audit.append_record(path, row)
    used = watchdog.budget_used(path, 3600, now)
    assert [r["time"] for r in used] == [_at(now - 3000), _at(now - 1000)]
    assert watchdog.budget_used(path, 3000, now) == [rows[1], rows[4]]
    assert watchdog.budget_used(path, 2999, now) == [rows[4]]

    audit.append_record(path, {"time": _at(now - 1000), "rearm": True, "restarted": False})
    assert watchdog.budget_used(path, 3600, now) == []  # a restart at the re-arm's second
    audit.append_record(
        path, {"time": _at(now - 999), "trigger": "if-unhealthy", "restarted": True}
    )
    assert len(watchdog.budget_used(path, 3600, now)) == 1


def test_the_give_up_alert_is_sent_once_per_exhausted_budget(tmp_path: Path) -> None:
    path = tmp_path / "fix.jsonl"
    assert watchdog.gave_up_alerted(path) is False
    audit.append_record(path, {"time": _at(100), "restarted": True})
    audit.append_record(path, {"time": _at(200), "gave_up": True, "alerted": False})
    assert watchdog.gave_up_alerted(path) is False  # not delivered: try again
    audit.append_record(path, {"time": _at(300), "gave_up": True, "alerted": True})
    assert watchdog.gave_up_alerted(path) is True
    audit.append_record(path, {"time": _at(300), "rearm": True})
    assert watchdog.gave_up_alerted(path) is True  # the same second: still this round's
    audit.append_record(path, {"time": _at(301), "restarted": True})
    assert watchdog.gave_up_alerted(path) is False
    audit.append_record(path, {"time": _at(302), "gave_up": "yes", "alerted": True})
    assert watchdog.gave_up_alerted(path) is False


def test_the_last_death_is_the_latest_restarts_reason() -> None:
    records = [{"rule_detail": "dead-pidfile: a"}, {"rule_detail": ""}, {"rule_detail": 3}]
    assert watchdog.last_death(records, "now") == "dead-pidfile: a"
    assert watchdog.last_death([{"rule_detail": "x"}, {"rule_detail": "y"}], "now") == "y"
    assert watchdog.last_death([], "this run's") == "this run's"


# --------------------------------------------------------------------------- alerts
def test_restart_and_give_up_alerts_are_whole_documents(write_config, tmp_path: Path) -> None:
    s = settings(write_config)
    text = watchdog.restart_text(
        "dead-pidfile",
        "dead-pidfile: the pidfile names a dead process",
        "killed by SIGKILL (signal 9)",
    )
    assert text == (
        "restarted (dead-pidfile: dead-pidfile: the pidfile names a dead process); "
        "died: killed by SIGKILL (signal 9)"
    )
    assert watchdog.restart_text(None, None, None) == (
        "restarted (unknown rule: no detail); died: no evidence found"
    )
    ok, detail = WatchdogAlerts(s).send(watchdog.alert_document(s, "restarted", text, "CRITICAL"))
    assert ok is True
    assert detail == "command tee: exit status 0"
    ok, _detail = WatchdogAlerts(s).send(
        watchdog.give_up_document(s, "gave up after 3 restart(s) in 1 h", "CRITICAL")
    )
    assert ok is True
    documents = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [d["kind"] for d in documents] == ["restarted", "gave-up"]
    first = documents[0]
    assert first["schema"] == "mpsctl.alert/1"
    assert (first["service"], first["url"], first["verdict"]) == (
        "mvp",
        "http://127.0.0.1:9",
        "CRITICAL",
    )
    assert first["reasons"] == [text]
    assert first["previous_verdict"] is None
    assert first["text"] == f"CRITICAL: mvp on {first['hostname']}: {text}"


def test_no_alert_target_delivers_nothing(write_config) -> None:
    write_config('[service]\nname = "mvp"\ncommand = ["uvicorn", "app.main:app"]\n')
    assert WatchdogAlerts(load_settings()).send(
        watchdog.alert_document(load_settings(), "restarted", "x", "CRITICAL")
    ) == (
        False,
        "no [alerts] target",
    )


# --------------------------------------------------------------------------- preflight
def test_preflight_names_what_it_cannot_write(write_config, tmp_path: Path) -> None:
    s = settings(write_config)
    assert watchdog.preflight(s) is None
    log = s.service.log_file
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    log.chmod(0o400)
    if os.geteuid() != 0:
        assert watchdog.preflight(s) == (f"cannot write the service log {log}: permission denied")
    log.chmod(0o600)
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    problem = watchdog._writable_dir(blocked / "sub", "the pidfile and the lock")
    assert problem is not None
    assert problem.startswith(f"cannot write the pidfile and the lock in {blocked / 'sub'}: ")


def test_preflight_checks_workdir_and_venv(write_config, tmp_path: Path) -> None:
    s = settings(write_config, workdir=str(tmp_path / "gone"))
    assert watchdog.preflight(s) == f"service.workdir {tmp_path / 'gone'} is not a directory"
    (tmp_path / "w").mkdir()
    s = settings(write_config, workdir=str(tmp_path / "w"), venv="venv")
    assert watchdog.preflight(s) == f"service.venv {tmp_path / 'w' / 'venv'} has no bin/ directory"


def test_on_linux_the_scheduler_time_decides(write_config) -> None:
    """A busy loop on a crowded host: 0.2 s on a CPU and 0.8 s waiting per second is
    busy; the CPU share alone would not say so."""
    points = [
        Sample(0.0, 0.0, 0, 1, 30.0, {9: 100.0}),
        Sample(1.0, 0.2, 0, 1, 30.0, {9: 101.0}),
        Sample(2.0, 0.4, 0, 1, 30.0, {9: 102.0}),
    ]
    dead, why = watchdog._health_rule(
        settings(write_config), probe(ok=False, error=TIMEOUT), failing(TIMEOUT, TIMEOUT),
        no_sleep(), lambda _pids: points.pop(0),
    )  # fmt: skip
    assert (dead, why) == (
        False,
        "busy, not dead: 3 slow health checks; wanted CPU 1.00 of the time over 2.0 s (on a "
        "CPU or waiting for one; busy from 0.50); threads running in 0 of 3 samples",
    )


# --------------------------------------------------------------------------- more boundaries
def test_a_check_that_says_nothing_reads_no_answer(write_config) -> None:
    asked: list[tuple[Settings, float]] = []
    measured: list[tuple[int, ...]] = []
    s = settings(write_config, health_retries=2, health_timeout=2.5)

    def check(given: Settings, timeout: float) -> HealthCheck:
        asked.append((given, timeout))
        return HealthCheck(False, None, None, "not a dict", None)

    def measure(pids: tuple[int, ...]) -> Sample:
        measured.append(pids)
        return Sample(float(len(measured)) * 0.4, 0.0, 0, 1, 1.0)

    slept: list[float] = []
    dead, why = watchdog._health_rule(s, probe(ok=False, error=None), check, no_sleep(slept),
                                      measure)  # fmt: skip
    assert dead is True
    assert why.startswith("unhealthy: 2 consecutive failed health checks (no answer); CPU ")
    assert asked == [(s, 2.5)]
    assert measured == [(4242,)] * 3
    assert slept == [0.5, pytest.approx(0.6)]  # the window was 0.4 s: 0.6 s more


def test_a_window_of_exactly_the_minimum_is_not_extended(write_config) -> None:
    slept: list[float] = []
    measure = samples((5.0, 0.0, 0, 1, 1.0), (6.0, 0.0, 0, 1, 1.0))
    watchdog._health_rule(settings(write_config, health_retries=2),
                          probe(ok=False, error=TIMEOUT), failing(TIMEOUT), no_sleep(slept),
                          measure)  # fmt: skip
    assert slept == [0.5]
    # the same window measured late in the clock: still 1 s
    slept.clear()
    measure = samples((1000.0, 0.0, 0, 1, 1.0), (1001.0, 0.0, 0, 1, 1.0))
    watchdog._health_rule(settings(write_config, health_retries=2),
                          probe(ok=False, error=TIMEOUT), failing(TIMEOUT), no_sleep(slept),
                          measure)  # fmt: skip
    assert slept == [0.5]


def test_decide_hands_its_check_and_sleep_to_the_health_rule(write_config) -> None:
    s = settings(write_config, health_retries=2, health_interval=0.25)
    slept: list[float] = []
    decision = watchdog.decide(s, probe(ok=False, error=TIMEOUT), check=failing("ok"),
                               sleep=no_sleep(slept))  # fmt: skip
    assert decision == watchdog.Decision(None, "no restart: health recovered on check 2 of 2")
    assert slept == [0.25]


def test_stopped_needs_a_snapshot_and_a_stopped_root() -> None:
    assert watchdog._stopped(probe(service=False)) is False
    assert watchdog._stopped(probe(status="stopped")) is True
    assert watchdog._stopped(probe(status="running")) is False


def test_a_restart_before_the_epochs_first_second_still_counts(tmp_path: Path) -> None:
    path = tmp_path / "fix.jsonl"
    audit.append_record(path, {"time": "1970-01-01T00:00:00.500Z", "trigger": "if-unhealthy",
                               "restarted": True})  # fmt: skip
    assert len(watchdog.budget_used(path, 10.0, 1.0)) == 1


def test_gave_up_alerted_with_nothing_before_and_after_a_rearm(tmp_path: Path) -> None:
    path = tmp_path / "fix.jsonl"
    audit.append_record(path, {"time": "1970-01-01T00:00:00.500Z", "gave_up": True,
                               "alerted": True})  # fmt: skip
    assert watchdog.gave_up_alerted(path) is True  # no restart or re-arm at all
    audit.append_record(path, {"time": _at(10), "rearm": True})
    assert watchdog.gave_up_alerted(path) is False
    audit.append_record(path, {"time": _at(20), "gave_up": True, "alerted": True})
    audit.append_record(path, {"time": _at(30), "rearm": False, "restarted": False})
    assert watchdog.gave_up_alerted(path) is True


def test_every_target_gets_the_alert_and_the_details_name_each(write_config, tmp_path) -> None:
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}/hook"
    s = settings(write_config, extra="")
    s = Settings(**{**s.__dict__, "alerts": type(s.alerts)(
        **{**s.alerts.__dict__, "url": dead})})  # fmt: skip
    ok, details = WatchdogAlerts(s).send(
        watchdog.give_up_document(s, "gave up after 3 restart(s) in 1 h", "CRITICAL")
    )
    assert ok is True  # the command delivered it
    first, second = details.split("; ")
    assert first.startswith("url http://127.0.0.1:" + dead.rpartition(":")[2].partition("/")[0])
    assert first.endswith("Connection refused")
    assert second == "command tee: exit status 0"
    (document,) = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert set(document) == {
        "schema", "kind", "time", "hostname", "service", "url", "verdict", "previous_verdict",
        "reasons", "text", "mpsctl_version",
    }  # fmt: skip
    assert (document["kind"], document["verdict"]) == ("gave-up", "CRITICAL")
    assert document["reasons"] == ["gave up after 3 restart(s) in 1 h"]
    from mpsctl import __version__

    assert document["mpsctl_version"] == __version__
    assert document["time"].endswith("Z")


def test_warning_alerts_once_per_verdict_change(write_config, tmp_path: Path) -> None:
    s = settings(write_config)
    warning = probe(findings=(Finding(ProbeExit.WARNING, "host memory 91.0% >= 90%"),))
    assert WatchdogAlerts(s).on_change(warning) == 1
    assert WatchdogAlerts(s).on_change(warning) == 0  # the same verdict: no new alert
    (document,) = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert (document["kind"], document["verdict"]) == ("alert", "WARNING")
    blocked = Settings(**{**s.__dict__, "home": tmp_path / "alerts.jsonl" / "home"})
    assert WatchdogAlerts(blocked).on_change(probe(findings=())) == 0  # cannot keep state


def test_preflight_names_the_directory_it_cannot_write(write_config, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    s = settings(write_config)
    home = Settings(**{**s.__dict__, "home": blocker / "home"})
    assert watchdog.preflight(home) == (
        f"cannot write the pidfile and the lock in {blocker / 'home'}: Not a directory"
    )
    s = settings(write_config, log_file=str(blocker / "logs" / "backend.log"))
    assert watchdog.preflight(s) == (
        f"cannot write the service log in {blocker / 'logs'}: Not a directory"
    )
    deep = tmp_path / "x" / "y" / "z"
    assert watchdog._writable_dir(deep, "the service log") is None
    assert deep.is_dir()
    assert list(deep.iterdir()) == []  # the probe file is gone


def test_preflight_passes_a_venv_with_bin_and_names_a_bad_env_file(write_config, tmp_path) -> None:
    (tmp_path / "w" / "venv" / "bin").mkdir(parents=True)
    s = settings(write_config, workdir=str(tmp_path / "w"), venv="venv")
    assert watchdog.preflight(s) is None
    s = settings(write_config, workdir=str(tmp_path / "w"), env_file=".env")
    assert watchdog.preflight(s) == (
        f"service.env_file {tmp_path / 'w' / '.env'}: cannot read: No such file or directory"
    )


def test_a_dead_service_is_restarted_whatever_else_matches(write_config) -> None:
    down = probe(running=False, pidfile_state="stale", ok=False, error="connection refused")
    others = (proc(pid=5001), proc(pid=5002))
    down = ProbeResult(**{**down.__dict__, "service": ServiceSnapshot(
        None, "stale", None, (), (), None, others)})  # fmt: skip
    decision = watchdog.decide(settings(write_config), down, check=failing())
    assert decision == watchdog.Decision(
        "dead-pidfile",
        "dead-pidfile: the pidfile names a dead process; connection refused; left alone (they "
        "match, but are not the service): pid 5001, 5002",
        "dead-pidfile",
    )


def test_the_managers_clean_stop_is_read_from_the_home(tmp_path: Path) -> None:
    from mpsctl.control.foreground import STOP_MARK, clear_stop_mark

    assert watchdog.stopped_by_manager(tmp_path) is None
    (tmp_path / STOP_MARK).write_text('{"time": "2026-01-01T00:00:00Z", "how": "signal SIGTERM"}')
    assert watchdog.stopped_by_manager(tmp_path) == {
        "time": "2026-01-01T00:00:00Z",
        "how": "signal SIGTERM",
    }
    (tmp_path / STOP_MARK).write_text("[1, 2]")
    assert watchdog.stopped_by_manager(tmp_path) is None  # not a record: ignored
    clear_stop_mark(tmp_path)
    clear_stop_mark(tmp_path)  # twice: nothing to remove is fine
    assert watchdog.stopped_by_manager(tmp_path) is None
