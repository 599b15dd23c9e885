"""Busy or hung, measured without the service's help: real processes, a loaded and an idle
host (busy loops spawned here), CPU time over a window."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from mpsctl.observe.processes.tree import BusySample as Sample
from mpsctl.observe.processes.tree import (
    BusyVerdict,
    busy_sample,
    host_share,
    procs_running,
    sched_seconds,
    thread_states,
)
from mpsctl.observe.processes.tree import judge_busy as judge

LOOP = "while True: pass"
SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def spawn() -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def start(code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def measure(pid: int, seconds: float = 2.0) -> BusyVerdict:
    points = [busy_sample((pid,))]
    for _ in range(4):
        time.sleep(seconds / 4)
        points.append(busy_sample((pid,)))
    return judge(points)


def test_a_busy_loop_is_busy_and_a_sleeper_is_not_on_a_loaded_host(spawn) -> None:
    """Two busy loops next to the service: on 2 cores it measures about 0.67 core, and it
    was killed under the old one-sample 50 % rule."""
    service = spawn(LOOP)
    sleeper = spawn(SLEEP)
    for _ in range(2):
        spawn(LOOP)
    time.sleep(0.5)
    loaded = measure(service.pid)
    assert loaded.busy, loaded.detail
    idle = measure(sleeper.pid)
    assert not idle.busy, idle.detail
    assert "threads running in 0 of 5 samples" in idle.detail


def test_on_an_idle_host_too(spawn) -> None:
    service = spawn(LOOP)
    sleeper = spawn(SLEEP)
    time.sleep(0.3)
    assert measure(service.pid, 1.0).busy
    assert not measure(sleeper.pid, 1.0).busy


def test_a_stopped_process_shows_its_threads_stopped(spawn) -> None:
    proc = spawn(LOOP)
    time.sleep(0.2)
    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.2)
        assert thread_states(proc.pid) == ["T"]
        assert not measure(proc.pid, 1.0).busy
    finally:
        proc.send_signal(signal.SIGCONT)
    assert thread_states(999_999_999) == []


def test_the_host_share_of_one_core() -> None:
    assert host_share(2, None, 1.0) == 1.0
    assert host_share(2, 3.0, 1.0) == 1.0  # 2 wanting, 2 cores
    assert host_share(2, 4.0, 1.0) == pytest.approx(2 / 3)
    assert host_share(2, 5.0, 1.0) == 0.5
    assert host_share(8, 5.0, 1.0) == 1.0
    assert host_share(0, 5.0, 1.0) == 1.0


def test_judge_reads_threads_when_the_cpu_time_is_unknown() -> None:
    def points(*running: int) -> list[Sample]:
        return [Sample(float(i), None, r, 2, 1.0) for i, r in enumerate(running)]

    assert judge(points(1, 0)) == BusyVerdict(
        True, "CPU time not readable; threads running in 1 of 2 samples"
    )
    assert judge(points(1, 0, 0)).busy is False
    assert judge([Sample(0.0, None, 0, 0, None), Sample(1.0, None, 0, 0, None)]) == BusyVerdict(
        False, "neither CPU time nor thread states readable"
    )
    assert judge([Sample(0.0, 1.0, 1, 1, 1.0)]) == BusyVerdict(False, "no CPU measurement")


def test_judge_on_a_loaded_host_uses_the_mean_runnable() -> None:
    # runnable 3 and 5 -> mean 4, minus this measurement: 3 threads want 2 cores
    points = [Sample(0.0, 0.0, 1, 1, 3.0), Sample(3.0, 1.0, 1, 1, 5.0)]
    verdict = judge(points, cores=2)
    assert verdict == BusyVerdict(
        True,
        "CPU 0.33 core(s) over 3.0 s, 0.67 available (busy from 0.33); threads running in 2 "
        "of 2 samples",
    )
    assert judge([Sample(0.0, 0.0, 0, 1, 3.0), Sample(3.0, 0.99, 0, 1, 5.0)], cores=2).busy is False
    assert judge([Sample(0.0, 0.0, 0, 1, None), Sample(2.0, 1.0, 0, 1, None)], cores=2).busy


def test_procs_running_reads_proc_stat(tmp_path) -> None:
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 7\nprocs_blocked 0\n")
    assert procs_running(tmp_path) == 7.0
    assert procs_running() is not None


def test_judge_by_scheduler_time_on_a_cpu_or_waiting_for_one() -> None:
    def window(start: dict[int, float], end: dict[int, float]) -> BusyVerdict:
        # CPU figures that alone would say "dead": the scheduler's figures win
        return judge([Sample(0.0, 5.0, 0, 2, 9.0, start), Sample(2.0, 5.0, 0, 2, 9.0, end)])

    assert window({1: 10.0, 2: 3.0}, {1: 11.0, 2: 3.0}) == BusyVerdict(
        True,
        "wanted CPU 0.50 of the time over 2.0 s (on a CPU or waiting for one; busy from "
        "0.50); threads running in 0 of 2 samples",
    )
    assert window({1: 10.0}, {1: 10.99}).busy is False
    assert window({1: 10.0}, {1: 10.0, 7: 1.2}).busy is True  # a thread born in the window
    assert window({1: 10.0, 2: 50.0}, {1: 10.2}).busy is False  # one that ended: not counted
    # without scheduler figures at one end: the CPU rule
    cpu = judge([Sample(0.0, 0.0, 0, 1, 1.0, {}), Sample(2.0, 1.0, 0, 1, 1.0, {1: 9.0})])
    assert cpu.detail.startswith("CPU 0.50 core(s) over 2.0 s")


def test_sched_seconds_of_a_real_busy_loop_and_a_sleeper(spawn) -> None:
    service = spawn(LOOP)
    sleeper = spawn(SLEEP)
    time.sleep(0.3)
    (tid,) = sched_seconds(service.pid)
    assert tid == service.pid
    before = sched_seconds(service.pid)[tid]
    idle_before = sched_seconds(sleeper.pid)[sleeper.pid]
    began = time.monotonic()
    time.sleep(1.0)
    wanted = (sched_seconds(service.pid)[tid] - before) / (time.monotonic() - began)
    assert 0.8 < wanted < 1.2  # on a CPU or waiting for one, the whole second, any load
    assert sched_seconds(sleeper.pid)[sleeper.pid] - idle_before < 0.05
    assert sched_seconds(999_999_999) == {}
