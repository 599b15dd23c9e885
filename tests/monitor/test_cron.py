"""cron: every printed line parses as a crontab entry and its command really runs."""

from __future__ import annotations

import json
import plistlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from tests.conftest import free_port

FIELD = re.compile(r"^(\*|\d+)(/\d+)?$")


@pytest.fixture
def dead_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MPSCTL_SERVICE_URL", url)
    return url


def entries(text: str) -> list[tuple[list[str], str]]:
    found = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 5)
        assert len(parts) == 6, line
        assert all(FIELD.match(f) for f in parts[:5]), line
        found.append((parts[:5], parts[5]))
    return found


def test_crontab_lines_parse_and_run(
    dead_url: str, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPSCTL_TOKEN", "very-secret")
    result = CliRunner().invoke(main, ["cron"])
    assert result.exit_code == 0, result.stderr
    assert "very-secret" not in result.stdout
    (probe_fields, probe_cmd), (fix_fields, fix_cmd) = entries(result.stdout)
    assert probe_fields == ["*", "*", "*", "*", "*"]
    assert fix_fields[0] == "*/5"
    assert sys.executable in probe_cmd
    assert f"MPSCTL_HOME={isolated_home}" in probe_cmd
    assert f"MPSCTL_SERVICE_URL={dead_url}" in probe_cmd  # cron would not see this shell's
    assert "probe --record" in probe_cmd
    assert "fix --if-unhealthy" in fix_cmd
    assert fix_cmd.endswith(" >/dev/null || { rc=$?; [ $rc -eq 75 ] || exit $rc; }")

    # cron runs each command with /bin/sh from $HOME and a bare environment
    bare = {"HOME": str(isolated_home.parent), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["/bin/sh", "-c", probe_cmd], env=bare, cwd="/", timeout=60)
    assert done.returncode == 2  # CRITICAL: the service at the dead URL is down
    (day,) = (isolated_home / "history").glob("probe-*.jsonl")
    assert json.loads(day.read_text().splitlines()[0])["verdict"] == "CRITICAL"
    help_cmd = fix_cmd.replace("fix --if-unhealthy", "fix --help")
    assert subprocess.run(["/bin/sh", "-c", help_cmd], env=bare, timeout=60).returncode == 0


def test_config_file_and_alert_target_are_absolute(
    tmp_path: Path,
    write_config,  # type: ignore[no-untyped-def]
) -> None:
    config = write_config('[service]\nurl = "http://127.0.0.1:9"\n')
    result = CliRunner().invoke(main, ["cron", "--alert-url", "http://127.0.0.1:9/hook",
                                       "--prometheus", "m.prom"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    probe_cmd = entries(result.stdout)[0][1]
    assert f"--config {config.resolve()}" in probe_cmd
    assert "--alert-url http://127.0.0.1:9/hook" in probe_cmd
    assert f"--prometheus {tmp_path.resolve() / 'm.prom'}" in probe_cmd


def test_a_relative_workdir_from_the_environment_is_carried_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPSCTL_SERVICE_WORKDIR", "mvp")  # relative to this shell's cwd
    result = CliRunner().invoke(main, ["cron"])
    assert result.exit_code == 0, result.stderr
    probe_cmd = entries(result.stdout)[0][1]
    assert f"MPSCTL_SERVICE_WORKDIR={tmp_path.resolve() / 'mvp'} " in probe_cmd


def test_no_alert_target_is_noted_on_stderr() -> None:
    result = CliRunner().invoke(main, ["cron"])
    note = (
        "no alert target: add --alert-url URL / --alert-cmd CMD, or set [alerts] url / command "
        "in the settings"
    )
    assert result.exit_code == 0  # a note, not a failure: the block is still printed
    assert result.stderr == f"mpsctl: {note}\n"
    assert f"# note: {note}" in result.stdout.splitlines()  # as a comment in the block too
    assert "--alert" not in result.stdout.replace(f"# note: {note}", "")


def test_percent_signs_are_escaped_for_cron() -> None:
    result = CliRunner().invoke(main, ["cron", "--alert-cmd", "logger -t mpsctl 100%"])
    probe_cmd = entries(result.stdout)[0][1]
    assert "100\\%" in probe_cmd
    assert "100%'" not in probe_cmd


def test_launchd_plist_for_one_job(isolated_home: Path) -> None:
    result = CliRunner().invoke(main, ["cron", "--launchd", "--job", "probe"])
    assert result.exit_code == 0, result.stderr
    plist = plistlib.loads(result.stdout.encode())
    # the service's name in the label: two services' agents never collide
    assert plist["Label"] == "io.github.mpsctl.mpsctl-serve.probe"
    assert plist["StartInterval"] == 60
    assert plist["ProgramArguments"][-2:] == ["probe", "--record"]
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["WorkingDirectory"] == str(isolated_home)
    assert plist["EnvironmentVariables"]["MPSCTL_HOME"] == str(isolated_home)


def test_launchd_both_jobs_and_job_needs_launchd() -> None:
    result = CliRunner().invoke(main, ["cron", "--launchd", "--fix-every", "10"])
    assert result.stdout.count("<plist") == 4  # the service, probe, fix and the exporter
    assert 'launchctl bootstrap "gui/$(id -u)" ~/Library/LaunchAgents/' in result.stdout
    assert "launchctl load" not in result.stdout
    assert "<integer>600</integer>" in result.stdout
    assert CliRunner().invoke(main, ["cron", "--job", "fix"]).exit_code == 2
