"""ConcurrencyLimit to the letter: its ASGI messages against the ASGI HTTP spec, its counters,
its service-time average and Retry-After estimate, and replaying a queued body."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mpsctl.server.limiter import ConcurrencyLimit
from tests.server.test_limiter import GatedApp, Message, call


async def settle() -> None:
    """Let every ready task run (the watcher's read-ahead takes a few loop turns)."""
    for _ in range(30):
        await asyncio.sleep(0)


def refusal(sent: list[Message]) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any]]:
    """Check ``sent`` is one complete ASGI HTTP response (asgi.readthedocs.io, HTTP spec:
    ``http.response.start`` with an int status and lower-case byte-string header pairs, then
    one final ``http.response.body``); return its status, headers and JSON body."""
    assert len(sent) == 2
    start, body = sent
    assert set(start) <= {"type", "status", "headers", "trailers"}
    assert start["type"] == "http.response.start"
    assert type(start["status"]) is int
    headers = [tuple(pair) for pair in start["headers"]]
    for name, value in headers:
        assert type(name) is bytes
        assert type(value) is bytes
        assert name == name.lower()
    assert set(body) <= {"type", "body", "more_body"}
    assert body["type"] == "http.response.body"
    assert type(body["body"]) is bytes
    assert body.get("more_body", False) is False
    return start["status"], headers, json.loads(body["body"])  # type: ignore[return-value]


def expected_headers(body: dict[str, Any], retry_after: int) -> list[tuple[bytes, bytes]]:
    length = len(json.dumps(body).encode())
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(length).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]


@pytest.mark.parametrize(
    ("max_queue", "queue_timeout", "reason"),
    [
        (1, 5, "its queue is full"),
        (0, 5, "it is configured not to queue"),
        (4, 0, "it is configured not to queue"),
    ],
)
def test_queue_full_answer_is_exact(max_queue: int, queue_timeout: float, reason: str) -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(
            app, max_concurrent=1, max_queue=max_queue, queue_timeout=queue_timeout
        )
        queues = bool(max_queue and queue_timeout)
        tasks = [asyncio.create_task(call(limiter)) for _ in range(1 + queues)]
        await settle()

        first = await call(limiter)
        second = await call(limiter)

        expected = {"error": {"kind": "queue_full", "message": f"the service is busy and {reason}"}}
        # no service time measured yet: the queue timeout, at least 1 s
        retry = max(1, int(queue_timeout))
        assert refusal(first) == (503, expected_headers(expected, retry), expected)
        assert refusal(second) == refusal(first)
        assert limiter.rejected_queue_full == 2
        assert limiter.rejected_queue_timeout == 0
        app.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_queue_timeout_answer_and_counter_are_exact() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=4, queue_timeout=0.05)
        running = asyncio.create_task(call(limiter))
        await settle()

        first = await call(limiter)
        second = await call(limiter)

        expected = {
            "error": {"kind": "queue_timeout", "message": "no query slot became free within 0.05 s"}
        }
        assert refusal(first) == (503, expected_headers(expected, 1), expected)
        assert refusal(second) == refusal(first)
        assert (limiter.rejected_queue_timeout, limiter.rejected_queue_full) == (2, 0)
        # a timed-out waiter was never admitted, and the running request keeps its slot
        assert (limiter.admitted, limiter.in_flight, limiter.queued) == (1, 1, 0)
        app.gate.set()
        await running

    asyncio.run(scenario())


def test_counters_start_at_zero_and_defaults_are_documented() -> None:
    limiter = ConcurrencyLimit(GatedApp())

    assert (limiter.max_concurrent, limiter.max_queue, limiter.queue_timeout) == (3, 16, 30.0)
    assert limiter.retry_after is None
    assert limiter.mean_service_time is None
    counters = (
        limiter.in_flight, limiter.queued, limiter.max_in_flight_seen, limiter.admitted,
        limiter.rejected_queue_full, limiter.rejected_queue_timeout, limiter.abandoned_in_queue,
    )  # fmt: skip
    assert counters == (0, 0, 0, 0, 0, 0, 0)


def test_admitted_counts_fast_path_and_queue_handoffs() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=2, max_queue=2, queue_timeout=30)
        tasks = [asyncio.create_task(call(limiter)) for _ in range(4)]
        await settle()
        assert (limiter.in_flight, limiter.queued, limiter.admitted) == (2, 2, 2)
        assert limiter.max_in_flight_seen == 2

        app.gate.set()
        await asyncio.gather(*tasks)

        assert (limiter.in_flight, limiter.queued, limiter.admitted) == (0, 0, 4)
        assert limiter.max_in_flight_seen == 2
        await call(limiter)
        assert limiter.admitted == 5

    asyncio.run(scenario())


def test_the_app_gets_the_callers_scope() -> None:
    scopes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)

    async def scenario() -> None:
        limiter = ConcurrencyLimit(app, max_concurrent=1)
        scope = {"type": "http", "path": "/api/v1/query", "method": "POST", "headers": []}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        await limiter(scope, receive, send)
        assert scopes == [scope]
        assert scopes[0] is scope

    asyncio.run(scenario())


def test_service_time_is_a_moving_average_weighting_the_newest_by_a_fifth() -> None:
    delays = [0.3, 0.0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(delays.pop(0))

    async def scenario() -> None:
        limiter = ConcurrencyLimit(app, max_concurrent=1)
        await call(limiter)
        first = limiter.mean_service_time
        assert first is not None
        assert 0.3 <= first < 0.45

        await call(limiter)

        # 0.8 * first + 0.2 * (a request taking ~0 s)
        assert limiter.mean_service_time == pytest.approx(0.8 * first, abs=0.02)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("mean", "max_concurrent", "queue_timeout", "expected"),
    [
        (2.5, 2, 30, 4),  # backlog 3 (2 running + 1 queued): ceil(2.5 * 3 / 2)
        (0.01, 2, 30, 1),  # never less than 1 s
        (100.0, 2, 30, 30),  # never more than the queue timeout
        (None, 2, 30, 30),  # nothing measured yet: the queue timeout
        (None, 2, 0.3, 1),  # a sub-second queue timeout still says 1 s
    ],
)
def test_retry_after_estimate(
    mean: float | None, max_concurrent: int, queue_timeout: float, expected: int
) -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(
            app, max_concurrent=max_concurrent, max_queue=1, queue_timeout=queue_timeout
        )
        tasks = [asyncio.create_task(call(limiter)) for _ in range(max_concurrent + 1)]
        await settle()
        assert (limiter.in_flight, limiter.queued) == (max_concurrent, 1)
        limiter.mean_service_time = mean

        assert limiter.retry_after_for() == expected
        rejected = await call(limiter)
        assert (b"retry-after", str(expected).encode()) in refusal(rejected)[1]
        app.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_a_fixed_retry_after_is_sent_as_is() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=0, retry_after=7)
        running = asyncio.create_task(call(limiter))
        await settle()
        limiter.mean_service_time = 0.01

        assert (b"retry-after", b"7") in refusal(await call(limiter))[1]
        app.gate.set()
        await running

    asyncio.run(scenario())


def test_retry_after_of_one_second_is_the_smallest_accepted() -> None:
    assert ConcurrencyLimit(GatedApp(), retry_after=1).retry_after == 1
    with pytest.raises(ValueError, match=r"^retry_after must be 1 or more seconds, got 0$"):
        ConcurrencyLimit(GatedApp(), retry_after=0)


def test_body_read_while_queued_is_replayed_in_order_and_only_once() -> None:
    """The disconnect watcher reads the first chunk and is cancelled while waiting for the
    second: the app gets chunk 1 from the buffer, chunk 2 from that pending read, then the
    disconnect -- never a chunk twice."""
    read: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(3):
            read.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        gate = asyncio.Event()
        first_app = GatedApp()

        async def router(scope: Any, receive: Any, send: Any) -> None:
            target = first_app if scope["method"] == "GET" else app
            await target(scope, receive, send)

        limiter = ConcurrencyLimit(router, max_concurrent=1, max_queue=1, queue_timeout=30)
        sent: list[Message] = []

        async def send_first(message: Message) -> None:
            sent.append(message)

        async def receive_nothing() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "path": "/q", "method": "GET", "headers": []}
        running = asyncio.create_task(limiter(scope, receive_nothing, send_first))
        await settle()

        chunk2_ready = asyncio.Event()
        script: list[tuple[asyncio.Event | None, Message]] = [
            (None, {"type": "http.request", "body": b"part-1 ", "more_body": True}),
            (chunk2_ready, {"type": "http.request", "body": b"part-2", "more_body": False}),
            (gate, {"type": "http.disconnect"}),
        ]
        receives = 0

        async def receive() -> Message:
            nonlocal receives
            receives += 1
            wait_for, message = script.pop(0)
            if wait_for is not None:
                await wait_for.wait()
            return message

        queued = asyncio.create_task(call(limiter, "/q", receive=receive))
        await settle()
        assert (limiter.queued, receives) == (1, 2)  # chunk 1 buffered, chunk 2 awaited

        first_app.gate.set()
        await running
        await settle()
        chunk2_ready.set()
        await settle()
        gate.set()
        answer = await asyncio.wait_for(queued, 5)

        assert [m.get("body") for m in read] == [b"part-1 ", b"part-2", None]
        assert read[2] == {"type": "http.disconnect"}
        assert receives == 3
        assert answer[0]["status"] == 200

    asyncio.run(scenario())


@pytest.mark.parametrize(("size", "noticed"), [(10, True), (11, False)])
def test_a_queued_body_up_to_the_cap_is_still_watched(size: int, noticed: bool) -> None:
    """Exactly ``max_queued_body`` bytes read ahead: the disconnect is still noticed; one
    byte more and the limiter stops reading (the app notices once it runs)."""

    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(
            app, max_concurrent=1, max_queue=1, queue_timeout=30, max_queued_body=10
        )
        running = asyncio.create_task(call(limiter))
        await settle()
        script = [
            {"type": "http.request", "body": b"x" * size, "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> Message:
            if script:
                return script.pop(0)
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        queued = asyncio.create_task(call(limiter, receive=receive))
        await settle()

        assert limiter.abandoned_in_queue == int(noticed)
        assert limiter.queued == int(not noticed)
        app.gate.set()
        await running
        await asyncio.wait_for(queued, 5)
        assert limiter.in_flight == 0

    asyncio.run(scenario())


def test_two_clients_leaving_the_queue_count_twice() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=2, queue_timeout=30)
        running = asyncio.create_task(call(limiter))
        await settle()

        async def gone() -> Message:
            return {"type": "http.disconnect"}

        assert await call(limiter, receive=gone) == []
        assert await call(limiter, receive=gone) == []
        assert (limiter.abandoned_in_queue, limiter.queued, limiter.admitted) == (2, 0, 1)
        app.gate.set()
        await running

    asyncio.run(scenario())


def test_a_slot_handed_over_as_its_waiter_gives_up_is_passed_on() -> None:
    """The race where the slot is handed to a waiter in the same instant it times out or
    is cancelled: the slot goes back (in_flight drops), it is not leaked."""

    async def scenario() -> None:
        limiter = ConcurrencyLimit(GatedApp(), max_concurrent=1)
        limiter._take_slot()
        handed = asyncio.get_running_loop().create_future()
        handed.set_result(None)

        limiter._abandon(handed)
        assert limiter.in_flight == 0

        limiter._take_slot()
        waiting = asyncio.get_running_loop().create_future()
        limiter._waiters.append(waiting)
        limiter._abandon(waiting)
        assert waiting.cancelled()
        assert (limiter.in_flight, limiter.queued) == (1, 0)
        limiter._abandon(waiting)  # a waiter already gone from the queue: no error
        assert (limiter.in_flight, limiter.queued) == (1, 0)

    asyncio.run(scenario())
