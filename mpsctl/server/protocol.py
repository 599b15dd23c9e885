"""uvicorn's HTTP/1.1 protocol with the bounds it lacks: header size, header time, connections.

Why h11 and not httptools (uvicorn's default when installed): httptools puts no limit on a
request's header size (a 96 MB header held the event loop for seconds, so ``/health`` took
11.5 s) and rejects a method it does not know with a plain-text 400. h11 refuses a header over
``MAX_HEADER_BYTES`` as soon as its buffer passes it, and lets an unknown method reach the app,
which answers with the service's JSON error. ``tests/benchmarks/bench_http_attacks.py``
measures both.

What uvicorn does not bound at all, this adds:
- a header timeout: a connection that has not sent a whole request head within
  ``HEADER_TIMEOUT_S`` of connecting (or of its previous answer) is closed, so half-sent
  requests do not stay open forever;
- a connection limit below the open-file limit: when it is reached, the oldest connections
  with no request in progress (idle keep-alive ones, half-sent heads) are closed to make room,
  so a pile of idle connections cannot keep ``/health`` out. uvicorn's own
  ``limit_concurrency`` would answer that ``/health`` with 503 instead.

Imports uvicorn and h11: imported only when the service really starts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: the largest request head (request line + headers) accepted; h11's own default is 16 KiB
MAX_HEADER_BYTES = 64 * 1024
#: seconds a client has to send a whole request head
HEADER_TIMEOUT_S = 10.0
#: seconds an idle keep-alive connection stays open after an answer (uvicorn's default)
KEEP_ALIVE_S = 5
#: connections at most, whatever the open-file limit allows
MAX_CONNECTIONS = 1024
#: file descriptors kept free of connections: the model's files, logs, the interpreter's own
RESERVED_FILES = 64
#: the soft open-file limit is raised towards the hard one, up to this (macOS's soft default is
#: 256, so 300 idle connections would otherwise exhaust it)
WANTED_OPEN_FILES = 4096

_order = itertools.count()


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise the soft open-file limit towards ``wanted`` (never above the hard limit, never
    down); returns the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def connection_limit(open_files: int | None = None) -> int:
    """Connections allowed with ``open_files`` (default: this process's soft limit)."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, open_files - RESERVED_FILES))


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout, a connection limit that closes the
    oldest idle connections first, and JSON bodies on the 400/431 it sends itself."""

    header_timeout: float = HEADER_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = next(_order)
        self._header_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.idle and (self._header_timer is None or self._timed_cycle is not self.cycle):
            # the next request on a kept-alive connection: its head is timed too
            self._cancel_header_timer()
            self._start_header_timer()
        super().data_received(data)

    @property
    def idle(self) -> bool:
        """No request in progress: waiting for (the rest of) a request head."""
        return self.cycle is None or self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self._timed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.cycle is self._timed_cycle and self.idle and not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        excess = len(self.connections) - self.max_connections
        if excess <= 0:
            return
        idle = sorted(
            (
                c
                for c in self.connections
                if c is not self and isinstance(c, BoundedH11Protocol) and c.idle
            ),
            key=lambda c: c.order,
        )
        for connection in idle[:excess]:
            connection.transport.close()
            self.connections.discard(connection)
        if len(idle) < excess:
            # every other connection is busy with a request: this one waits its turn elsewhere
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        too_long = len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES
        status = 431 if too_long else 400
        kind = "header_too_large" if too_long else "bad_request"
        message = (
            f"the request head is over {MAX_HEADER_BYTES // 1024} KiB"
            if too_long
            else "not a valid HTTP/1.1 request"
        )
        body = json.dumps({"error": {"kind": kind, "message": message}}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # h11 cannot answer in this state: closing is the answer
        self.transport.close()


def bounded_config(
    app: Any,
    host: str,
    port: int,
    *,
    max_connections: int | None = None,
    header_timeout: float = HEADER_TIMEOUT_S,
    **options: Any,
) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` through :class:`BoundedH11Protocol`."""
    protocol = type(
        "BoundedH11",
        (BoundedH11Protocol,),
        {
            "max_connections": max_connections or connection_limit(),
            "header_timeout": header_timeout,
        },
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        **options,
    )
