"""Hostile values through every generator of `mpsctl cron`: what a format can hold comes back
exactly from its real reader (a crontab parser then sh, systemd-analyze, plistlib), what it
cannot hold is refused with one line naming the setting, and no secret is ever written."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from crontab import CronTab

from mpsctl.cli import main
from tests.monitor.test_units import split_units, unit_values, verify

#: every character a shell, cron or systemd treats specially, and some that are not ASCII
HOSTILE = "a b'c\"d\\e $HOME %p %% ;#x `id` é"
#: the same less the quotes and the backslash, which systemd refuses in a program's path
PROGRAM_DIR = "bin a $HOME %p %% ;#x `id` é"
SECRETS = ("sk-envfile-SECRET1", "tok-SECRET2", "sk-table-SECRET3", "tok-SECRET4")
FORMATS = ([], ["--systemd"], ["--launchd"])
#: a URL holds no raw space (settings refuse one at load); the rest of HOSTILE it can hold
ALERTS_URL = "http://h/" + HOSTILE.replace(" ", "")


def cron(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["cron", *args], env=env)


@pytest.fixture
def hostile_site(
    tmp_path: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Settings whose paths hold HOSTILE, secrets in the env_file, the table and the shell,
    and an interpreter (at a hostile path too) that writes down what it was given."""
    site = tmp_path / f"site {HOSTILE}"
    (site / "work").mkdir(parents=True)
    env_file = site / "secrets.env"
    env_file.write_text("OPENAI_API_KEY=sk-envfile-SECRET1\nMY_TOKEN=tok-SECRET2\n")
    env_file.chmod(0o600)
    write_config(
        "[service]\n"
        'name = "mvp"\n'
        f"workdir = {json.dumps(str(site / 'work'))}\n"
        f"log_file = {json.dumps(str(site / 'service.log'))}\n"
        f"env_file = {json.dumps(str(env_file))}\n"
        'token_env = "MY_TOKEN"\n'
        'env = { API_KEY = "sk-table-SECRET3", PLAIN = "x" }\n'
    )
    monkeypatch.setenv("MPSCTL_TOKEN", "tok-SECRET4")
    monkeypatch.setenv("MY_TOKEN", "tok-SECRET2")
    # a URL holds no raw space (settings refuse one at load): the rest of HOSTILE it can hold
    monkeypatch.setenv("MPSCTL_ALERTS_URL", ALERTS_URL)
    record = tmp_path / "record.json"
    python = tmp_path / PROGRAM_DIR / "python"
    python.parent.mkdir()
    python.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd()}}, "
        f"open({str(record)!r}, 'w'))\n"
    )
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    return {"record": record, "python": python, "site": site, "env_file": env_file}


def test_a_program_path_systemd_cannot_run_is_refused_for_systemd_only(
    hostile_site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    python = hostile_site["site"] / "python"
    python.symlink_to(hostile_site["python"])
    monkeypatch.setattr(sys, "executable", str(python))
    result = cron("--systemd")
    assert result.exit_code == 2
    [line] = errors(result)
    assert line.startswith("mpsctl: error: the path of mpsctl (or of its Python) holds a quote")
    assert cron().exit_code == cron("--launchd").exit_code == 0


def errors(result: Result) -> list[str]:
    """The error lines (the notes before them are information: what is carried, and why)."""
    lines = result.stderr.splitlines()
    assert all(ln.startswith("mpsctl: ") for ln in lines), lines
    return [ln for ln in lines if ln.startswith("mpsctl: error: ")]


def ran(record: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.read_text())
    record.unlink()
    return data


def test_crontab_lines_come_back_exactly_from_cron_then_sh(hostile_site: dict[str, Any]) -> None:
    result = cron("--alert-cmd", HOSTILE)
    assert result.exit_code == 0, result.stderr
    jobs = list(CronTab(tab=result.stdout))
    assert [j.is_valid() for j in jobs] == [True, True]  # no line injected, none broken
    # the parser applies cron's own rule (crontab(5)): an unescaped % ends the command and
    # the rest is stdin; \% is a literal %
    assert not jobs[0].stdin
    done = subprocess.run(["sh", "-c", jobs[0].command], check=False)
    assert done.returncode == 0
    got = ran(hostile_site["record"])
    assert got["argv"][:2] == ["-m", "mpsctl"]
    assert got["argv"][-2:] == ["--alert-cmd", HOSTILE]
    assert got["env"]["MPSCTL_ALERTS_URL"] == ALERTS_URL


def test_systemd_units_verify_and_run_with_the_exact_values(
    hostile_site: dict[str, Any], tmp_path: Path
) -> None:
    result = cron("--systemd", "--alert-cmd", HOSTILE)
    assert result.exit_code == 0, result.stderr
    units = split_units(result.stdout)
    # systemd-analyze checks that ExecStart's program (at a path full of specials here)
    # exists and is executable: it only does if systemd read the path back exactly
    done = verify(tmp_path, units)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    service = units["mpsctl-mvp.service"]
    env_file = hostile_site["env_file"]
    assert unit_values(service, "EnvironmentFile") == [str(env_file).replace("%", "%%")]
    assert unit_values(service, "WorkingDirectory") == [
        str(hostile_site["site"] / "work").replace("%", "%%")
    ]
    probe = unit_values(units["mpsctl-mvp-probe.service"], "ExecStart")[0]
    # systemd.syntax(7): C-style quoting as a POSIX shell's, then $$ and %% are one character
    argv = [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(probe)]
    assert argv[-2:] == ["--alert-cmd", HOSTILE]
    subprocess.run(argv, check=True)
    assert ran(hostile_site["record"])["argv"][-1] == HOSTILE


def test_plists_parse_back_to_the_exact_values(hostile_site: dict[str, Any]) -> None:
    for job in ("service", "exporter", "probe", "fix"):
        result = cron("--launchd", "--job", job, "--alert-cmd", HOSTILE)
        assert result.exit_code == 0, result.stderr
        plist = plistlib.loads(result.stdout.encode())
        assert plist["EnvironmentVariables"]["MPSCTL_ALERTS_URL"] == ALERTS_URL
        assert Path(plist["WorkingDirectory"]).is_dir()
        if job == "probe":
            assert plist["ProgramArguments"][-2:] == ["--alert-cmd", HOSTILE]
        if job == "service":
            assert plist["WorkingDirectory"] == str(hostile_site["site"] / "work")


@pytest.mark.parametrize("args", FORMATS)
def test_no_secret_in_any_generated_file(hostile_site: dict[str, Any], args: list[str]) -> None:
    result = cron(*args)
    assert result.exit_code == 0, result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_an_env_file_others_can_read_is_refused(hostile_site: dict[str, Any]) -> None:
    hostile_site["env_file"].chmod(0o644)
    result = cron("--systemd")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "readable by others (mode 0644)" in result.stderr
    assert "chmod 600" in result.stderr


@pytest.mark.parametrize("args", FORMATS)
@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("--alert-cmd", "flag"),
        ("MPSCTL_ALERTS_COMMAND", "env"),
        ("service.log_file", "config"),
        ("service.workdir", "config"),
    ],
)
def test_a_line_break_is_refused_naming_the_setting(
    tmp_path: Path,
    write_config: Callable[..., Path],
    args: list[str],
    key: str,
    where: str,
) -> None:
    evil = "x\n* * * * * touch /tmp/pwned #"
    extra: list[str] = []
    env: dict[str, str] = {}
    if where == "flag":
        extra = [key, evil]
    elif where == "env":
        env = {key: evil}
    else:
        if key == "service.workdir":
            (tmp_path / evil).mkdir(parents=True)
        write_config(f'[service]\nname = "mvp"\n{key.split(".")[1]} = {json.dumps(evil)}\n')
    result = cron(*args, *extra, env=env)
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    [line] = errors(result)
    assert key in line
    assert "pwned" not in line  # the value is not echoed: it may be a secret


def test_the_service_plist_and_unit_carry_no_env_file_values(
    hostile_site: dict[str, Any],
) -> None:
    # the values go stale and are secrets: start --foreground reads the env_file itself
    plist = plistlib.loads(cron("--launchd", "--job", "service").stdout.encode())
    assert "OPENAI_API_KEY" not in plist["EnvironmentVariables"]
    assert "PLAIN" not in plist["EnvironmentVariables"]
    assert os.fspath(hostile_site["env_file"]) not in plist["EnvironmentVariables"].values()
