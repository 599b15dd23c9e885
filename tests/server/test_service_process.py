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

    assert health.status == 200
    assert health.json["memory"]["schema"] == "mpsctl.memory/1"
    assert result.status == 200
    body = result.json
    assert set(body) == {"answer", "model", "device", "latency_ms", "tokens"}
    assert isinstance(body["answer"], str)
    assert body["device"] == "cpu"
    assert "noise" in body["model"]
    assert 1 <= body["tokens"] <= 8
    assert body["latency_ms"] > 0

    reference_service.proc.send_signal(signal.SIGTERM)

    # uvicorn shuts down gracefully, then re-raises the signal so the exit says why
    assert reference_service.proc.wait(15) in (0, -signal.SIGTERM)
    log = reference_service.log()
    assert "Application shutdown complete" in log
    assert "test-token" not in log
