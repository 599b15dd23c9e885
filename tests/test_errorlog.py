"""``mpsctl --error-log FILE``: the cron job's stderr, opened by mpsctl itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "mpsctl", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_errors_are_appended_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "cron.log"
    log.write_text("an earlier line\n")
    done = run("--error-log", str(log), "fix", "--within", "soon")
    assert done.returncode == 2
    assert done.stderr == ""
    text = log.read_text()
    assert text.startswith("an earlier line\nmpsctl: error: ")  # appended, never truncated
    assert "soon" in text
    fresh = tmp_path / "new.log"
    run("--error-log", str(fresh), "fix", "--within", "soon")
    assert fresh.stat().st_mode & 0o777 == 0o600  # it may quote settings: private


def test_a_log_that_cannot_be_opened_still_runs_the_command(tmp_path: Path) -> None:
    where = tmp_path / "missing-dir" / "cron.log"
    done = run("--error-log", str(where), "fix", "--within", "soon")
    assert done.returncode == 2  # the command ran: its own usage error, not the shell's
    first, second = done.stderr.splitlines()[:2]
    assert first == (
        f"mpsctl: warning: cannot open the error log {where}: No such file or directory; "
        "errors go to stderr"
    )
    assert second.startswith("mpsctl: error: ")
    assert not where.parent.exists()
