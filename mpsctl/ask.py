"""``mpsctl ask``: one question to the service, its answer, and the exit status of a failure.

The stress runner (``mpsctl.stress``) and ``fix --ask`` send their questions through here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from mpsctl.client import ServiceClient
from mpsctl.errors import ClientError, ConfigError
from mpsctl.settings import ServiceSettings
from mpsctl.storage import read_regular


class AskExit(IntEnum):
    """Exit statuses of ``mpsctl ask`` (documented in README)."""

    OK = 0
    FAILURE = 1  # other HTTP errors (400, 404, 422...); a stress run where some requests failed
    USAGE = 2
    UNREACHABLE = 3  # connection refused: nothing listens at the URL
    AUTH = 4  # 401/403: token missing or rejected
    BUSY = 5  # 503/429: limiter full or out of memory (see Retry-After)
    TIMEOUT = 6  # no answer within --timeout
    BAD_ANSWER = 7  # 2xx whose body is not a JSON object
    SERVER_ERROR = 8  # 5xx other than 503, or the connection dropped before an answer
    INTERRUPTED = 130


#: ClientError.kind -> exit status
KIND_EXIT: Mapping[str, AskExit] = {
    "refused": AskExit.UNREACHABLE,
    "unauthorized": AskExit.AUTH,
    "busy": AskExit.BUSY,
    "oom": AskExit.BUSY,
    "timeout": AskExit.TIMEOUT,
    "bad_json": AskExit.BAD_ANSWER,
    "server_error": AskExit.SERVER_ERROR,
    "disconnected": AskExit.SERVER_ERROR,  # the service dropped the connection mid-answer
    "http": AskExit.FAILURE,
    "transport": AskExit.FAILURE,
}


def _with_exit(exc: ClientError) -> ClientError:
    return ClientError(str(exc), kind=exc.kind, exit_code=KIND_EXIT.get(exc.kind, AskExit.FAILURE))


# --------------------------------------------------------------------------- reading answers
_ANSWER_KEYS = ("answer", "response", "result", "text", "output")
_TOKEN_KEYS = ("generated_tokens", "new_tokens", "completion_tokens", "output_tokens", "tokens")


def answer_text(body: Mapping[str, Any]) -> str | None:
    """The answer in a service's JSON: ``answer`` (reference service) or a common synonym."""
    for key in _ANSWER_KEYS:
        if isinstance(body.get(key), str):
            return str(body[key])
    return None


def generated_tokens(body: Mapping[str, Any]) -> int | None:
    """Tokens generated for one answer, when the service says (OpenAI-style ``usage`` too)."""
    usage = body.get("usage")
    for source in (body, usage if isinstance(usage, Mapping) else {}):
        for key in _TOKEN_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    return None


# --------------------------------------------------------------------------- one question
@dataclass(frozen=True)
class AskResult:
    url: str
    question: str
    status: int
    latency_s: float
    answer: str | None
    model: str | None
    device: str | None
    tokens: int | None
    body: Mapping[str, Any]


def ask_once(
    service: ServiceSettings,
    question: str,
    *,
    token: str | None,
    max_new_tokens: int | None = None,
    timeout: float | None = None,
) -> AskResult:
    """POST one question; a failure raises ClientError whose exit_code is an AskExit."""
    client = ServiceClient(service, token=token, timeout=timeout)
    try:
        reply = client.query(question, max_new_tokens=max_new_tokens)
    except ClientError as exc:
        raise _with_exit(exc) from None
    finally:
        client.close()
    error = client.query_error(reply)
    if error is not None:
        raise _with_exit(error)
    body: Mapping[str, Any] = reply.body
    model, device = body.get("model"), body.get("device")
    return AskResult(
        url=service.query_url,
        question=question,
        status=reply.status,
        latency_s=reply.latency_s,
        answer=answer_text(body),
        model=model if isinstance(model, str) else None,
        device=device if isinstance(device, str) else None,
        tokens=generated_tokens(body),
        body=body,
    )


# --------------------------------------------------------------------------- options
def read_questions(path: str | Path) -> tuple[str, ...]:
    """One question per line (UTF-8); blank lines are skipped."""
    try:
        text = read_regular(Path(path)).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"--questions {path}: {reason}") from None
    if "\x00" in text:
        raise ConfigError(f"--questions {path}: a binary file (NUL bytes), not text")
    questions = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not questions:
        raise ConfigError(f"--questions {path}: no questions in the file")
    return questions


def decode_question(data: bytes, source: str = "stdin") -> str:
    """A question given as bytes (``-``: stdin), strict UTF-8 whatever the locale says (a C
    locale would mangle 工商银行); ConfigError for binary input rather than sending mojibake."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the question is not UTF-8 text") from None
    if "\x00" in text:
        raise ConfigError(f"{source}: a binary input (NUL bytes), not a question")
    return text.removeprefix("\ufeff").strip()
