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
    from mpsctl.server.demo import DEMO_LABEL

    result = shared.request("POST", QUERY, {"question": "工商银行", "max_new_tokens": 4})

    assert result.status == 200
    body = result.json
    assert body["device"] == "cpu"
    assert body["model"] == DEMO_LABEL
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
    limiter = dict(memory["limiter"])
    # the high-water mark depends on what other tests sent to this shared service
    assert isinstance(limiter.pop("max_in_flight_seen"), int)
    assert limiter == {
        "in_flight": 0,
        "queued": 0,
        "max_concurrent": 3,
        "max_queue": 16,
        "draining": 0,
    }


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
        # not JSON and not labelled JSON: 415 (a JSON body under any label is accepted,
        # see test_json_body_with_curls_default_content_type_is_accepted)
        (None, b"question=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (None, b"question=x", None, 415, "unsupported_media_type"),
        (None, b"[" * 2100 + b"]" * 2100, "application/json", 400, "invalid_json"),
        (None, b"null", "application/json", 422, "invalid_request"),
        (None, b"7", "application/json", 422, "invalid_request"),
        (None, b"", "application/json", 400, "invalid_json"),
        (None, b'{"question": "\\ud800"}', "application/json", 422, "invalid_question"),
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
        ({"question": "x", "max_new_tokens": 2.0}, None, None, 422, "invalid_max_new_tokens"),
        ({"question": "x", "max_new_tokens": "2"}, None, None, 422, "invalid_max_new_tokens"),
        ({"question": "x", "max_new_tokens": -1}, None, None, 422, "invalid_max_new_tokens"),
        ({"question": "x", "max_new_tokens": 10**40}, None, None, 422, "invalid_max_new_tokens"),
        (
            None,
            b'{"question": "x", "max_new_tokens": 1e400}',
            "application/json",
            422,
            "invalid_max_new_tokens",
        ),
        (
            None,
            b'{"question": "x", "max_new_tokens": NaN}',
            "application/json",
            422,
            "invalid_max_new_tokens",
        ),
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
    at_limit = "工" * 21 + "x"  # 21 x 3 + 1 = 64 UTF-8 bytes, the limit
    result = shared.request("POST", QUERY, {"question": at_limit, "max_new_tokens": 1})

    assert result.status == 200, result.body
    assert result.json["tokens"] == 1
    over = shared.request("POST", QUERY, {"question": at_limit + "y", "max_new_tokens": 1})
    assert_error(over, 413, "question_too_large")
    assert over.json["error"]["message"] == ("'question' is 65 bytes (UTF-8); the limit is 64")


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
    # a query first: whatever generation leaves behind (caches, worker threads, metrics)
    # must not keep the model alive either
    assert svc.request("POST", QUERY, {"question": "工商银行", "max_new_tokens": 4}).status == 200
    first = weakref.ref(svc.service.holder.model)
    first_tokenizer = weakref.ref(svc.service.holder.tokenizer)

    result = svc.request("POST", "/admin/reload", {"model": str(tiny_model)})

    assert result.status == 200, result.body
    assert result.json["loaded"]["release_of_previous"]["schema"] == "mpsctl.release/1"
    # no gc.collect() here: the release during the reload must already have freed it
    assert first() is None
    assert first_tokenizer() is None
    assert svc.service.holder.model is not None
    assert svc.request("POST", QUERY, {"question": "x"}).status == 200


def test_failed_reload_serves_nothing_until_a_reload_succeeds(
    svc: InProcessService, tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "broken").mkdir()
    failed = svc.request("POST", "/admin/reload", {"model": str(tmp_path / "broken")})

    assert_error(failed, 500, "load_failed")
    assert "serves no model" in failed.json["error"]["message"]
    assert "\n" not in failed.json["error"]["message"]  # transformers' text, on one line
    health = svc.request("GET", "/health")
    assert health.status == 503
    assert health.json["status"] == "degraded"
    assert health.json["model_loaded"] is False
    refused = svc.request("POST", QUERY, {"question": "x"})
    assert_error(refused, 503, "model_not_loaded")
    assert refused.headers["retry-after"] == "10"

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
    limiter = svc.service.limiter
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


def test_json_body_with_curls_default_content_type_is_accepted(shared: InProcessService) -> None:
    # the documented command: curl -H "Authorization: ..." -d '{"question": "工商银行"}' URL
    # sends the body as application/x-www-form-urlencoded
    body = '{"question": "工商银行", "max_new_tokens": 2}'.encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*"}

    result = shared.request("POST", QUERY, raw=body, headers=headers)
    unlabelled = shared.request("POST", QUERY, raw=body)

    assert result.status == 200, result.body
    assert result.json["tokens"] >= 1
    assert unlabelled.status == 200, unlabelled.body


def test_chunked_body_is_read_and_capped(shared: InProcessService) -> None:
    def chunked(payload: bytes) -> HttpResult:
        port = int(shared.url.rsplit(":", 1)[1])
        head = (
            f"POST {QUERY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(payload[i : i + 1000]), payload[i : i + 1000])
            for i in range(0, len(payload), 1000)
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            # one write: the whole body is in the server's socket buffer when it answers, so
            # its close is a FIN, not a reset that would discard the answer
            sock.sendall(head + chunks + b"0\r\n\r\n")
            raw = b""
            while data := sock.recv(65536):
                raw += data
        status = int(raw.split(b" ", 2)[1])
        return HttpResult(status, {"content-type": "application/json"}, raw.split(b"\r\n\r\n")[1])

    answered = chunked(b'{"question": "x", "max_new_tokens": 1}')
    assert answered.status == 200, answered.body
    assert (answered.json["tokens"], answered.json["device"]) == (1, "cpu")
    # just over the query body cap (4 x max_question_bytes + 4096 = 20480 bytes)
    assert_error(chunked(b'{"question": "' + b"x" * 24_000 + b'"}'), 413, "body_too_large")
    assert shared.request("GET", "/health").status == 200


def test_unexpected_errors_are_json_500_and_the_service_lives_on(
    svc: InProcessService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mpsctl.server.app as app_module

    def broken_report(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(app_module, "memory_report", broken_report)
        failed = svc.request("GET", "/health")

    assert_error(failed, 500, "internal_error")
    assert b"Traceback" not in failed.body
    assert svc.request("GET", "/health").status == 200
    assert svc.request("POST", QUERY, {"question": "x", "max_new_tokens": 1}).status == 200


def test_reload_of_a_missing_directory_keeps_the_model(
    svc: InProcessService, tmp_path: Path
) -> None:
    model = svc.service.holder.model

    result = svc.request("POST", "/admin/reload", {"model": str(tmp_path / "nope")})
    control = svc.request("POST", "/admin/reload", {"model": "a\u0000b"})

    assert_error(result, 422, "model_not_found")
    assert "nothing was released" in result.json["error"]["message"]
    assert_error(control, 422, "invalid_model")
    assert svc.service.holder.model is model
    assert svc.request("GET", "/health").status == 200
    assert svc.request("POST", QUERY, {"question": "x", "max_new_tokens": 1}).status == 200


def test_queries_during_a_reload_get_503_with_retry_after_then_succeed(
    svc: InProcessService, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = svc.service.holder
    real_from_pretrained = holder._from_pretrained
    loading = threading.Event()
    finish = threading.Event()

    def slow_from_pretrained(model_id: str) -> None:
        loading.set()
        finish.wait(10)
        real_from_pretrained(model_id)

    monkeypatch.setattr(holder, "_from_pretrained", slow_from_pretrained)
    results: list[HttpResult] = []
    reload = threading.Thread(
        target=lambda: results.append(
            svc.request("POST", "/admin/reload", {"model": str(tiny_model)})
        )
    )
    reload.start()
    assert loading.wait(10)

    during = svc.request("POST", QUERY, {"question": "x", "max_new_tokens": 1})
    second = svc.request("POST", "/admin/reload", {"model": str(tiny_model)})
    health = svc.request("GET", "/health")
    finish.set()
    reload.join(30)

    assert_error(during, 503, "model_not_loaded")
    assert int(during.headers["retry-after"]) >= 1
    assert_error(second, 409, "busy")
    assert health.status == 503
    assert results[0].status == 200, results[0].body
    assert svc.request("POST", QUERY, {"question": "x", "max_new_tokens": 1}).status == 200


def test_out_of_memory_frees_the_activations_before_releasing(
    svc: InProcessService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import mpsctl.server.model as model_module

    holder = svc.service.holder
    activations: list[weakref.ref[Any]] = []
    # something else keeping the exception alive (a retry helper, a log handler holding
    # exc_info): the traceback's frames must still not pin the tensors
    kept: list[BaseException] = []

    def generate_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        hidden = torch.ones(256, 256)
        activations.append(weakref.ref(hidden))
        error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        kept.append(error)
        raise error

    freed_at_release: list[bool] = []
    real_release = model_module.release

    def watching_release(*args: Any, **kwargs: Any) -> Any:
        gc.collect()  # what release() does before empty_cache()
        freed_at_release.append(all(ref() is None for ref in activations))
        return real_release(*args, **kwargs)

    monkeypatch.setattr(holder.model, "generate", generate_out_of_memory)
    monkeypatch.setattr(model_module, "release", watching_release)

    result = svc.request("POST", QUERY, {"question": "x"})

    assert_error(result, 503, "out_of_memory")
    assert "OutOfMemoryError: CUDA out of memory" in result.json["error"]["message"]
    assert len(activations) == 1
    assert freed_at_release == [True]


def test_failed_load_frees_the_half_loaded_model_before_releasing(
    svc: InProcessService, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import mpsctl.server.model as model_module

    real_auto = model_module.AutoModelForCausalLM
    loaded: list[weakref.ref[Any]] = []

    class OutOfMemoryOnMove:
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            model = real_auto.from_pretrained(*args, **kwargs)
            loaded.append(weakref.ref(model))

            def to(*_args: Any, **_kwargs: Any) -> Any:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")

            model.to = to
            return model

    freed_at_release: list[bool] = []
    real_release = model_module.release

    def watching_release(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        freed_at_release.append(all(ref() is None for ref in loaded))
        return real_release(*args, **kwargs)

    monkeypatch.setattr(model_module, "AutoModelForCausalLM", OutOfMemoryOnMove)
    monkeypatch.setattr(model_module, "release", watching_release)

    result = svc.request("POST", "/admin/reload", {"model": str(tiny_model)})

    assert_error(result, 500, "load_failed")
    assert "OutOfMemoryError" in result.json["error"]["message"]
    assert len(loaded) == 1
    # the release after the failure (the last one) ran with the half-loaded model gone
    assert freed_at_release[-1] is True
    assert svc.service.holder.model is None


def test_health_memory_keys_match_the_documented_contract(shared: InProcessService) -> None:
    from tests.server.test_memory import documented_memory_contract

    contract = documented_memory_contract()
    memory = shared.request("GET", "/health").json["memory"]

    assert set(memory) == set(contract)
    assert set(memory["limiter"]) == set(contract["limiter"])


def test_client_that_disconnects_mid_generation_frees_its_slot_at_once(
    inprocess_factory: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = inprocess_factory(max_concurrent=1, max_new_tokens_limit=100_000)
    model = svc.service.holder.model
    real_generate = model.generate
    started = threading.Event()
    produced: list[int] = []

    def never_ending_generate(*args: Any, **kwargs: Any) -> Any:
        started.set()
        # no early end of sequence: only a stopping criterion can end this before 100k tokens
        output = real_generate(*args, min_new_tokens=kwargs["max_new_tokens"], **kwargs)
        produced.append(int(output.shape[1]))
        return output

    monkeypatch.setattr(model, "generate", never_ending_generate)
    body = b'{"question": "x", "max_new_tokens": 100000}'
    request = (
        f"POST {QUERY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    limiter = svc.service.limiter
    with socket.create_connection(("127.0.0.1", int(svc.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(request)
        assert started.wait(10)
        time.sleep(0.2)
    gone_at = time.monotonic()

    wait_until(lambda: limiter.in_flight == 0, timeout=10)

    assert time.monotonic() - gone_at < 10
    assert produced
    assert produced[0] < 100_000
    assert svc.service.holder.active == 0
    metrics = svc.request("GET", "/metrics").body.decode()
    assert 'mpsctl_queries_total{outcome="client_gone"} 1.0' in metrics
    assert svc.request("POST", QUERY, {"question": "x", "max_new_tokens": 1}).status == 200


def test_a_failing_periodic_cleanup_does_not_end_the_loop(
    inprocess_factory: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mpsctl.server.app as app_module

    caplog.set_level(logging.INFO, logger="mpsctl.server")
    real_release = app_module.release
    attempts = {"n": 0}

    def release_failing_once(*args: Any, **kwargs: Any) -> Any:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("synchronize failed")
        return real_release(*args, **kwargs)

    monkeypatch.setattr(app_module, "release", release_failing_once)
    svc = inprocess_factory(cleanup_interval=0.05)

    wait_until(lambda: svc.service.counts["cleanups"] >= 1)

    assert attempts["n"] >= 2
    assert "periodic cleanup failed" in caplog.text
    svc.stop()
    assert not svc.thread.is_alive()
