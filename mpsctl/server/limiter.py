"""A pure-ASGI concurrency limit with a bounded, timed queue.

Why not Starlette's ``BaseHTTPMiddleware`` + ``asyncio.Semaphore`` (the obvious way): that
queue is unbounded and untimed, so under load every waiting request holds a connection and
memory until the client gives up, and ``BaseHTTPMiddleware`` costs a task and a stream per
request. Here a request either runs, waits in a bounded FIFO for at most ``queue_timeout``
seconds, or gets ``503`` with ``Retry-After`` at once.

Usage, in any ASGI app (no FastAPI or torch needed to import this)::

    from mpsctl.server.limiter import ConcurrencyLimit
    app.add_middleware(ConcurrencyLimit, max_concurrent=3, max_queue=16, queue_timeout=30)
    # or keep a handle on the counts:
    limited = ConcurrencyLimit(app, max_concurrent=3)   # serve `limited`, read limited.in_flight
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json_error(
    send: Send, status: int, kind: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with ``{"error": {"kind", "message"}}``, the service's error body, from ASGI."""
    body = json.dumps({"error": {"kind": kind, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


DEFAULT_EXEMPT_PATHS = ("/health", "/metrics")
#: request body bytes read ahead (to notice a disconnect) while a request is queued;
#: past this the limiter stops reading, so a queued upload cannot grow without bound
DEFAULT_MAX_QUEUED_BODY = 64 * 1024
#: weight of the newest request in the moving average of service times
_EWMA_WEIGHT = 0.2


class _Disconnected(Exception):
    """The client went away while its request waited in the queue."""


class ConcurrencyLimit:
    """At most ``max_concurrent`` requests in flight, ``max_queue`` waiting, each waiting at
    most ``queue_timeout`` seconds (0: never wait); otherwise ``503`` + ``Retry-After``.

    Paths in ``exempt_paths`` (exact match) and non-HTTP scopes pass straight through. The
    counts are plain attributes read from the event loop thread: ``in_flight``, ``queued``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int = 3,
        max_queue: int = 16,
        queue_timeout: float = 30.0,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        retry_after: int | None = None,
        max_queued_body: int = DEFAULT_MAX_QUEUED_BODY,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be 1 or more, got {max_concurrent}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {max_queue}")
        if not queue_timeout >= 0 or math.isinf(queue_timeout):  # NaN fails the first test
            raise ValueError(f"queue_timeout must be 0 or more seconds, got {queue_timeout}")
        if retry_after is not None and retry_after < 1:
            raise ValueError(f"retry_after must be 1 or more seconds, got {retry_after}")
        self.app = app
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = float(queue_timeout)
        self.exempt_paths = frozenset(exempt_paths)
        #: fixed Retry-After seconds; None: estimated per answer (see :meth:`retry_after_for`)
        self.retry_after = retry_after
        self.max_queued_body = max_queued_body
        #: moving average of how long an admitted request takes (seconds); None until one ends
        self.mean_service_time: float | None = None
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.admitted = 0
        self.rejected_queue_full = 0
        self.rejected_queue_timeout = 0
        self.abandoned_in_queue = 0
        #: set before a planned stop: new requests get 503 + Retry-After, those in flight
        #: and queued finish (``mpsctl stop`` waits for ``in_flight`` to reach 0)
        self.draining = False
        self.rejected_draining = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after_for(self) -> int:
        """Seconds a refused client should wait: about how long the work ahead of it takes.

        With service times measured, the backlog (in flight + queued) divided among the
        slots; before any request has finished, the queue timeout. Never less than 1 s (a
        client told to come back sooner than a slot frees up just adds load) and never more
        than the queue timeout (by then a queued request would have been answered).
        """
        if self.retry_after is not None:
            return self.retry_after
        ceiling = max(1, math.ceil(self.queue_timeout))
        if self.mean_service_time is None:
            return ceiling
        backlog = self.in_flight + self.queued
        estimate = math.ceil(self.mean_service_time * backlog / self.max_concurrent)
        return min(ceiling, max(1, estimate))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        if self.draining:
            self.rejected_draining += 1
            await self._reject(send, "draining", "the service is stopping: retry shortly")
            return
        if self.in_flight < self.max_concurrent and not self._waiters:
            # fast path: no await, no allocation beyond the counters
            self._take_slot()
        else:
            if len(self._waiters) >= self.max_queue or self.queue_timeout == 0:
                self.rejected_queue_full += 1
                reason = (
                    "its queue is full"
                    if self.max_queue and self.queue_timeout
                    else "it is configured not to queue"
                )
                await self._reject(send, "queue_full", f"the service is busy and {reason}")
                return
            buffered = _BufferedReceive(receive, self.max_queued_body)
            try:
                await self._wait_for_slot(buffered)
            except asyncio.TimeoutError:
                self.rejected_queue_timeout += 1
                await self._reject(
                    send,
                    "queue_timeout",
                    f"no query slot became free within {self.queue_timeout:g} s",
                )
                return
            except _Disconnected:
                self.abandoned_in_queue += 1
                return
            receive = buffered
        started = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self._release_slot()
            took = time.monotonic() - started
            mean = self.mean_service_time
            self.mean_service_time = took if mean is None else mean + _EWMA_WEIGHT * (took - mean)

    def _take_slot(self) -> None:
        self.in_flight += 1
        self.admitted += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)

    def _release_slot(self) -> None:
        # Hand the slot straight to the oldest waiter, so a newcomer on the fast path can
        # never jump the queue between the release and the waiter waking up.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.admitted += 1
                waiter.set_result(None)
                return
        self.in_flight -= 1

    async def _wait_for_slot(self, buffered: _BufferedReceive) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        # uvicorn does not cancel a request's task when its client disconnects; it only
        # answers receive() with http.disconnect. So watch receive() while queued (buffering
        # what it returns for the app), or a dead client would hold its queue slot and then
        # a query slot for nothing.
        watcher: asyncio.Future[Any] = asyncio.ensure_future(buffered.watch_for_disconnect())
        pending: set[asyncio.Future[Any]] = {waiter, watcher}
        try:
            done, _ = await asyncio.wait(
                pending,
                timeout=self.queue_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            # cancelled while waiting (a server that cancels on disconnect, or shutdown)
            self._abandon(waiter)
            raise
        finally:
            if not watcher.done():
                watcher.cancel()
        if waiter in done:
            return
        self._abandon(waiter)
        if watcher in done:
            # a receive() that failed means the connection is unusable: same as gone
            watcher.exception()  # retrieved, so asyncio logs no "never retrieved" noise
            raise _Disconnected
        raise asyncio.TimeoutError

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            # the slot was handed over in the same instant; pass it on, don't leak it
            self._release_slot()
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    async def _reject(self, send: Send, kind: str, message: str) -> None:
        retry_after = (b"retry-after", str(self.retry_after_for()).encode())
        await send_json_error(send, 503, kind, message, [retry_after])


class _BufferedReceive:
    """Reads ``receive`` while a request is queued and replays it to the app afterwards."""

    def __init__(self, receive: Receive, max_body: int = DEFAULT_MAX_QUEUED_BODY) -> None:
        self._receive = receive
        self._max_body = max_body
        self._buffered_body = 0
        self._buffer: deque[Message] = deque()
        self._pending: asyncio.Future[Message] | None = None

    async def watch_for_disconnect(self) -> None:
        """Return when the client disconnects; runs until cancelled otherwise.

        Past ``max_body`` buffered bytes it stops reading (the server's flow control then
        holds the rest of the upload back) and so stops noticing a disconnect: the app
        will, once the request runs.
        """
        while True:
            if self._buffered_body > self._max_body:
                await asyncio.Event().wait()  # until cancelled
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._receive())
            # shield: cancelling the watcher must not cancel a receive() in progress,
            # whose message the app will still need
            message = await asyncio.shield(self._pending)
            self._pending = None
            self._buffer.append(message)
            self._buffered_body += len(message.get("body", b""))
            if message["type"] == "http.disconnect":
                return

    async def __call__(self) -> Message:
        if self._buffer:
            return self._buffer.popleft()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return await pending
        return await self._receive()
