"""Authentication comes before anything that queues: paths nobody listed (404s, a trailing
slash, a doubled slash) need the token too, over real HTTP to the tiny checkpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.server.test_hardening import QUERY, gate_generation, wait_until
from tests.service_fixtures import HttpResult, InProcessService

Start = Callable[..., InProcessService]
UNLISTED = ["/nope", f"{QUERY}/", f"/{QUERY}", "/health/", "/admin/", "/%61pi/v1/query"]


def test_unauthenticated_requests_to_any_path_never_take_a_queue_place(
    inprocess_factory: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every slot busy, tokenless requests to unlisted paths are answered 401 at once
    and leave the one queue place free for a client with the token."""
    svc = inprocess_factory(max_concurrent=1, max_queue=1, queue_timeout=20)
    gate = gate_generation(svc, monkeypatch)
    limiter = svc.service.limiter
    results: list[HttpResult] = []

    def ask() -> None:
        results.append(svc.request("POST", QUERY, {"question": "a", "max_new_tokens": 1}))

    running = threading.Thread(target=ask)
    running.start()
    wait_until(lambda: limiter.in_flight == 1)

    denied = [
        svc.request(method, path, {"question": "b"}, token=None, timeout=5)
        for path in UNLISTED
        for method in ("GET", "POST")
    ]

    assert {r.status for r in denied} == {401}
    assert all(r.json["error"]["kind"] == "unauthorized" for r in denied)
    assert (limiter.in_flight, limiter.queued, limiter.admitted) == (1, 0, 1)
    assert limiter.rejected_queue_full == 0
    queued = threading.Thread(target=ask)
    queued.start()
    wait_until(lambda: limiter.queued == 1)
    gate.set()
    running.join(30)
    queued.join(30)
    assert [r.status for r in results] == [200, 200]


def test_open_paths_answer_without_a_token_and_unlisted_ones_with_it(
    inprocess_factory: Start,
) -> None:
    """/health and /metrics stay open (probes and Prometheus carry no token); with the token,
    an unknown path is the usual JSON 404."""
    svc = inprocess_factory()

    assert svc.request("GET", "/health", token=None).status == 200
    assert svc.request("GET", "/metrics", token=None).status == 200
    found = svc.request("GET", "/nope")
    assert found.status == 404
    assert found.json["error"]["kind"] == "not_found"
