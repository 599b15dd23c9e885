"""The only HTTP client code: talk to the service as a client would.

Every request has an explicit timeout; every failure becomes a ``ClientError`` whose
``kind`` names it and whose message is one line an operator can act on:

``refused`` nothing listens at the URL; ``timeout`` no answer in time; ``disconnected`` the
connection dropped before an answer; ``transport`` any other connection failure;
``unauthorized`` 401/403; ``busy`` 503/429 from the limiter; ``oom`` 503 whose body says out
of memory; ``server_error`` other 5xx; ``http`` other non-2xx; ``bad_json`` a 2xx body that
is not a JSON object.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mpsctl.errors import ClientError, ConfigError
from mpsctl.settings import ServiceSettings, Settings
from mpsctl.tokens import read_token_text, token_problem

if TYPE_CHECKING:
    import requests

HEALTH_TIMEOUT = 5.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON
    latency_s: float
    retry_after: str | None
    text_excerpt: str


@dataclass(frozen=True)
class HealthCheck:
    ok: bool
    status: int | None  # HTTP status, None when nothing answered
    latency_ms: float | None
    body: Any
    error: str | None  # one line, when not ok
    kind: str | None = (
        None  # the ClientError kind ("refused", "timeout", ...) when nothing answered
    )


def health_now(settings: Settings, timeout: float = 3.0) -> HealthCheck:
    """One health check of the configured service (a fresh connection, closed after)."""
    client = ServiceClient(settings.service)
    try:
        return client.health(timeout=timeout)
    finally:
        client.close()


def read_token(
    service: ServiceSettings, *, token_env: str | None = None, token_file: str | Path | None = None
) -> str | None:
    """Bearer token: the variable if set, else the file; never printed anywhere.

    The token must be one line of visible ASCII, the rule the service applies at load
    (``mpsctl.tokens``): anything else is refused here, with a message that never quotes it,
    instead of reaching an HTTP library that would echo the header value in its error.
    """
    env_name = token_env or service.token_env
    if env_name and os.environ.get(env_name):
        return checked_token(os.environ[env_name].strip(), f"${env_name}")
    path = Path(token_file) if token_file else service.token_file
    if path is not None and path.is_file():
        text, _mode = read_token_text(path)
        return checked_token(text, f"token file {path}") if text else None
    return None


def checked_token(token: str, source: str) -> str:
    """``token`` when it is one line of visible ASCII; else ConfigError naming ``source``
    (``$MPSCTL_TOKEN``, ``token file /p``, ``--token``) and the reason, never the token."""
    problem = token_problem(token)
    if problem is not None:
        raise ConfigError(f"{source}: the token {problem}")
    return token


#: the reference service's drain endpoint (see mpsctl.server.app)
DRAIN_PATH = "/admin/drain"


class ServiceClient:
    def __init__(
        self, service: ServiceSettings, *, token: str | None = None, timeout: float | None = None
    ) -> None:
        self.service = service
        self.token = token
        self.timeout = service.request_timeout if timeout is None else timeout
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        """requests, imported on first use: a plain-HTTP health check (every probe, every
        poll of start) goes through ``http.client`` and skips its ~50 ms of imports."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            # Never pick up proxies from the environment: the service is local.
            self._session.trust_env = False
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> Reply:
        """One request; raises ClientError for transport failures only (HTTP errors are Replies).

        ``data`` is a body already encoded as JSON (``query`` sends UTF-8, not \\u escapes).
        """
        return self.send(self.prepare(method, path, json_body=json_body, data=data), timeout)

    def prepare(
        self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None
    ) -> requests.PreparedRequest:
        """A request ready to ``send`` (it may be sent more than once)."""
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        import requests

        url = self.service.url + path
        request = requests.Request(method, url, json=json_body, data=data, headers=headers)
        return self.session.prepare_request(request)

    def send(self, prepared: requests.PreparedRequest, timeout: float | None = None) -> Reply:
        """Send a prepared request; transport failures become ClientError with their kind."""
        limit = self.timeout if timeout is None else timeout
        import requests
        import urllib3

        what = f"{prepared.method} {prepared.url}"
        started = time.perf_counter()
        try:
            response = self.session.send(prepared, timeout=limit)
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.ConnectTimeout):
                raise ClientError(
                    f"no answer from {self.service.url} (connect timeout)", kind="timeout"
                ) from None
            cause = exc.args[0] if exc.args else None
            if isinstance(cause, urllib3.exceptions.ReadTimeoutError):
                # headers came, then the body stalled: requests reports it as a ConnectionError
                raise ClientError(f"{what} timed out after {limit:g} s", kind="timeout") from None
            reason = getattr(cause, "reason", None)
            if isinstance(reason, urllib3.exceptions.NewConnectionError):
                raise ClientError(
                    f"no service at {self.service.url} — try `mpsctl start`", kind="refused"
                ) from None
            # connected, then the connection dropped before an answer: a crash, an OOM kill
            raise ClientError(
                f"{what}: connection lost before an answer (did the service exit?)",
                kind="disconnected",
            ) from None
        except requests.exceptions.Timeout:
            raise ClientError(f"{what} timed out after {limit:g} s", kind="timeout") from None
        except requests.exceptions.RequestException as exc:
            raise ClientError(f"{what} failed: {exc}", kind="transport") from None
        latency = time.perf_counter() - started
        try:
            body = response.json()
        except ValueError:
            body = None
        excerpt = _excerpt(response.text, self.token) if body is None else ""
        return Reply(
            response.status_code, body, latency, response.headers.get("Retry-After"), excerpt
        )

    def health(self, timeout: float = HEALTH_TIMEOUT) -> HealthCheck:
        try:
            if urlsplit(self.service.url).scheme == "http":
                reply = self._light_get(self.service.health_path, timeout)
            else:  # TLS: requests' certificate handling
                reply = self.request("GET", self.service.health_path, timeout=timeout)
        except ClientError as exc:
            return HealthCheck(False, None, None, None, str(exc), exc.kind)
        ok = reply.status == 200
        error = None if ok else f"health answered HTTP {reply.status}"
        return HealthCheck(ok, reply.status, round(reply.latency_s * 1000, 1), reply.body, error)

    def _light_get(self, path: str, timeout: float) -> Reply:
        """GET over plain HTTP with ``http.client``: the same ``Reply``, the same
        ``ClientError`` kinds and messages as :meth:`send`, without importing requests."""
        url = self.service.url + path
        what = f"GET {url}"
        started = time.perf_counter()
        # the connection first, on a bare socket: when nothing listens (a stopped service,
        # a status or probe from cron) the answer is known without loading http.client
        try:
            sock = socket.create_connection((self.service.host, self.service.port), timeout)
        except TimeoutError:
            raise ClientError(
                f"no answer from {self.service.url} (connect timeout)", kind="timeout"
            ) from None
        except OSError:  # refused, unreachable, unknown host: nothing to talk to
            raise ClientError(
                f"no service at {self.service.url} — try `mpsctl start`", kind="refused"
            ) from None
        import http.client

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = http.client.HTTPConnection(self.service.host, self.service.port, timeout=timeout)
        conn.sock = sock
        try:
            prefix = urlsplit(self.service.url).path.rstrip("/")
            try:
                conn.request("GET", prefix + path, headers=self._headers())
                response = conn.getresponse()
                data = response.read()
            except TimeoutError:
                raise ClientError(f"{what} timed out after {timeout:g} s", kind="timeout") from None
            except _lost():
                raise ClientError(
                    f"{what}: connection lost before an answer (did the service exit?)",
                    kind="disconnected",
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(f"{what} failed: {exc}", kind="transport") from None
        finally:
            conn.close()
        latency = time.perf_counter() - started
        try:
            body = json.loads(data)
        except ValueError:  # UnicodeDecodeError is a ValueError too
            body = None
        excerpt = _excerpt(data.decode("utf-8", "replace"), self.token) if body is None else ""
        return Reply(response.status, body, latency, response.getheader("Retry-After"), excerpt)

    def release(self) -> Reply:
        return self.request("POST", self.service.release_path, timeout=60.0)

    def drain(self, timeout: float) -> Reply:
        """Ask the service to refuse new queries before a stop (the reference service's
        ``POST /admin/drain``; another app answers 404 and is drained by SIGTERM)."""
        return self.request("POST", DRAIN_PATH, timeout=timeout)

    def query(
        self, question: str, *, max_new_tokens: int | None = None, timeout: float | None = None
    ) -> Reply:
        """POST ``{"question": ...}`` to the query path as UTF-8 JSON."""
        return self.request(
            "POST",
            self.service.query_path,
            data=encode_query(question, max_new_tokens),
            timeout=timeout,
        )

    def query_error(self, reply: Reply) -> ClientError | None:
        """The failure a query Reply stands for, or None for a 2xx JSON object."""
        return query_reply_error(self.service, self.token, reply)


def _stale() -> tuple[type[BaseException], ...]:
    """The server closed a kept-alive connection between two requests (uvicorn does after
    5 s idle): the request never reached it, so it is sent again once on a new connection."""
    import http.client

    return (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _lost() -> tuple[type[BaseException], ...]:
    """The connection dropped before a whole answer came."""
    import http.client

    return (*_stale(), http.client.IncompleteRead)


class KeepAliveConnection:
    """One persistent HTTP/1.1 connection for the stress runner's hot loop (``http.client``).

    Why not ``requests`` here: on the 2-core box where the service also runs, a
    ``requests.Session.send`` costs about 0.85 ms of client CPU per request, ``http.client``
    about 0.29 ms; that is the difference between a third of wrk's rate and most of it
    (tests/benchmarks/bench_ask.py). Failures become the same ``ClientError`` kinds and
    messages as ``ServiceClient``, answers the same ``Reply``.
    """

    def __init__(
        self, service: ServiceSettings, *, token: str | None = None, timeout: float | None = None
    ) -> None:
        self.service = service
        self.token = token
        self.timeout = service.request_timeout if timeout is None else timeout
        parts = urlsplit(service.url)
        self._prefix = parts.path.rstrip("/")
        import http.client

        factory = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._conn = factory(service.host, service.port, timeout=self.timeout)
        self._used = False
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._conn.close()
        self._used = False

    def post(self, path: str, body: bytes) -> Reply:
        import http.client  # loaded already: __init__ made the connection

        what = f"POST {self.service.url}{path}"
        started = time.perf_counter()
        try:
            try:
                status, retry_after, data = self._exchange(path, body)
            except _stale():
                if not self._used:
                    raise
                self.close()
                started = time.perf_counter()
                status, retry_after, data = self._exchange(path, body)
        except (ConnectionRefusedError, socket.gaierror):
            self.close()
            raise ClientError(
                f"no service at {self.service.url} — try `mpsctl start`", kind="refused"
            ) from None
        except TimeoutError:  # socket.timeout is TimeoutError since 3.10
            self.close()  # an answer may still arrive on it: never reuse this connection
            raise ClientError(
                f"{what} timed out after {self.timeout:g} s", kind="timeout"
            ) from None
        except _lost():
            self.close()
            raise ClientError(
                f"{what}: connection lost before an answer (did the service exit?)",
                kind="disconnected",
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ClientError(f"{what} failed: {exc}", kind="transport") from None
        latency = time.perf_counter() - started
        try:
            parsed = json.loads(data)
        except ValueError:  # UnicodeDecodeError is a ValueError too
            parsed = None
        excerpt = ""
        if parsed is None:
            excerpt = _excerpt(data.decode("utf-8", "replace"), self.token)
        return Reply(status, parsed, latency, retry_after, excerpt)

    def _exchange(self, path: str, body: bytes) -> tuple[int, str | None, bytes]:
        self._conn.request("POST", self._prefix + path, body=body, headers=self.headers)
        response = self._conn.getresponse()
        data = response.read()
        self._used = True
        return response.status, response.getheader("Retry-After"), data

    def query_error(self, reply: Reply) -> ClientError | None:
        return query_reply_error(self.service, self.token, reply)


EXCERPT_CHARS = 200


def _excerpt(text: str, secret: str | None) -> str:
    """One line of at most EXCERPT_CHARS of a body, the token masked *before* the cut (a token
    straddling the cut would otherwise leave its first half in the excerpt)."""
    if secret:
        text = text.replace(secret, "***")
    return " ".join(text.split())[:EXCERPT_CHARS]


def encode_query(question: str, max_new_tokens: int | None = None) -> bytes:
    # ensure_ascii=False: the body carries 工商银行 as UTF-8 bytes, as curl -d would.
    body: dict[str, Any] = {"question": question}
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _detail(reply: Reply, secret: str | None) -> str:
    """A one-line excerpt of an error body: FastAPI's ``detail``, our ``error`` object
    (``{"kind", "message"}``), a ``message``; else the body itself."""
    body = reply.body
    text: str = reply.text_excerpt
    if isinstance(body, dict):
        value = next((body[k] for k in ("detail", "error", "message") if body.get(k)), body)
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            kind = value.get("kind")
            text = f"{kind}: {value['message']}" if isinstance(kind, str) else value["message"]
        else:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    elif body is not None:
        text = json.dumps(body, ensure_ascii=False)
    # a service that echoes headers must not leak the token: masked before the cut
    return _excerpt(text, secret) or "empty body"


def query_reply_error(
    service: ServiceSettings, token: str | None, reply: Reply
) -> ClientError | None:
    """``reply_error`` for a reply of ``service``'s query endpoint, sent with ``token``."""
    return reply_error(
        reply,
        url=service.query_url,
        token_sent=bool(token),
        token_env=service.token_env,
        secret=token,
    )


def reply_error(
    reply: Reply,
    *,
    url: str,
    token_sent: bool,
    token_env: str | None = None,
    secret: str | None = None,
) -> ClientError | None:
    """Classify a query Reply: None when it is a 2xx JSON object, else a one-line ClientError."""
    status = reply.status
    if 200 <= status < 300:
        if isinstance(reply.body, dict):
            return None
        what = "not JSON" if reply.body is None else "not a JSON object"
        return ClientError(
            f"answer from {url} is {what}: {_detail(reply, secret)}", kind="bad_json"
        )
    detail = _detail(reply, secret)
    if status in (401, 403):
        if token_sent:
            return ClientError(f"token rejected (HTTP {status})", kind="unauthorized")
        source = f"${token_env}" if token_env else "--token-file"
        return ClientError(
            f"the service wants a token: set {source} or service.token_file (HTTP {status})",
            kind="unauthorized",
        )
    if status in (503, 429):
        oom = "memory" in detail.lower() or "oom" in detail.lower()
        after = f", Retry-After: {reply.retry_after}" if reply.retry_after else ""
        what = "out of memory" if oom else "busy"
        return ClientError(
            f"service {what} (HTTP {status}{after}): {detail}", kind="oom" if oom else "busy"
        )
    if status >= 500:
        return ClientError(f"service failed (HTTP {status}): {detail}", kind="server_error")
    if status in (404, 405):
        return ClientError(
            f"HTTP {status} from {url}: the service has no query endpoint there "
            f"(check service.query_path): {detail}",
            kind="http",
        )
    return ClientError(f"HTTP {status} from {url}: {detail}", kind="http")
