"""An operator's own service, driven the way cron drives it.

``site`` builds what a new operator has: ``mvp/app/main.py`` (a plain FastAPI app, no torch:
these scenarios are about processes, ports and health, not the model), ``mvp/venv/bin``
holding the ``uvicorn`` that PATH must find first, and an ``mpsctl.toml`` with absolute
paths. Every ``mpsctl`` run is a real process started as a crontab line runs: the line
``mpsctl cron`` prints, under ``env -i HOME=... PATH=/usr/bin:/bin sh -c '...'`` from ``/``.

The app's knobs come from ``[service] env`` (the service gets no other variable from the
test's environment, which is one of the contracts under test):

- ``SCENARIO_QUERY_S``: seconds of CPU work each ``POST /api/v1/query`` does *inside*
  ``async def`` (the classic mistake: the event loop, and so /health, stalls meanwhile);
- ``SCENARIO_DIE_AFTER``: the process exits this many seconds after every start;
- ``SCENARIO_LOAD_S``: seconds of "model loading" before it listens;
- ``SCENARIO_REPORT=1``: /health carries ``memory.limiter.in_flight`` (the documented report),
  counting ``POST /api/v1/slow`` (``{"seconds": N}``, in the thread pool).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import free_port
from tests.control.fakes import kill_strays
from tests.service_fixtures import http_request

MAIN = """\
import os
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

DIE_AFTER = float(os.environ.get("SCENARIO_DIE_AFTER", "0"))
QUERY_S = float(os.environ.get("SCENARIO_QUERY_S", "0"))
LOAD_S = float(os.environ.get("SCENARIO_LOAD_S", "0"))
REPORT = os.environ.get("SCENARIO_REPORT") == "1"
served = {"queries": 0, "in_flight": 0}


@asynccontextmanager
async def lifespan(app):
    time.sleep(LOAD_S)  # loading a model: uvicorn listens only after this
    if DIE_AFTER:
        threading.Timer(DIE_AFTER, os._exit, (1,)).start()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health():
    if REPORT:  # the documented memory report's limiter.in_flight
        return {"status": "ok", "memory": {"limiter": {"in_flight": served["in_flight"]}}}
    return {"status": "ok"}


@app.post("/api/v1/query")
async def query(body: dict):
    end = time.monotonic() + QUERY_S
    while time.monotonic() < end:  # model work inside async def: the loop stalls
        pass
    served["queries"] += 1
    return {"answer": "ok", "served": served["queries"]}


@app.post("/api/v1/slow")
def slow(body: dict):
    served["in_flight"] += 1  # a plain def runs in the thread pool: /health answers meanwhile
    try:
        time.sleep(float(body.get("seconds", 1)))
    finally:
        served["in_flight"] -= 1
    return {"answer": "ok"}


@app.get("/env")
def env():
    return dict(os.environ)
"""

CRON_PATH = "/usr/bin:/bin"


@dataclass
class Site:
    root: Path  # mvp/
    config: Path
    home: Path  # MPSCTL_HOME
    port: int
    alerts: Path  # one JSON line per alert delivered
    cron_home: Path  # HOME of the cron job
    prefix: str = ""  # "MPSCTL_HOME=... PATH=... python -m mpsctl --config FILE"
    watchdog_line: str = ""  # the fix line exactly as `mpsctl cron` prints it (no schedule)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uvicorn(self) -> Path:
        return self.root / "venv" / "bin" / "uvicorn"

    def sh(self, line: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``line`` the way cron does: empty environment but HOME and PATH, cwd /."""
        argv = ["env", "-i", f"HOME={self.cron_home}", f"PATH={CRON_PATH}", "sh", "-c", line]
        return subprocess.run(
            argv, cwd="/", capture_output=True, text=True, timeout=timeout, check=False
        )

    def mpsctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Any mpsctl command with the cron line's prefix (binary, --config, MPSCTL_HOME)."""
        return self.sh(f"{self.prefix} {shlex.join(args)}")

    def watchdog(self) -> subprocess.CompletedProcess[str]:
        """The watchdog job, exactly as printed (stdout discarded, stderr to cron.log)."""
        return self.sh(self.watchdog_line)

    def fix_records(self) -> list[dict[str, Any]]:
        path = self.home / "history" / "fix.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def alert_documents(self) -> list[dict[str, Any]]:
        if not self.alerts.exists():
            return []
        return [json.loads(line) for line in self.alerts.read_text().splitlines() if line]

    def pid(self) -> int:
        return int(json.loads((self.home / "service.pid").read_text())["pid"])

    def healthy(self) -> bool:
        with contextlib.suppress(OSError):
            return http_request(self.url + "/health", timeout=2.0).status == 200
        return False

    def service_env(self) -> dict[str, str]:
        return dict(http_request(self.url + "/env", timeout=5.0).json)


HEALTH = {"health_timeout": 1, "health_retries": 2, "health_interval": 0.5}


def _write_config(
    site: Site, env: dict[str, str], extra: str, health: dict[str, float], max_restarts: int
) -> None:
    table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    rule = "".join(f"{k} = {v}\n" for k, v in {**HEALTH, **health}.items())
    site.config.write_text(
        "[service]\n"
        'name = "mvp"\n'
        f'workdir = "{site.root}"\n'
        f'command = ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "{site.port}"]\n'
        'venv = "venv"\n'
        f'url = "{site.url}"\n'
        'log_file = "backend.log"\n'
        "start_timeout = 20\n"
        "stop_timeout = 2\n"
        f"{rule}"
        f"env = {{ {table} }}\n"
        f"{extra}"
        "[fix]\n"
        f"max_restarts = {max_restarts}\n"
        "within = 3600\n"
        "[alerts]\n"
        f'command = "tee -a {site.alerts}"\n'
        "[thresholds]\n"  # a busy CI host must not turn the verdict to WARNING by itself
        "host_used_percent = [99.8, 99.9]\n"
        "swap_used_percent = [99.8, 99.9]\n"
        'memory_pressure = "critical"\n'
    )


def _cron_lines(site: Site) -> None:
    """Ask ``mpsctl cron`` for the watchdog's line, as an operator would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
    env["MPSCTL_HOME"] = str(site.home)
    printed = subprocess.run(
        [sys.executable, "-m", "mpsctl", "--config", str(site.config), "cron"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in printed.splitlines() if " fix --if-unhealthy" in x and x[0] != "#")
    command = line.split(" ", 5)[5]  # the five schedule fields off
    # the other commands keep their stderr (the tests read it); the watchdog line logs it
    prefix = re.sub(r" --error-log \S+", "", command.split(" fix --if-unhealthy")[0])
    if os.environ.get("PYTHONPATH"):
        # only so that this checkout's mpsctl is the one the job imports (an installed
        # mpsctl needs nothing)
        pythonpath = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} "
        prefix, command = pythonpath + prefix, pythonpath + command
    site.prefix, site.watchdog_line = prefix, command


@pytest.fixture
def make_site(tmp_path: Path, isolated_home: Path) -> Iterator[Any]:
    """``make(env=, extra=, health=, max_restarts=, files=) -> Site``: app, venv, settings,
    cron line; ``files`` are written into mvp/ first."""
    made: list[Site] = []

    def make(
        env: dict[str, str] | None = None,
        extra: str = "",
        health: dict[str, float] | None = None,
        max_restarts: int = 3,
        files: dict[str, str] | None = None,
    ) -> Site:
        root = tmp_path / "mvp"
        (root / "app").mkdir(parents=True)
        (root / "app" / "__init__.py").write_text("")
        (root / "app" / "main.py").write_text(MAIN)
        for name, text in (files or {}).items():
            (root / name).write_text(text)
            (root / name).chmod(0o600)  # as an operator keeps an env_file: it holds secrets
        bin_dir = root / "venv" / "bin"
        bin_dir.mkdir(parents=True)
        (root / "venv" / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
        (bin_dir / "python").symlink_to(sys.executable)
        (bin_dir / "uvicorn").symlink_to(Path(sys.executable).parent / "uvicorn")
        cron_home = tmp_path / "cron-home"
        cron_home.mkdir()
        site = Site(root, tmp_path / "mpsctl.toml", isolated_home, free_port(),
                    tmp_path / "alerts.jsonl", cron_home)  # fmt: skip
        env = {"OMP_NUM_THREADS": "1", **(env or {})}
        _write_config(site, env, extra, health or {}, max_restarts)
        _cron_lines(site)
        made.append(site)
        return site

    yield make
    for site in made:
        with contextlib.suppress(Exception):
            site.mpsctl("stop", "--timeout", "1")
        kill_strays(str(site.uvicorn))


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
