"""The watchdog you can trust at 3 a.m.: scenarios (a)-(h), each with a real uvicorn service
and real ``mpsctl`` processes run as cron runs them (see conftest.py)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mpsctl.errors import ExitCode, StatusExit
from mpsctl.monitor.prometheus import watchdog_samples
from tests.scenarios.conftest import Site, gone, kill, wait_until
from tests.service_fixtures import http_request

FIXTURES = Path(__file__).parent.parent / "fixtures"


def started(site: Site) -> int:
    result = site.mpsctl("start")
    assert result.returncode == 0, result.stderr
    assert site.healthy()
    return site.pid()


def restarts(site: Site) -> list[dict]:
    return [r for r in site.fix_records() if r.get("restarted") is True]


def test_a_an_oom_the_service_survived_alerts_once_and_never_restarts(make_site) -> None:
    """(a) An OOM line in the log, health 200 -> 10 watchdog runs, 0 restarts, 1 alert.

    As under cron: the watchdog already runs when the OOM happens. PyTorch's message here has
    no timestamp (uvicorn's stderr), so the probe's cursor dates it "between" the run before
    and the run that read it, and keeps it in the one-hour window for an hour from then: every
    later run still sees the WARNING, and neither alerts again nor restarts."""
    site = make_site()
    pid = started(site)
    assert site.watchdog().returncode == 0  # the run before the OOM: OK, nothing to do
    # what PyTorch printed when one query ran out of memory; the service caught it and lives
    oom = (FIXTURES / "torch-mps-oom-2.txt").read_text()
    with (site.root / "backend.log").open("a") as log:
        log.write(oom if oom.endswith("\n") else oom + "\n")

    for _ in range(10):
        assert site.watchdog().returncode == 0

    assert site.pid() == pid
    assert site.healthy()
    records = site.fix_records()[1:]
    assert len(records) == 10
    assert restarts(site) == []
    assert {r["result"] for r in records} == {"healthy"}
    assert all("WARNINGs only alert" in r["message"] for r in records)
    alerts = [a for a in site.alert_documents() if a["kind"] == "alert"]
    assert len(alerts) == 1
    assert alerts[0]["verdict"] == "WARNING"
    assert any("out-of-memory" in reason for reason in alerts[0]["reasons"])


def test_b_a_slow_health_answer_while_queries_run_loses_no_query(make_site) -> None:
    """(b) /health slow while queries run (model work inside ``async def``) -> 0 restarts,
    no query lost."""
    # the defaults: 3 checks, 2 s apart (one timing out after 1 s)
    site = make_site(
        env={"SCENARIO_QUERY_S": "1.5"},
        health={"health_timeout": 1, "health_retries": 3, "health_interval": 2},
    )
    pid = started(site)

    def ask(i: int) -> int:
        return http_request(site.url + "/api/v1/query", "POST", {"question": f"q{i}"},
                            timeout=60).status  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(ask, i) for i in range(4)]
        time.sleep(0.3)  # the first query holds the event loop now
        watchdog = site.watchdog()
        statuses = [a.result() for a in answers]

    assert watchdog.returncode == 0, (site.home / "cron.log").read_text()
    assert statuses == [200, 200, 200, 200]
    assert site.pid() == pid
    assert site.healthy()
    (record,) = site.fix_records()
    assert record["restarted"] is False
    detail = record["rule_detail"]
    assert "busy, not dead" in detail or "health recovered on check" in detail, detail


def test_c_kill_9_is_restarted_once(make_site) -> None:
    """(c) ``kill -9`` -> 1 restart, healthy."""
    site = make_site()
    pid = started(site)
    kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), 10, "the killed service to go")

    assert site.watchdog().returncode == 0, (site.home / "cron.log").read_text()
    assert site.watchdog().returncode == 0  # the next run finds it healthy

    (restart,) = restarts(site)
    assert restart["rule"] == "dead-pidfile"
    assert site.pid() != pid
    assert site.healthy()
    assert site.mpsctl("status").returncode == StatusExit.RUNNING


def test_d_a_stopped_process_is_restarted_every_time(make_site) -> None:
    """(d) ``kill -STOP`` -> restarted and healthy, every time (10 runs)."""
    site = make_site(max_restarts=20)  # the budget is scenario (f)'s
    pid = started(site)
    for attempt in range(10):
        kill(pid, signal.SIGSTOP)
        result = site.watchdog()
        log = (site.home / "cron.log").read_text() if (site.home / "cron.log").exists() else ""
        assert result.returncode == 0, f"attempt {attempt}: {log}"
        assert "sudo" not in log
        record = site.fix_records()[-1]
        assert (record["result"], record["rule"]) == ("fixed", "unhealthy"), record
        assert gone(pid)
        new = site.pid()
        assert new != pid
        assert site.healthy()
        pid = new
    assert len(restarts(site)) == 10


def test_e_a_staging_copy_matching_the_pattern_is_left_alone(make_site, tmp_path) -> None:
    """(e) A staging copy matching ``match`` on another port -> untouched; ``status`` 3 when
    the service is stopped; ``fix`` restarts the service."""
    site = make_site(extra='match = "uvicorn app.main:app"\n')
    staging = tmp_path / "staging"
    shutil.copytree(site.root, staging, symlinks=True)
    other_port = site.port + 1 if site.port < 65000 else site.port - 1
    copy = subprocess.Popen(
        ["venv/bin/uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(other_port)],
        cwd=staging, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(other_port), 20, "the staging copy")
        pid = started(site)

        stopped = site.mpsctl("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert gone(pid)
        status = site.mpsctl("status")
        assert status.returncode == StatusExit.NOT_RUNNING, status.stdout + status.stderr
        assert site.mpsctl("stop").returncode == 0  # stopping a stopped service is success

        assert site.watchdog().returncode == 0, (site.home / "cron.log").read_text()
        assert site.healthy()
        assert restarts(site)[-1]["rule"] == "not-running"
        assert copy.poll() is None
        assert _answers(other_port)
        status = site.mpsctl("status", "--json")
        assert json.loads(status.stdout)["pid"] == site.pid() != copy.pid
    finally:
        copy.kill()
        copy.wait(10)


def _answers(port: int) -> bool:
    try:
        return http_request(f"http://127.0.0.1:{port}/health", timeout=2.0).status == 200
    except OSError:
        return False


def test_f_a_service_that_keeps_dying_exhausts_the_budget_then_gives_up(make_site) -> None:
    """(f) A service that dies 1 s after every start -> exactly the budget's restarts, then
    the give-up exit code and one alert."""
    site = make_site(env={"SCENARIO_DIE_AFTER": "1"})
    assert site.mpsctl("start").returncode in (0, 1)  # healthy for about a second, or not
    pid = site.pid() if (site.home / "service.pid").exists() else 0
    codes = []
    for _ in range(5):
        wait_until(lambda: not site.healthy(), 10, "the service to die")
        wait_until(lambda p=pid: not p or gone(p), 10, "its process to go")
        codes.append(site.watchdog().returncode)
        pid = site.pid() if (site.home / "service.pid").exists() else pid

    assert codes[3:] == [ExitCode.GAVE_UP, ExitCode.GAVE_UP]  # the cron line keeps 69

    assert len(restarts(site)) == 3  # fix.max_restarts
    last = site.mpsctl("fix", "--if-unhealthy")
    assert last.returncode == ExitCode.GAVE_UP, last.stderr
    assert "gave up after 3 restart(s) in 1 h; last death:" in last.stderr
    assert "--reset-budget" in last.stderr
    gave_up = [r for r in site.fix_records() if r.get("gave_up")]
    assert len(gave_up) == 3  # runs 4 and 5, and the one above
    assert all(r["result"] == "refused" for r in gave_up)  # counted by the exporter
    alerts = site.alert_documents()
    assert [a["kind"] for a in alerts] == ["restarted"] * 3 + ["gave-up"]
    assert "gave up after 3 restart(s)" in alerts[-1]["text"]

    # the exporter reads the same trail: 3 restarts, 3 give-ups
    counters = {c.name: c.value for c in watchdog_samples(site.home, "mvp")}
    assert counters == {"mpsctl_watchdog_restarts": 3, "mpsctl_watchdog_refusals": 3}

    rearmed = site.mpsctl("fix", "--if-unhealthy", "--reset-budget")
    assert rearmed.returncode in (0, 1), rearmed.stderr  # it restarts again (and it dies)
    assert len(restarts(site)) == 4


def test_g_env_file_survives_a_cron_restart(make_site) -> None:
    """(g) ``env_file`` values are in the environment of the service cron restarted, and it
    is the same environment a shell's ``mpsctl start`` gives."""
    dotenv = (
        "# secrets for the service\n"
        'HF_HOME="/data/hf cache"\n'
        "API_KEY='s3cr=t'  # quoted, with a comment\n"
        "export REGION=eu-1\n"
    )
    site = make_site(extra='env_file = ".env"\n', files={".env": dotenv})
    # a shell start: this shell's own exports must not leak into the service
    shell_env = {**os.environ, "MPSCTL_CONFIG": str(site.config), "ONLY_IN_MY_SHELL": "1"}
    shell = subprocess.run(["python", "-m", "mpsctl", "start"], env=shell_env,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    from_shell = site.service_env()

    pid = site.pid()
    kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), 10, "the killed service to go")
    assert site.watchdog().returncode == 0, (site.home / "cron.log").read_text()
    from_cron = site.service_env()

    for got in (from_shell, from_cron):
        assert got["HF_HOME"] == "/data/hf cache"
        assert got["API_KEY"] == "s3cr=t"
        assert got["REGION"] == "eu-1"
        assert got["OMP_NUM_THREADS"] == "1"  # [service] env
        assert got["PATH"].split(os.pathsep)[0] == str(site.root / "venv" / "bin")
        assert "ONLY_IN_MY_SHELL" not in got

    # the same variables from a shell and from cron, but for the documented base ones cron
    # does not have (the locale, TZ, the user's name; Python itself sets LC_CTYPE under C)
    def names(env: dict[str, str]) -> set[str]:
        base = {"LANG", "TZ", "USER", "LOGNAME", "TMPDIR"}
        return {k for k in env if k not in base and not k.startswith("LC_")}

    assert names(from_shell) == names(from_cron)
    # the locale is the system's default, whoever starts it (cron sets no LANG)
    assert from_shell["LANG"] == from_cron["LANG"] != ""


@pytest.fixture
def small_home(make_site) -> Iterator[tuple[Site, str]]:
    """A site whose MPSCTL_HOME lives on a 512 KiB tmpfs (root) or a directory (others)."""
    site = make_site()
    if os.geteuid() == 0:
        site.home.mkdir(parents=True, exist_ok=True)
        # mode 0700: a state directory others can write to is refused
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs",
                        str(site.home)], check=True)  # fmt: skip
        try:
            yield site, "tmpfs"
        finally:
            site.mpsctl("stop", "--timeout", "1")
            subprocess.run(["umount", "-l", str(site.home)], check=False)
    else:
        yield site, "dir"
        site.home.chmod(0o700)


def test_h_a_full_or_read_only_state_dir_leaves_the_service_running(small_home) -> None:
    """(h) A full, then a read-only, state dir -> fix stops nothing; the service runs on."""
    site, kind = small_home
    pid = started(site)
    states = ["full", "read-only"] if kind == "tmpfs" else ["read-only"]
    for state in states:
        if state == "full":
            with open(site.home / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(b"\0" * 65536)
                        filler.flush()
                except OSError:
                    pass
        elif kind == "tmpfs":
            (site.home / "filler").unlink()
            subprocess.run(["mount", "-o", "remount,ro", str(site.home)], check=True)
        else:
            site.home.chmod(0o500)
        fixed = site.mpsctl("fix")
        assert fixed.returncode == 1, fixed.stdout + fixed.stderr
        assert str(site.home) in fixed.stderr  # says which directory it cannot write
        if state == "full":
            assert "nothing stopped: cannot write the pidfile and the lock" in fixed.stderr
        assert site.pid() == pid
        assert site.healthy()
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        if state == "read-only":
            # the cron line cannot open its log there: mpsctl still runs (its own error, not
            # the shell's failed redirection) and says so on stderr (cron's mail) and syslog
            watchdog = site.watchdog()
            lines = watchdog.stderr.splitlines()
            assert lines[0].startswith(
                f"mpsctl: warning: cannot open the error log {site.home / 'cron.log'}: "
            ), watchdog.stderr
            assert lines[1].startswith("mpsctl: error: cannot open the lock file ")
            assert watchdog.returncode == 1
            assert site.pid() == pid
