"""Drain before a planned stop, over real HTTP: the limiter that the reference service runs,
its memory report's limiter section and drain endpoint, and the drain client's rule."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpsctl.control import drain
from mpsctl.control.start import health_now
from mpsctl.server.limiter import ConcurrencyLimit
from mpsctl.server.memory import _limiter_section
from mpsctl.settings import Settings, load_settings
from tests.conftest import free_port
from tests.service_fixtures import http_request


class Gated:
    """/api/v1/query answers when ``release`` is set; /health reports the limiter;
    /admin/drain turns draining on (the reference service's wiring, without a model)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.limiter: ConcurrencyLimit | None = None
        self.drain_endpoint = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.limiter is not None
        path = scope["path"]
        status, body = 200, {"answer": "ok"}
        if path == "/health":
            body = {"status": "ok", "memory": {"limiter": _limiter_section(self.limiter)}}
        elif path == "/admin/drain" and self.drain_endpoint:
            self.limiter.draining = True
            body = {"draining": True, "in_flight": self.limiter.in_flight}
        elif path == "/api/v1/query":
            import asyncio

            while not self.release.is_set():
                await asyncio.sleep(0.02)
        else:
            status, body = 404, {"detail": "Not Found"}
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": data})


@pytest.fixture
def served(write_config) -> Iterator[tuple[Gated, Settings]]:
    import uvicorn

    app = Gated()
    app.limiter = ConcurrencyLimit(app, max_concurrent=2, queue_timeout=3,
                                   exempt_paths=("/health", "/admin/drain"))  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app.limiter, host="127.0.0.1", port=port,
                                           log_config=None, lifespan="off"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    write_config(f'[service]\nname = "mvp"\ncommand = ["x"]\nurl = "http://127.0.0.1:{port}"\n'
                 "drain_timeout = 5\nhealth_timeout = 2\n")  # fmt: skip
    yield app, load_settings()
    app.release.set()
    server.should_exit = True
    thread.join(10)


def _ask(settings: Settings, answers: list[int]) -> threading.Thread:
    def run() -> None:
        reply = http_request(settings.service.url + "/api/v1/query", "POST", {"q": 1}, timeout=30)
        answers.append(reply.status)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_in_flight(app: Gated, n: int) -> None:
    deadline = time.monotonic() + 10
    while app.limiter is not None and app.limiter.in_flight != n:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_queries_in_flight_finish_and_new_ones_get_503(served) -> None:
    app, settings = served
    answers: list[int] = []
    query = _ask(settings, answers)
    _wait_in_flight(app, 1)
    threading.Timer(0.6, app.release.set).start()

    result = drain.begin(settings, (), health=health_now)

    query.join(10)
    assert answers == [200]
    assert (result.how, result.in_flight, result.drained, result.cut) == ("service", 1, 1, 0)
    assert 0.4 < result.waited_s < 5
    assert result.text() == "1 drained, 0 cut"
    late = http_request(settings.service.url + "/api/v1/query", "POST", {"q": 2}, timeout=10)
    assert late.status == 503
    # the limiter's estimate: nothing left ahead of it, so the 1 s floor
    assert late.headers["retry-after"] == "1"
    assert late.json["error"]["kind"] == "draining"


def test_a_query_longer_than_drain_timeout_is_counted_cut(served, write_config) -> None:
    app, settings = served
    answers: list[int] = []
    query = _ask(settings, answers)
    _wait_in_flight(app, 1)
    short = Settings(**{**settings.__dict__, "service": type(settings.service)(
        **{**settings.service.__dict__, "drain_timeout": 0.5})})  # fmt: skip

    result = drain.begin(short, (), health=health_now)

    assert (result.how, result.in_flight, result.drained, result.cut) == ("service", 1, 0, 1)
    assert result.note == "1 still in flight after 0.5 s"
    assert result.to_json()["cut"] == 1
    app.release.set()
    query.join(10)


def test_an_app_without_the_endpoint_is_drained_by_sigterm(served) -> None:
    app, settings = served
    app.drain_endpoint = False
    answers: list[int] = []
    query = _ask(settings, answers)
    _wait_in_flight(app, 1)

    result = drain.begin(settings, (), health=health_now)

    assert (result.how, result.in_flight, result.extra_s) == ("sigterm", 1, 5.0)
    assert drain.after_stop(result, ["SIGTERM"]).text() == "1 drained, 0 cut"
    killed = drain.after_stop(result, ["SIGTERM", "SIGKILL"])
    assert killed.text() == "unknown drained, unknown cut"
    assert killed.note.endswith("; SIGKILL came before they finished")
    app.release.set()
    query.join(10)


def test_nothing_in_flight_and_an_unhealthy_service_are_not_drained(served) -> None:
    app, settings = served
    assert drain.begin(settings, (), health=health_now) == drain.Drain("none", 0, 0, 0, 0.0)
    assert app.limiter is not None
    assert app.limiter.draining is False
    dead = Settings(**{**settings.__dict__, "service": type(settings.service)(
        **{**settings.service.__dict__, "url": f"http://127.0.0.1:{free_port()}"})})  # fmt: skip
    skipped = drain.begin(dead, (), health=health_now)
    assert (skipped.how, skipped.text()) == ("skipped", "unknown drained, unknown cut")
    assert skipped.note.startswith("not drained: not healthy (")
    off = Settings(**{**settings.__dict__, "service": type(settings.service)(
        **{**settings.service.__dict__, "drain_timeout": 0.0})})  # fmt: skip
    assert drain.begin(off, (), health=health_now).how == "off"


def test_the_reference_service_drains_a_real_query(
    inprocess_factory, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference service itself (tiny model): a query held in generation, then
    ``drain.begin`` with the token: new queries 503 + Retry-After, the held one answers."""
    from tests.server.test_hardening import gate_generation

    svc = inprocess_factory()
    gate = gate_generation(svc, monkeypatch)
    token_file = Path(os.environ["MPSCTL_HOME"]).parent / "token"
    token_file.write_text("test-token\n")
    token_file.chmod(0o600)
    write_config(f'[service]\nname = "ref"\ncommand = ["x"]\nurl = "{svc.url}"\n'
                 f'token_file = "{token_file}"\ndrain_timeout = 20\n')  # fmt: skip
    settings = load_settings()
    answers: list[int] = []
    held = threading.Thread(
        target=lambda: answers.append(svc.request("POST", "/api/v1/query",
                                                  {"question": "a"}, timeout=60).status)
    )  # fmt: skip
    held.start()
    deadline = time.monotonic() + 20
    while svc.service.limiter.in_flight != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    threading.Timer(1.0, gate.set).start()

    result = drain.begin(settings, (), health=health_now)

    held.join(60)
    assert answers == [200]
    assert (result.how, result.in_flight, result.drained, result.cut) == ("service", 1, 1, 0)
    late = svc.request("POST", "/api/v1/query", {"question": "b"}, timeout=10)
    assert late.status == 503
    assert late.json["error"]["kind"] == "draining"
    assert int(late.headers["retry-after"]) >= 1
    health = svc.request("GET", "/health", None, token=None, timeout=10)
    assert health.json["memory"]["limiter"]["draining"] == 1
