"""The HTTP protocol layer's bounds, over real sockets to the in-process service: a header
size limit, a header timeout, a connection limit that closes the oldest idle connections,
and JSON on the errors the protocol answers itself. tests/benchmarks/bench_http_attacks.py
runs the same attacks at full size."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from mpsctl.server.protocol import connection_limit
from tests.service_fixtures import InProcessService

Start = Callable[..., InProcessService]


def port_of(svc: InProcessService) -> int:
    return int(svc.url.rsplit(":", 1)[1])


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def timed_health(svc: InProcessService) -> tuple[int, float]:
    started = time.monotonic()
    result = svc.request("GET", "/health", token=None, timeout=5)
    return result.status, time.monotonic() - started


@contextlib.contextmanager
def connections(
    port: int, count: int, head: bytes, *, read_answer: bool = False
) -> Iterator[list[socket.socket]]:
    """``count`` connections, one after the other, each sending ``head`` (and reading its
    answer, for a kept-alive connection that has had one)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            with contextlib.suppress(OSError):  # the server may close it to make room
                sock.sendall(head)
                if read_answer:
                    sock.recv(65536)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (after reading any answer it sent)."""
    sock.settimeout(0.5)
    try:
        while chunk := sock.recv(65536):
            del chunk
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_a_header_over_the_limit_gets_431_json_and_health_stays_fast(
    inprocess_factory: Start,
) -> None:
    svc = inprocess_factory()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n"

    answer = raw(port_of(svc), head)

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431")
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["kind"] == "header_too_large"
    status, took = timed_health(svc)
    assert (status, took < 1) == (200, True)


def test_half_open_connections_are_closed_after_the_header_timeout(
    inprocess_factory: Start,
) -> None:
    svc = inprocess_factory(header_timeout=1.0)
    with connections(port_of(svc), 30, b"GET /health HTTP/1.1\r\nHost: x\r\n") as socks:
        status, took = timed_health(svc)
        assert (status, took < 1) == (200, True)
        time.sleep(1.5)
        assert all(closed_by_server(s) for s in socks)


def test_a_slow_second_request_head_on_a_kept_alive_connection_is_timed_too(
    inprocess_factory: Start,
) -> None:
    svc = inprocess_factory(header_timeout=1.0)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connections(port_of(svc), 1, head) as (sock,):
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # within the keep-alive time, then nothing
        time.sleep(1.5)
        assert closed_by_server(sock)


def test_idle_connections_past_the_limit_close_the_oldest_and_health_answers(
    inprocess_factory: Start,
) -> None:
    svc = inprocess_factory(max_connections=16)
    state = svc.server.server_state
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connections(port_of(svc), 40, head, read_answer=True) as socks:
        status, took = timed_health(svc)
        assert (status, took < 1) == (200, True)
        assert len(state.connections) <= 16
        assert closed_by_server(socks[0])  # the oldest went first
        assert not closed_by_server(socks[-1])


@pytest.mark.parametrize(("open_files", "limit"), [(256, 192), (20000, 1024), (10, 8)])
def test_the_connection_limit_stays_below_the_open_file_limit(open_files: int, limit: int) -> None:
    assert connection_limit(open_files) == limit


@pytest.mark.parametrize("method", ["BREW", "FOO", "M-SEARCH"])
def test_an_unknown_method_gets_the_json_error_shape(inprocess_factory: Start, method: str) -> None:
    svc = inprocess_factory()
    answer = raw(port_of(svc), f"{method} /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["kind"] == "method_not_allowed"
