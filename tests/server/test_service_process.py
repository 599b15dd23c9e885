"""The real `mpsctl serve` subprocess, through the shared fixtures (one start: ~8 s)."""

from __future__ import annotations

import signal

from tests.service_fixtures import RunningService


def test_reference_service_answers_then_stops_on_sigterm(
    reference_service: RunningService,
) -> None:
    health = reference_service.request("GET", "/health", token=None)
    result = reference_service.request(
        "POST", "/api/v1/query", {"question": "工商银行", "max_new_tokens": 8}
    )
    # the documented example, byte for byte what curl sends for
    # curl -H "Authorization: Bearer $(cat $MPSCTL_HOME/token)" -d '{"question": "工商银行"}' URL
    as_curl_sends_it = reference_service.request(
        "POST",
        "/api/v1/query",
        raw='{"question": "工商银行"}'.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*"},
    )
    # the token offered the wrong way, or as part of a wrong one: refused, never logged
    refused = [
        reference_service.request(
            "POST", "/api/v1/query", {"question": "x"}, token=None, headers={"Authorization": h}
        ).status
        for h in ("Basic test-token", "Bearer test-token-but-longer", "test-token")
    ]

    assert health.status == 200
    assert health.json["memory"]["schema"] == "mpsctl.memory/1"
    assert result.status == 200
    body = result.json
    assert set(body) == {"answer", "model", "device", "latency_ms", "tokens"}
    assert isinstance(body["answer"], str)
    assert body["device"] == "cpu"
    assert body["model"].startswith("demo (")
    assert 1 <= body["tokens"] <= 8
    assert body["latency_ms"] > 0
    assert as_curl_sends_it.status == 200, as_curl_sends_it.body
    assert refused == [401, 401, 401]

    reference_service.proc.send_signal(signal.SIGTERM)

    # uvicorn shuts down gracefully, then re-raises the signal so the exit says why
    assert reference_service.proc.wait(15) in (0, -signal.SIGTERM)
    log = reference_service.log()
    assert "Application shutdown complete" in log
    assert '"POST /api/v1/query HTTP/1.1" 401' in log  # the 401s were logged, the token not
    assert "test-token" not in log
    # successful probes of /health (the fixture polled it too) leave no access line
    assert '"POST /api/v1/query HTTP/1.1" 200' in log
    assert '"GET /health HTTP/1.1" 200' not in log
