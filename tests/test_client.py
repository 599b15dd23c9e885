"""ServiceClient against real HTTP servers on 127.0.0.1.

Answers and tokens are checked against the real reference service (``mpsctl serve`` on the
tiny checkpoint, one per module). ``LocalService``, a threaded ``http.server`` whose
behaviour (sleep, status, body, dropped connections) each test sets, stays for what the
real service cannot be made to do on demand: stall, drop, send a proxy page, echo a token.
It is also used by tests/test_stress.py and tests/cli/test_ask_cli.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mpsctl.client import KeepAliveConnection, ServiceClient, reply_error
from mpsctl.errors import ClientError
from mpsctl.server.demo import DEMO_LABEL
from mpsctl.settings import ServiceSettings, load_settings
from tests.conftest import free_port
from tests.service_fixtures import RunningService, start_service, stop_process


@dataclass
class Behaviour:
    """What the local service does; tests change it between requests."""

    sleep_s: float = 0.0
    status: int = 200
    raw_body: bytes | None = None  # sent as-is instead of the echo JSON
    retry_after: str | None = None
    token: str | None = None  # when set, other tokens get 401
    every_nth_busy: int = 0  # 3: every third query answers 503
    close_after: bool = False  # close the connection after each answer, without saying so
    drop: bool = False  # close the connection instead of answering
    stall_body_s: float = 0.0  # send the headers, then wait this long before the body
    received: list[bytes] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn does
    # headers and body go out in two writes: without TCP_NODELAY, delayed ACKs add 40 ms
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.behaviour.stall_body_s:
            self.wfile.flush()
            time.sleep(self.server.behaviour.stall_body_s)
        self.wfile.write(body)

    def do_GET(self) -> None:
        how = self.server.behaviour
        if how.drop:
            self.close_connection = True
            return
        time.sleep(how.sleep_s)
        if how.raw_body is not None:
            self._send(how.status, how.raw_body)
            return
        self._send(200, b'{"status": "ok", "model_loaded": true}')

    def do_POST(self) -> None:
        how = self.server.behaviour
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization")
        with how.lock:
            how.received.append(raw)
            how.auth_headers.append(auth)
            count = len(how.received)
        if how.drop:
            self.close_connection = True
            return
        if how.close_after:
            self.close_connection = True  # no "Connection: close": the client finds out later
        if how.token is not None and auth != f"Bearer {how.token}":
            self._send(401, b'{"detail": "invalid token"}')
            return
        if how.every_nth_busy and count % how.every_nth_busy == 0:
            body = b'{"error": {"kind": "queue_full", "message": "queue full"}}'
            self._send(503, body, {"Retry-After": "1"})
            return
        time.sleep(how.sleep_s)
        headers = {"Retry-After": how.retry_after} if how.retry_after else {}
        if how.raw_body is not None:
            self._send(how.status, how.raw_body, headers)
            return
        question = json.loads(raw)["question"]
        answer = {"answer": f"echo: {question}", "question": question, "tokens": 3,
                  "model": "echo", "device": "cpu"}  # fmt: skip
        self._send(how.status, json.dumps(answer, ensure_ascii=False).encode(), headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away (timeout, Ctrl-C) is expected here, not a test failure
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class LocalService:
    url: str
    port: int
    behaviour: Behaviour
    server: _Server


@pytest.fixture(name="local_service")
def local_service_fixture() -> Iterator[LocalService]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.behaviour = Behaviour()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = server.server_address[1]
    yield LocalService(f"http://127.0.0.1:{port}", port, server.behaviour, server)
    server.shutdown()
    server.server_close()


def service_at(url: str) -> ServiceSettings:
    return load_settings(environ={"MPSCTL_SERVICE_URL": url}).service


@pytest.fixture(scope="module")
def real_service(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The reference service with auth (token "test-token"), shared by this module."""
    running = start_service(tiny_model, tmp_path_factory.mktemp("client-service"))
    yield running
    stop_process(running.proc)


# --------------------------------------------------------------------------- real service
def test_query_with_the_token_gets_the_services_answer(real_service: RunningService) -> None:
    client = ServiceClient(service_at(real_service.url), token="test-token")
    reply = client.query("工商银行", max_new_tokens=2)
    assert reply.status == 200
    assert client.query_error(reply) is None
    assert reply.body is not None
    assert (reply.body["model"], reply.body["device"]) == (DEMO_LABEL, "cpu")
    assert 1 <= reply.body["tokens"] <= 2
    assert isinstance(reply.body["answer"], str)


@pytest.mark.parametrize("how", ["requests", "keepalive"])
def test_a_wrong_token_is_rejected_without_echoing_it(
    real_service: RunningService, how: str
) -> None:
    service = service_at(real_service.url)
    if how == "requests":
        client = ServiceClient(service, token="wrong-s3cret")
        reply = client.query("q")
        error = client.query_error(reply)
    else:
        conn = KeepAliveConnection(service, token="wrong-s3cret")
        reply = conn.post("/api/v1/query", b'{"question": "q"}')
        error = conn.query_error(reply)
        conn.close()
    assert reply.status == 401
    assert error is not None
    assert (error.kind, str(error)) == ("unauthorized", "token rejected (HTTP 401)")
    assert "wrong-s3cret" not in reply.text_excerpt


def test_401_without_a_token_says_where_to_put_one(real_service: RunningService) -> None:
    reply = ServiceClient(service_at(real_service.url)).query("q")
    assert reply.status == 401
    error = reply_error(reply, url=real_service.url, token_sent=False, token_env="MPSCTL_TOKEN")
    assert error is not None
    assert (error.kind, str(error)) == (
        "unauthorized",
        "the service wants a token: set $MPSCTL_TOKEN or service.token_file (HTTP 401)",
    )
    no_env = reply_error(reply, url=real_service.url, token_sent=False, token_env=None)
    assert no_env is not None
    assert str(no_env) == (
        "the service wants a token: set --token-file or service.token_file (HTTP 401)"
    )


# --------------------------------------------------------------------------- stand-in
def test_query_sends_utf8_json_and_bearer_token(local_service: LocalService) -> None:
    client = ServiceClient(service_at(local_service.url), token="s3cret")
    reply = client.query("工商银行", max_new_tokens=7)
    assert reply.status == 200
    raw = local_service.behaviour.received[0]
    assert "工商银行".encode() in raw  # UTF-8 bytes, not \\u escapes
    assert json.loads(raw) == {"question": "工商银行", "max_new_tokens": 7}
    assert local_service.behaviour.auth_headers == ["Bearer s3cret"]
    assert reply.body["question"] == "工商银行"
    assert client.query_error(reply) is None


def test_refused_on_a_port_nobody_listens_on() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError, match=r"no service at .* try `mpsctl start`") as info:
        ServiceClient(service_at(url)).query("hi")
    assert info.value.kind == "refused"


def test_timeout_names_the_limit(local_service: LocalService) -> None:
    local_service.behaviour.sleep_s = 1.0
    client = ServiceClient(service_at(local_service.url), timeout=0.2)
    with pytest.raises(ClientError, match=r"timed out after 0\.2 s") as info:
        client.query("slow")
    assert info.value.kind == "timeout"


@pytest.mark.parametrize(
    ("status", "body", "kind", "fragment"),
    [
        (503, b'{"error": {"kind": "queue_full", "message": "q"}}', "busy", "Retry-After: 4"),
        (503, b'{"detail": "MPS backend out of memory"}', "oom", "out of memory"),
        (500, b"Internal Server Error\ntraceback", "server_error", "Internal Server Error trace"),
        (422, b'{"detail": "question missing"}', "http", "HTTP 422"),
        (200, b"<html>proxy page</html>", "bad_json", "not JSON: <html>proxy page"),
        (200, b'["a list"]', "bad_json", "not a JSON object"),
    ],
)
def test_reply_errors_are_one_line_with_their_kind(
    local_service: LocalService, status: int, body: bytes, kind: str, fragment: str
) -> None:
    how = local_service.behaviour
    how.status, how.raw_body, how.retry_after = status, body, "4"
    client = ServiceClient(service_at(local_service.url), token="tok")
    error = client.query_error(client.query("q"))
    assert error is not None
    assert error.kind == kind
    assert fragment in str(error)
    assert "\n" not in str(error)


def test_error_excerpt_never_shows_the_token(local_service: LocalService) -> None:
    local_service.behaviour.status = 500
    local_service.behaviour.raw_body = b"debug: Authorization: Bearer s3cret-token"
    client = ServiceClient(service_at(local_service.url), token="s3cret-token")
    error = client.query_error(client.query("q"))
    assert error is not None
    assert "s3cret-token" not in str(error)
    assert "Bearer ***" in str(error)


def test_keepalive_connection_resends_once_when_the_server_closed_it(
    local_service: LocalService,
) -> None:
    local_service.behaviour.close_after = True
    conn = KeepAliveConnection(service_at(local_service.url), token="t")
    replies = [conn.post("/api/v1/query", b'{"question": "q"}') for _ in range(4)]
    assert [r.status for r in replies] == [200] * 4
    assert len(local_service.behaviour.received) == 4  # nothing sent twice
    assert conn.query_error(replies[0]) is None


@pytest.mark.parametrize("how", ["requests", "keepalive"])
def test_a_dropped_connection_is_not_called_refused(local_service: LocalService, how: str) -> None:
    local_service.behaviour.drop = True
    service = service_at(local_service.url)
    client = ServiceClient(service)
    conn = KeepAliveConnection(service)
    with pytest.raises(ClientError, match="connection lost before an answer") as info:
        _ = client.query("q") if how == "requests" else conn.post("/api/v1/query", b"{}")
    assert info.value.kind == "disconnected"


@pytest.mark.parametrize("how", ["requests", "keepalive"])
def test_a_token_cut_by_the_excerpt_limit_is_still_masked(
    local_service: LocalService, how: str
) -> None:
    token = "tok-0123456789abcdef"
    # the token starts 10 characters before the 200-character cut: cutting first would leave
    # "tok-012345" in the message
    local_service.behaviour.status = 500
    local_service.behaviour.raw_body = ("x" * 190 + " " + token + " tail").encode()
    service = service_at(local_service.url)
    if how == "requests":
        client = ServiceClient(service, token=token)
        reply = client.query("q")
        error = client.query_error(reply)
    else:
        conn = KeepAliveConnection(service, token=token)
        reply = conn.post("/api/v1/query", b'{"question": "q"}')
        error = conn.query_error(reply)
    assert error is not None
    assert token[:6] not in str(error)
    assert token[:6] not in reply.text_excerpt  # other callers print the excerpt as it is
    assert "***" in reply.text_excerpt


def test_keepalive_timeout_and_non_json_body(local_service: LocalService) -> None:
    service = service_at(local_service.url)
    local_service.behaviour.raw_body = b"\xff\xfe not json"
    conn = KeepAliveConnection(service, timeout=0.3)
    reply = conn.post("/api/v1/query", b'{"question": "q"}')
    assert (reply.status, reply.body) == (200, None)
    assert reply.text_excerpt.endswith("not json")
    error = conn.query_error(reply)
    assert error is not None
    assert error.kind == "bad_json"
    local_service.behaviour.sleep_s = 1.0
    with pytest.raises(ClientError, match=r"timed out after 0\.3 s") as info:
        conn.post("/api/v1/query", b'{"question": "q"}')
    assert info.value.kind == "timeout"
    local_service.behaviour.sleep_s = 0.0  # the same object works again, on a new connection
    assert conn.post("/api/v1/query", b'{"question": "q"}').status == 200
    conn.close()


QUESTION = b'{"question": "q"}'


@pytest.mark.parametrize("how", ["requests", "keepalive"])
def test_a_body_that_stalls_after_the_headers_is_a_timeout(
    local_service: LocalService, how: str
) -> None:
    local_service.behaviour.stall_body_s = 1.0
    service = service_at(local_service.url)
    client = ServiceClient(service, timeout=0.3)
    conn = KeepAliveConnection(service, timeout=0.3)
    with pytest.raises(ClientError, match=r"timed out after 0\.3 s") as info:
        _ = client.query("q") if how == "requests" else conn.post("/api/v1/query", QUESTION)
    assert info.value.kind == "timeout"


@pytest.mark.parametrize("case", ["ok", "degraded", "not-json", "drop", "slow", "stall", "refused"])
def test_plain_http_health_answers_as_the_requests_path_does(
    local_service: LocalService, case: str
) -> None:
    """health() over http.client (no requests import) against the same GET through
    requests: the same status, body, error text and kind, case by case."""
    how = local_service.behaviour
    url = local_service.url
    if case == "degraded":
        how.status, how.raw_body = 503, b'{"status": "degraded"}'
    elif case == "not-json":
        how.raw_body = b"<html>proxy says hi</html>"
    elif case == "drop":
        how.drop = True
    elif case == "slow":
        how.sleep_s = 1.0
    elif case == "stall":
        how.stall_body_s = 1.0
    elif case == "refused":
        url = f"http://127.0.0.1:{free_port()}"
    client = ServiceClient(service_at(url))
    check = client.health(timeout=0.3)
    if case in ("ok", "degraded", "not-json"):
        reply = client.request("GET", "/health", timeout=0.3)
        assert (check.ok, check.status, check.body) == (reply.status == 200, reply.status,
                                                        reply.body)  # fmt: skip
        assert check.error == (None if reply.status == 200 else "health answered HTTP 503")
    else:
        kind = {"drop": "disconnected", "refused": "refused"}.get(case, "timeout")
        with pytest.raises(ClientError) as info:
            client.request("GET", "/health", timeout=0.3)
        assert info.value.kind == kind
        assert (check.ok, check.status, check.kind) == (False, None, kind)
        assert check.error == str(info.value)
    client.close()
