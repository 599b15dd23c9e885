"""host_memory() on this machine, and its macOS path through the runner seam.

The macOS commands cannot run on Linux, so a fake runner answers them with recorded
real outputs (tests/fixtures/SOURCES.md); psutil's figures still come from this machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest

from mpsctl.observe.host import (
    JSON_KEYS,
    PRESSURE_LEVEL,
    SWAPUSAGE,
    TOP,
    VM_STAT,
    CommandRunner,
    host_memory,
    run_command,
)
from tests.conftest import read_fixture

MIB, GIB = 1024**2, 1024**3
# On a real Mac psutil knows wired memory itself and host.py prefers it to top's figure.
PSUTIL_HAS_WIRED = hasattr(psutil.virtual_memory(), "wired")

RECORDED = {
    tuple(VM_STAT): "macos-vm_stat-1-apple-silicon-32gb.txt",
    tuple(SWAPUSAGE): "macos-sysctl-swapusage-2.txt",
    tuple(PRESSURE_LEVEL): "macos-sysctl-memorystatus-pressure-level-2-critical.txt",
    tuple(TOP): "macos-top-header-1-apple-silicon-32gb.txt",
}


def recorded_runner(failing: Mapping[tuple[str, ...], Exception] | None = None) -> CommandRunner:
    def run(argv: list[str]) -> str:
        if failing and tuple(argv) in failing:
            raise failing[tuple(argv)]
        return read_fixture(RECORDED[tuple(argv)])

    return run


def meminfo_bytes(key: str) -> int:
    text = Path("/proc/meminfo").read_text(encoding="ascii")
    match = re.search(rf"^{key}:\s+(\d+) kB$", text, flags=re.MULTILINE)
    assert match is not None, key
    return int(match[1]) * 1024


# --------------------------------------------------------------------------- this machine
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with /proc/meminfo")
def test_linux_figures_match_proc_meminfo() -> None:
    memory = host_memory()
    assert memory.platform == sys.platform
    assert memory.total_bytes == meminfo_bytes("MemTotal")
    assert memory.available_bytes == pytest.approx(meminfo_bytes("MemAvailable"), rel=0.01)
    assert memory.swap_total_bytes == meminfo_bytes("SwapTotal")
    assert 0 <= memory.used_bytes <= memory.total_bytes
    assert 0.0 <= memory.percent <= 100.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only unknowns")
def test_linux_macos_figures_are_unknown_and_nothing_is_run() -> None:
    def refuse(argv: list[str]) -> str:
        raise AssertionError(f"ran {argv} on Linux")

    memory = host_memory(runner=refuse)
    assert (memory.wired_bytes, memory.compressed_bytes) == (None, None)
    assert memory.physmem is None
    # pressure is Linux's own PSI here (tests/observe/test_psi.py), or unknown with a note
    assert memory.pressure in (None, "normal", "warn", "critical")


def test_as_dict_has_exactly_the_json_keys_and_round_trips() -> None:
    data = host_memory(runner=recorded_runner(), platform="darwin").as_dict()
    assert list(data) == list(JSON_KEYS)
    assert json.loads(json.dumps(data)) == data
    assert all(type(data[key]) is int for key in JSON_KEYS if key.endswith("_bytes"))


# --------------------------------------------------------------------------- macOS via the seam
def test_darwin_figures_come_from_the_recorded_outputs() -> None:
    memory = host_memory(runner=recorded_runner(), platform="darwin")
    assert memory.platform == "darwin"
    assert memory.wired_bytes == 142222 * 16384
    assert memory.compressed_bytes == 120555 * 16384
    assert memory.pressure == "critical"
    assert (memory.swap_total_bytes, memory.swap_used_bytes) == (4096 * MIB, 2743 * MIB + MIB // 2)
    assert memory.physmem == {
        "used_bytes": 31 * GIB,
        "wired_bytes": 2221 * MIB,
        "compressor_bytes": 1884 * MIB,
        "unused_bytes": 344 * MIB,
    }
    assert memory.total_bytes == psutil.virtual_memory().total  # psutil: this machine
    assert memory.sources["compressed_bytes"] == "vm_stat"
    assert memory.notes == ()


def test_darwin_runs_each_command_once_as_argv() -> None:
    seen: list[list[str]] = []

    def run(argv: list[str]) -> str:
        seen.append(argv)
        return read_fixture(RECORDED[tuple(argv)])

    host_memory(runner=run, platform="darwin")
    assert sorted(seen) == sorted([VM_STAT, SWAPUSAGE, PRESSURE_LEVEL, TOP])


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory"),
        subprocess.CalledProcessError(1, ["x"]),
        subprocess.TimeoutExpired(["x"], 2.0),
    ],
)
def test_darwin_failing_commands_leave_none_and_notes(error: Exception) -> None:
    failing = dict.fromkeys(RECORDED, error)
    memory = host_memory(runner=recorded_runner(failing), platform="darwin")
    assert memory.compressed_bytes is None
    assert (memory.wired_bytes is None) is not PSUTIL_HAS_WIRED
    assert (memory.pressure, memory.physmem) == (None, None)
    assert memory.swap_total_bytes == psutil.swap_memory().total  # psutil's fallback
    assert memory.sources["swap_total_bytes"] == "psutil.swap_memory"
    assert len(memory.notes) == 4
    assert memory.notes[0].startswith("vm_stat: ")


def test_darwin_note_says_why_a_command_failed() -> None:
    failing: dict[tuple[str, ...], Exception] = {
        tuple(TOP): subprocess.CalledProcessError(1, TOP),
        tuple(VM_STAT): FileNotFoundError(2, "No such file or directory"),
    }
    memory = host_memory(runner=recorded_runner(failing), platform="darwin")
    assert memory.notes == ("vm_stat: command not found", "top -l 1 -n 0: exit status 1")
    assert memory.pressure == "critical"


def test_darwin_unparsable_output_is_a_note_not_a_crash() -> None:
    memory = host_memory(runner=lambda argv: "sysctl: unknown oid\n", platform="darwin")
    assert (memory.compressed_bytes, memory.pressure, memory.physmem) == (None, None, None)
    assert all("unparsable output" in note for note in memory.notes)
    assert len(memory.notes) == 4


def test_darwin_falls_back_to_top_when_vm_stat_fails() -> None:
    failing = {tuple(VM_STAT): FileNotFoundError(2, "No such file or directory")}
    memory = host_memory(runner=recorded_runner(failing), platform="darwin")
    assert memory.compressed_bytes == 1884 * MIB
    assert memory.sources["compressed_bytes"] == "top -l 1 -n 0 (rounded)"
    if not PSUTIL_HAS_WIRED:
        assert memory.wired_bytes == 2221 * MIB


# --------------------------------------------------------------------------- default runner
def test_run_command_returns_stdout_without_a_shell() -> None:
    assert run_command([sys.executable, "-c", "print('a b; $HOME')"]) == "a b; $HOME\n"
    assert run_command(["echo", "$HOME", ";", "false"]) == "$HOME ; false\n"


def test_run_command_raises_on_failure_missing_and_timeout() -> None:
    with pytest.raises(subprocess.CalledProcessError):
        run_command([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(FileNotFoundError):
        run_command(["mpsctl-no-such-command-here"])
    with pytest.raises(subprocess.TimeoutExpired):
        run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.3)


# --------------------------------------------------------------------------- psutil on macOS
def test_recorded_psutil_macos_figures_pass_through_and_give_wired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # psutil-virtual_memory-macos-1.txt as psutil.virtual_memory() on that Mac; none of the
    # macOS commands answer, so wired can only come from psutil's own field.
    text = read_fixture("psutil-virtual_memory-macos-1.txt")
    fields = dict(re.findall(r"(\w+)=([\d.]+)", text))
    recorded = type("svmem", (), {k: float(v) if "." in v else int(v) for k, v in fields.items()})
    monkeypatch.setattr(psutil, "virtual_memory", lambda: recorded)

    def nothing_answers(argv: list[str]) -> str:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    memory = host_memory(runner=nothing_answers, platform="darwin")
    assert (memory.total_bytes, memory.available_bytes, memory.used_bytes) == (
        8589934592,
        2204819456,
        4809887744,
    )
    assert (memory.percent, memory.free_bytes) == (74.3, 14966784)
    assert memory.wired_bytes == 2622050304
    assert memory.sources["wired_bytes"] == "psutil.virtual_memory"
    assert (memory.compressed_bytes, memory.pressure, memory.physmem) == (None, None, None)
    assert len(memory.notes) == 4  # one per macOS command that did not answer
