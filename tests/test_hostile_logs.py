"""Logs are read in bounded pieces whatever their line lengths: `logs -n 1` on a log with no
newline in its gigabytes shows the line's first MiB, and the scanner's first pass (rg or
grep), which prints candidate lines whole, is capped and falls back to the Python search."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpsctl.deaths import grep_pass
from mpsctl.deaths.first_pass import PREFILTER_NEEDLES
from mpsctl.deaths.scanner import scan_found
from tests.conftest import read_fixture

MIB = 1024 * 1024
#: what measuring `mpsctl logs` costs in a child: the interpreter, click, rich (~60 MiB here)
RSS_BUDGET_KIB = 160 * 1024


def one_line_log(path: Path, size: int, middle: bytes = b"") -> Path:
    """``size`` bytes with no newline at all, ``middle`` half-way."""
    with path.open("wb") as out:
        half = (size - len(middle)) // 2
        out.write(b"x" * half + middle + b"x" * (size - half - len(middle)))
    return path


def test_logs_n_1_on_a_one_line_log_holds_one_mib_not_the_line(tmp_path: Path) -> None:
    log = one_line_log(tmp_path / "huge.log", 128 * MIB)
    measure = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "print(done.returncode, len(done.stdout), "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "mpsctl", "logs", "-n", "1",
         "--file", str(log)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip

    code, printed, peak_kib = (int(x) for x in result.stdout.split())
    assert code == 0
    assert MIB <= printed < 2 * MIB  # the first MiB and the count of bytes left out
    assert peak_kib < RSS_BUDGET_KIB, f"peak RSS {peak_kib // 1024} MiB"


def test_logs_n_1_says_how_much_of_the_line_it_left_out(tmp_path: Path) -> None:
    log = one_line_log(tmp_path / "huge.log", 8 * MIB)
    result = subprocess.run(
        [sys.executable, "-m", "mpsctl", "logs", "-n", "1", "--file", str(log)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.rstrip().endswith(
        f"[... {8 * MIB - MIB:,} more bytes of this line not shown]"
    )


@pytest.fixture
def oom_in_one_line(tmp_path: Path) -> Path:
    message = read_fixture("torch-cpu-oom-8-cant-allocate-CPUAllocator71.txt")
    return one_line_log(tmp_path / "one-line.log", 32 * MIB, message.replace("\n", " ").encode())


def _grep(monkeypatch: pytest.MonkeyPatch, tool: str | None) -> None:
    if tool is None or shutil.which(tool) is None:
        pytest.fail(f"{tool} is needed by this test (.ci/run installs it)")
    monkeypatch.setenv("MPSCTL_GREP", tool)
    monkeypatch.setattr(grep_pass, "_GREP", [])


def test_the_first_pass_output_is_capped_and_the_python_search_takes_over(
    oom_in_one_line: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _grep(monkeypatch, "grep")
    monkeypatch.setattr(grep_pass, "MAX_TOOL_OUTPUT", 4 * MIB)
    size = oom_in_one_line.stat().st_size
    with oom_in_one_line.open("rb") as handle:
        hits = grep_pass.grep_hits(handle, 0, size, PREFILTER_NEEDLES, PREFILTER_NEEDLES)
    assert hits is None  # 32 MiB of one candidate line: not read from the tool
    found = list(scan_found(oom_in_one_line))
    assert [f.event.kind for f in found] == ["cpu_alloc"]


def test_the_first_pass_tool_cannot_buffer_a_huge_line(
    oom_in_one_line: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(__import__("resource"), "RLIMIT_DATA") or sys.platform != "linux":
        pytest.fail("RLIMIT_DATA is enforced on Linux, where this test runs")
    _grep(monkeypatch, "grep")
    monkeypatch.setattr(grep_pass, "MAX_TOOL_HEAP", 8 * MIB)  # under the 32 MiB line
    size = oom_in_one_line.stat().st_size
    with oom_in_one_line.open("rb") as handle:
        assert grep_pass.grep_hits(handle, 0, size, PREFILTER_NEEDLES, PREFILTER_NEEDLES) is None
    assert os.environ["MPSCTL_GREP"] == "grep"
