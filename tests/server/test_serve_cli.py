"""`mpsctl serve` / `mpsctl demo-model` wiring and the token and environment rules."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.errors import ConfigError
from mpsctl.server import (
    apply_mps_environment,
    create_token_file,
    environment_warnings,
    read_token_file,
    resolve_token,
)
from mpsctl.settings import load_settings


@pytest.mark.parametrize("command", ["serve", "demo-model"])
def test_help_has_examples(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])

    assert result.exit_code == 0
    assert "Examples:" in result.output


def test_no_token_refuses_to_start_with_one_line(write_config: Callable[[str], Path]) -> None:
    write_config('[service]\ncommand = ["uvicorn", "app.main:app"]\n')

    result = CliRunner().invoke(main, ["serve", "--model", "x"])

    assert result.exit_code == 2
    assert result.stderr.startswith("mpsctl: error: no token configured")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_demo_and_model_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_TOKEN", "t")

    result = CliRunner().invoke(main, ["serve", "--demo", "--model", "x"])

    assert result.exit_code == 2
    assert "--demo and --model are exclusive" in result.stderr


def test_reference_service_creates_a_private_token_file_once(tmp_path: Path) -> None:
    path = tmp_path / "home" / "token"

    first = resolve_token(
        token_env="MPSCTL_TOKEN", token_file=path, create_if_missing=True, no_auth=False, environ={}
    )
    second = resolve_token(
        token_env="MPSCTL_TOKEN", token_file=path, create_if_missing=True, no_auth=False, environ={}
    )

    assert first.created == path
    assert second.created is None
    assert first.token == second.token
    assert first.token is not None
    assert len(first.token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temp file left


def test_token_variable_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    path.chmod(0o600)

    source = resolve_token(
        token_env="T", token_file=path, create_if_missing=False, no_auth=False, environ={"T": "v"}
    )
    blank = resolve_token(
        token_env="T", token_file=path, create_if_missing=False, no_auth=False, environ={"T": " "}
    )

    assert (source.token, source.source) == ("v", "env T")
    assert (blank.token, blank.source) == ("from-file", f"file {path}")


def test_a_readable_token_file_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc\n")
    path.chmod(0o644)

    token, warnings = read_token_file(path)

    assert token == "abc"
    assert "chmod 600" in warnings[0]


def test_missing_explicit_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_token(
            token_env=None,
            token_file=tmp_path / "nope",
            create_if_missing=False,
            no_auth=False,
            environ={},
        )


def test_pytorch_enable_mps_is_called_out() -> None:
    assert "no such variable" in environment_warnings({"PYTORCH_ENABLE_MPS": "0"})[0]
    assert environment_warnings({}) == []


def test_mps_ratios_from_settings_unless_already_in_the_environment() -> None:
    settings = load_settings(overrides={"memory.high_watermark_ratio": ("0.7", "--high")})
    empty: dict[str, str] = {}
    preset = {"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.5", "PYTORCH_MPS_LOW_WATERMARK_RATIO": "0.4"}

    notes = apply_mps_environment(settings.memory, empty)
    apply_mps_environment(settings.memory, preset)

    assert empty["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.7"
    assert empty["PYTORCH_MPS_LOW_WATERMARK_RATIO"] == "0.7"
    assert notes
    assert preset["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.5"


def test_demo_model_command_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    runner = CliRunner()

    written = runner.invoke(main, ["demo-model", str(target)])
    again = runner.invoke(main, ["demo-model", str(target)])

    assert written.exit_code == 0, written.output
    assert written.stdout.strip() == str(target)
    assert "trained on a built-in list of questions" in written.stderr
    assert again.exit_code == 2
    assert "not empty" in again.stderr
    assert os.listdir(target)


def test_token_file_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "token"
    old = os.umask(0)
    try:
        token = create_token_file(path)
    finally:
        os.umask(old)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_serve_warns_about_a_token_file_others_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPSCTL_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    path.chmod(0o644)

    # --demo with --model stops the command right after the token checks, before any load
    result = CliRunner().invoke(
        main, ["serve", "--token-file", str(path), "--demo", "--model", "x"]
    )

    assert result.exit_code == 2
    assert f"chmod 600 {path}" in result.stderr
    assert "s3cret-token" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("content", "message"), [("", "is empty"), ("a\nb\n", "on one line"), ("\udcff", "UTF-8")]
)
def test_unusable_token_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "token"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))

    with pytest.raises(ConfigError, match=message):
        read_token_file(path)


def test_token_file_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    with pytest.raises(ConfigError, match="cannot create token file"):
        create_token_file(blocker / "token")
