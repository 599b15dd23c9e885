"""Bearer-token authentication as an ASGI layer, the token rule, and log redaction.

Light on purpose (no FastAPI, no torch): ``mpsctl serve`` and ``mpsctl ask`` can import the
token rule without the service's heavy dependencies.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote_plus

from mpsctl.masking import is_secret_name
from mpsctl.server.limiter import ASGIApp, Receive, Scope, Send, send_json_error
from mpsctl.tokens import token_problem

__all__ = ["BearerAuth", "RedactQueryTokens", "bearer_ok", "redact_query", "token_problem"]


def bearer_ok(authorization: bytes, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token``, compared in constant time."""
    scheme, _, supplied = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(
        supplied.strip(), token.encode("ascii")
    )


class BearerAuth:
    """Answer 401 to a request without the bearer token, before the wrapped app (the
    concurrency limit) sees it, for every path except ``open_paths`` (exact match).

    An allow-list of open paths rather than a list of protected ones: a path nobody listed
    (a 404, ``/api/v1/query/`` with its trailing slash, ``//api/v1/query``) would otherwise
    reach the limiter unauthenticated and take a query slot or a queue place."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        open_paths: Iterable[str],
        *,
        on_denied: Callable[[str], None] | None = None,
    ) -> None:
        problem = token_problem(token)
        if problem is not None:
            raise ValueError(f"the token {problem}")
        self.app = app
        self.token = token
        self.open_paths = frozenset(open_paths)
        self.on_denied = on_denied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = [value for name, value in scope["headers"] if name.lower() == b"authorization"]
        if len(headers) == 1 and bearer_ok(headers[0], self.token):
            await self.app(scope, receive, send)
            return
        if self.on_denied is not None:
            self.on_denied(scope["path"])
        # never echo what was supplied: it may be a real token for something else
        message = "missing bearer token" if not headers else "wrong bearer token"
        await send_json_error(
            send, 401, "unauthorized", message, [(b"www-authenticate", b"Bearer")]
        )


def redact_query(target: str) -> str:
    """``target`` (a path with its query string) with credential-like parameter values
    replaced by ``REDACTED``; the path and the other parameters are kept.

    Parameters are split on ``&`` and on ``;`` (which some servers also accept), and a name
    is judged after its percent-escapes are decoded: ``?%74oken=S`` is ``?token=S`` to the
    application that reads it. Which names are credentials: ``mpsctl.masking``'s one rule.
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = re.split(r"([&;])", query)
    for index in range(0, len(parts), 2):
        name, eq, _value = parts[index].partition("=")
        if eq and is_secret_name(_decoded(name)):
            parts[index] = f"{name}=REDACTED"
    return f"{path}?{''.join(parts)}"


def _decoded(name: str) -> str:
    """``name`` with its percent-escapes and ``+`` decoded until nothing changes (a
    double-encoded name is decoded by some proxies on the way)."""
    for _ in range(4):
        plain = unquote_plus(name)
        if plain == name:
            break
        name = plain
    return name


class RedactQueryTokens(logging.Filter):
    """Rewrite uvicorn's access lines so a token sent as ``?token=...`` (refused, but
    still a secret) never reaches the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path with query, http version, status)
        if isinstance(args, tuple) and len(args) >= 5 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True
