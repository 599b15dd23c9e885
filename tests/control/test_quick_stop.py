"""A bare ``mpsctl stop`` signals before the CLI loads (``mpsctl.control.quick_stop``): the
same outcome as the full path, and the full path whenever one of its checks would differ.

Every stop here is the command as typed (``python -m mpsctl stop``, a new process). Which
path ran is visible in the result: the early SIGTERM is taken only when no client was
connected, and says so in the drain note.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mpsctl.control import quick_stop
from mpsctl.control.lock import service_lock
from mpsctl.errors import ConfigError
from mpsctl.settings import find_config_file
from tests.control.fakes import FakeService, fake_service, spawned, wait_for

__all__ = ["fake_service", "spawned"]  # fixtures

Make = Callable[..., FakeService]
QUICK_NOTE = "no client was connected"
SECRET = "tok-9f8e7d6c5b4a-never-written"


def mpsctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPSCTL_TOKEN": SECRET}
    return subprocess.run([sys.executable, "-m", "mpsctl", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def started(home: Path) -> psutil.Process:
    result = mpsctl("start")
    assert result.returncode == 0, result.stderr
    record = json.loads((home / "service.pid").read_text())
    return psutil.Process(record["pid"])


def stop_json() -> tuple[int, dict]:
    result = mpsctl("stop", "--json")
    return result.returncode, json.loads(result.stdout)


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early path is Linux's")
def test_bare_stop_signals_early_and_reports_like_the_full_path(
    fake_service: Make, isolated_home: Path
) -> None:
    fake_service()
    proc = started(isolated_home)
    facts = (isolated_home / quick_stop.FACTS_NAME).read_text()
    assert SECRET not in facts  # the variables are hashed: a token is never written
    code, doc = stop_json()
    assert code == 0
    assert doc["status"] == "stopped"
    assert doc["drain"]["note"] == QUICK_NOTE
    assert [(p["pid"], p["outcome"]) for p in doc["processes"]] == [(proc.pid, "SIGTERM")]
    assert "uvicorn app.main:app" in doc["processes"][0]["command"]
    assert doc["processes"][0]["rss_bytes"] > 0
    assert doc["pidfile_removed"] is True
    assert not (isolated_home / "service.pid").exists()
    assert gone(proc)
    again = mpsctl("stop", "--json")
    assert json.loads(again.stdout)["status"] == "already-stopped"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early path is Linux's")
def test_a_tree_that_ignores_sigterm_is_killed_after_stop_timeout(
    fake_service: Make, isolated_home: Path
) -> None:
    # a child ignoring SIGTERM and a grandchild in its own session (out of the group)
    fake_service("--fake-tree")
    proc = started(isolated_home)
    assert wait_for(lambda: len(proc.children(recursive=True)) == 2)
    tree = [proc, *proc.children(recursive=True)]
    code, doc = stop_json()
    assert code == 0, doc
    assert doc["drain"]["note"] == QUICK_NOTE
    outcomes = {p["pid"]: p["outcome"] for p in doc["processes"]}
    assert outcomes[proc.pid] == "SIGTERM"
    assert sorted(outcomes[p.pid] for p in tree[1:]) == ["SIGKILL", "SIGKILL"]
    assert doc["elapsed_s"] >= 2.0  # stop_timeout = 2, counted from the early SIGTERM
    assert all(wait_for(lambda p=p: gone(p)) for p in tree)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early path is Linux's")
def test_a_connected_client_is_drained_by_the_full_path(
    fake_service: Make, isolated_home: Path
) -> None:
    fake = fake_service()
    proc = started(isolated_home)
    client = socket.create_connection(("127.0.0.1", fake.port))
    try:
        assert wait_for(lambda: any(c.status == "ESTABLISHED" for c in proc.net_connections()))
        code, doc = stop_json()
    finally:
        client.close()
    assert code == 0
    assert doc["status"] == "stopped"
    assert doc["drain"]["note"] != QUICK_NOTE  # the full path asked the service first
    assert gone(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early path is Linux's")
def test_settings_changed_since_they_were_recorded_go_the_full_way(
    fake_service: Make, isolated_home: Path
) -> None:
    fake = fake_service()
    proc = started(isolated_home)
    with fake.config.open("a", encoding="utf-8") as f:
        f.write("# edited after start\n")
    code, doc = stop_json()
    assert (code, doc["status"]) == (0, "stopped")
    assert doc["drain"]["note"] != QUICK_NOTE
    assert gone(proc)
    # the full stop recorded the settings as they are now: the next stop is early again
    proc = started(isolated_home)
    code, doc = stop_json()
    assert doc["drain"]["note"] == QUICK_NOTE
    assert gone(proc)


@pytest.mark.parametrize("tamper", ["reused", "foreign", "ancestor"])
def test_a_pidfile_that_is_not_the_service_is_never_signalled(
    fake_service: Make, isolated_home: Path, tamper: str
) -> None:
    fake_service()
    proc = started(isolated_home)
    path = isolated_home / "service.pid"
    record = json.loads(path.read_text())
    if tamper == "reused":  # the pid now names a process started at another time
        record["create_time"] += 5
    elif tamper == "foreign":  # started for another configuration's URL
        record["url"] = "http://127.0.0.1:1"
    else:  # mpsctl's own parent: this test
        me = psutil.Process()
        record.update(pid=me.pid, create_time=me.create_time(), pgid=None)
    path.write_text(json.dumps(record))
    result = mpsctl("stop", "--json")
    assert result.returncode != 0 or json.loads(result.stdout)["status"] != "stopped"
    assert proc.is_running()
    assert proc.status() != psutil.STATUS_ZOMBIE
    proc.terminate()
    proc.wait(10)


def test_a_held_lock_refuses_as_before(fake_service: Make, isolated_home: Path) -> None:
    fake_service()
    proc = started(isolated_home)
    with service_lock(isolated_home, purpose="fix"):
        result = mpsctl("stop")
    assert result.returncode == 75, result.stderr
    assert f"pid {os.getpid()} (fix) holds" in result.stderr
    assert proc.is_running()
    assert proc.status() != psutil.STATUS_ZOMBIE
    assert mpsctl("stop").returncode == 0
    assert gone(proc)


def test_sigterm_reaches_a_stopped_service(fake_service: Make, isolated_home: Path) -> None:
    fake_service()
    proc = started(isolated_home)
    proc.send_signal(signal.SIGSTOP)
    code, doc = stop_json()
    assert (code, doc["processes"][0]["outcome"]) == (0, "SIGTERM")  # woken by SIGCONT
    assert gone(proc)


@pytest.mark.parametrize(
    "layout", ["none", "cwd", "user", "variable", "cwd-directory", "variable-missing"]
)
def test_the_settings_file_is_found_as_the_settings_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    cwd, user = tmp_path / "cwd", tmp_path / "xdg" / "mpsctl"
    cwd.mkdir()
    user.mkdir(parents=True)
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    if layout == "cwd":
        (cwd / "mpsctl.toml").write_text("")
        (user / "mpsctl.toml").write_text("")  # the working directory's comes first
    elif layout == "user":
        (user / "mpsctl.toml").write_text("")
    elif layout == "variable":
        (tmp_path / "elsewhere.toml").write_text("")
        env["MPSCTL_CONFIG"] = str(tmp_path / "elsewhere.toml")
    elif layout == "cwd-directory":
        (cwd / "mpsctl.toml").mkdir()
    elif layout == "variable-missing":
        env["MPSCTL_CONFIG"] = str(tmp_path / "missing.toml")
    monkeypatch.chdir(cwd)
    try:
        expected: str | bool | None = find_config_file(None, env)  # type: ignore[assignment]
        expected = None if expected is None else str(expected)
    except ConfigError:
        expected = False
    assert quick_stop.config_file(env, str(cwd)) == expected
    if expected is False:
        assert quick_stop.inputs_key(env, str(cwd)) is None


def test_the_early_path_imports_the_standard_library_only() -> None:
    code = (
        "import sys; import mpsctl.control.quick_stop; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('click', 'rich', 'psutil', 'requests', 'torch', 'pathlib') "
        "or m.startswith('mpsctl.') and m not in ('mpsctl.control.quick_stop', "
        "'mpsctl.control', 'mpsctl.observe', 'mpsctl.observe.procfs')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_service_not_listening_is_left_to_the_full_path(
    fake_service: Make, isolated_home: Path, spawned: list
) -> None:
    # no TCP listener: still loading, or serving on a UNIX socket, whose clients the early
    # path cannot see; the full path asks the service itself
    fake = fake_service()
    assert mpsctl("stop").returncode == 0  # nothing running; records the settings
    assert (isolated_home / quick_stop.FACTS_NAME).exists()
    loading = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spawned.append(loading)
    proc = psutil.Process(loading.pid)
    record = {"pid": proc.pid, "create_time": proc.create_time(), "url": fake.url, "argv": []}
    (isolated_home / "service.pid").write_text(json.dumps(record))
    code, doc = stop_json()
    assert (code, doc["status"]) == (0, "stopped")
    assert doc["drain"]["note"] != QUICK_NOTE
    assert wait_for(lambda: loading.poll() is not None)


def test_the_early_paths_facts_are_the_full_paths() -> None:
    # restated in quick_stop so that it imports nothing heavy: they must not drift apart
    from mpsctl import paths
    from mpsctl.control import lock
    from mpsctl.observe.processes import CREATE_TIME_TOLERANCE_S
    from mpsctl.observe.processes.pidfile import PIDFILE_MAX

    assert quick_stop.LOCK_NAME == lock.LOCK_NAME
    assert quick_stop.PIDFILE_MAX == PIDFILE_MAX
    assert quick_stop.CONFIG_NAME == paths.CONFIG_NAME
    assert quick_stop.CREATE_TIME_TOLERANCE_S == CREATE_TIME_TOLERANCE_S
