"""start / stop / restart / status / clean-cache / fix through the CLI (and real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mpsctl.cli import main
from mpsctl.control import audit
from mpsctl.control.lock import service_lock
from mpsctl.control.pidfile import write_pidfile
from mpsctl.errors import ExitCode
from mpsctl.observe.processes import PidRecord
from mpsctl.observe.processes.tree import create_time_of
from mpsctl.units import iso_utc
from tests.conftest import free_port
from tests.control.fakes import FakeService, fake_command, fake_service, spawned, wait_for

__all__ = ["fake_service", "spawned"]  # fixtures

Make = Callable[..., FakeService]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--high", "abc"], "--high: expected a number, got 'abc'"),
        (["--high", "nan"], "--high: expected a finite number"),
        (["--high", "2.5"], "--high: must be between 0.0 and 2"),
        (["--low", "-0.1"], "--low: must be between 0.0 and 2"),
        (["--high", "0.5", "--low", "0.7"], "low watermark ratio 0.7 is above high 0.5"),
        (["--low", "1.2"], "low watermark ratio 1.2 is above high 1"),  # default high 1.0
        (["--high", "0", "--low", "2.5"], "--low: must be between 0.0 and 2"),
    ],
)
def test_invalid_ratios_are_refused_before_anything_starts(
    fake_service: Make, isolated_home: Path, flags: list[str], reason: str
) -> None:
    fake = fake_service()
    result = run("start", *flags)
    assert result.exit_code == 2
    assert reason in result.stderr
    assert result.stdout == ""
    assert not fake.log.exists()
    assert not (isolated_home / "service.pid").exists()


def test_status_exit_codes_follow_lsb(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # running (0) is checked on the real service in test_reference_lifecycle_cli.py
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    assert run("status").exit_code == 3  # not running
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = create_time_of(gone.pid)
    assert started is not None
    gone.kill()
    gone.wait()
    isolated_home.mkdir(parents=True, exist_ok=True)
    record = PidRecord(gone.pid, started, url=os.environ["MPSCTL_SERVICE_URL"])
    write_pidfile(isolated_home / "service.pid", record)  # the service is gone: "dead"
    dead = run("status")
    assert dead.exit_code == 1
    assert "pidfile stale" in dead.stdout


def test_unhealthy_but_running_is_visible(fake_service: Make, spawned: list) -> None:
    fake = fake_service("--fake-unhealthy", match="app.main:app --port {port}")
    by_hand = subprocess.Popen(fake_command(fake.script, fake.port, "--fake-unhealthy"))
    spawned.append(by_hand)
    assert wait_for(lambda: "HTTP 503" in run("status").stdout)  # listening now
    result = run("status")
    assert result.exit_code == 0
    assert "running" in result.stdout
    assert "found by match" in result.stdout
    assert "UNHEALTHY (health answered HTTP 503)" in result.stdout


def test_running_but_not_listening_says_so(
    isolated_home: Path, spawned: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a process the pidfile names, nothing on its port yet: what status shows mid-start
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spawned.append(sleeper)
    started = create_time_of(sleeper.pid)
    assert started is not None
    isolated_home.mkdir(parents=True, exist_ok=True)
    record = PidRecord(sleeper.pid, started, url=os.environ["MPSCTL_SERVICE_URL"])
    write_pidfile(isolated_home / "service.pid", record)
    result = run("status")
    assert result.exit_code == 0
    assert "UNHEALTHY (not listening yet (still starting?))" in result.stdout
    assert "try `mpsctl start`" not in result.stdout


def test_start_failure_prints_the_log_tail(fake_service: Make, isolated_home: Path) -> None:
    fake_service("--fake-die")
    result = run("start")
    assert result.exit_code == 1
    assert "fatal: cannot load the model" in result.stderr
    assert "mpsctl: error: " in result.stderr
    assert "exited with status 3" in result.stderr
    assert not (isolated_home / "service.pid").exists()


def test_locked_run_exits_75_naming_the_holder(fake_service: Make, isolated_home: Path) -> None:
    fake_service()
    with service_lock(isolated_home, purpose="fix"):
        result = run("start")
    assert result.exit_code == 75
    assert f"pid {os.getpid()} (fix)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_clean_cache_json(fake_service: Make, tmp_path: Path) -> None:
    fake_service()
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"x" * 64)
    result = run("clean-cache", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "mpsctl.clean-cache/1"
    assert document["python"]["freed_bytes"] == 64
    assert document["service_running"] is False


def test_fix_refuses_a_restart_loop(fake_service: Make, isolated_home: Path) -> None:
    fake_service()
    path = audit.fix_history_path(isolated_home)
    for _ in range(2):
        audit.append_record(path, {"time": iso_utc(time.time() - 60), "restarted": True})
    result = run("fix", "--max-restarts", "2", "--within", "1h")
    assert result.exit_code == 1
    assert "refusing to restart: 2 restart(s)" in result.stderr
    assert audit.read_records(path)[-1]["result"] == "refused"


def test_manual_fixes_do_not_use_up_the_watchdogs_budget(
    fake_service: Make, isolated_home: Path
) -> None:
    fake_service()
    path = audit.fix_history_path(isolated_home)
    for _ in range(3):  # a person ran `mpsctl fix` three times in the last minutes
        record = {"time": iso_utc(time.time() - 60), "restarted": True, "trigger": "manual"}
        audit.append_record(path, record)
    audit.append_record(path, {"time": iso_utc(time.time() - 30), "restarted": True,
                                 "trigger": "if-unhealthy"})  # fmt: skip
    try:
        result = run("fix", "--if-unhealthy", "--max-restarts", "2")
        assert result.exit_code == 0, result.stderr  # 1 watchdog restart < 2
        assert audit.read_records(path)[-1]["result"] == "fixed"
        assert run("stop").exit_code == 0
        refused = run("fix", "--if-unhealthy", "--max-restarts", "2")
        # now 2 watchdog restarts and the service is down: the watchdog gives up
        assert refused.exit_code == ExitCode.GAVE_UP
        assert "gave up after 2 restart(s) in 1 h" in refused.stderr
    finally:
        run("stop")


def test_parallel_fix_restarts_exactly_once(fake_service: Make, isolated_home: Path) -> None:
    fake = fake_service()
    env = {**os.environ, "MPSCTL_CONFIG": str(fake.config), "MPSCTL_HOME": str(isolated_home)}
    command = [sys.executable, "-m", "mpsctl", "fix", "--if-unhealthy"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(5)
    ]
    try:
        codes = [p.wait(timeout=60) for p in runs]
    finally:
        run("stop")
    assert set(codes) <= {0, 75}, [p.stderr.read() for p in runs if p.stderr]
    records = audit.read_records(audit.fix_history_path(isolated_home))
    assert len(records) == 5
    assert sum(r["restarted"] is True for r in records) == 1
    assert {r["result"] for r in records} <= {"fixed", "healthy", "locked"}
    assert codes.count(75) == sum(r["result"] == "locked" for r in records)


@pytest.mark.parametrize(
    "args",
    [
        ["start", "--timeout", "-1"],
        ["start", "--timeout", "0"],
        ["start", "--timeout", "nan"],
        ["start", "--wait", "-5"],
        ["restart", "--stop-timeout", "inf"],
        ["stop", "--timeout", "-1"],
        ["fix", "--timeout", "nan"],
    ],
)
def test_bad_durations_are_usage_errors(
    fake_service: Make, isolated_home: Path, args: list[str]
) -> None:
    fake = fake_service()
    result = run(*args)
    assert result.exit_code == 2
    assert "expected a finite number of seconds" in result.stderr
    assert result.stdout == ""
    assert not fake.log.exists()  # nothing was started
    assert not (isolated_home / "service.pid").exists()


@pytest.mark.parametrize(
    ("service", "reason"),
    [
        ({"venv": "no-such-venv"}, "no-such-venv has no bin/ directory; nothing started"),
        ({"workdir": "no-such-dir"}, "no-such-dir is not a directory; nothing started"),
        ({"log_file": "service.log/inside-a-file.log"}, "cannot open service.log_file"),
        ({"command": ["mpsctl-no-such-command-9"]}, "cannot run mpsctl-no-such-command-9: No such"),
    ],
)
def test_start_setup_errors_are_one_line(
    fake_service: Make, isolated_home: Path, tmp_path: Path, service: dict, reason: str
) -> None:
    fake = fake_service()
    lines = [
        line for line in fake.config.read_text().splitlines() if line.split(" = ")[0] not in service
    ]
    keys = [f"{key} = {json.dumps(value)}" for key, value in service.items()]
    fake.config.write_text("\n".join(lines[:1] + keys + lines[1:]) + "\n")
    if "log_file" in service:
        fake.log.write_text("a file, so nothing can be created under it\n")
    result = run("start")
    assert result.exit_code == 1
    assert reason in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mpsctl: error: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (isolated_home / "service.pid").exists()


def test_status_with_a_bad_config_is_lsb_unknown(write_config: Callable[..., Path]) -> None:
    write_config("[service]\nstop_timeout = -3\n")
    result = run("status")
    assert result.exit_code == 4
    assert result.stderr.startswith("mpsctl: error: ")
    assert result.stdout == ""


def test_stop_json_is_one_document_when_refused(fake_service: Make, spawned: list) -> None:
    fake = fake_service(match="mpsctl-test-json-refused-5")
    hand = subprocess.Popen(  # started by hand, loading: its argv names the service's port
        [sys.executable, "-c", "import time; time.sleep(60)", "mpsctl-test-json-refused-5",
         "--port", str(fake.port)]
    )  # fmt: skip
    spawned.append(hand)
    assert wait_for(lambda: json.loads(run("stop", "--json").stdout)["processes"] != [])
    result = run("stop", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)  # exactly one document: json.loads refuses two
    assert (document["status"], document["processes"][0]["pid"]) == ("refused", hand.pid)
    assert result.stderr.count("\n") == 1
