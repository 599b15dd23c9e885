"""Strings from outside mpsctl never drive the operator's terminal: every command's output
goes through one escaping console, so ESC[2J or an OSC 52 clipboard write in a process's
command line, a service's answer or a file name is shown as \\x1b text on a terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.monitor import stub_service
from tests.terminal import run_on_tty

HOSTILE = "\x1b[2J\x1b]52;c;SGVsbG8=\x07"
SHOWN = "\\x1b[2J\\x1b]52;c;SGVsbG8=\\x07"


def assert_escaped(out: bytes) -> None:
    text = out.decode("utf-8", "replace")
    assert "\x1b[2J" not in text
    assert "\x1b]52" not in text
    assert SHOWN in text


@pytest.fixture
def decoy() -> Iterator[str]:
    marker = "mpsctl-escape-decoy"
    # its argv names the service's port (the default 8000): the service, still loading
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", HOSTILE,
                             marker, "--port", "8000"])  # fmt: skip
    try:
        yield marker
    finally:
        proc.kill()
        proc.wait(10)


def test_probe_escapes_a_matching_process_command_line(decoy: str) -> None:
    assert_escaped(run_on_tty("probe", env={"MPSCTL_SERVICE_MATCH": decoy}))


def test_probe_escapes_the_device_a_service_reports() -> None:
    report = {"schema": "mpsctl.memory/1", "device": HOSTILE, "pid": os.getpid()}
    with stub_service(memory=report) as service:
        out = run_on_tty("probe", env={"MPSCTL_SERVICE_URL": service.url})
    assert_escaped(out)


def test_oom_escapes_a_file_name_in_its_panel_title(tmp_path: Path) -> None:
    log = tmp_path / f"error{HOSTILE}.log"
    shutil.copy(FIXTURES / "torch-cuda-error-oom-1-comma-so.txt", log)

    assert_escaped(run_on_tty("oom", str(log)))


def test_an_error_line_escapes_what_it_quotes(tmp_path: Path) -> None:
    missing = tmp_path / f"missing{HOSTILE}.log"
    proc = subprocess.run(
        [sys.executable, "-m", "mpsctl", "oom", str(missing)], capture_output=True, check=False
    )
    assert proc.returncode == 1
    assert b"\x1b" not in proc.stderr
    assert SHOWN.encode() in proc.stderr


def test_the_nagios_line_carries_no_control_character() -> None:
    report = {"schema": "mpsctl.memory/1", "device": HOSTILE, "pid": os.getpid()}
    with stub_service(memory=report) as service:
        proc = subprocess.run(
            [sys.executable, "-m", "mpsctl", "probe", "--nagios"],
            capture_output=True, check=False,
            env={**os.environ, "MPSCTL_SERVICE_URL": service.url},
        )  # fmt: skip
    assert proc.stdout.count(b"\n") == 1
    assert b"\x1b" not in proc.stdout
    assert b"\x07" not in proc.stdout
