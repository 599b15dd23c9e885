"""Settings are validated when they are loaded: URLs (scheme, host, port 1-65535) and
durations and counts with upper bounds, so nothing accepted at load fails later."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.errors import ConfigError
from mpsctl.settings import load_settings
from tests.conftest import free_port

NAGIOS_EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


@pytest.fixture
def dead_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize(
    "url", ["http://hooks.example:99999/x", "http://h:0/", "http://h:abc/", "ftp://h/x",
            "http:///nohost", "http://h /x", "file:///etc/passwd"],
)  # fmt: skip
def test_probe_nagios_with_a_bad_alert_url_exits_with_the_state_it_prints(
    dead_service: None, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("MPSCTL_ALERTS_URL", url)

    result = CliRunner().invoke(main, ["probe", "--nagios"])

    state = result.stdout.split(" - ")[0].removeprefix("MPSCTL ")
    assert result.exit_code == NAGIOS_EXIT[state] == 3
    assert result.stdout.count("\n") == 1
    assert "Traceback" not in result.output


def test_probe_json_with_a_bad_alert_url_is_one_document_and_no_traceback(
    dead_service: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPSCTL_ALERTS_URL", "http://hooks.example:99999/x")

    result = CliRunner().invoke(main, ["probe", "--json"])

    document = json.loads(result.stdout)
    assert document["exit_code"] == result.exit_code == 3
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("MPSCTL_HISTORY_RETENTION_DAYS", "1e9", "must be at most 36,500, got 1000000000"),
        ("MPSCTL_HISTORY_RETENTION_DAYS", "9" * 4001, "got a 4001-digit number"),
        ("MPSCTL_SERVICE_STOP_TIMEOUT", "1e300", "must be at most 3.1536e+07 seconds"),
        ("MPSCTL_SERVICE_HEALTH_INTERVAL", "1e12", "must be at most 3.1536e+07 seconds"),
        ("MPSCTL_SERVE_QUEUE_TIMEOUT", "1e10", "must be at most 3.1536e+07 seconds"),
        ("MPSCTL_SERVICE_LOG_BACKUPS", "1000000000000", "must be at most 1,000"),
        ("MPSCTL_SERVE_MAX_CONCURRENT", "100000", "must be at most 1,024"),
        ("MPSCTL_FIX_WITHIN", "inf", "expected a finite number"),
        ("MPSCTL_SERVICE_URL", "http://127.0.0.1:65536", "it must be 1-65535"),
    ],
)
def test_out_of_range_settings_are_refused_at_load_with_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^environment: {variable}: ") as caught:
        load_settings()
    assert reason in str(caught.value)

    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("mpsctl: error: ")


def test_retention_days_at_the_bound_records_without_overflow(
    dead_service: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPSCTL_HISTORY_RETENTION_DAYS", "36500")

    result = CliRunner().invoke(main, ["probe", "--record", "--json"])

    assert json.loads(result.stdout)["exit_code"] == result.exit_code
    assert "Traceback" not in result.output


def test_a_bad_url_in_an_error_is_shown_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_ALERTS_URL", "https://hooks.example:99999/services/T0/B0/s3cret")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "s3cret" not in str(caught.value)
    assert "https://hooks.example:99999/services/****" in str(caught.value)
