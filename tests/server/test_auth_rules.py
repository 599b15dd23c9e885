"""The bearer-token layer and the token rule, driven in-process as plain ASGI calls.

The HTTP tests (tests/server/test_hardening*.py) prove the same through uvicorn; these pin
each rule exactly (status, body, headers, which requests reach the wrapped app) without a
server, so a mutation run sees them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from mpsctl.errors import ConfigError
from mpsctl.server.auth import BearerAuth, RedactQueryTokens, bearer_ok, redact_query
from mpsctl.server.limiter import Message, Receive, Scope, Send
from mpsctl.tokens import read_token_text, token_problem

TOKEN = "s3cret-Token_42"


class Downstream:
    """A stand-in for the wrapped app (the limiter): records each path it is given and the
    body it reads through the receive channel it was handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope["path"])
        self.bodies.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(
    layer: BearerAuth, path: str, headers: list[tuple[bytes, bytes]], kind: str = "http"
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"the question", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope = {"type": kind, "path": path, "headers": headers}
    asyncio.run(layer(scope, receive, send))
    return sent


def refused(message: str) -> list[dict[str, Any]]:
    body = json.dumps({"error": {"kind": "unauthorized", "message": message}}).encode()
    return [
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]


PASSED = [
    {"type": "http.response.start", "status": 200, "headers": []},
    {"type": "http.response.body", "body": b"ok"},
]


def make(denied: list[str] | None = None) -> tuple[BearerAuth, Downstream]:
    app = Downstream()
    on_denied = None if denied is None else denied.append
    return BearerAuth(app, TOKEN, ["/health", "/metrics"], on_denied=on_denied), app


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"Bearer " + TOKEN.encode(), True),
        (b"bearer " + TOKEN.encode(), True),
        (b"BEARER " + TOKEN.encode() + b"  ", True),
        (b"Bearer  " + TOKEN.encode(), True),
        (b"Basic " + TOKEN.encode(), False),
        (b"Bearer" + TOKEN.encode(), False),
        (b"Bearer " + TOKEN.encode() + b"x", False),
        (b"Bearer " + TOKEN.encode()[:-1], False),
        (b"Bearer", False),
        (b"", False),
        (TOKEN.encode(), False),
    ],
)
def test_bearer_ok_wants_the_scheme_and_exactly_the_token(value: bytes, ok: bool) -> None:
    assert bearer_ok(value, TOKEN) is ok


def test_the_right_token_reaches_the_app_and_nothing_is_denied() -> None:
    denied: list[str] = []
    layer, app = make(denied)
    headers = [(b"Authorization", b"Bearer " + TOKEN.encode())]
    assert call(layer, "/api/v1/query", headers) == PASSED
    assert app.seen == ["/api/v1/query"]
    assert app.bodies == [b"the question"]
    assert denied == []


def test_no_token_is_refused_with_401_and_never_reaches_the_app() -> None:
    denied: list[str] = []
    layer, app = make(denied)
    assert call(layer, "/api/v1/query", [(b"host", b"x")]) == refused("missing bearer token")
    assert app.seen == []
    assert denied == ["/api/v1/query"]


def test_a_wrong_token_is_refused_without_echoing_it() -> None:
    denied: list[str] = []
    layer, app = make(denied)
    sent = call(layer, "/admin/stop", [(b"authorization", b"Bearer other-secret")])
    assert sent == refused("wrong bearer token")
    assert b"other-secret" not in sent[1]["body"]
    assert app.seen == []
    assert denied == ["/admin/stop"]


def test_two_authorization_headers_are_refused_even_when_one_is_right() -> None:
    layer, app = make()
    good = (b"authorization", b"Bearer " + TOKEN.encode())
    assert call(layer, "/q", [good, good]) == refused("wrong bearer token")
    assert app.seen == []


def test_open_paths_match_exactly_and_need_no_token() -> None:
    layer, app = make()
    assert call(layer, "/health", []) == PASSED
    assert call(layer, "/metrics", []) == PASSED
    assert app.bodies == [b"the question", b"the question"]
    assert call(layer, "/health/", []) == refused("missing bearer token")
    assert call(layer, "//health", []) == refused("missing bearer token")
    assert app.seen == ["/health", "/metrics"]


def test_non_http_scopes_pass_through_unchecked() -> None:
    layer, app = make()
    assert call(layer, "/ws", [], kind="websocket") == PASSED
    assert app.seen == ["/ws"]


def test_a_refusal_without_a_callback_still_answers_401() -> None:
    layer = BearerAuth(Downstream(), TOKEN, [])
    assert call(layer, "/health", []) == refused("missing bearer token")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "the token is empty"),
        ("two\nlines", "the token must be one line"),
        (
            "Geheimnis-ß",
            "the token contains non-ASCII characters; use visible ASCII only (clients encode "
            "other characters differently in the Authorization header)",
        ),
        ("with space", "the token contains spaces or control characters; use visible ASCII only"),
    ],
)
def test_a_bad_token_is_refused_when_the_layer_is_built(token: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^the token ") as caught:
        BearerAuth(Downstream(), token, [])
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("!", None),
        ("~", None),
        ("a" * 4096, None),
        ("", "is empty"),
        ("a\rb", "must be one line"),
        ("a\nb", "must be one line"),
        ("tab\there", "contains spaces or control characters; use visible ASCII only"),
        ("del\x7f", "contains spaces or control characters; use visible ASCII only"),
        (" lead", "contains spaces or control characters; use visible ASCII only"),
        ("\x20", "contains spaces or control characters; use visible ASCII only"),
        ("X Y", "contains spaces or control characters; use visible ASCII only"),
        (
            "é",
            "contains non-ASCII characters; use visible ASCII only (clients encode other "
            "characters differently in the Authorization header)",
        ),
        ("é\n", "must be one line"),
    ],
)
def test_token_problem_each_reason(token: str, problem: str | None) -> None:
    assert token_problem(token) == problem


def test_read_token_text_strips_and_returns_the_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n\n", encoding="utf-8")
    os.chmod(path, 0o640)
    text, mode = read_token_text(path)
    assert text == TOKEN
    assert stat.S_ISREG(mode)
    assert stat.S_IMODE(mode) == 0o640


def test_read_token_text_reads_at_most_64_kib(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"a" * (64 * 1024) + b"b" * 10)
    text, _mode = read_token_text(path)
    assert text == "a" * (64 * 1024)


def test_read_token_text_refusals_name_the_file_never_its_text(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as caught:
        read_token_text(missing)
    assert str(caught.value) == f"cannot read token file {missing}: No such file or directory"
    binary = tmp_path / "binary"
    binary.write_bytes(b"secret\xff\xfe")
    with pytest.raises(ConfigError) as caught:
        read_token_text(binary)
    assert str(caught.value) == f"token file {binary} is not UTF-8 text"


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/api/v1/query", "/api/v1/query"),
        ("/q?lang=zh", "/q?lang=zh"),
        ("/q?token=S&lang=zh", "/q?token=REDACTED&lang=zh"),
        ("/q?lang=zh;access_token=S", "/q?lang=zh;access_token=REDACTED"),
        ("/q?token", "/q?token"),
        ("/q?%74oken=S", "/q?%74oken=REDACTED"),
        ("/q?%2574oken=S", "/q?%2574oken=REDACTED"),
        ("/q?a=1&b=2&api_key=S&c=3", "/q?a=1&b=2&api_key=REDACTED&c=3"),
        ("/q?", "/q?"),
        # a base64 token ends in "=": the whole value goes, padding included
        ("/q?access_token=dG9rZW4=&a=1", "/q?access_token=REDACTED&a=1"),
        # a second "?" is part of the query: the value after the first one's name goes too
        ("/q?token=S?x=1", "/q?token=REDACTED"),
    ],
)
def test_redact_query(target: str, shown: str) -> None:
    assert redact_query(target) == shown


@pytest.mark.parametrize(("layers", "redacted"), [(1, True), (5, True), (6, False)])
def test_a_names_escapes_are_decoded_at_most_five_times(layers: int, redacted: bool) -> None:
    # four rounds in redact_query, one more in the masking rule's own unquote
    name = "%" + "25" * (layers - 1) + "74oken"
    shown = f"/q?{name}=REDACTED" if redacted else f"/q?{name}=S"
    assert redact_query(f"/q?{name}=S") == shown


def record(args: tuple[Any, ...]) -> logging.LogRecord:
    return logging.LogRecord("x", logging.INFO, __file__, 1, "%s", args, None)


def test_the_log_filter_rewrites_only_an_access_records_path() -> None:
    flt = RedactQueryTokens()
    access = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, "%s - %s %s %s %d",
        ("127.0.0.1:5", "POST", "/q?token=S", "1.1", 401), None,
    )  # fmt: skip
    assert flt.filter(access) is True
    assert access.args == ("127.0.0.1:5", "POST", "/q?token=REDACTED", "1.1", 401)
    short = record(("a", "b", "/q?token=S", "d"))
    assert flt.filter(short) is True
    assert short.args == ("a", "b", "/q?token=S", "d")
    not_text = record(("a", "b", 3, "d", 5))
    assert flt.filter(not_text) is True
    assert not_text.args == ("a", "b", 3, "d", 5)
