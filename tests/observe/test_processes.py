"""observe.processes against real processes: pidfile identity, match, trees, ports."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mpsctl.observe import processes
from mpsctl.settings import Settings, load_settings
from tests.control.fakes import PYTHON, sleeper, spawned, wait_for

__all__ = ["spawned"]  # a fixture

# a parent with one sleeping child that repeats the parent's extra arguments (a "worker")
PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', *sys.argv[1:]])\n"
    "time.sleep(60)\n"
)


def settings(match: str | None = None) -> Settings:
    return load_settings(overrides={"service.match": (match, "--match")})


def write_pidfile(path: Path, pid: int, create_time: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "create_time": create_time}), encoding="utf-8")


def test_pidfile_with_matching_create_time_finds_the_tree(
    spawned: list, isolated_home: Path
) -> None:
    parent = subprocess.Popen([PYTHON, "-c", PARENT])
    spawned.append(parent)
    assert wait_for(lambda: len(psutil.Process(parent.pid).children()) == 1)
    created = psutil.Process(parent.pid).create_time()
    write_pidfile(isolated_home / "service.pid", parent.pid, created)

    snap = processes.find_service(settings(), clock=lambda: created + 42.0)

    assert (snap.found_by, snap.pidfile_state, snap.running) == ("pidfile", "ok", True)
    assert snap.roots == (parent.pid,)
    assert len(snap.processes) == 2
    assert snap.total_rss_bytes > 0
    root = next(p for p in snap.processes if p.pid == parent.pid)
    assert root.uptime_s == pytest.approx(42.0)
    assert json.loads(json.dumps(snap.to_json()))["processes"][0]["rss_bytes"] > 0
    for child in psutil.Process(parent.pid).children():
        child.kill()


def test_reused_pid_is_not_the_service(spawned: list, isolated_home: Path) -> None:
    other = sleeper("uvicorn", "app.main:app")
    spawned.append(other)
    created = psutil.Process(other.pid).create_time()
    write_pidfile(isolated_home / "service.pid", other.pid, created - 3600)

    snap = processes.find_service(settings())

    assert (snap.pidfile_state, snap.running, snap.found_by) == ("reused", False, None)
    assert not processes.is_alive(other.pid, created - 3600)
    assert processes.is_alive(other.pid, created)


def test_stale_and_invalid_pidfiles(isolated_home: Path) -> None:
    gone = subprocess.Popen([PYTHON, "-c", "pass"])
    gone.wait()
    write_pidfile(isolated_home / "service.pid", gone.pid, 1.0)
    assert processes.find_service(settings()).pidfile_state == "stale"
    (isolated_home / "service.pid").write_text("{not json", encoding="utf-8")
    assert processes.find_service(settings()).pidfile_state == "invalid"
    (isolated_home / "service.pid").unlink()
    assert processes.find_service(settings()).pidfile_state == "missing"


def test_match_groups_a_reloader_and_its_worker(spawned: list) -> None:
    # loading still (listening nowhere): its argv names the service's port
    port = str(settings().service.port)
    parent = subprocess.Popen([PYTHON, "-c", PARENT, "uvicorn", "mvp-fake-7", "--port", port])
    spawned.append(parent)
    assert wait_for(lambda: len(psutil.Process(parent.pid).children()) == 1)

    snap = processes.find_service(settings(r"uvicorn mvp-fake-7"))

    assert snap.found_by == "match"
    assert snap.roots == (parent.pid,)  # the worker matches too, but descends from the root
    assert len(snap.processes) == 2
    for child in psutil.Process(parent.pid).children():
        child.kill()


def test_pidfile_wins_over_decoys_that_mention_the_pattern(
    spawned: list, isolated_home: Path
) -> None:
    service = sleeper("uvicorn", "app.main:app", "--port", "1")
    decoy = sleeper("uvicorn", "app.main:app", "--port", "1")
    spawned += [service, decoy]
    write_pidfile(
        isolated_home / "service.pid", service.pid, psutil.Process(service.pid).create_time()
    )

    snap = processes.find_service(settings("uvicorn app.main:app"))

    assert snap.found_by == "pidfile"
    assert decoy.pid not in snap.pids


def test_never_matches_itself_or_its_ancestors() -> None:
    own = " ".join(psutil.Process().cmdline())
    found = processes.find_service(settings(re.escape(own))).processes
    assert os.getpid() not in {p.pid for p in found}
    assert os.getppid() not in {p.pid for p in found}
    assert os.getpid() in processes.protected_pids()


def test_zombie_counts_as_gone() -> None:
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    created = psutil.Process(child.pid).create_time()
    assert wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
    assert not processes.is_alive(child.pid, created)
    assert processes.proc_info(psutil.Process(child.pid)) is None
    child.wait()


def test_port_holder_names_the_listener(spawned: list) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    spawned.append(server)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    assert wait_for(listening)
    holder = processes.port_holder("127.0.0.1", port)
    assert isinstance(holder, processes.ProcInfo)
    assert holder.pid == server.pid
    assert "http.server" in holder.command


def test_footprint_is_none_off_macos() -> None:
    if sys.platform == "darwin":
        assert processes.phys_footprint(os.getpid()) is not None
    else:
        assert processes.phys_footprint(os.getpid()) is None


def test_group_is_mine_only_without_mpsctl_in_it(spawned: list) -> None:
    own_session = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"],
                                   start_new_session=True)  # fmt: skip
    spawned.append(own_session)
    assert processes.group_is_mine(own_session.pid)
    assert not processes.group_is_mine(os.getpgrp())  # this process (mpsctl in the test) is in it


def test_session_members_finds_what_an_exited_leader_left(spawned: list) -> None:
    leader = subprocess.Popen(
        [PYTHON, "-c", "import subprocess, sys; "
         "print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']).pid)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert leader.stdout is not None
    orphan = int(leader.stdout.readline())
    created = psutil.Process(leader.pid).create_time()
    leader.wait()
    try:
        found = processes.session_members(leader.pid, created)
        assert list(found) == [orphan]
        assert processes.session_members(leader.pid, created + 3600) == {}  # born before: not it
    finally:
        psutil.Process(orphan).kill()


def busy_and_idle(
    spawned: list,
) -> tuple[subprocess.Popen, subprocess.Popen, processes.ServiceSnapshot]:
    """A process spinning a core and a sleeper, as one snapshot (the spinner its root)."""
    busy = subprocess.Popen([PYTHON, "-c", "while True: pass"])
    idle = sleeper()
    spawned.extend([busy, idle])
    infos = processes.processes_info(
        (p.pid, psutil.Process(p.pid).create_time()) for p in (busy, idle)
    )
    return busy, idle, processes.ServiceSnapshot("match", "missing", None, (busy.pid,), infos)


def test_cpu_percent_between_two_readings_tells_busy_from_idle(spawned: list) -> None:
    busy, idle, snapshot = busy_and_idle(spawned)
    pids = [busy.pid, idle.pid]
    time.sleep(0.2)  # past the interpreter's start-up: idle is idle by now
    before = processes.cpu_seconds(pids)
    began = time.perf_counter()
    time.sleep(0.3)
    after = processes.cpu_seconds(pids)
    result = processes.with_cpu_percent(snapshot, before, after, time.perf_counter() - began)
    figures = {p.pid: p.cpu_percent for p in result.processes}
    # one core's worth of spinning, even sharing 2 cores with other work; the sleeper ~0
    assert figures[busy.pid] is not None
    assert figures[busy.pid] > 20
    assert figures[idle.pid] is not None
    assert figures[idle.pid] < 5
    # a pid missing from a reading keeps "unknown", never 0
    partial = processes.with_cpu_percent(snapshot, {busy.pid: before[busy.pid]}, after, 0.3)
    assert {p.pid: p.cpu_percent for p in partial.processes}[idle.pid] is None


def test_a_cpu_window_started_with_the_snapshot_measures_until_it_is_read(spawned: list) -> None:
    busy, idle, plain = busy_and_idle(spawned)
    time.sleep(0.2)  # past the interpreter's start-up: idle is idle by now
    started = processes.start_cpu_window(plain)
    assert started == plain  # the window's start is no part of what the snapshot says
    assert started.to_json() == plain.to_json()
    time.sleep(0.3)
    figures = {p.pid: p.cpu_percent for p in processes.with_cpu_since_snapshot(started).processes}
    assert figures[busy.pid] is not None
    assert figures[busy.pid] > 20
    assert figures[idle.pid] is not None
    assert figures[idle.pid] < 5
    # no window started: nothing measured, "unknown" stays unknown
    assert processes.with_cpu_since_snapshot(plain) == plain
    assert all(p.cpu_percent is None for p in processes.with_cpu_since_snapshot(plain).processes)
