"""start / stop / status against real processes: a fake http.server service and sleepers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mpsctl.control.memlimit import memory_limit
from mpsctl.control.preflight import preflight_warnings, service_argv
from mpsctl.control.start import StartFailed, StartOptions, health_now, start_service
from mpsctl.control.status import service_status
from mpsctl.control.stop import stop_service
from mpsctl.errors import ServiceError, StatusExit
from mpsctl.observe import processes
from mpsctl.service_env import service_env
from tests.control.fakes import (
    PYTHON,
    FakeService,
    alive,
    fake_service,
    sleeper,
    spawned,
    wait_for,
)

__all__ = ["fake_service", "spawned"]  # fixtures

Make = Callable[..., FakeService]


def test_sigterm_ignoring_tree_is_gone_within_timeout(fake_service: Make) -> None:
    fake = fake_service("--fake-ignore-term", "--fake-tree")
    settings = fake.settings()
    started = start_service(settings)
    assert wait_for(lambda: len(psutil.Process(started.pid).children(recursive=True)) == 2)
    tree = [started.pid] + [p.pid for p in psutil.Process(started.pid).children(recursive=True)]
    began = time.monotonic()

    stopped = stop_service(settings, timeout=1.0)

    elapsed = time.monotonic() - began
    assert not any(alive(pid) for pid in tree)
    assert elapsed <= 1.0 + 0.5
    assert {p.pid: p.outcome for p in stopped.processes} == dict.fromkeys(tree, "SIGKILL")


def test_decoys_mentioning_the_pattern_survive(fake_service: Make, spawned: list) -> None:
    fake = fake_service(match="uvicorn app.main:app --port {port}")
    settings = fake.settings()
    start_service(settings)
    decoy = sleeper("uvicorn", "app.main:app", "--port", str(fake.port))
    spawned.append(decoy)

    stopped = stop_service(settings)

    assert stopped.status == "stopped"
    assert decoy.pid not in {p.pid for p in stopped.processes}
    assert alive(decoy.pid)


def test_reused_pid_in_a_stale_pidfile_survives(
    fake_service: Make, spawned: list, isolated_home: Path
) -> None:
    settings = fake_service().settings()
    other = sleeper("unrelated")
    spawned.append(other)
    created = psutil.Process(other.pid).create_time()
    isolated_home.mkdir(parents=True, exist_ok=True)
    pidfile = isolated_home / "service.pid"
    pidfile.write_text(
        json.dumps({"pid": other.pid, "create_time": created - 500, "pgid": other.pid})
    )

    assert service_status(settings).exit_code == StatusExit.DEAD_PIDFILE
    stopped = stop_service(settings)

    assert stopped.status == "already-stopped"
    assert "another process" in stopped.message
    assert alive(other.pid)


def test_match_only_processes_need_the_flag(fake_service: Make, spawned: list) -> None:
    fake = fake_service(match="mpsctl-test-svc-4242")
    settings = fake.settings()
    # started by hand, still loading: its argv names the service's port
    hand_started = sleeper("mpsctl-test-svc-4242", "--port", str(fake.port))
    spawned.append(hand_started)

    refused = stop_service(settings)
    assert refused.status == "refused"
    assert "--match" in refused.message
    assert alive(hand_started.pid)
    assert stop_service(settings, dry_run=True, use_match=True).status == "dry-run"
    assert alive(hand_started.pid)

    stopped = stop_service(settings, use_match=True)
    assert stopped.status == "stopped"
    assert wait_for(lambda: hand_started.poll() is not None, 2)


def test_port_taken_names_the_holder(
    fake_service: Make, spawned: list, isolated_home: Path
) -> None:
    fake = fake_service()
    holder = subprocess.Popen([PYTHON, "-m", "http.server", str(fake.port), "--bind", "127.0.0.1"])
    spawned.append(holder)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", fake.port)) == 0

    assert wait_for(listening)

    with pytest.raises(ServiceError, match=rf"port {fake.port} .* pid {holder.pid} .*http\.server"):
        start_service(fake.settings())
    assert not (isolated_home / "service.pid").exists()
    assert not fake.log.exists()  # nothing was started


def test_command_dying_at_start_gives_log_tail(fake_service: Make, isolated_home: Path) -> None:
    fake = fake_service("--fake-die")

    with pytest.raises(StartFailed, match="exited with status 3") as info:
        start_service(fake.settings())

    assert any("fatal: cannot load the model" in line for line in info.value.log_tail)
    assert len(info.value.log_tail) <= 20
    assert not (isolated_home / "service.pid").exists()


def test_start_timeout_kills_what_it_started(fake_service: Make, isolated_home: Path) -> None:
    fake = fake_service("--fake-delay", "30")

    with pytest.raises(StartFailed, match=r"not healthy within 0\.5 s"):
        start_service(fake.settings(), StartOptions(timeout=0.5))

    assert not (isolated_home / "service.pid").exists()
    assert not processes.find_service(fake.settings(), pattern=str(fake.script)).processes


def test_log_keeps_earlier_runs(fake_service: Make) -> None:
    fake = fake_service()
    settings = fake.settings()
    pids = []
    for _ in range(2):
        pids.append(start_service(settings).pid)
        stop_service(settings)

    text = fake.log.read_text()
    assert text.count("--- mpsctl") == 2
    assert all(f"fake service pid {pid}" in text for pid in pids)


def test_env_comes_from_settings_not_the_shell(
    fake_service: Make, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    monkeypatch.setenv("PYTORCH_MPS_LOW_WATERMARK_RATIO", "abc")  # strtod would read 0.0
    fake = fake_service(venv="venv")
    settings = fake.settings(memory__high_watermark_ratio="0.6", memory__low_watermark_ratio="0.4")

    env = service_env(settings)
    warnings = preflight_warnings(settings, settings.service.command, memory_limit(settings))

    assert env["PYTORCH_MPS_LOW_WATERMARK_RATIO"] == "0.4"
    assert env["VIRTUAL_ENV"] == str(venv)
    assert env["PATH"].split(os.pathsep)[0] == str(venv / "bin")
    assert any("ignoring PYTORCH_MPS_LOW_WATERMARK_RATIO='abc'" in w for w in warnings)


RELOAD_WARNING = (
    "service.command has --reload: uvicorn runs a reloader and a worker and loads the model "
    "again on every reload (twice the memory during a reload); remove --reload from "
    "service.command (it is for development)"
)
BIND_ALL_WARNING = (
    "service.command uses 0.0.0.0: the service listens on every interface, so anyone on the "
    "network can reach it (and its admin endpoints); bind 127.0.0.1 (`--host 127.0.0.1`) and "
    "use http://127.0.0.1:PORT as service.url"
)


def test_reload_and_all_interfaces_warn(fake_service: Make) -> None:
    settings = fake_service().settings()
    argv = ("uvicorn", "app.main:app", "--host", "0.0.0.0", "--reload")
    warnings = preflight_warnings(settings, argv, memory_limit(settings))
    assert warnings == [RELOAD_WARNING, BIND_ALL_WARNING]


@pytest.mark.parametrize(
    "argv",
    [
        ("uvicorn", "app.main:app", "--host=0.0.0.0"),
        ("uvicorn", "app.main:app", "-h", "0.0.0.0"),
        ("uvicorn", "app.main:app", "--host=::"),
    ],
)
def test_all_interfaces_warn_in_every_spelling(fake_service: Make, argv: tuple[str, ...]) -> None:
    settings = fake_service().settings()
    warnings = preflight_warnings(settings, argv, memory_limit(settings))
    assert warnings == [BIND_ALL_WARNING]


def test_loopback_host_does_not_warn(fake_service: Make) -> None:
    settings = fake_service().settings()
    argv = ("uvicorn", "app.main:app", "--host=127.0.0.1")
    assert preflight_warnings(settings, argv, memory_limit(settings)) == []


def test_limit_in_bytes_from_last_health(fake_service: Make, isolated_home: Path) -> None:
    settings = fake_service().settings(memory__high_watermark_ratio="0.7")
    isolated_home.mkdir(parents=True, exist_ok=True)
    report = {"memory": {"mps": {"recommended_max_bytes": 11453251584}}}
    (isolated_home / "last_health.json").write_text(json.dumps(report))

    limit = memory_limit(settings, query_torch=False)

    assert limit.describe() == "high 0.70 x 10.67 GiB = 7.47 GiB"
    assert limit.limit_bytes == int(0.7 * 11453251584)


def _foreground(fake: FakeService) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MPSCTL_CONFIG": str(fake.config)}
    return subprocess.Popen([PYTHON, "-m", "mpsctl", "start", "--foreground"], env=env)


def test_foreground_runs_the_service_and_a_clean_stop_removes_its_pidfile(
    fake_service: Make, isolated_home: Path
) -> None:
    """What a unit's ``systemctl stop`` does: SIGTERM to mpsctl, forwarded; the service
    exits cleanly, the pidfile goes, ``status`` says stopped (3), not dead (1)."""
    fake = fake_service()
    proc = _foreground(fake)
    try:
        assert wait_for(lambda: health_now(fake.settings(), 0.5).ok)
        (child,) = psutil.Process(proc.pid).children()
        assert str(fake.script) in child.cmdline()
        # a pidfile names the service: without it probe and the watchdog would call a
        # healthy unit-run service "not running"
        snapshot = processes.find_service(fake.settings())
        assert (snapshot.found_by, snapshot.roots) == ("pidfile", (child.pid,))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    assert code == -signal.SIGTERM  # ended as the service did: killed by SIGTERM
    assert not (isolated_home / "service.pid").exists()
    assert service_status(fake.settings()).exit_code == StatusExit.NOT_RUNNING


def test_foreground_records_a_wrapper_that_execs_the_server_as_the_server(
    fake_service: Make, isolated_home: Path, tmp_path: Path
) -> None:
    """A unit's command is often a script ending in ``exec uvicorn ...``: the pid and start
    time stay, the command line changes; the pidfile follows it, so ``status`` and the
    watchdog still know the service (a pidfile with the script's argv read as "reused")."""
    fake = fake_service()
    wrapper = tmp_path / "run.sh"
    wrapper.write_text(f"#!/bin/sh\nsleep 0.5\nexec {PYTHON} {fake.script} uvicorn "
                       f"app.main:app --port {fake.port}\n")  # fmt: skip
    wrapper.chmod(0o755)
    text = fake.config.read_text()
    fake.config.write_text(text.replace("command = [", f'command = ["{wrapper}"]\n#', 1))
    proc = _foreground(fake)
    try:
        assert wait_for(lambda: health_now(fake.settings(), 0.5).ok, timeout=20)
        (child,) = psutil.Process(proc.pid).children()
        assert wait_for(lambda: str(fake.script) in read_pidfile_argv(isolated_home))
        assert read_pidfile_argv(isolated_home) == child.cmdline()
        assert service_status(fake.settings()).exit_code == StatusExit.RUNNING
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    assert not (isolated_home / "service.pid").exists()


def read_pidfile_argv(home: Path) -> list[str]:
    try:
        return list(json.loads((home / "service.pid").read_text())["argv"])
    except (OSError, ValueError, KeyError):
        return []


def test_foreground_keeps_the_pidfile_when_the_service_crashes(
    fake_service: Make, isolated_home: Path
) -> None:
    fake = fake_service()
    proc = _foreground(fake)
    try:
        assert wait_for(lambda: health_now(fake.settings(), 0.5).ok)
        (child,) = psutil.Process(proc.pid).children()
        child.kill()  # an OOM kill: a failure, the manager's Restart= applies
        code = proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    assert code == -signal.SIGKILL
    assert (isolated_home / "service.pid").exists()
    assert service_status(fake.settings()).exit_code == StatusExit.DEAD_PIDFILE


def test_foreground_when_already_running_exits_with_the_units_no_restart_status(
    fake_service: Make, isolated_home: Path
) -> None:
    from mpsctl.monitor.systemd_units import RESTART_PREVENT

    fake = fake_service()
    env = {**os.environ, "MPSCTL_CONFIG": str(fake.config)}
    proc = subprocess.Popen([PYTHON, "-m", "mpsctl", "start", "--foreground"], env=env)
    try:
        assert wait_for(lambda: health_now(fake.settings(), 0.5).ok)
        second = subprocess.run(
            [PYTHON, "-m", "mpsctl", "start", "--foreground"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        # a unit started while the service runs outside it: systemd must not retry for ever
        assert second.returncode == 73, second.stderr
        assert 73 in RESTART_PREVENT
        assert "is already running" in second.stderr
        assert proc.poll() is None  # the running one is left alone
    finally:
        proc.kill()
        proc.wait()


def test_device_and_model_apply_to_the_reference_service_only(
    fake_service: Make, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = fake_service().settings()
    argv, warnings = service_argv(own, device="cpu", model="m")
    assert argv == own.service.command
    assert len(warnings) == 2

    monkeypatch.delenv("MPSCTL_CONFIG")  # no file: the reference service
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    from mpsctl.settings import load_settings

    reference = load_settings()
    argv, warnings = service_argv(reference, device="cpu", model="./qwen")
    assert argv[-4:] == ("--model", "./qwen", "--device", "cpu")
    assert "--demo" not in argv
    assert warnings == []
