"""Fixtures that build the tiny checkpoint and start real services.

- ``tiny_model`` (session): Path of the tiny demo Qwen2 checkpoint (built offline).
- ``service_factory``: ``start(**options) -> RunningService``; a real ``mpsctl serve``
  subprocess on 127.0.0.1 and a free port, healthy when returned, stopped at teardown.
- ``reference_service``: ``service_factory()`` with the defaults.

``RunningService.request(method, path, body)`` is a small stdlib HTTP helper (JSON in and
out, the bearer token added unless ``token=None``), so tests need no HTTP library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_DEFAULT = object()


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    body: Any = None,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30.0,
) -> HttpResult:
    """One request; ``body`` is sent as JSON, ``raw`` as is (then set Content-Type yourself)."""
    parts = urlsplit(url)
    send_headers = dict(headers or {})
    payload = raw
    if body is not None:
        payload = json.dumps(body).encode("utf-8")
        send_headers.setdefault("Content-Type", "application/json")
    if token is not None:
        send_headers.setdefault("Authorization", f"Bearer {token}")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=payload, headers=send_headers)
        response = conn.getresponse()
        return HttpResult(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


class _Requests:
    """HTTP to a test service; ``url`` and ``token`` come from the dataclass using it."""

    url: str
    token: str | None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: Any = _DEFAULT,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 30.0,
    ) -> HttpResult:
        """``token`` defaults to the service's; pass None to send no Authorization."""
        return http_request(
            self.url + path,
            method,
            body,
            token=self.token if token is _DEFAULT else token,
            headers=headers,
            raw=raw,
            timeout=timeout,
        )


@dataclass(frozen=True)
class RunningService(_Requests):
    url: str
    port: int
    token: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"service exited with {proc.returncode} before it was healthy; log:\n"
                + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            )
        with contextlib.suppress(OSError):
            if http_request(url + "/health", timeout=2.0).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"service not healthy after {timeout:g} s; log:\n"
        + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return int(proc.returncode)


def start_service(
    model: Path,
    log_dir: Path,
    *,
    max_concurrent: int = 3,
    max_queue: int = 16,
    queue_timeout: float = 30,
    cleanup_interval: float = 0,
    token: str | None = "test-token",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> RunningService:
    port = free_port()
    argv = [
        sys.executable, "-m", "mpsctl", "serve",
        "--model", str(model), "--device", "cpu",
        "--host", "127.0.0.1", "--port", str(port),
        "--max-concurrent", str(max_concurrent), "--max-queue", str(max_queue),
        "--queue-timeout", str(queue_timeout), "--cleanup-interval", str(cleanup_interval),
        *extra_args,
    ]  # fmt: skip
    child_env = dict(os.environ)
    child_env.pop("MPSCTL_TOKEN", None)
    if token is not None:
        child_env["MPSCTL_TOKEN"] = token
    elif "--no-auth" not in argv:
        argv.append("--no-auth")
    # two cores: one torch thread per service keeps parallel tests from thrashing
    child_env.setdefault("OMP_NUM_THREADS", "1")
    child_env.update(env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"service-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=child_env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log_path, start_timeout)
    except BaseException:
        stop_process(proc)
        raise
    return RunningService(url=url, port=port, token=token, proc=proc, log_path=log_path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo Qwen2 checkpoint (about 450 KB; a few seconds to build and train)."""
    from mpsctl.server.demo import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("tiny-model") / "model", "tiny")


@pytest.fixture
def service_factory(tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., RunningService]]:
    """``start(*, max_concurrent=3, max_queue=16, queue_timeout=30, cleanup_interval=0,
    token="test-token", extra_args=(), env=None) -> RunningService``."""
    started: list[RunningService] = []

    def start(**options: Any) -> RunningService:
        service = start_service(tiny_model, tmp_path / "service-logs", **options)
        started.append(service)
        return service

    yield start
    for service in started:
        stop_process(service.proc)


@pytest.fixture
def reference_service(service_factory: Callable[..., RunningService]) -> RunningService:
    return service_factory()


# --------------------------------------------------------------------------- in-process
@dataclass
class InProcessService(_Requests):
    """uvicorn serving ``create_service(...)`` in a thread of the test process, so a test
    can reach the live objects (``service.holder.model``) and monkeypatch them."""

    url: str
    token: str | None
    service: Any  # mpsctl.server.app.Service
    server: Any  # uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_inprocess(
    model: Path, *, token: str | None = "test-token", **config: Any
) -> InProcessService:
    """Load ``model`` on the CPU and serve it from a thread, through the same bounded HTTP
    protocol as ``mpsctl serve``; ``config``: ServiceConfig fields, and ``max_connections``
    or ``header_timeout`` for the protocol."""
    import uvicorn

    from mpsctl.server.app import ServiceConfig, create_service
    from mpsctl.server.model import ModelHolder
    from mpsctl.server.protocol import bounded_config

    limits = {k: config.pop(k) for k in ("max_connections", "header_timeout") if k in config}
    holder = ModelHolder(device="cpu", max_new_tokens=8)
    holder.load(str(model))
    service = create_service(holder, ServiceConfig(token=token, **config))
    port = free_port()
    server = uvicorn.Server(
        bounded_config(service.asgi, "127.0.0.1", port, log_config=None, **limits)
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("in-process uvicorn did not start")
        time.sleep(0.02)
    return InProcessService(f"http://127.0.0.1:{port}", token, service, server, thread)


@pytest.fixture
def inprocess_factory(tiny_model: Path) -> Iterator[Callable[..., InProcessService]]:
    """``start(token="test-token", **ServiceConfig fields) -> InProcessService``."""
    started: list[InProcessService] = []

    def start(**options: Any) -> InProcessService:
        running = start_inprocess(tiny_model, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
