"""Real processes standing in for a service: an http.server script and sleepers.

The fake service's argv can look like the operator's (``script.py uvicorn app.main:app
--port N``) so match patterns and decoys behave as they would against a real uvicorn.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from mpsctl.settings import Settings, load_settings
from tests.conftest import free_port

PYTHON = sys.executable

FAKE_SERVICE = r"""
import http.server, json, os, signal, subprocess, sys, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
print(f"fake service pid {os.getpid()} port {port}", flush=True)
print("env HIGH=" + os.environ.get("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "unset")
      + " LOW=" + os.environ.get("PYTORCH_MPS_LOW_WATERMARK_RATIO", "unset")
      + " VIRTUAL_ENV=" + os.environ.get("VIRTUAL_ENV", "unset"), flush=True)
if "--fake-die" in args:
    print("fatal: cannot load the model", file=sys.stderr, flush=True)
    sys.exit(3)
if "--fake-ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--fake-tree" in args:
    # a child ignoring SIGTERM, which starts a grandchild in a new session (left the group)
    child = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)', sys.argv[1]], "
        "start_new_session=True)\n"
        "time.sleep(600)\n"
    )
    # __file__ in every argv: the test teardown finds strays by it
    subprocess.Popen([sys.executable, "-c", child, __file__])
if "--fake-delay" in args:
    time.sleep(float(args[args.index("--fake-delay") + 1]))
healthy_file = os.environ.get("FAKE_HEALTHY_FILE")
if "--fake-exit-term" in args:
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))

class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            if healthy_file and not os.path.exists(healthy_file):
                with open(healthy_file, "w") as fh:
                    fh.write(repr(time.time()))
            code = 503 if "--fake-unhealthy" in args else 200
            self._send(code, {"status": "ok", "model_loaded": True, "device": "cpu",
                              "memory": {"schema": "mpsctl.memory/1", "device": "cpu"}})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        if self.path == "/admin/release":
            fig = {"allocated_bytes": None, "reserved_bytes": None, "rss_bytes": 1000}
            self._send(200, {"device": "cpu", "before": fig, "after": fig,
                             "reclaimed_bytes": None})
        elif self.path == "/api/v1/query":
            n = int(self.headers.get("Content-Length") or 0)
            q = json.loads(self.rfile.read(n) or b"{}").get("question")
            self._send(200, {"answer": f"echo {q}"})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, fmt, *a):
        print("request " + fmt % a, flush=True)

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def write_fake_service(directory: Path) -> Path:
    path = directory / "fake_service.py"
    path.write_text(FAKE_SERVICE, encoding="utf-8")
    return path


def fake_command(script: Path, port: int, *extra: str) -> list[str]:
    return [PYTHON, str(script), "uvicorn", "app.main:app", "--port", str(port), *extra]


def config_text(
    command: Sequence[str], port: int, workdir: Path, extra: str = "", **service: object
) -> str:
    """An mpsctl.toml for the fake service (TOML strings written as JSON strings)."""
    lines = [
        "[service]",
        f"command = {json.dumps(list(command))}",
        f"url = {json.dumps(f'http://127.0.0.1:{port}')}",
        f"workdir = {json.dumps(str(workdir))}",
        'log_file = "service.log"',
        "start_timeout = 15",
        "stop_timeout = 2",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in service.items()]
    # a busy CI host must not turn the probe verdict (and so `fix --if-unhealthy`) to WARNING
    lines += [
        "[thresholds]",
        "host_used_percent = [99.8, 99.9]",
        "swap_used_percent = [99.8, 99.9]",
    ]
    return "\n".join(lines) + "\n" + extra


def sleeper(*argv_tail: str, seconds: float = 60) -> subprocess.Popen[bytes]:
    """A sleeping python whose argv ends with ``argv_tail`` (e.g. a decoy mentioning uvicorn)."""
    code = f"import time; time.sleep({seconds})"
    proc = subprocess.Popen([PYTHON, "-c", code, *argv_tail])

    def execed() -> bool:  # until then the process table shows a copy of the test's argv
        try:
            return code in psutil.Process(proc.pid).cmdline()
        except psutil.NoSuchProcess:
            return True  # ended: nothing more to wait for

    wait_for(execed)
    return proc


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@dataclass
class FakeService:
    """One fake service's config; ``settings()`` reads it like mpsctl would."""

    script: Path
    port: int
    config: Path
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, **overrides: object) -> Settings:
        return load_settings(
            config=str(self.config),
            overrides={k.replace("__", "."): (v, "--test") for k, v in overrides.items()},
        )

    @property
    def log(self) -> Path:
        return self.workdir / "service.log"


def kill_strays(marker: str) -> None:
    """Kill every process whose command line mentions ``marker`` (test teardown only)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info.get("cmdline") or ()):
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def fake_service(
    tmp_path: Path, write_config: Callable[..., Path]
) -> Iterator[Callable[..., FakeService]]:
    """``make(*extra_args, config_extra="", **service_keys) -> FakeService`` on a free port."""
    script = write_fake_service(tmp_path)

    def make(*extra: str, config_extra: str = "", **service: object) -> FakeService:
        port = free_port()
        command = fake_command(script, port, *extra)
        keys = {k: v.format(port=port) if isinstance(v, str) else v for k, v in service.items()}
        text = config_text(command, port, tmp_path, config_extra, **keys)
        return FakeService(script, port, write_config(text), tmp_path)

    yield make
    kill_strays(str(script))


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; killed and reaped at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def alive(pid: int) -> bool:
    """Running and not a zombie (a zombie has exited: only its parent has not reaped it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
