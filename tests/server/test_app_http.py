"""The reference app over real HTTP (uvicorn in a thread, tiny checkpoint, 127.0.0.1)."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_fixture
from tests.service_fixtures import HttpResult, InProcessService, start_inprocess

Start = Callable[..., InProcessService]
QUERY = "/api/v1/query"


@pytest.fixture(scope="module")
def shared(tiny_model: Path) -> Iterator[InProcessService]:
    """One service for the tests that change nothing in it (startup costs ~1 s)."""
    running = start_inprocess(tiny_model, max_question_bytes=64, max_new_tokens_limit=32)
    yield running
    running.stop()


@pytest.fixture
def svc(inprocess_factory: Start) -> InProcessService:
    return inprocess_factory(max_question_bytes=64, max_new_tokens_limit=32)


def assert_error(result: HttpResult, status: int, kind: str) -> None:
    assert result.status == status, result.body
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["error"]["kind"] == kind
    assert result.json["error"]["message"]


def test_query_answers_icbc(shared: InProcessService) -> None:
    result = shared.request("POST", QUERY, {"question": "工商银行", "max_new_tokens": 4})

    assert result.status == 200
    body = result.json
    assert body["device"] == "cpu"
    assert body["model"] == "demo (random weights: answers are noise)"
    assert 1 <= body["tokens"] <= 4
    assert isinstance(body["answer"], str)


def test_health_matches_the_memory_report_contract(shared: InProcessService) -> None:
    result = shared.request("GET", "/health", token=None)

    assert result.status == 200
    body = result.json
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    memory = body["memory"]
    assert set(memory) == {
        "schema", "device", "torch_version", "pid", "rss_bytes", "mps", "cuda", "limiter",
    }  # fmt: skip
    assert memory["device"] == "cpu"
    assert memory["mps"] is None
    assert memory["cuda"] is None
    assert memory["rss_bytes"] > 0
    assert memory["limiter"] == {"in_flight": 0, "queued": 0, "max_concurrent": 3, "max_queue": 16}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer wrong"}, "wrong bearer token"),
        ({"Authorization": "Basic dGVzdC10b2tlbg=="}, "wrong bearer token"),
    ],
)
def test_bad_token_is_401(shared: InProcessService, headers: dict[str, str], message: str) -> None:
    result = shared.request("POST", QUERY, {"question": "x"}, token=None, headers=headers)

    assert_error(result, 401, "unauthorized")
    assert result.json["error"]["message"] == message
    assert result.headers["www-authenticate"] == "Bearer"
    assert b"test-token" not in result.body


@pytest.mark.parametrize(
    ("body", "raw", "content_type", "status", "kind"),
    [
        (None, b"{not json", "application/json", 400, "invalid_json"),
        (None, b'{"question": "x"}', "text/plain", 415, "unsupported_media_type"),
        (None, b"[1, 2]", "application/json", 422, "invalid_request"),
        (None, b"\xff\xfe", "application/json", 400, "invalid_json"),
        ({"question": "   "}, None, None, 422, "blank_question"),
        ({"question": 42}, None, None, 422, "invalid_question"),
        ({}, None, None, 422, "invalid_question"),
        ({"question": "工" * 22}, None, None, 413, "question_too_large"),  # 66 bytes > 64
        ({"question": "x", "max_new_tokens": 0}, None, None, 422, "invalid_max_new_tokens"),
        ({"question": "x", "max_new_tokens": 33}, None, None, 422, "invalid_max_new_tokens"),
        ({"question": "x", "max_new_tokens": True}, None, None, 422, "invalid_max_new_tokens"),
        ({"question": "x", "max_new_tokens": 2.5}, None, None, 422, "invalid_max_new_tokens"),
        (None, b"x" * 10_000, "application/json", 413, "body_too_large"),
    ],
)
def test_bad_input_is_a_json_4xx(
    shared: InProcessService,
    body: Any,
    raw: bytes | None,
    content_type: str | None,
    status: int,
    kind: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else None
    result = shared.request("POST", QUERY, body, raw=raw, headers=headers)

    assert_error(result, status, kind)
    assert shared.request("GET", "/health").status == 200


def test_unknown_path_and_method_are_json(shared: InProcessService) -> None:
    assert_error(shared.request("GET", "/nope"), 404, "not_found")
    assert_error(shared.request("GET", QUERY), 405, "method_not_allowed")


def test_question_at_the_byte_limit_is_accepted(shared: InProcessService) -> None:
    result = shared.request("POST", QUERY, {"question": "工" * 21 + "x", "max_new_tokens": 1})

    assert result.status == 200


@pytest.mark.parametrize(
    ("make_error", "fixture"),
    [
        (RuntimeError, "torch-mps-oom-6-gib.txt"),
        ("cuda", "torch-cuda-oom-new-2-torch-OutOfMemoryError.txt"),
    ],
)
def test_out_of_memory_is_503_then_the_service_recovers(
    svc: InProcessService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_error: Any,
    fixture: str,
) -> None:
    import torch

    message = read_fixture(fixture).strip().removeprefix("torch.OutOfMemoryError: ")
    error_type = torch.cuda.OutOfMemoryError if make_error == "cuda" else make_error
    model = svc.service.holder.model
    real_generate = model.generate
    calls = {"n": 0}

    def generate_once_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise error_type(message)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate_once_out_of_memory)
    caplog.set_level(logging.INFO, logger="mpsctl.server")

    failed = svc.request("POST", QUERY, {"question": "工商银行"})
    assert_error(failed, 503, "out_of_memory")
    assert failed.headers["retry-after"] == "5"
    assert message in caplog.text
    assert "released memory after the out-of-memory error" in caplog.text

    assert svc.request("POST", QUERY, {"question": "工商银行"}).status == 200
    metrics = svc.request("GET", "/metrics").body.decode()
    assert "mpsctl_out_of_memory_total 1.0" in metrics
    assert 'mpsctl_releases_total{trigger="oom"} 1.0' in metrics


def test_other_generation_errors_are_500_and_do_not_stop_the_service(
    svc: InProcessService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("boom")

    monkeypatch.setattr(svc.service.holder.model, "generate", broken)

    assert_error(svc.request("POST", QUERY, {"question": "x"}), 500, "generation_failed")
    assert svc.request("GET", "/health").status == 200


def test_reload_leaves_the_first_model_collectable(svc: InProcessService, tiny_model: Path) -> None:
    first = weakref.ref(svc.service.holder.model)

    result = svc.request("POST", "/admin/reload", {"model": str(tiny_model)})

    assert result.status == 200, result.body
    assert result.json["loaded"]["release_of_previous"]["schema"] == "mpsctl.release/1"
    gc.collect()
    assert first() is None
    assert svc.service.holder.model is not None
    assert svc.request("POST", QUERY, {"question": "x"}).status == 200


def test_failed_reload_serves_nothing_until_a_reload_succeeds(
    svc: InProcessService, tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "broken").mkdir()
    failed = svc.request("POST", "/admin/reload", {"model": str(tmp_path / "broken")})

    assert_error(failed, 500, "load_failed")
    assert "serves no model" in failed.json["error"]["message"]
    health = svc.request("GET", "/health")
    assert health.status == 503
    assert health.json["status"] == "degraded"
    assert health.json["model_loaded"] is False
    assert_error(svc.request("POST", QUERY, {"question": "x"}), 503, "model_not_loaded")

    assert svc.request("POST", "/admin/reload", {"model": str(tiny_model)}).status == 200
    assert svc.request("GET", "/health").status == 200


def test_admin_endpoints_need_the_token(shared: InProcessService) -> None:
    assert_error(shared.request("POST", "/admin/release", token=None), 401, "unauthorized")
    assert_error(
        shared.request("POST", "/admin/reload", {"model": "x"}, token="bad"), 401, "unauthorized"
    )


def test_admin_release_returns_before_and_after(shared: InProcessService) -> None:
    result = shared.request("POST", "/admin/release")

    assert result.status == 200
    body = result.json
    assert body["device"] == "cpu"
    assert body["before"]["rss_bytes"] > 0
    assert body["after"]["allocated_bytes"] is None  # nothing to measure on cpu: null, not 0
    assert body["reclaimed_bytes"] is None


def test_metrics_are_prometheus_text(svc: InProcessService) -> None:
    svc.request("POST", QUERY, {"question": "x"})

    result = svc.request("GET", "/metrics", token=None)

    assert result.status == 200
    assert result.headers["content-type"].startswith("text/plain")
    text = result.body.decode()
    for line in (
        'mpsctl_queries_total{outcome="ok"} 1.0',
        "mpsctl_limiter_in_flight 0.0",
        "mpsctl_limiter_queued 0.0",
        "mpsctl_model_loaded 1.0",
    ):
        assert line in text
    assert "mpsctl_process_rss_bytes" in text
    assert "mpsctl_mps_limit_bytes" not in text  # unmeasured: absent, not 0


def test_periodic_cleanup_runs(inprocess_factory: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mpsctl.server")
    svc = inprocess_factory(cleanup_interval=0.1)

    deadline = time.monotonic() + 10
    while svc.service.counts["cleanups"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    assert svc.service.counts["cleanups"] >= 2
    assert "periodic cleanup: " in caplog.text
    assert (
        'mpsctl_releases_total{trigger="periodic"}' in svc.request("GET", "/metrics").body.decode()
    )


def test_thirty_queries_never_exceed_three_in_flight(inprocess_factory: Start) -> None:
    svc = inprocess_factory(max_concurrent=3, max_queue=5, queue_timeout=30)
    barrier = threading.Barrier(30)
    results: list[HttpResult] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        result = svc.request("POST", QUERY, {"question": "工商银行", "max_new_tokens": 16})
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = sorted(r.status for r in results)
    assert len(statuses) == 30
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 8  # 3 running + 5 queued are always served
    assert all("retry-after" in r.headers for r in results if r.status == 503)
    metrics = svc.request("GET", "/metrics").body.decode()
    assert "mpsctl_limiter_max_in_flight_seen 3.0" in metrics
    assert svc.service.holder.max_active_seen <= 3


def test_client_that_disconnects_while_queued_frees_its_slot(
    inprocess_factory: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = inprocess_factory(max_concurrent=1, max_queue=1)
    model = svc.service.holder.model
    real_generate = model.generate
    release_first = threading.Event()

    def slow_generate(*args: Any, **kwargs: Any) -> Any:
        release_first.wait(10)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", slow_generate)
    limiter = svc.service.asgi
    first = threading.Thread(target=svc.request, args=("POST", QUERY, {"question": "a"}))
    first.start()
    wait_until(lambda: limiter.in_flight == 1)
    body = b'{"question": "b"}'
    request = (
        f"POST {QUERY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", int(svc.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(request)
        wait_until(lambda: limiter.queued == 1)

    wait_until(lambda: limiter.queued == 0)
    assert limiter.abandoned_in_queue == 1
    assert limiter.in_flight == 1  # the first query still runs
    release_first.set()
    first.join(15)
    wait_until(lambda: limiter.in_flight == 0)
    assert svc.request("POST", QUERY, {"question": "c"}).status == 200


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
