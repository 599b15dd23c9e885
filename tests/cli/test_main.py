"""CLI wiring: help everywhere, errors as one line on stderr, no heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mpsctl.cli import COMMANDS, main
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _all_commands() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None
        found.append((name,))
        if isinstance(command, click.Group):
            found.extend((name, sub) for sub in command.list_commands(ctx))
    return found


def test_every_registered_command_exists() -> None:
    ctx = click.Context(main)
    assert main.list_commands(ctx) == list(COMMANDS)


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout
    assert f"mpsctl {' '.join(path)}" in result.stdout.split("Examples:", 1)[1]


def test_config_error_is_one_line_on_stderr(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config("[memory]\nhigh_watermark_ratio = 'seventy'\n")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mpsctl: error: ")
    assert "memory.high_watermark_ratio" in lines[0]


def test_config_show_json_explains_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_MEMORY_DEVICE", "cpu")
    result = CliRunner().invoke(main, ["config", "show", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.config/1"
    assert doc["values"]["memory"]["device"] == "cpu"
    assert doc["sources"]["memory.device"] == "env MPSCTL_MEMORY_DEVICE"
    assert doc["sources"]["service.url"] == "default"


def test_config_init_never_overwrites_without_force(tmp_path: Path) -> None:
    target = tmp_path / "mpsctl.toml"
    target.write_text("# mine\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "init", str(target)])
    assert result.exit_code == 1
    assert "use --force" in result.stderr
    assert target.read_text(encoding="utf-8") == "# mine\n"
    result = CliRunner().invoke(main, ["config", "init", str(target), "--force"])
    assert result.exit_code == 0
    assert (tmp_path / "mpsctl.toml.bak").read_text(encoding="utf-8") == "# mine\n"
    assert "high_watermark_ratio" in target.read_text(encoding="utf-8")


def test_config_init_template_is_valid(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    assert CliRunner().invoke(main, ["config", "init", str(tmp_path / "t.toml")]).exit_code == 0
    write_config((tmp_path / "t.toml").read_text(encoding="utf-8"))
    result = CliRunner().invoke(main, ["config", "show", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["values"]["service"]["name"] == "mvp"


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["prbe"])
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()  # one line, no usage block, no traceback
    assert line.startswith("mpsctl: error: No such command 'prbe'. (see '")


@pytest.mark.parametrize("args", [["probe", "--json"], ["status"], ["stop", "--dry-run"],
                                  ["config", "show"]])  # fmt: skip
def test_light_commands_never_import_torch(args: list[str], tmp_path: Path) -> None:
    # read at exit: these commands end the process without the interpreter's teardown, but
    # their atexit handlers still run
    code = (
        "import atexit, sys, runpy\n"
        f"sys.argv = ['mpsctl', *{args!r}]\n"
        "def report():\n"
        "    heavy = sorted(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn')\n"
        "                   if m in sys.modules)\n"
        "    sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
        "atexit.register(report)\n"
        "runpy.run_module('mpsctl', run_name='__main__')\n"
    )
    env = {**os.environ, "MPSCTL_SERVICE_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)  # fmt: skip
    assert "HEAVY=\n" in done.stderr, done.stderr


def test_python_dash_m_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mpsctl", "--version"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.startswith("mpsctl, version ")


def test_completions_are_current() -> None:
    done = subprocess.run([sys.executable, str(REPO / "completions" / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_bash_completion_completes_commands(tmp_path: Path) -> None:
    env = {**os.environ, "_MPSCTL_COMPLETE": "bash_complete", "COMP_WORDS": "mpsctl pro",
           "COMP_CWORD": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "mpsctl"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)  # fmt: skip
    assert "plain,probe" in done.stdout.splitlines()


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_refuses_a_bad_option_in_one_line(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--no-such-option"], prog_name="mpsctl")
    # probe and status follow their own conventions: a bad option is UNKNOWN (3 / 4)
    assert result.exit_code == {"probe": 3, "status": 4}.get(path[0], 2)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"mpsctl: error: No such option '--no-such-option'. (see 'mpsctl {' '.join(path)} --help')"
    ]


@pytest.mark.parametrize(
    "args",
    [["probe", "--host-used", "90"], ["watch", "--interval", "0"], ["report", "--since", "soon"],
     ["report", "--since", "inf"], ["report", "--since", "1e12"],
     ["ask"], ["exporter", "--port", "http"], ["config", "show", "extra"]],
)  # fmt: skip
def test_bad_values_are_one_line_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == (3 if args[0] == "probe" else 2), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mpsctl: error: ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [["logs", "--since", "1e12"], ["oom", "--since", "1e12"], ["report", "--since", "1e12"],
     ["fix", "--within", "1e12"], ["ask", "q", "--duration", "1e12"]],
)  # fmt: skip
def test_overflowing_durations_are_one_usage_line(args: list[str]) -> None:
    # 1e12 s is 31,000 years: "now minus that" is before year 1, which datetime cannot hold
    result = CliRunner().invoke(main, args, prog_name="mpsctl")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"mpsctl: error: {args[-2]}: 1e12 is too long (it reaches back before the year 1) "
        f"(see 'mpsctl {args[0]} --help')"
    ]


@pytest.mark.parametrize("args", [["probe", "--json"], ["probe"], ["config", "show"]])
def test_a_reader_that_leaves_causes_no_traceback(args: list[str], tmp_path: Path) -> None:
    # `mpsctl probe --json | head -c 10` with the reader gone before the first write
    env = {**os.environ, "MPSCTL_SERVICE_URL": "http://127.0.0.1:9"}
    proc = subprocess.Popen([sys.executable, "-m", "mpsctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()
    _out, err = proc.communicate(timeout=60)
    assert err == b""
    assert proc.returncode == 1


def test_config_show_fits_80_columns_and_lists_every_key(
    write_config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from mpsctl.settings_schema import SCHEMA

    deep = tmp_path / "a" / "rather" / "deep" / "directory" / "for" / "the" / "settings"
    deep.mkdir(parents=True)
    write_config('[service]\ncommand = ["uvicorn", "app.main:app", "--port", "8000"]\n',
                 name=str(deep.relative_to(tmp_path) / "mpsctl.toml"))  # fmt: skip
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("MPSCTL_THRESHOLDS_ACCELERATOR_LIMIT_PERCENT", "70,90")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    keys = [line.split()[0] for line in lines if line.startswith("    ") and line[4] != " "]
    assert keys == [key for keys in SCHEMA.values() for key in keys]  # one unbroken line each
    row = next(line for line in lines if line.startswith("    accelerator_limit_percent"))
    assert row.split()[-1] == "env"


def test_config_init_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "init", str(blocker / "mpsctl.toml")])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"mpsctl: error: cannot write {blocker / 'mpsctl.toml'}: {blocker} is not a directory"
    ]


def _mpsctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MPSCTL_SERVICE_URL=f"http://127.0.0.1:{free_port()}")
    return subprocess.run(
        [sys.executable, "-m", "mpsctl", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("probe", "--nagios", "--timeout", "999"),
        ("probe", "--nagios", "--no-such-option"),
        ("probe", "--nagios", "--host-used", "90,80"),
        ("probe", "--host-used", "x", "--nagios"),
    ],
)
def test_probe_nagios_prints_one_status_line_on_every_failure(args: tuple[str, ...]) -> None:
    """#13 item 11: the plugin guidelines want one status line on stdout, also when click
    refuses an option: UNKNOWN (3)."""
    proc = _mpsctl(*args)
    assert proc.returncode == 3
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("MPSCTL UNKNOWN - ")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "schema"),
    [
        (("probe", "--json", "--no-such-option"), 3, "mpsctl.probe/1"),
        (("probe", "--json", "--host-used", "90,80"), 3, "mpsctl.probe/1"),
        (("status", "--json", "--no-such-option"), 4, "mpsctl.error/1"),
        (("ask", "hi", "--json"), 3, "mpsctl.error/1"),
        (("start", "--json", "--high", "5"), 2, "mpsctl.error/1"),
        (("stop", "--json", "--timeout", "x"), 2, "mpsctl.error/1"),
        (("oom", "--json", "/nonexistent.log"), 1, "mpsctl.error/1"),
        (("config", "show", "--json", "--no-such-option"), 2, "mpsctl.error/1"),
    ],
)
def test_every_json_command_prints_one_document_when_it_fails(
    args: tuple[str, ...], code: int, schema: str
) -> None:
    """#13 item 11: a failing --json run prints exactly one JSON document on stdout, the
    command's own or ``mpsctl.error/1`` with the message and exit code."""
    proc = _mpsctl(*args)
    assert proc.returncode == code, proc.stderr
    document = json.loads(proc.stdout)  # exactly one document: json.loads refuses a second
    assert document["schema"] == schema
    assert document["exit_code"] == code
    if schema == "mpsctl.error/1":
        assert proc.stderr == f"mpsctl: error: {document['error']}\n"
    else:
        assert document["verdict"] == "UNKNOWN"
