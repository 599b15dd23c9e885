"""The watchdog, round two: scenarios (i)-(m), each with a real uvicorn service and real
``mpsctl`` processes run as cron runs them (see conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil

from mpsctl.errors import StatusExit
from tests.scenarios.conftest import CRON_PATH, Site, gone, kill, wait_until
from tests.service_fixtures import http_request

LOOP = "while True: pass"


def started(site: Site) -> int:
    result = site.mpsctl("start")
    assert result.returncode == 0, result.stderr
    assert site.healthy()
    return site.pid()


def restarts(site: Site) -> list[dict]:
    return [r for r in site.fix_records() if r.get("restarted") is True]


def cron_log(site: Site) -> str:
    path = site.home / "cron.log"
    return path.read_text() if path.exists() else ""


def _answers(port: int) -> bool:
    try:
        return http_request(f"http://127.0.0.1:{port}/health", timeout=2.0).status == 200
    except OSError:
        return False


def test_i_a_loading_neighbour_does_not_keep_the_dead_service_down(make_site, tmp_path) -> None:
    """(i) A copy of the app matching ``match`` loads its model for 45 s on another port
    while the service is dead -> one watchdog run restarts the service; the copy is
    untouched and never called the service."""
    site = make_site(extra='match = "uvicorn app.main:app"\n')
    pid = started(site)
    neighbour_dir = tmp_path / "neighbour"
    shutil.copytree(site.root, neighbour_dir, symlinks=True)
    other_port = site.port + 1 if site.port < 65000 else site.port - 1
    neighbour = subprocess.Popen(
        ["venv/bin/uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(other_port)],
        cwd=neighbour_dir, env={**os.environ, "SCENARIO_LOAD_S": "45"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        kill(pid, signal.SIGKILL)
        wait_until(lambda: gone(pid), 10, "the killed service to go")
        time.sleep(1.0)  # the copy is importing, then "loading": it does not listen yet
        assert not _answers(other_port)

        status = site.mpsctl("status", "--json")
        assert status.returncode == StatusExit.DEAD_PIDFILE, status.stdout + status.stderr
        document = json.loads(status.stdout)
        assert document["pid"] is None
        assert [o["pid"] for o in document["others"]] == [neighbour.pid]

        run = site.watchdog()
        assert run.returncode == 0, cron_log(site)
        assert site.healthy()
        (restart,) = restarts(site)
        assert restart["rule"] == "dead-pidfile"
        assert restart["rule_detail"].endswith(
            f"left alone (they match, but are not the service): pid {neighbour.pid}"
        )
        assert site.pid() not in (pid, neighbour.pid)
        assert neighbour.poll() is None  # untouched, still loading
        assert not _answers(other_port)
        status = site.mpsctl("status", "--json")
        assert status.returncode == StatusExit.RUNNING
        assert json.loads(status.stdout)["pid"] == site.pid()
    finally:
        neighbour.kill()
        neighbour.wait(10)


def test_j_a_busy_service_on_a_loaded_host_is_never_restarted(make_site) -> None:
    """(j) The service burns a full core in its event loop (/health times out) while two
    busy loops load the host -> 0 restarts over 5 watchdog runs."""
    site = make_site(env={"SCENARIO_QUERY_S": "600"}, extra="request_timeout = 900\n")
    pid = started(site)
    loops = [subprocess.Popen([sys.executable, "-c", LOOP]) for _ in range(2)]

    def ask() -> None:
        with contextlib.suppress(OSError):  # the cleanup stops the service mid-query
            http_request(site.url + "/api/v1/query", "POST", {"question": "q"}, timeout=900)

    threading.Thread(target=ask, daemon=True).start()
    try:
        wait_until(lambda: not site.healthy(), 20, "the event loop to stall")
        codes = [site.watchdog().returncode for _ in range(5)]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert codes == [0] * 5, cron_log(site)
    assert restarts(site) == []
    assert site.pid() == pid
    records = site.fix_records()
    assert len(records) == 5
    for record in records:
        assert record["result"] == "skipped", record
        assert record["rule_detail"].startswith(
            "no restart: busy, not dead: 2 slow health checks; wanted CPU "
        )


def test_k_a_planned_restart_lets_the_query_in_flight_finish(make_site) -> None:
    """(k) ``fix`` with a 20 s query in flight, drain_timeout 30 -> the query answers 200,
    the table says "1 drained, 0 cut"."""
    site = make_site(env={"SCENARIO_REPORT": "1"}, extra="drain_timeout = 30\n")
    pid = started(site)
    answers: list[int] = []

    def ask() -> None:
        reply = http_request(site.url + "/api/v1/slow", "POST", {"seconds": 20}, timeout=90)
        answers.append(reply.status)

    query = threading.Thread(target=ask)
    query.start()
    wait_until(lambda: _in_flight(site) == 1, 20, "the query to be in flight")

    fixed = site.sh(f"COLUMNS=300 {site.prefix} fix", timeout=120)
    query.join(90)

    assert answers == [200]
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "1 drained, 0 cut" in fixed.stdout, fixed.stdout
    assert gone(pid)
    assert site.healthy()
    (record,) = site.fix_records()
    assert {k: record["drain"][k] for k in ("how", "in_flight", "drained", "cut")} == {
        "how": "sigterm", "in_flight": 1, "drained": 1, "cut": 0,
    }  # fmt: skip
    stop = next(a for a in record["actions"] if a["name"] == "stop")
    assert stop["detail"].endswith("; 1 drained, 0 cut")


def _in_flight(site: Site) -> int | None:
    try:
        body = http_request(site.url + "/health", timeout=2.0).json
    except OSError:
        return None
    return body["memory"]["limiter"]["in_flight"]


def test_l_a_stop_by_the_service_manager_sticks(make_site) -> None:
    """(l) The unit's ``start --foreground`` gets the manager's SIGTERM -> ``status`` says
    stopped (3), and the watchdog does not start it again."""
    site = make_site()
    env = ["env", "-i", f"HOME={site.cron_home}", f"PATH={CRON_PATH}"]
    unit = subprocess.Popen([*env, "sh", "-c", f"{site.prefix} start --foreground"], cwd="/")
    try:
        wait_until(site.healthy, 30, "the unit's service to answer")
        shell = psutil.Process(unit.pid)
        main = shell if shell.name() != "sh" else shell.children()[0]  # the unit's main pid
        service = site.pid()
        main.send_signal(signal.SIGTERM)  # systemctl stop (KillMode=mixed), launchctl bootout
        assert unit.wait(30) != 0  # ended by the SIGTERM, as the service did
    finally:
        unit.kill()
        unit.wait()
    assert gone(service)
    status = site.mpsctl("status")
    assert status.returncode == StatusExit.NOT_RUNNING, status.stdout + status.stderr
    assert "stopped" in status.stdout

    run = site.watchdog()
    assert run.returncode == 0, cron_log(site)
    assert not site.healthy()
    assert restarts(site) == []
    (record,) = site.fix_records()
    assert "its service manager stopped it cleanly" in record["message"]
    assert "(signal SIGTERM)" in record["message"]

    # started again by hand: the manager's stop no longer holds, the watchdog guards it
    pid = started(site)
    kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), 10, "the killed service to go")
    assert site.watchdog().returncode == 0, cron_log(site)
    assert len(restarts(site)) == 1


def test_m_every_restart_of_a_stopped_process_alerts_once(make_site) -> None:
    """(m) A SIGSTOPped service, three times -> three restarts, one ``restarted`` alert each,
    with the rule and how it died."""
    site = make_site(max_restarts=20)
    pid = started(site)
    for attempt in range(3):
        kill(pid, signal.SIGSTOP)
        assert site.watchdog().returncode == 0, f"attempt {attempt}: {cron_log(site)}"
        new = site.pid()
        assert new != pid
        pid = new
    assert len(restarts(site)) == 3
    alerts = site.alert_documents()
    assert [a["kind"] for a in alerts] == ["restarted"] * 3
    for alert in alerts:
        assert alert["reasons"][0].startswith("restarted (unhealthy: unhealthy: 2 consecutive")
        assert "stopped by a signal (SIGSTOP/SIGTSTP)" in alert["text"]
    assert [r["alerted"] for r in restarts(site)] == [True] * 3
