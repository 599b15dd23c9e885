"""Files a person or process could replace are read only when they are regular files, with
a size cap where the whole file is read: a FIFO never hangs a command, /dev/zero never
fills memory; each is one `mpsctl: error:` line (or the documented place in a report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsctl.control.audit import fix_history_path, read_records
from mpsctl.errors import ServiceError

TIMEOUT = 20


def mpsctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run mpsctl as a person would; a hang fails the test instead of blocking it."""
    return subprocess.run(
        [sys.executable, "-m", "mpsctl", *args],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("mpsctl: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def env_file_config(tmp_path: Path, env_file: Path) -> dict[str, str]:
    config = tmp_path / "mpsctl.toml"
    config.write_text(
        f'[service]\ncommand = ["sleep", "60"]\nenv_file = "{env_file}"\n', encoding="utf-8"
    )
    return {"MPSCTL_CONFIG": str(config)}


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_env_file_that_is_a_fifo_or_dev_zero_neither_hangs_nor_fills_memory(
    tmp_path: Path, fifo: Path, kind: str
) -> None:
    env_file = fifo if kind == "fifo" else Path("/dev/zero")
    env = env_file_config(tmp_path, env_file)

    shown = mpsctl("config", "show", "--json", env=env)
    started = mpsctl("start", env=env)

    assert shown.returncode == 0
    error = json.loads(shown.stdout)["service_env_error"]
    assert "not a regular file" in error
    assert started.returncode != 0
    assert "not a regular file" in one_error_line(started.stderr)


def test_an_env_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.env"
    with big.open("wb") as handle:
        handle.truncate(5 * 1024 * 1024)  # sparse: 5 MiB of NULs, no disk used

    shown = mpsctl("config", "show", "--json", env=env_file_config(tmp_path, big))

    assert "larger than 4 MiB" in json.loads(shown.stdout)["service_env_error"]


def test_a_settings_file_that_is_a_fifo_is_one_line(fifo: Path) -> None:
    result = mpsctl("--config", str(fifo), "status")

    assert result.returncode == 4  # status: unknown
    assert one_error_line(result.stderr).endswith("is a FIFO, not a settings file")


def test_a_token_file_that_is_a_fifo_is_one_line_exit_2(fifo: Path) -> None:
    result = mpsctl("serve", "--token-file", str(fifo), "--demo")

    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"mpsctl: error: cannot read token file {fifo}: not a regular file (a FIFO)"
    )


def test_a_fix_history_that_is_a_fifo_is_an_error_not_a_hang(
    isolated_home: Path, fifo: Path
) -> None:
    history = fix_history_path(isolated_home)
    history.parent.mkdir(parents=True)
    os.rename(fifo, history)

    with pytest.raises(ServiceError, match="not a regular file \\(a FIFO\\)"):
        read_records(history)


def test_a_huge_fix_history_is_read_from_its_tail(isolated_home: Path) -> None:
    history = fix_history_path(isolated_home)
    history.parent.mkdir(parents=True)
    with history.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # 64 MiB of NULs, sparse
        handle.seek(0, os.SEEK_END)
        handle.write(b'\n{"restarted": true, "time": "2026-01-01T00:00:00Z"}\n')

    assert read_records(history) == [{"restarted": True, "time": "2026-01-01T00:00:00Z"}]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_pidfile_that_is_a_fifo_or_a_device_hangs_no_command(
    isolated_home: Path, kind: str
) -> None:
    isolated_home.mkdir(mode=0o700)
    pidfile = isolated_home / "service.pid"
    if kind == "fifo":
        os.mkfifo(pidfile)
    else:
        pidfile.symlink_to("/dev/zero")

    status = mpsctl("status")
    probe = mpsctl("probe", "--json")
    stop = mpsctl("stop")

    assert status.returncode in (1, 3, 4)
    assert "Traceback" not in status.stderr
    assert json.loads(probe.stdout)["exit_code"] == probe.returncode
    assert stop.returncode == 0, stop.stderr
    assert not os.path.lexists(pidfile)  # moved aside as corrupt, never read through
    assert os.path.lexists(isolated_home / "service.pid.corrupt")


def test_probe_history_with_a_fifo_and_a_line_without_end_reads_the_rest(
    isolated_home: Path,
) -> None:
    from datetime import datetime, timedelta, timezone

    from mpsctl.monitor.history import history_dir, read_history

    days = history_dir(isolated_home)
    days.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    os.mkfifo(days / f"probe-{(now - timedelta(days=1)).date().isoformat()}.jsonl")
    with (days / f"probe-{now.date().isoformat()}.jsonl").open("wb") as out:
        out.write(b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}\n')  # one line over the cap
        out.write(f'{{"time": "{stamp}", "verdict": "OK"}}\n'.encode())

    records = read_history(isolated_home, now - timedelta(days=2))

    assert [r["verdict"] for r in records] == ["OK"]
