"""service.match's pass over the process table: one read of each command line, the same
lines psutil reads, a process object only for a match, flat in the number of processes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mpsctl.observe.processes.matching import matching

# the module (the package's name `matching` is this function)
match_module = importlib.import_module("mpsctl.observe.processes.matching")


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the /proc pass is Linux's")
def test_command_lines_are_psutils(sleepers: list[subprocess.Popen[bytes]]) -> None:
    sleepers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                      "an argument with spaces", ""]))  # fmt: skip
    time.sleep(0.3)
    lines = {pid: line for pid, line, _ in match_module._proc_command_lines()}
    compared = 0
    for pid, line in lines.items():
        try:
            expected = " ".join(psutil.Process(pid).cmdline())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                again = match_module._line(f.read())
        except (psutil.Error, OSError):
            continue  # gone meanwhile
        if again != line:
            continue  # exited or exec'd another program between the reads
        assert line == expected, pid
        compared += 1
    assert compared > 1
    assert sleepers[0].pid in lines


def test_a_match_by_relative_path_and_nothing_else(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    # the program as a relative path, run from its own directory: matched made absolute
    argv0 = "venv-x/bin/uvicorn-x"
    sleepers.append(subprocess.Popen([argv0, "-c", "import time; time.sleep(60)"],
                                     executable=sys.executable, cwd=tmp_path))  # fmt: skip
    time.sleep(0.3)
    absolute = str(tmp_path / argv0)
    assert [p.pid for p in matching(absolute)] == [sleepers[0].pid]
    assert [p.pid for p in matching(r"venv-x/bin/uvicorn-x -c")] == [sleepers[0].pid]
    assert matching(r"no-such-service-[0-9]{9}") == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the /proc pass is Linux's")
def test_non_matching_processes_get_no_process_object(
    sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleepers.extend(subprocess.Popen(["sleep", "60"]) for _ in range(50))
    made: list[int] = []
    real = psutil.Process.__init__

    def counting(self: psutil.Process, pid: int | None = None) -> None:
        made.append(pid or 0)
        real(self, pid)

    monkeypatch.setattr(psutil.Process, "__init__", counting)
    assert matching(r"no-such-service-[0-9]{9}") == []
    # only mpsctl's own ancestry (the protected pids) is looked at through psutil
    assert not {p.pid for p in sleepers} & set(made)
    assert len(made) < 50
