"""An ordinary ``uvicorn app.main:app`` service in its own directory and venv, driven
start -> status -> fix -> stop through real ``python -m mpsctl`` runs.

The venv is real in the way that matters here: ``mvp/venv/bin`` holds the ``uvicorn`` that
``PATH`` must find first (a link to the installed script, so no install is needed) and a
``pyvenv.cfg``; the process table then shows which ``uvicorn`` the service runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mpsctl.observe import processes
from tests.conftest import free_port
from tests.control.fakes import kill_strays

MAIN = """\
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
"""


@pytest.fixture
def mvp(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """``mvp/`` with its app and venv, an mpsctl.toml for it, and the environment to run in."""
    root = tmp_path / "mvp"
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(MAIN)
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (root / "venv" / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
    (bin_dir / "python").symlink_to(sys.executable)
    uvicorn = Path(sys.executable).parent / "uvicorn"
    assert uvicorn.is_file(), "the test venv has no uvicorn script"
    (bin_dir / "uvicorn").symlink_to(uvicorn)
    port = free_port()
    config = tmp_path / "mpsctl.toml"
    config.write_text(
        "[service]\n"
        'name = "mvp"\n'
        'workdir = "mvp"\n'
        f'command = ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "{port}"]\n'
        'venv = "venv"\n'
        f'url = "http://127.0.0.1:{port}"\n'
        'log_file = "backend.log"\n'
        "start_timeout = 20\n"
        "stop_timeout = 5\n"
        "[thresholds]\n"  # a busy CI host must not turn the verdict to WARNING
        "host_used_percent = [99.8, 99.9]\n"
        "swap_used_percent = [99.8, 99.9]\n"
    )
    # the shell's PATH puts the test venv (with its own uvicorn) first: the service must not
    # get that one
    env = {
        **os.environ,
        "MPSCTL_CONFIG": str(config),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("VIRTUAL_ENV", None)
    yield root, env
    kill_strays(str(bin_dir / "uvicorn"))


def mpsctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpsctl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def service_processes(script: Path) -> list[int]:
    """Live (non-zombie) processes running ``script``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if str(script) in (proc.info.get("cmdline") or ()):
            found.append(proc.pid)
    return found


def test_start_status_fix_stop_an_own_uvicorn_service(
    mvp: tuple[Path, dict[str, str]], isolated_home: Path
) -> None:
    root, env = mvp
    log = root / "backend.log"
    venv_uvicorn = root / "venv" / "bin" / "uvicorn"

    started = mpsctl(env, "start")
    assert started.returncode == 0, started.stderr
    assert "mvp started: pid" in started.stdout
    assert "healthy at" in started.stdout
    assert "backend.log" in started.stdout
    first = json.loads((isolated_home / "service.pid").read_text())["pid"]
    proc = psutil.Process(first)
    assert proc.cmdline()[1] == str(venv_uvicorn)  # the venv's uvicorn, not the shell's
    assert proc.cwd() == str(root)
    assert proc.environ()["PATH"].split(os.pathsep)[0] == str(root / "venv" / "bin")
    assert proc.environ()["VIRTUAL_ENV"] == str(root / "venv")
    first_log = log.read_text()
    assert "Uvicorn running on" in first_log

    status = mpsctl(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert (document["state"], document["pid"], document["health"]["ok"]) == (
        "running",
        first,
        True,
    )

    fixed = mpsctl(env, "fix", "--json")
    assert fixed.returncode == 0, fixed.stderr
    report = json.loads(fixed.stdout)
    assert (report["status"], report["healthy"]) == ("fixed", True)
    assert [a["name"] for a in report["actions"]] == ["stop", "clean-cache", "start"]
    second = json.loads((isolated_home / "service.pid").read_text())["pid"]
    assert second != first
    assert not processes.is_alive(first, proc.create_time())  # gone (a zombie at most)
    assert psutil.Process(second).cmdline()[1] == str(venv_uvicorn)

    stopped = mpsctl(env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "mvp: stopped" in stopped.stdout
    assert "stopped (SIGTERM)" in stopped.stdout
    assert not (isolated_home / "service.pid").exists()
    assert service_processes(venv_uvicorn) == []  # nothing left running
    assert mpsctl(env, "status").returncode == 3

    text = log.read_text()
    assert text.startswith(first_log)  # appended across the restart, never truncated
    assert text.count("--- mpsctl") == 2
    assert text.count("Uvicorn running on") == 2
    assert "Finished server process" in text  # both runs shut down cleanly on SIGTERM
