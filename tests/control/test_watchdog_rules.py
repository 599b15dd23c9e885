"""The watchdog's rules on real fake services: restart_on, memory-critical, the unit seam,
the service environment's settings."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.control import supervisor
from mpsctl.control.fix import FixOptions, fix_service
from mpsctl.control.start import start_service
from mpsctl.errors import ConfigError
from mpsctl.settings import load_settings
from tests.control.fakes import FakeService, alive, fake_service

__all__ = ["fake_service"]  # fixtures

Make = Callable[..., FakeService]

#: ``systemctl --user show -p LoadState,ActiveState,MainPID UNIT`` for a running unit: one
#: ``Property=value`` line each, the format systemctl(1) documents (no user manager here)
SYSTEMD_ACTIVE = "LoadState=loaded\nActiveState=active\nMainPID={pid}\n"


def test_a_rule_left_out_of_restart_on_does_not_restart(
    fake_service: Make, isolated_home: Path
) -> None:
    fake = fake_service(config_extra='[fix]\nrestart_on = ["not-running", "dead-pidfile"]\n',
                        health_timeout=0.5, health_retries=2, health_interval=0.1)  # fmt: skip
    settings = fake.settings()
    started = start_service(settings)
    os.kill(started.pid, signal.SIGSTOP)
    try:
        result = fix_service(settings, FixOptions(if_unhealthy=True))
    finally:
        os.kill(started.pid, signal.SIGCONT)
        CliRunner().invoke(main, ["stop"])

    assert (result.status, result.restarted, result.rule) == ("skipped", False, "unhealthy")
    assert "not in fix.restart_on" in result.message
    assert "2 consecutive failed health checks" in result.message


def test_memory_critical_restarts_a_healthy_service(
    fake_service: Make, isolated_home: Path
) -> None:
    # any python process is above 0.001 GiB: the monit rule "if memory > X then restart"
    fake = fake_service(config_extra="")
    fake.config.write_text(
        fake.config.read_text().replace(
            "[thresholds]\n", "[thresholds]\nservice_memory_gib = [0.0005, 0.001]\n"
        )
    )
    settings = fake.settings()
    first = start_service(settings)
    try:
        result = fix_service(settings, FixOptions(if_unhealthy=True))
        assert (result.status, result.rule) == ("fixed", "memory-critical"), result.message
        assert "memory-critical: service" in result.message
        assert not alive(first.pid)
    finally:
        CliRunner().invoke(main, ["stop"])


def _unit_answers(pid_of: Callable[[], int]) -> tuple[supervisor.Runner, list[list[str]]]:
    asked: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str]:
        asked.append(list(argv))
        if argv[:3] == ["systemctl", "--user", "show"]:
            return 0, SYSTEMD_ACTIVE.format(pid=pid_of())
        return 0, ""

    return run, asked


def test_fix_under_a_systemd_unit_restarts_through_the_unit(
    fake_service: Make, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a unit, fix must not stop the service and start a detached copy (it would live
    in the fix job's cgroup): it runs `systemctl --user restart UNIT`."""
    fake = fake_service()
    settings = fake.settings()
    started = start_service(settings)  # stands in for the unit's `start --foreground`
    unit_dir = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    (unit_dir / supervisor.systemd_unit_name(settings)).write_text("[Service]\n")
    run, asked = _unit_answers(lambda: started.pid)
    monkeypatch.setattr(supervisor, "run_command", run)
    try:
        result = fix_service(settings, FixOptions())
        assert result.status == "fixed", result.message
        assert [a.name for a in result.actions] == ["restart"]
        assert ["systemctl", "--user", "restart", "mpsctl-serve.service"] in asked
        assert "restarted through mpsctl-serve.service" in result.message
        assert alive(started.pid)  # the manager restarts it; fix itself signalled nothing

        for command in ("stop", "restart"):
            refused = CliRunner().invoke(main, [command])
            assert refused.exit_code == 1, refused.output
            assert "managed by systemd unit mpsctl-serve.service (active" in refused.output
            assert f"systemctl --user {command} mpsctl-serve.service" in refused.output
        running = CliRunner().invoke(main, ["start"])
        assert running.exit_code == 0, running.output  # the unit runs it: nothing to do
        assert "it runs the service already" in running.output
        assert alive(started.pid)
        status = CliRunner().invoke(main, ["status", "--json"])
        assert json.loads(status.stdout)["managed_by"]["unit"] == "mpsctl-serve.service"
    finally:
        monkeypatch.undo()
        CliRunner().invoke(main, ["stop"])


def test_no_unit_file_means_no_manager_is_asked(
    fake_service: Make, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str]:
        asked.append(list(argv))
        return 0, ""

    monkeypatch.setattr(supervisor, "run_command", run)
    assert supervisor.find_supervisor(fake_service().settings()) is None
    assert asked == []


# --------------------------------------------------------------------------- settings
def test_service_env_settings_refuse_the_memory_variables(write_config) -> None:
    write_config('[service]\nenv = { PYTORCH_MPS_HIGH_WATERMARK_RATIO = "0.0" }\n')
    with pytest.raises(ConfigError, match=r"service.env: PYTORCH_MPS_HIGH_WATERMARK_RATIO is set "
                       r"from \[memory\]"):  # fmt: skip
        load_settings()
    write_config("[service]\nenv = { HF_HOME = 3 }\n")
    with pytest.raises(ConfigError, match="HF_HOME: expected a string"):
        load_settings()
    write_config('[fix]\nrestart_on = ["unhealthy", "warning"]\n')
    with pytest.raises(ConfigError, match="unknown rule 'warning'"):
        load_settings()


def test_an_env_file_setting_a_memory_variable_is_refused_before_anything_stops(
    fake_service: Make, isolated_home: Path
) -> None:
    fake = fake_service(env_file=".env")
    (fake.workdir / ".env").write_text("PYTORCH_MPS_LOW_WATERMARK_RATIO=0.1\n")
    with pytest.raises(ConfigError, match="PYTORCH_MPS_LOW_WATERMARK_RATIO is set from"):
        start_service(fake.settings())
    (fake.workdir / ".env").write_text("HF_HOME=/data/hf\n")
    started = start_service(fake.settings())
    try:
        (fake.workdir / ".env").write_text("PYTORCH_ENABLE_MPS_FALLBACK=1\n")
        result = fix_service(fake.settings(), FixOptions())
        assert result.status == "failed"
        assert result.message.startswith("nothing stopped: service.env_file")
        assert alive(started.pid)
    finally:
        (fake.workdir / ".env").write_text("")
        CliRunner().invoke(main, ["stop"])


def test_config_show_lists_the_service_environment_with_secrets_masked(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("API_TOKEN=abc123\nHF_HOME=/data/hf\n")
    write_config('[service]\ncommand = ["uvicorn", "app.main:app"]\nenv_file = ".env"\n'
                 'env = { DB_PASSWORD = "hunter2", REGION = "eu-1" }\n')  # fmt: skip
    monkeypatch.setenv("ONLY_IN_MY_SHELL", "1")

    shown = CliRunner().invoke(main, ["config", "show", "--json"])

    assert shown.exit_code == 0, shown.output
    env = json.loads(shown.stdout)["service_env"]
    assert (env["API_TOKEN"], env["DB_PASSWORD"]) == ("****", "****")
    assert (env["HF_HOME"], env["REGION"]) == ("/data/hf", "eu-1")
    assert "ONLY_IN_MY_SHELL" not in env
    assert "abc123" not in shown.stdout
    assert "hunter2" not in shown.stdout


def test_a_stopped_process_is_woken_to_take_its_sigterm(
    fake_service: Make, isolated_home: Path
) -> None:
    """A SIGSTOPped service holds SIGTERM pending: stop sends SIGCONT after it, so the
    service shuts down on SIGTERM instead of waiting out stop_timeout for SIGKILL."""
    from mpsctl.control.stop import stop_service

    fake = fake_service("--fake-exit-term")
    fake.config.write_text(fake.config.read_text().replace("stop_timeout = 2", "stop_timeout = 20"))
    started = start_service(fake.settings())
    os.kill(started.pid, signal.SIGSTOP)

    stopped = stop_service(fake.settings())

    assert stopped.status == "stopped"
    assert [p.outcome for p in stopped.processes] == ["SIGTERM"]
    assert stopped.elapsed_s < 10
