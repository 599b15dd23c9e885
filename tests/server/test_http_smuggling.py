"""Request framing a front proxy could read differently from the service, over real sockets
to the in-process service: such a request is refused and its connection closed, so nothing
sent after it on the same connection is ever answered as a second request."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.server.test_http_bounds import port_of, raw
from tests.service_fixtures import InProcessService

Start = Callable[..., InProcessService]
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


@pytest.mark.parametrize(
    "head",
    [
        # CL.TE: a proxy framing by Content-Length forwards the smuggled request as body
        b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        # HTTP/1.0 has no chunked framing: a 1.0 proxy reads to the close
        b"POST /health HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["cl-te", "te-cl", "te-on-http-1.0"],
)
def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(
    inprocess_factory: Start, head: bytes
) -> None:
    svc = inprocess_factory()

    answer = raw(port_of(svc), head + SMUGGLED, timeout=10)

    assert statuses(answer) == [400], answer[:300]
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"]["kind"] == "bad_request"
    assert svc.request("GET", "/health").status == 200
