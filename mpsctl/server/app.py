"""The reference service: a FastAPI app behind the pure-ASGI concurrency limit.

GET /health, POST /api/v1/query, POST /admin/release, POST /admin/reload, POST /admin/drain,
GET /metrics.
Every error answer is JSON ``{"error": {"kind": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mpsctl.server.auth import BearerAuth
from mpsctl.server.limiter import ASGIApp, ConcurrencyLimit
from mpsctl.server.memory import memory_report, release
from mpsctl.server.metrics import CONTENT_TYPE, ServiceMetrics
from mpsctl.server.model import (
    Answer,
    ModelHolder,
    ModelLoadError,
    ModelNotFound,
    ModelUnavailable,
    OutOfMemory,
    _figures_line,
)

log = logging.getLogger("mpsctl.server")

#: not queries: never queued behind them nor refused when the queue is full
EXEMPT_PATHS = ("/health", "/metrics", "/admin/release", "/admin/reload", "/admin/drain")
#: the only paths answered without the bearer token (exact match: ``/health/`` needs it);
#: every other path, 404s included, is checked before the limiter, so a client without the
#: token never takes a query slot or a queue place
OPEN_PATHS = ("/health", "/metrics")
#: seconds a client has to send a whole request body once its request runs: a body that
#: never finishes must not hold a query slot
BODY_TIMEOUT_S = 30.0
FAILED_RELOAD_NOTE = (
    "the previous model was released before loading (two models at once is what exhausts "
    "accelerator memory), so the service now serves no model: /health answers 503 "
    "(degraded) and queries answer 503 until a reload succeeds"
)


@dataclass(frozen=True)
class ServiceConfig:
    #: bearer token; None = no authentication (``--no-auth``)
    token: str | None
    max_concurrent: int = 3
    max_queue: int = 16
    queue_timeout: float = 30.0
    #: seconds between periodic releases; 0 disables them
    cleanup_interval: float = 0.0
    max_question_bytes: int = 4096
    max_new_tokens_limit: int = 1024
    #: seconds a client is told to wait after an out-of-memory answer
    oom_retry_after: int = 5
    #: seconds a client is told to wait while no model is loaded (reloading, or failed)
    unavailable_retry_after: int = 10
    #: seconds to receive a whole request body (408 and the slot freed after that)
    body_timeout: float = BODY_TIMEOUT_S


@dataclass
class Service:
    """What ``create_service`` built: serve ``asgi``; the rest is for inspection."""

    app: FastAPI
    #: the outermost ASGI app: authentication, then the limiter, then ``app``
    asgi: ASGIApp
    limiter: ConcurrencyLimit
    holder: ModelHolder
    config: ServiceConfig
    metrics: ServiceMetrics
    counts: dict[str, int] = field(default_factory=lambda: {"cleanups": 0, "oom": 0})


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"kind": kind, "message": message}}, status_code=status, headers=headers
    )


class _BadRequest(Exception):
    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.response = error_response(status, kind, message, headers)


def create_service(holder: ModelHolder, config: ServiceConfig) -> Service:
    service: Service

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if config.cleanup_interval > 0:
            task = asyncio.create_task(_cleanup_loop(service))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="mpsctl reference service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    limiter = ConcurrencyLimit(
        app,
        max_concurrent=config.max_concurrent,
        max_queue=config.max_queue,
        queue_timeout=config.queue_timeout,
        exempt_paths=EXEMPT_PATHS,
    )

    def snapshot() -> dict[str, Any]:
        return {
            "memory": memory_report(holder.device, limiter=limiter),
            "model_loaded": int(holder.loaded),
            "in_flight": limiter.in_flight,
            "queued": limiter.queued,
            "max_concurrent": limiter.max_concurrent,
            "max_queue": limiter.max_queue,
            "max_in_flight_seen": limiter.max_in_flight_seen,
            "max_active_seen": holder.max_active_seen,
            "rejected": {
                "queue_full": limiter.rejected_queue_full,
                "queue_timeout": limiter.rejected_queue_timeout,
                "client_gone": limiter.abandoned_in_queue,
            },
        }

    metrics = ServiceMetrics(snapshot)

    def denied(path: str) -> None:
        if path == "/api/v1/query":
            metrics.queries.labels("unauthorized").inc()

    asgi: ASGIApp = limiter
    if config.token is not None:
        asgi = BearerAuth(limiter, config.token, OPEN_PATHS, on_denied=denied)
    service = Service(
        app=app, asgi=asgi, limiter=limiter, holder=holder, config=config, metrics=metrics
    )
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        report = await run_in_threadpool(memory_report, holder.device, limiter=limiter)
        ok = holder.loaded
        body = {
            "status": "ok" if ok else "degraded",
            "model_loaded": ok,
            "model": holder.label,
            "device": holder.device,
            "memory": report,
        }
        if not ok and holder.last_error:
            body["error"] = {"kind": "model_not_loaded", "message": holder.last_error}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        payload = await run_in_threadpool(metrics.render)
        return Response(payload, media_type=CONTENT_TYPE)

    @app.post("/api/v1/query")
    async def query(request: Request) -> Response:
        began = time.perf_counter()
        try:
            payload = await _read_json(
                request, config.max_question_bytes * 4 + 4096, config.body_timeout
            )
            question, max_new_tokens = _validate_query(payload, config)
        except _BadRequest as bad:
            metrics.observe_query("bad_request", time.perf_counter() - began)
            return bad.response
        try:
            answer = await _generate_while_connected(request, holder, question, max_new_tokens)
        except ModelUnavailable as exc:
            metrics.observe_query("unavailable", time.perf_counter() - began)
            return error_response(
                503,
                "model_not_loaded",
                str(exc),
                {"Retry-After": str(config.unavailable_retry_after)},
            )
        except OutOfMemory as exc:
            metrics.observe_query("out_of_memory", time.perf_counter() - began)
            metrics.ooms.inc()
            metrics.releases.labels("oom").inc()
            service.counts["oom"] += 1
            return error_response(
                503,
                "out_of_memory",
                f"{exc} ({exc.exc_type}: {exc.original})",
                {"Retry-After": str(config.oom_retry_after)},
            )
        except RuntimeError as exc:
            if str(exc) != "can't start new thread":
                log.exception("query failed")
                metrics.observe_query("error", time.perf_counter() - began)
                return error_response(500, "generation_failed", f"{type(exc).__name__}: {exc}")
            # under serve.memory_limit the address space had no room for a worker thread's
            # stack: a memory failure like the allocator's, answered the same way
            log.error("out of memory during a query: %s: %s", type(exc).__name__, exc)
            metrics.observe_query("out_of_memory", time.perf_counter() - began)
            metrics.ooms.inc()
            service.counts["oom"] += 1
            return error_response(
                503,
                "out_of_memory",
                f"no memory left to start a worker thread (RuntimeError: {exc})",
                {"Retry-After": str(config.oom_retry_after)},
            )
        except Exception as exc:
            log.exception("query failed")
            metrics.observe_query("error", time.perf_counter() - began)
            return error_response(500, "generation_failed", f"{type(exc).__name__}: {exc}")
        if answer.cancelled:
            metrics.observe_query("client_gone", time.perf_counter() - began)
            log.info("client went away: generation stopped after %d tokens", answer.tokens)
        else:
            metrics.observe_query("ok", time.perf_counter() - began)
        return JSONResponse(
            {
                "answer": answer.text,
                "model": holder.label,
                "device": holder.device,
                "latency_ms": round(answer.latency_ms, 1),
                "tokens": answer.tokens,
            }
        )

    @app.post("/admin/release")
    async def admin_release() -> Response:
        # safe while queries run: PyTorch's caching allocators are thread-safe, and only
        # blocks no live tensor uses are given back
        result = await run_in_threadpool(release, holder.device)
        metrics.releases.labels("admin").inc()
        log.info("release requested: %s", _figures_line(result))
        return JSONResponse(result.as_dict())

    @app.post("/admin/drain")
    async def admin_drain() -> Response:
        # before a planned stop: refuse new queries (503 + Retry-After), let these finish
        limiter.draining = True
        log.info("draining: %d queries in flight, %d queued", limiter.in_flight, limiter.queued)
        return JSONResponse(
            {"draining": True, "in_flight": limiter.in_flight, "queued": limiter.queued}
        )

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> Response:
        try:
            payload = await _read_json(request, 64 * 1024, config.body_timeout)
            model = payload.get("model")
            if not isinstance(model, str) or not model.strip():
                raise _BadRequest(422, "invalid_model", "'model' must be a non-empty string")
            model = model.strip()
            if not model.isprintable():
                raise _BadRequest(422, "invalid_model", "'model' contains control characters")
        except _BadRequest as bad:
            return bad.response
        try:
            result = await run_in_threadpool(holder.load, model)
        except ModelNotFound as exc:
            still = holder.label if holder.loaded else "no model"
            return error_response(
                422, "model_not_found", f"{exc}; nothing was released, the service serves {still}"
            )
        except ModelUnavailable as exc:
            return error_response(409, "busy", str(exc))
        except ModelLoadError as exc:
            return error_response(500, "load_failed", f"{exc}; {FAILED_RELOAD_NOTE}")
        metrics.releases.labels("reload").inc()
        return JSONResponse({"status": "ok", "loaded": result.as_dict()})

    return service


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # keeps the Allow header of a 405, which RFC 9110 (section 15.5.6) requires
        return error_response(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets JSON and no internals
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}")


async def _read_json(request: Request, max_bytes: int, timeout: float) -> dict[str, Any]:
    """The body as a JSON object, read with a size cap and a time limit.

    A body labelled ``application/json`` (or ``*+json``) that does not parse is 400
    ``invalid_json``. Any other label (none, or curl's default for ``-d``,
    ``application/x-www-form-urlencoded``) is accepted when the body is valid JSON: a plain
    ``curl -d '{...}'`` works. Only a body that is not JSON and not labelled JSON is 415.
    A body not complete within ``timeout`` seconds (all of it, so a trickle cannot stretch
    it) is 408: the request holds a query slot while it is read.
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    labelled_json = media_type == "application/json" or media_type.endswith("+json")
    # read in chunks with a cap: request.body() would buffer any size a client sends
    chunks: list[bytes] = []

    async def read_all() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _BadRequest(413, "body_too_large", f"request body over {max_bytes} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read_all(), timeout)
    except ClientDisconnect:
        raise _BadRequest(400, "client_disconnected", "the client went away") from None
    except asyncio.TimeoutError:
        raise _BadRequest(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout:g} s",
            # the rest of the body may still come: this connection cannot carry another request
            {"Connection": "close"},
        ) from None
    try:
        payload = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        if not labelled_json and not isinstance(exc, RecursionError):
            raise _BadRequest(
                415,
                "unsupported_media_type",
                f"the body is not JSON (Content-Type: {media_type or 'none'}); "
                "send a JSON object, as Content-Type: application/json",
            ) from None
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _BadRequest(400, "invalid_json", f"the body is not valid JSON: {reason}") from None
    if not isinstance(payload, dict):
        raise _BadRequest(422, "invalid_request", "the body must be a JSON object")
    return payload


def _validate_query(payload: dict[str, Any], config: ServiceConfig) -> tuple[str, int | None]:
    question = payload.get("question")
    if not isinstance(question, str):
        raise _BadRequest(422, "invalid_question", "'question' must be a string")
    if not question.strip():
        raise _BadRequest(422, "blank_question", "'question' is blank")
    try:
        size = len(question.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON allows "\ud800" escapes that are no character: the tokenizer would fail
        raise _BadRequest(
            422, "invalid_question", "'question' contains an unpaired UTF-16 surrogate"
        ) from None
    if size > config.max_question_bytes:
        raise _BadRequest(
            413,
            "question_too_large",
            f"'question' is {size} bytes (UTF-8); the limit is {config.max_question_bytes}",
        )
    if "max_new_tokens" not in payload:
        return question, None
    max_new_tokens = payload["max_new_tokens"]
    # null is refused, not read as "the default": leave the key out for the default
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or not 1 <= max_new_tokens <= config.max_new_tokens_limit
    ):
        raise _BadRequest(
            422,
            "invalid_max_new_tokens",
            f"'max_new_tokens' must be a whole number from 1 to {config.max_new_tokens_limit} "
            "(leave it out for the service's default)",
        )
    return question, max_new_tokens


async def _generate_while_connected(
    request: Request, holder: ModelHolder, question: str, max_new_tokens: int | None
) -> Answer:
    """Generate in a worker thread; stop at the next token if the client disconnects.

    uvicorn does not cancel a handler whose client left; it only answers ``receive()``
    with ``http.disconnect``. Without this watch, a client that gave up (a timeout) keeps
    its query slot and the accelerator busy for up to ``max_new_tokens`` tokens.
    """
    cancel = threading.Event()
    generation = asyncio.ensure_future(
        run_in_threadpool(holder.generate, question, max_new_tokens, cancel=cancel)
    )
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({generation, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not generation.done():
            cancel.set()  # the client left (or the server is stopping)
            # retrieved here, so an abandoned result is never reported as lost
            generation.add_done_callback(lambda f: f.cancelled() or f.exception())
        gone.cancel()
    return await generation


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read already)."""
    if (await request.receive())["type"] != "http.disconnect":
        # a server that answers anything else here cannot tell us; never return then
        await asyncio.Event().wait()


async def _cleanup_loop(service: Service) -> None:
    interval = service.config.cleanup_interval
    while True:
        await asyncio.sleep(interval)
        busy = service.limiter.in_flight + service.holder.active
        if busy:
            log.info("periodic cleanup skipped: %d queries in flight", busy)
            continue
        # a query may start while this runs; that is harmless (see admin_release)
        try:
            result = await run_in_threadpool(release, service.holder.device)
        except Exception:
            # one failed cleanup must not end the loop (nor fail the shutdown that awaits it)
            log.exception("periodic cleanup failed; trying again in %g s", interval)
            continue
        service.counts["cleanups"] += 1
        service.metrics.releases.labels("periodic").inc()
        log.info("periodic cleanup: %s", _figures_line(result))
