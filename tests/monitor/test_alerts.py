"""Alerts: one per verdict change, a recovery notice, delivery failures never fatal."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.errors import ProbeExit
from mpsctl.monitor.alerts import (
    Target,
    command_argv,
    notify_on_change,
    post_json,
    read_state,
)
from mpsctl.probe import ProbeResult, take_probe
from mpsctl.settings import load_settings
from tests.conftest import free_port
from tests.monitor import alert_receiver, stub_service


@pytest.fixture
def dead_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MPSCTL_SERVICE_URL", url)
    return url


def test_two_critical_probes_send_one_alert_then_ok_one_recovery(
    dead_url: str,
    write_config,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    with alert_receiver() as receiver:
        for _ in range(2):
            result = runner.invoke(main, ["probe", "--alert-url", receiver.url])
            assert result.exit_code == 2, result.stderr
        assert [p["kind"] for p in receiver.posts] == ["alert"]
        alert = receiver.posts[0]
        assert alert["schema"] == "mpsctl.alert/1"
        assert alert["verdict"] == "CRITICAL"
        assert alert["previous_verdict"] is None
        assert "service not running" in alert["text"]

        with stub_service() as service:  # a real process answering /health: verdict OK
            write_config(service.config())
            monkeypatch.delenv("MPSCTL_SERVICE_URL")
            result = runner.invoke(main, ["probe", "--alert-url", receiver.url])
            assert result.exit_code == 0, result.stdout
            runner.invoke(main, ["probe", "--alert-url", receiver.url])
        assert [p["kind"] for p in receiver.posts] == ["alert", "recovery"]
        assert receiver.posts[1]["previous_verdict"] == "CRITICAL"
        assert receiver.posts[1]["verdict"] == "OK"


def test_alert_command_gets_the_json_on_stdin(dead_url: str, tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    command = (
        f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.stdin.read())' {out}"
    )
    result = CliRunner().invoke(main, ["probe", "--alert-cmd", command])
    assert result.exit_code == 2, result.stderr
    alert = json.loads(out.read_text(encoding="utf-8"))
    assert alert["kind"] == "alert"
    assert alert["verdict"] == "CRITICAL"
    assert alert["probe"]["service_running"] is False


def test_alert_command_with_shell_syntax_runs_under_sh(dead_url: str, tmp_path: Path) -> None:
    out = tmp_path / "verdict.txt"
    command = f'echo "$MPSCTL_ALERT_VERDICT" > {out}'
    assert command_argv(command)[:2] == ["/bin/sh", "-c"]
    result = CliRunner().invoke(main, ["probe", "--alert-cmd", command])
    assert result.exit_code == 2, result.stderr
    assert out.read_text(encoding="utf-8").strip() == "CRITICAL"


def test_unreachable_target_is_a_warning_and_is_retried_next_time(
    dead_url: str, isolated_home: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/hook"
    result = CliRunner().invoke(main, ["probe", "--json", "--alert-url", nowhere])
    assert result.exit_code == 2  # the probe's verdict, not the alert's failure
    assert json.loads(result.stdout)["verdict"] == "CRITICAL"
    assert "not delivered" in result.stderr
    assert read_state(isolated_home) == {}  # nothing recorded: the next probe tries again
    with alert_receiver() as receiver:
        CliRunner().invoke(main, ["probe", "--alert-url", receiver.url])
        assert len(receiver.posts) == 1


def test_failing_command_is_reported(dead_url: str) -> None:
    result = CliRunner().invoke(main, ["probe", "--alert-cmd", "false"])
    assert result.exit_code == 2
    assert "exit status 1" in result.stderr


def test_settings_give_the_default_target(dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with alert_receiver() as receiver:
        monkeypatch.setenv("MPSCTL_ALERTS_URL", receiver.url)
        assert CliRunner().invoke(main, ["probe"]).exit_code == 2
        assert len(receiver.posts) == 1


def test_post_retries_once_on_5xx_not_on_4xx() -> None:
    sleeps: list[float] = []
    with alert_receiver(statuses=[503, 200]) as receiver:
        assert post_json(receiver.url, {"a": 1}, sleep=sleeps.append)[0] is True
        assert len(receiver.posts) == 2
        assert len(sleeps) == 1
    with alert_receiver(statuses=[404]) as receiver:
        ok, detail = post_json(receiver.url, {"a": 1}, sleep=sleeps.append)
        assert (ok, detail) == (False, "HTTP 404")
        assert len(receiver.posts) == 1


def test_only_http_urls_are_posted_to(tmp_path: Path) -> None:
    ok, detail = post_json(f"file://{tmp_path}/x", {"a": 1})
    assert not ok
    assert "not an http" in detail


def test_warning_to_critical_is_a_new_alert(dead_url: str, isolated_home: Path) -> None:
    critical: ProbeResult = take_probe(load_settings())
    warning = replace(critical, findings=(replace(critical.findings[0], level=ProbeExit.WARNING),))
    sent: list[dict] = []  # type: ignore[type-arg]

    def deliver(target: Target, document: dict) -> tuple[bool, str]:  # type: ignore[type-arg]
        sent.append(document)
        return True, "ok"

    targets = [Target("url", "http://example.invalid/")]
    for result in (warning, warning, critical, critical):
        notify_on_change(isolated_home, result, targets, deliver_to=deliver)
    assert [(d["kind"], d["verdict"]) for d in sent] == [
        ("alert", "WARNING"),
        ("alert", "CRITICAL"),
    ]


def test_concurrent_probes_send_a_change_once(dead_url: str, isolated_home: Path) -> None:
    import threading
    import time

    critical = take_probe(load_settings())
    sent: list[str] = []

    def slow(target: Target, document: dict) -> tuple[bool, str]:  # type: ignore[type-arg]
        time.sleep(0.2)  # the second probe arrives while the first is still delivering
        sent.append(document["kind"])
        return True, "ok"

    targets = [Target("url", "http://example.invalid/")]
    threads = [
        threading.Thread(target=notify_on_change, args=(isolated_home, critical, targets),
                         kwargs={"deliver_to": slow})
        for _ in range(2)
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sent == ["alert"]


def test_warnings_do_not_leak_the_webhook_secret(dead_url: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/services/T000/B000/s3cr3t"
    result = CliRunner().invoke(main, ["probe", "--alert-url", nowhere])
    assert "not delivered to url http://127.0.0.1:" in result.stderr
    assert "s3cr3t" not in result.stderr
