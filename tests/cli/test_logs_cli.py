"""``mpsctl logs``: last lines across files, filters, missing files, -f and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from tests.conftest import read_fixture
from tests.terminal import run_on_tty

CONFIG = (
    '[service]\ncommand = ["x"]\nlog_file = "backend.log"\n'
    'log_globs = ["logs/error_*.log", "logs/app_*.log"]\n'
)


@pytest.fixture
def service_logs(tmp_path: Path, write_config) -> Path:  # type: ignore[no-untyped-def]
    (tmp_path / "logs").mkdir()
    (tmp_path / "backend.log").write_text(
        "2026-01-21 10:00:01 INFO started\n2026-01-21 10:00:05 INFO query 工商银行\n"
    )
    (tmp_path / "logs/error_2026-01-20.log").write_text("2026-01-20 09:00:00 ERROR yesterday\n")
    (tmp_path / "logs/error_2026-01-21.log").write_bytes(
        b"2026-01-21 10:00:03 ERROR failed\n"
        + read_fixture("torch-mps-oom-3.txt").encode()
        + b"2026-01-21 10:00:06 ERROR bad \xff byte\n"
    )
    write_config(CONFIG)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["logs", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_last_lines_of_each_file_merged_in_time_order(service_logs: Path) -> None:
    code, out, err = run("-n", "2")
    assert code == 0
    assert out.splitlines() == [
        "backend | 2026-01-21 10:00:01 INFO started",
        "error   | " + read_fixture("torch-mps-oom-3.txt").strip(),
        "backend | 2026-01-21 10:00:05 INFO query 工商银行",
        "error   | 2026-01-21 10:00:06 ERROR bad \ufffd byte",
    ]
    assert err == f"mpsctl: warning: no file matches {service_logs / 'logs/app_*.log'} (app log)\n"


def test_oom_and_grep_filters(service_logs: Path) -> None:
    code, out, _ = run("--oom")
    assert code == 0
    assert out.splitlines() == ["error   | " + read_fixture("torch-mps-oom-3.txt").strip()]
    code, out, _ = run("--grep", "query|started", "--backend")
    assert out.splitlines() == [
        "backend | 2026-01-21 10:00:01 INFO started",
        "backend | 2026-01-21 10:00:05 INFO query 工商银行",
    ]


def test_since_drops_old_lines(service_logs: Path) -> None:
    code, out, _ = run("--since", "1h", "--backend")
    assert (code, out) == (0, "")
    # a line from 30 minutes ago (naive stamp: local time, as logging writes it) is kept,
    # and so is the unstamped traceback line that continues it
    recent = (datetime.now() - timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S")
    with (service_logs / "backend.log").open("a") as handle:
        handle.write(f"{recent} ERROR recent\n  continued\n")
    code, out, _ = run("--since", "1h", "--backend")
    assert code == 0
    assert out.splitlines() == [f"backend | {recent} ERROR recent", "backend |   continued"]


def test_file_glob_selects_other_files(service_logs: Path) -> None:
    code, out, err = run("--file", "logs/error_*.log", "-n", "1")
    assert code == 0
    assert out == "error | 2026-01-21 10:00:06 ERROR bad \ufffd byte\n"
    assert err == ""


def test_no_log_at_all_fails_and_bad_selection_is_usage(service_logs: Path) -> None:
    code, _, err = run("--app")
    assert code == 1
    assert err.splitlines()[-1] == "mpsctl: error: no log file found"
    (service_logs / "mpsctl.toml").write_text(
        '[service]\ncommand = ["x"]\nlog_globs = ["logs/error_*.log"]\n'
    )
    code, _, err = run("--app")
    assert code == 2
    assert err == "mpsctl: error: no configured log matches --app\n"
    code, _, err = run("--grep", "(")
    assert code == 2
    assert err.startswith("mpsctl: error: --grep: invalid regular expression")


def test_help_has_examples() -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "Examples:" in out
    assert "mpsctl logs -f --error --backend" in out


def read_until(proc: subprocess.Popen[str], needle: str, deadline: float) -> str:
    seen = ""
    assert proc.stdout is not None
    while needle not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    return seen


def test_follow_prints_appended_lines_and_ctrl_c_exits_130(service_logs: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "logs", "-f", "-n", "1", "--backend"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        assert "工商银行" in read_until(proc, "工商银行", deadline)
        with (service_logs / "backend.log").open("a") as handle:
            handle.write("2026-01-21 10:00:09 INFO appended\n")
        assert "backend | 2026-01-21 10:00:09 INFO appended" in read_until(
            proc, "appended", deadline
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().endswith("mpsctl: interrupted")


def test_escape_sequences_in_log_lines_are_escaped_on_a_terminal(service_logs: Path) -> None:
    """#13 item 7: a log line's OSC/CSI sequences never reach the terminal; --raw and a pipe
    get the line as written."""
    (service_logs / "backend.log").write_bytes(
        b"2026-01-21 10:00:01 INFO \x1b]0;pwned\x07title \x1b[2Jcleared\n"
    )
    shown = run_on_tty("logs", "-n", "1", "--backend").decode()
    assert "\\x1b]0;pwned\\x07title \\x1b[2Jcleared" in shown
    assert "\x1b]0;" not in shown
    assert "\x1b[2J" not in shown
    raw = run_on_tty("logs", "-n", "1", "--backend", "--raw").decode()
    assert "\x1b[2Jcleared" in raw
    code, out, _ = run("-n", "1", "--backend")  # not a terminal: as written
    assert code == 0
    assert "\x1b[2Jcleared" in out


def test_follow_reports_the_switch_to_a_newer_file_as_information(
    service_logs: Path, tmp_path: Path
) -> None:
    """#13 item 21: the rollover notice names the log and never reads as `mpsctl: error:`."""
    errfile = (tmp_path / "stderr.txt").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "logs", "-f", "-n", "1", "--error"],
        stdout=subprocess.PIPE,
        stderr=errfile,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + 30
        read_until(proc, "bad", deadline)
        newer = service_logs / "logs/error_2026-01-22.log"
        newer.write_text("2026-01-22 00:00:01 ERROR after midnight\n")
        assert "after midnight" in read_until(proc, "after midnight", deadline)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    errfile.seek(0)
    err = errfile.read()
    assert f"mpsctl: error log: now following {newer}\n" in err
    assert "mpsctl: error:" not in err


def test_oom_filter_shows_every_memory_death_kind(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    cpu = read_fixture("torch-cpu-oom-2-cant-allocate-errcode12-CPUAllocator65.txt").splitlines()
    gunicorn = read_fixture("gunicorn-sigkill-1-perhaps-oom-sync-docker.txt").splitlines()
    lines = ["2026-01-21 10:00:01 INFO started", *cpu, *gunicorn]
    (tmp_path / "backend.log").write_text("\n".join(lines) + "\n")
    write_config('[service]\ncommand = ["x"]\nlog_file = "backend.log"\n')
    code, out, _ = run("--oom", "-n", "1000")
    assert code == 0
    shown = out.splitlines()
    assert any("DefaultCPUAllocator: can't allocate memory" in line for line in shown)
    assert any("was sent SIGKILL! Perhaps out of memory?" in line for line in shown)
    assert not any("INFO started" in line for line in shown)
