"""ConcurrencyLimit against a pure ASGI app: no FastAPI, no torch, no sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from mpsctl.server.limiter import ConcurrencyLimit

Message = MutableMapping[str, Any]


class GatedApp:
    """Answers 200 once its gate opens; records the bodies it read."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def http_scope(path: str = "/api/v1/query") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "POST", "headers": []}


async def call(
    limiter: ConcurrencyLimit,
    path: str = "/api/v1/query",
    receive: Callable[[], Awaitable[Message]] | None = None,
) -> list[Message]:
    sent: list[Message] = []

    async def default_receive() -> Message:
        return {"type": "http.request", "body": b"payload", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await limiter(http_scope(path), receive or default_receive, send)
    return sent


def status_of(sent: list[Message]) -> int:
    return int(sent[0]["status"])


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_queue_full_is_503_with_retry_after() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=1, queue_timeout=5)
        first = asyncio.create_task(call(limiter))
        second = asyncio.create_task(call(limiter))
        await settle()
        assert (limiter.in_flight, limiter.queued) == (1, 1)

        rejected = await call(limiter)

        assert status_of(rejected) == 503
        headers = dict(rejected[0]["headers"])
        assert headers[b"retry-after"] == b"5"
        assert json.loads(rejected[1]["body"])["error"]["kind"] == "queue_full"
        assert limiter.rejected_queue_full == 1
        app.gate.set()
        assert status_of(await first) == 200
        assert status_of(await second) == 200
        assert (limiter.in_flight, limiter.queued, limiter.max_in_flight_seen) == (0, 0, 1)

    asyncio.run(scenario())


def test_queue_timeout_is_503_and_frees_the_queue_slot() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=4, queue_timeout=0.05)
        running = asyncio.create_task(call(limiter))
        await settle()

        timed_out = await call(limiter)

        assert status_of(timed_out) == 503
        assert json.loads(timed_out[1]["body"])["error"]["kind"] == "queue_timeout"
        assert (limiter.in_flight, limiter.queued) == (1, 0)
        app.gate.set()
        await running
        assert limiter.in_flight == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_exempt_paths_pass_when_full(path: str) -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=0)
        running = asyncio.create_task(call(limiter))
        await settle()

        exempt = asyncio.create_task(call(limiter, path))
        await settle()
        app.gate.set()

        assert status_of(await exempt) == 200
        assert status_of(await running) == 200
        assert limiter.max_in_flight_seen == 1  # the exempt call was not counted

    asyncio.run(scenario())


def test_exempt_paths_are_configurable() -> None:
    async def scenario() -> None:
        app = GatedApp()
        app.gate.set()
        limiter = ConcurrencyLimit(app, max_concurrent=1, exempt_paths=("/live",))

        await call(limiter, "/health")
        assert limiter.admitted == 1  # /health is counted once it is no longer exempt
        await call(limiter, "/live")
        assert limiter.admitted == 1

    asyncio.run(scenario())


def test_cancelled_while_queued_frees_the_slot() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=1, queue_timeout=30)
        running = asyncio.create_task(call(limiter))
        queued = asyncio.create_task(call(limiter))
        await settle()
        assert limiter.queued == 1

        queued.cancel()
        await settle()

        assert limiter.queued == 0
        app.gate.set()
        assert status_of(await running) == 200
        assert status_of(await call(limiter)) == 200  # the queue slot is usable again
        assert (limiter.in_flight, app.calls) == (0, 2)

    asyncio.run(scenario())


def test_client_disconnect_while_queued_frees_the_slot_without_running_the_app() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=1, queue_timeout=30)
        running = asyncio.create_task(call(limiter))
        await settle()
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": b"q", "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        queued = asyncio.create_task(call(limiter, receive=receive))
        await settle()
        assert limiter.queued == 1
        gone.set()

        assert await queued == []  # nothing sent to a client that left
        assert (limiter.queued, limiter.abandoned_in_queue, app.calls) == (0, 1, 1)
        app.gate.set()
        await running
        assert limiter.in_flight == 0

    asyncio.run(scenario())


def test_queued_request_gets_its_body_and_fifo_order() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=2, queue_timeout=30)
        tasks = []
        for body in (b"a", b"b", b"c"):

            async def receive(body: bytes = body) -> Message:
                return {"type": "http.request", "body": body, "more_body": False}

            tasks.append(asyncio.create_task(call(limiter, receive=receive)))
            await settle()
        app.gate.set()
        await asyncio.gather(*tasks)

        assert app.bodies == [b"a", b"b", b"c"]
        assert (limiter.in_flight, limiter.queued, limiter.max_in_flight_seen) == (0, 0, 1)

    asyncio.run(scenario())


def test_app_error_releases_the_slot() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        limiter = ConcurrencyLimit(failing, max_concurrent=1)
        with pytest.raises(RuntimeError):
            await call(limiter)
        assert limiter.in_flight == 0

    asyncio.run(scenario())


def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def scenario() -> None:
        limiter = ConcurrencyLimit(app, max_concurrent=1)
        await limiter({"type": "lifespan"}, None, None)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert seen == ["lifespan"]


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        ConcurrencyLimit(GatedApp(), max_concurrent=0)
    with pytest.raises(ValueError, match="max_queue"):
        ConcurrencyLimit(GatedApp(), max_queue=-1)


def test_importing_the_library_pieces_pulls_no_heavy_modules() -> None:
    code = (
        "import sys, mpsctl.server, mpsctl.server.limiter, mpsctl.server.memory, "
        "mpsctl.cli.serve\n"
        "heavy = {'torch', 'transformers', 'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_retry_after_follows_measured_service_time_not_the_queue_timeout() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=1, queue_timeout=30)
        app.gate.set()
        await call(limiter)  # one fast request: service time measured (milliseconds)
        app.gate.clear()
        first = asyncio.create_task(call(limiter))
        second = asyncio.create_task(call(limiter))
        await settle()

        rejected = await call(limiter)

        # two requests ahead, each taking milliseconds: come back in 1 s, not in 30
        assert dict(rejected[0]["headers"])[b"retry-after"] == b"1"
        limiter.mean_service_time = 600.0  # a slow model: capped at the queue timeout
        assert dict((await call(limiter))[0]["headers"])[b"retry-after"] == b"30"
        app.gate.set()
        await asyncio.gather(first, second)

    asyncio.run(scenario())


@pytest.mark.parametrize(("max_queue", "queue_timeout"), [(0, 30.0), (4, 0.0)])
def test_no_queueing_refuses_at_once_when_busy(max_queue: int, queue_timeout: float) -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(
            app, max_concurrent=1, max_queue=max_queue, queue_timeout=queue_timeout
        )
        running = asyncio.create_task(call(limiter))
        await settle()

        rejected = await asyncio.wait_for(call(limiter), 1)

        assert status_of(rejected) == 503
        assert json.loads(rejected[1]["body"])["error"]["kind"] == "queue_full"
        assert int(dict(rejected[0]["headers"])[b"retry-after"]) >= 1
        assert limiter.queued == 0
        app.gate.set()
        assert status_of(await running) == 200
        assert status_of(await call(limiter)) == 200

    asyncio.run(scenario())


def test_a_queued_upload_is_not_buffered_without_bound() -> None:
    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(
            app, max_concurrent=1, max_queue=1, queue_timeout=30, max_queued_body=10_000
        )
        running = asyncio.create_task(call(limiter))
        await settle()
        reads = 0

        async def endless_upload() -> Message:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0)
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

        queued = asyncio.create_task(call(limiter, receive=endless_upload))
        for _ in range(200):
            await asyncio.sleep(0)

        assert limiter.queued == 1
        assert reads <= 12  # stopped reading just past 10_000 bytes
        queued.cancel()
        app.gate.set()
        await running
        assert (limiter.in_flight, limiter.queued) == (0, 0)

    asyncio.run(scenario())


def test_app_cancelled_or_failing_hands_its_slot_to_the_next_in_queue() -> None:
    async def scenario() -> None:
        calls = 0
        gate = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                await gate.wait()  # cancelled below
            if calls == 2:
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        limiter = ConcurrencyLimit(app, max_concurrent=1, max_queue=2, queue_timeout=30)
        first = asyncio.create_task(call(limiter))
        await settle()
        second = asyncio.create_task(call(limiter))
        third = asyncio.create_task(call(limiter))
        await settle()
        assert (limiter.in_flight, limiter.queued) == (1, 2)

        first.cancel()
        with pytest.raises(RuntimeError, match="boom"):
            await second
        assert status_of(await third) == 200
        assert first.cancelled()
        assert (limiter.in_flight, limiter.queued, limiter.max_in_flight_seen) == (0, 0, 1)

    asyncio.run(scenario())


@pytest.mark.parametrize("queue_timeout", [float("nan"), float("inf"), -1.0])
def test_nonsense_queue_timeouts_are_refused(queue_timeout: float) -> None:
    with pytest.raises(ValueError, match="queue_timeout"):
        ConcurrencyLimit(GatedApp(), queue_timeout=queue_timeout)


@pytest.mark.parametrize(
    ("module", "banned"),
    [
        ("mpsctl.server.limiter", ("torch", "fastapi", "starlette", "transformers")),
        ("mpsctl.server.memory", ("torch", "fastapi", "starlette", "transformers")),
        ("mpsctl.cli.serve", ("torch", "transformers", "fastapi", "uvicorn", "starlette")),
    ],
)
def test_each_light_module_alone_imports_no_heavy_module(
    module: str, banned: tuple[str, ...]
) -> None:
    code = f"import sys, {module}\nprint(sorted(set({banned!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"


def test_draining_refuses_new_work_with_503_and_lets_the_running_finish() -> None:
    """Before a planned stop: new queries get 503 + Retry-After (kind ``draining``), the
    one in flight answers, health stays exempt; the memory report says so."""
    from mpsctl.server.memory import _limiter_section

    async def scenario() -> None:
        app = GatedApp()
        limiter = ConcurrencyLimit(app, max_concurrent=2, max_queue=4, queue_timeout=7)
        running = asyncio.create_task(call(limiter))
        await settle()
        limiter.draining = True

        refused = await call(limiter)

        assert status_of(refused) == 503
        assert dict(refused[0]["headers"])[b"retry-after"] == b"7"
        assert json.loads(refused[1]["body"])["error"] == {
            "kind": "draining",
            "message": "the service is stopping: retry shortly",
        }
        assert (limiter.in_flight, limiter.rejected_draining, app.calls) == (1, 1, 1)
        section = _limiter_section(limiter)
        assert section is not None
        assert (section["in_flight"], section["draining"]) == (1, 1)
        app.gate.set()
        assert status_of(await running) == 200
        assert limiter.in_flight == 0
        assert status_of(await call(limiter, "/health")) == 200  # exempt: health answers

    asyncio.run(scenario())
