"""Hardening of the reference service against hostile or careless clients, over real HTTP
(uvicorn on 127.0.0.1, the tiny checkpoint on the CPU)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.errors import ConfigError
from mpsctl.server import read_token_file, resolve_token
from mpsctl.server.auth import redact_query
from tests.service_fixtures import HttpResult, InProcessService, RunningService

Start = Callable[..., InProcessService]
QUERY = "/api/v1/query"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def gate_generation(svc: InProcessService, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Generation waits for the returned event: queries stay in flight until it is set."""
    model = svc.service.holder.model
    real_generate = model.generate
    gate = threading.Event()

    def gated(*args: Any, **kwargs: Any) -> Any:
        gate.wait(20)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", gated)
    return gate


def port_of(svc: InProcessService) -> int:
    return int(svc.url.rsplit(":", 1)[1])


def test_unauthenticated_requests_never_take_a_slot_or_a_queue_place(
    inprocess_factory: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 2: authentication runs before the limiter; 401 at once, even when busy."""
    svc = inprocess_factory(max_concurrent=1, max_queue=1, queue_timeout=20)
    gate = gate_generation(svc, monkeypatch)
    limiter = svc.service.limiter
    results: list[HttpResult] = []

    def ask() -> None:
        results.append(svc.request("POST", QUERY, {"question": "a", "max_new_tokens": 1}))

    running = threading.Thread(target=ask)
    running.start()
    wait_until(lambda: limiter.in_flight == 1)

    started = time.monotonic()
    denied = [
        svc.request("POST", QUERY, {"question": "b"}, token=None, timeout=10) for _ in range(4)
    ]
    denied.append(svc.request("POST", QUERY, {"question": "b"}, token="wrong", timeout=10))
    took = time.monotonic() - started

    assert [r.status for r in denied] == [401] * 5
    assert took < 3  # not held in the queue until the queue timeout
    assert (limiter.in_flight, limiter.queued) == (1, 0)
    assert limiter.rejected_queue_full == limiter.rejected_queue_timeout == 0
    assert limiter.admitted == 1
    # the one queue place is still free for a client with the token
    queued = threading.Thread(target=ask)
    queued.start()
    wait_until(lambda: limiter.queued == 1)
    gate.set()
    running.join(30)
    queued.join(30)
    assert [r.status for r in results] == [200, 200]
    metrics = svc.request("GET", "/metrics").body.decode()
    assert 'mpsctl_queries_total{outcome="unauthorized"} 5.0' in metrics


def test_admin_endpoints_answer_401_while_every_slot_is_busy(
    inprocess_factory: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 2: the admin endpoints check the token without waiting for anything."""
    svc = inprocess_factory(max_concurrent=1, max_queue=0)
    gate = gate_generation(svc, monkeypatch)
    running = threading.Thread(target=svc.request, args=("POST", QUERY, {"question": "a"}))
    running.start()
    wait_until(lambda: svc.service.limiter.in_flight == 1)

    for path in ("/admin/release", "/admin/reload"):
        result = svc.request("POST", path, {"model": "x"}, token=None, timeout=5)
        assert result.status == 401
        assert result.json == {"error": {"kind": "unauthorized", "message": "missing bearer token"}}
        assert result.headers["www-authenticate"] == "Bearer"
    gate.set()
    running.join(30)


def test_a_body_that_never_finishes_gets_408_and_frees_its_slot(inprocess_factory: Start) -> None:
    """#13 item 3: a request body that stops arriving is answered 408 after the body
    timeout, and its query slot is free again."""
    svc = inprocess_factory(max_concurrent=1, max_queue=0, body_timeout=0.5)
    limiter = svc.service.limiter
    head = (
        f"POST {QUERY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port_of(svc)), timeout=10) as sock:
        sock.sendall(head + b'{"question": ')
        wait_until(lambda: limiter.in_flight == 1)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in rest.lower()
    assert b'"kind":"body_timeout"' in rest
    assert took < 5
    wait_until(lambda: limiter.in_flight == 0, timeout=5)
    # the slot is free: the next query runs instead of getting 503 queue_full
    assert svc.request("POST", QUERY, {"question": "c", "max_new_tokens": 1}).status == 200


def test_a_token_in_the_query_string_is_redacted_in_the_service_log(
    service_factory: Callable[..., RunningService],
) -> None:
    """#13 item 4: a token sent as a query parameter is refused and never written to the log."""
    service = service_factory()
    secret = "MySecretToken42"

    result = service.request(
        "POST", f"{QUERY}?access_token={secret}&lang=zh", {"question": "x"}, token=None
    )

    assert result.status == 401
    wait_until(lambda: "401" in service.log(), timeout=10)
    log = service.log()
    assert f"{QUERY}?access_token=REDACTED&lang=zh" in log
    assert secret not in log


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api/v1/query", "/api/v1/query"),
        ("/q?token=abc", "/q?token=REDACTED"),
        ("/q?a=1&API_KEY=k&b=2", "/q?a=1&API_KEY=REDACTED&b=2"),
        ("/q?password=p&auth=x", "/q?password=REDACTED&auth=REDACTED"),
        ("/q?sig=s&secret=t", "/q?sig=REDACTED&secret=REDACTED"),
        ("/q?flag&token", "/q?flag&token"),
        ("/q?question=token", "/q?question=token"),
    ],
)  # fmt: skip
def test_redact_query_hides_only_credential_values(target: str, expected: str) -> None:
    """#13 item 4: which query parameters count as credentials."""
    assert redact_query(target) == expected


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("tökén", "non-ASCII"),
        ("a b", "spaces or control characters"),
    ],
)
def test_tokens_outside_visible_ascii_are_refused_at_load(
    tmp_path: Path, token: str, reason: str
) -> None:
    """#13 item 5: one token rule (visible ASCII, no spaces), from the variable or the file."""
    path = tmp_path / "token"
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)

    with pytest.raises(ConfigError, match=f"^token file {path}: the token contains {reason}"):
        read_token_file(path)
    with pytest.raises(ConfigError, match=f"^environment variable T: the token contains {reason}"):
        resolve_token(
            token_env="T", token_file=None, create_if_missing=False, no_auth=False,
            environ={"T": token},
        )  # fmt: skip


def test_serve_with_a_non_ascii_token_refuses_to_start_with_one_line(tiny_model: Path) -> None:
    """#13 item 5: `mpsctl serve` says why in one line, exit 2, without echoing the token."""
    result = CliRunner().invoke(
        main,
        ["serve", "--model", str(tiny_model), "--device", "cpu"],
        env={"MPSCTL_TOKEN": "Geheimnis-ß"},
    )

    assert result.exit_code == 2
    assert result.stderr == (
        "mpsctl: error: environment variable MPSCTL_TOKEN: the token contains non-ASCII "
        "characters; use visible ASCII only (clients encode other characters differently in "
        "the Authorization header)\n"
    )
    assert "Geheimnis" not in result.output


def test_max_new_tokens_null_is_refused(shared_service: InProcessService) -> None:
    """#13 item 18: "max_new_tokens": null is a 422, not silently the default."""
    result = shared_service.request("POST", QUERY, {"question": "x", "max_new_tokens": None})

    assert result.status == 422
    assert result.json["error"]["kind"] == "invalid_max_new_tokens"
    assert "leave it out for the service's default" in result.json["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/health", "GET"),
        ("POST", "/metrics", "GET"),
        ("GET", QUERY, "POST"),
        ("PUT", "/admin/release", "POST"),
    ],
)
def test_405_carries_the_allow_header(
    shared_service: InProcessService, method: str, path: str, allow: str
) -> None:
    """#13 item 18: RFC 9110 requires Allow on every 405."""
    result = shared_service.request(method, path)

    assert result.status == 405
    assert result.json["error"]["kind"] == "method_not_allowed"
    allowed = {m.strip() for m in result.headers["allow"].split(",")}
    assert allow in allowed
    assert method not in allowed


@pytest.fixture(scope="module")
def shared_service(tiny_model: Path) -> Any:
    from tests.service_fixtures import start_inprocess

    running = start_inprocess(tiny_model, max_new_tokens_limit=32)
    yield running
    running.stop()
