"""Property-based: random requests against the real reference service (the tiny checkpoint
on the CPU, over HTTP on 127.0.0.1): every answer is 2xx or a documented refusal with a JSON
error body, never a 500, never a traceback in the log."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.service_fixtures import RunningService

#: what docs/serve.md documents: 400 invalid_json, 401, 404 (no such path), 405 (with
#: Allow), 408 body_timeout, 413, 415, 422, 503 (with Retry-After)
DOCUMENTED = {200, 400, 401, 404, 405, 408, 413, 415, 422, 503}
PATHS = ["/health", "/metrics", "/api/v1/query", "/admin/release", "/", "/api/v1/query/",
         "/api/v1/nope", "/health?token=x", "/api/v1/query?max_new_tokens=-1"]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "HEAD"]
AUTH = ["good", "none", "wrong", "basic", "two-words", "lower"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=5,
)  # fmt: skip
query_bodies = st.fixed_dictionaries(
    {},
    optional={
        "question": st.one_of(st.text(max_size=40), json_values, st.just(" "), st.just("工商银行")),
        "max_new_tokens": st.one_of(st.integers(-5, 6), st.just(10**30), json_values),
    },
)
bodies = st.one_of(
    query_bodies.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.just(b""),
    st.just(b'{"question": "' + b"x" * 5000 + b'"}'),
)
CONTENT_TYPES = [
    None,
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # weighted towards what reaches the model: authenticated POSTs to the query endpoint
    method=st.one_of(st.just("POST"), st.sampled_from(METHODS)),
    path=st.one_of(st.just("/api/v1/query"), st.sampled_from(PATHS)),
    body=st.one_of(st.none(), bodies),
    content_type=st.sampled_from(CONTENT_TYPES),
    auth=st.one_of(st.just("good"), st.sampled_from(AUTH)),
)
def test_random_requests_get_documented_answers(
    reference_service: RunningService,
    method: str,
    path: str,
    body: bytes | None,
    content_type: str | None,
    auth: str,
) -> None:
    """#13 (HTTP API): no 500, no traceback, every refusal a documented 4xx/503 with a JSON
    error; 405 names the allowed methods, 503 says when to retry, 401 asks for Bearer."""
    token = reference_service.token
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update({
        "good": {"Authorization": f"Bearer {token}"},
        "none": {},
        "wrong": {"Authorization": "Bearer not-the-token"},
        "basic": {"Authorization": "Basic dGVzdDp0ZXN0"},
        "two-words": {"Authorization": f"Bearer {token} extra"},
        "lower": {"Authorization": f"bearer {token}"},
    }[auth])  # fmt: skip
    answer = reference_service.request(
        method, path, raw=body, token=None, headers=headers, timeout=60
    )
    event(f"HTTP {answer.status}")  # --hypothesis-show-statistics: what was reached
    if answer.status == 307:  # documented: a trailing slash is redirected to the path without
        assert path.endswith("/")
        assert path != "/"
        assert answer.headers["location"] == reference_service.url + path.rstrip("/")
        return
    assert answer.status in DOCUMENTED, (answer.status, answer.body[:200])
    if answer.status >= 400 and method != "HEAD":
        document: Any = json.loads(answer.body)
        assert isinstance(document, dict), document
    if answer.status == 405:
        assert answer.headers.get("allow")
    if answer.status == 503:
        assert answer.headers.get("retry-after")
    if answer.status == 200 and method == "POST" and path == "/api/v1/query":
        assert isinstance(json.loads(answer.body)["answer"], str)
    if answer.status == 401:
        assert answer.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert "Traceback" not in reference_service.log()
