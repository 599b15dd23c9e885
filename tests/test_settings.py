"""Settings: precedence, validation with file and key named, watermark rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsctl.errors import ConfigError
from mpsctl.settings import load_settings
from mpsctl.torch_env import resolve_watermarks


def test_defaults_manage_the_reference_service(isolated_home: Path) -> None:
    settings = load_settings()
    assert settings.config_file is None
    assert settings.reference_service
    assert settings.service.url == "http://127.0.0.1:8000"
    assert settings.service.command[:4] == (sys.executable, "-m", "mpsctl", "serve")
    assert settings.service.command[-2:] == ("--port", "8000")
    assert settings.service.log_file == isolated_home / "service.log"
    assert settings.service.token_file == isolated_home / "token"


def test_precedence_flag_over_env_over_file(write_config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = write_config('[service]\nurl = "http://127.0.0.1:9001"\nstop_timeout = 4\n')
    monkeypatch.setenv("MPSCTL_SERVICE_URL", "http://127.0.0.1:9002")
    settings = load_settings(overrides={"service.url": ("http://127.0.0.1:9003", "--url")})
    assert settings.service.url == "http://127.0.0.1:9003"
    assert settings.sources["service.url"] == "flag --url"
    assert settings.service.stop_timeout == 4.0
    assert settings.sources["service.stop_timeout"] == f"file {path.resolve()}"
    assert load_settings().sources["service.url"] == "env MPSCTL_SERVICE_URL"


def test_relative_paths_resolve_against_the_file(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "conf").mkdir()
    write_config(
        '[service]\nworkdir = "../mvp"\ncommand = ["uvicorn", "app.main:app"]\n'
        'venv = "venv"\nlog_file = "backend.log"\n',
        name="conf/mpsctl.toml",
    )
    service = load_settings().service
    assert service.workdir == (tmp_path / "mvp").resolve()
    assert service.venv == service.workdir / "venv"
    assert service.log_file == service.workdir / "backend.log"
    assert service.token_file is None  # an operator's own service: no token file invented


def test_unknown_key_refused_with_did_you_mean(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config("[memory]\nhigh_watermark_ration = 0.7\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "memory.high_watermark_ration" in message
    assert "did you mean 'high_watermark_ratio'" in message


def test_unknown_section_and_bad_toml(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config("[servce]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown section \[servce\].*'service'"):
        load_settings()
    write_config("[service\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("high_watermark_ratio = 'abc'", "expected a number"),
        ("high_watermark_ratio = 2.5", "between 0.0 and 2"),
        ("high_watermark_ratio = true", "expected a number"),
        ("high_watermark_ratio = 0.7\nlow_watermark_ratio = 0.9", "invalid low watermark ratio"),
        ("high_watermark_ratio = nan", "finite"),
        # #13 item 15: not 0 but below the floor: a limit of ~0 bytes
        ("high_watermark_ratio = 1e-320", "is below 0.01: the limit would be"),
        ("high_watermark_ratio = 0.5\nlow_watermark_ratio = 0.001", "is below 0.01"),
    ],
)
def test_bad_ratios_name_file_and_key(write_config, text: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = write_config(f"[memory]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert reason in str(info.value)
    assert str(path.resolve()) in str(info.value)


def test_env_values_are_validated_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_MEMORY_HIGH_WATERMARK_RATIO", "0,7")
    with pytest.raises(ConfigError, match="MPSCTL_MEMORY_HIGH_WATERMARK_RATIO"):
        load_settings()
    monkeypatch.delenv("MPSCTL_MEMORY_HIGH_WATERMARK_RATIO")
    monkeypatch.setenv("MPSCTL_SERVICE_URLL", "http://x")
    with pytest.raises(ConfigError, match="did you mean 'MPSCTL_SERVICE_URL'"):
        load_settings()


def test_threshold_pairs(write_config, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MPSCTL_THRESHOLDS_HOST_USED_PERCENT", "70,90")
    assert load_settings().thresholds.host_used_percent == (70.0, 90.0)
    write_config("[thresholds]\nservice_memory_gib = [14, 12]\n")
    with pytest.raises(ConfigError, match="warning 14 is above critical 12"):
        load_settings()


def test_high_alone_derives_a_safe_low() -> None:
    marks = resolve_watermarks(0.5, None)
    assert (marks.high, marks.low) == (0.5, 0.5)
    assert marks.notes == (
        "low watermark ratio set to 0.50 = min(high 0.50, 1.40): PyTorch's default low ratio "
        "1.40 above high 0.50 would make it fail at the first allocation",
    )
    assert resolve_watermarks(1.7, None).low == 1.4


def test_low_rules_follow_pytorch() -> None:
    assert resolve_watermarks(0.0, 1.9).low == 1.9  # high 0.0: only the 2.0 range applies
    with pytest.raises(ConfigError, match=r"above high 1\.7"):
        resolve_watermarks(None, 1.8)  # PyTorch's own high 1.7 applies
    with pytest.raises(ConfigError, match=r"above high 0\.7"):
        resolve_watermarks(0.7, 1.4)
    assert resolve_watermarks(0.0, None).notes == (
        "high watermark 0.0 disables the MPS limit: the service can take all memory "
        "and push macOS into swap instead of failing with an out-of-memory error",
    )


def test_torch_env_of_memory_settings(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config(
        "[memory]\nhigh_watermark_ratio = 0.7\nlow_watermark_ratio = 0.5\nmps_fallback = true\n"
    )
    env = load_settings().memory.torch_env()
    assert env == {
        "PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.7",
        "PYTORCH_MPS_LOW_WATERMARK_RATIO": "0.5",
        "PYTORCH_ENABLE_MPS_FALLBACK": "1",
    }


def test_missing_explicit_config_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MPSCTL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="MPSCTL_CONFIG: no such file"):
        load_settings()


def test_cwd_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "mpsctl.toml").write_text('[service]\nname = "mvp"\n', encoding="utf-8")
    settings = load_settings()
    assert settings.service.name == "mvp"
    assert settings.config_file == (tmp_path / "mpsctl.toml").resolve()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        # a key given as a table
        ('[service.url]\nhost = "127.0.0.1"\n', "service.url: expected a string, got a table"),
        ("[thresholds.host_used_percent]\nwarn = 80\n", "thresholds.host_used_percent: expected"),
        # arrays of mixed types (valid TOML 1.0)
        ('[service]\ncommand = ["uvicorn", 8000]\n', "service.command: expected a list of strings"),
        ('[thresholds]\nhost_used_percent = [80, "high"]\n', "expected a number, got 'high'"),
        ("[thresholds]\nswap_used_percent = [50, true]\n", "expected a number, got a boolean"),
        ("[memory]\nmps_fallback = 1\n", "memory.mps_fallback: expected true or false, got an int"),
        ('service = "x"\n', "service must be a table"),
    ],
)
def test_toml_shapes_name_file_and_key(write_config, text: str, words: str) -> None:  # type: ignore[no-untyped-def]
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}: ")
    assert words in message
    assert "\n" not in message


def test_empty_file_gives_the_defaults(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config("")
    settings = load_settings()
    assert settings.config_file == path.resolve()
    assert settings.service.url == "http://127.0.0.1:8000"
    assert settings.sources["service.url"] == "default"


def test_config_that_is_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf.toml").mkdir()
    with pytest.raises(ConfigError, match=r"^--config: .*conf.toml is a directory"):
        load_settings(config=str(tmp_path / "conf.toml"))
    monkeypatch.setenv("MPSCTL_CONFIG", str(tmp_path / "conf.toml"))
    with pytest.raises(ConfigError, match=r"^MPSCTL_CONFIG: .*is a directory"):
        load_settings()
    monkeypatch.delenv("MPSCTL_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mpsctl.toml").mkdir()  # ./mpsctl.toml: not silently skipped
    with pytest.raises(ConfigError, match=r"mpsctl.toml: is a directory"):
        load_settings()


def test_non_utf8_file_is_one_clear_error(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config("")
    path.write_bytes(b'[service]\nname = "caf\xe9"\n')  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        f"{path.resolve()}: not UTF-8 text (byte 0xe9 at offset 21); TOML files must be UTF-8"
    )


@pytest.mark.parametrize(
    ("name", "hint"),
    [("MPSCTL_SERVCE_URL", "MPSCTL_SERVICE_URL"), ("MPSCTL_SERVICE_URLL", "MPSCTL_SERVICE_URL"),
     ("MPSCTL_MEMORY_HIGH_WATERMARK", "MPSCTL_MEMORY_HIGH_WATERMARK_RATIO")],
)  # fmt: skip
def test_env_typos_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, hint: str) -> None:
    monkeypatch.setenv(name, "0.5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == f"environment: unknown variable {name} (did you mean {hint!r}?)"


def test_env_names_mpsctl_uses_itself_are_not_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_ALERT_VERDICT", "CRITICAL")  # set for alert commands
    monkeypatch.setenv("MPSCTL_API_TOKEN", "t")
    monkeypatch.setenv("MPSCTL_SERVICE_TOKEN_ENV", "MPSCTL_API_TOKEN")
    assert load_settings().service.token_env == "MPSCTL_API_TOKEN"


def test_env_and_flag_workdir_are_relative_to_the_cwd(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "conf").mkdir()
    (tmp_path / "here").mkdir()
    write_config('[service]\ncommand = ["app"]\n', name="conf/mpsctl.toml")
    monkeypatch.chdir(tmp_path / "here")
    assert load_settings().service.workdir == (tmp_path / "conf").resolve()  # the file's dir
    monkeypatch.setenv("MPSCTL_SERVICE_WORKDIR", "mvp")
    assert load_settings().service.workdir == (tmp_path / "here" / "mvp").resolve()
    flagged = load_settings(overrides={"service.workdir": ("../x", "--workdir")})
    assert flagged.service.workdir == (tmp_path / "x").resolve()


def test_watermark_conflict_names_where_each_ratio_was_set(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    path = write_config("[memory]\nhigh_watermark_ratio = 0.7\n")
    monkeypatch.setenv("MPSCTL_MEMORY_LOW_WATERMARK_RATIO", "1.5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("MPSCTL_MEMORY_LOW_WATERMARK_RATIO: low watermark ratio 1.5 ")
    assert message.endswith(f"(high from {path.resolve()}: memory.high_watermark_ratio)")


@pytest.mark.parametrize(
    "nested", ["x = " + "[" * 1000 + "]" * 1000, "x = " + "{a=" * 1000 + "}" * 1000]
)
def test_deeply_nested_toml_is_a_settings_error_with_each_commands_code(
    write_config, nested: str
) -> None:  # type: ignore[no-untyped-def]
    """#13 item 9: arrays or inline tables nested 1000 deep: one clear line, no traceback;
    status exits 4 (LSB: unknown), probe 3 (UNKNOWN), other commands 2 (usage)."""
    path = write_config(nested + "\n")
    with pytest.raises(ConfigError, match="nested too deep for a settings file"):
        load_settings()
    env = dict(os.environ)
    for args, code in (
        (["status"], 4),
        (["probe"], 3),
        (["probe", "--nagios"], 3),
        (["config", "show"], 2),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "mpsctl", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == code, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert f"{path}: invalid TOML: arrays or tables nested too deep" in proc.stderr


def test_integers_are_read_as_integers_and_tiny_ratios_refused(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """#13 item 15: whole numbers keep every digit (no trip through float); 3.0 is 3; a
    fraction or a float too big to be exact is refused; 0.0 stays "no limit"; a ratio below
    the floor is refused with the reason, from the file, the environment and a flag."""
    big = 99999999999999999999999  # over max_queue's bound: the refusal quotes every digit
    monkeypatch.setenv("MPSCTL_SERVE_MAX_QUEUE", str(big))
    with pytest.raises(ConfigError, match=f"got {big}$"):
        load_settings()
    monkeypatch.setenv("MPSCTL_SERVE_MAX_QUEUE", " 7 ")
    assert load_settings().serve.max_queue == 7
    write_config("[serve]\nmax_queue = 99999\nmax_concurrent = 3.0\n")
    monkeypatch.delenv("MPSCTL_SERVE_MAX_QUEUE")
    settings = load_settings()
    assert (settings.serve.max_queue, settings.serve.max_concurrent) == (99999, 3)
    assert isinstance(settings.serve.max_concurrent, int)
    for text in ("max_concurrent = 2.5", "max_concurrent = 1e300"):
        write_config(f"[serve]\n{text}\n")
        with pytest.raises(ConfigError, match="expected a whole number"):
            load_settings()
    write_config("[memory]\nhigh_watermark_ratio = 0.0\n")
    assert load_settings().memory.high_watermark_ratio == 0.0
    write_config("")
    monkeypatch.setenv("MPSCTL_MEMORY_HIGH_WATERMARK_RATIO", "1e-320")
    with pytest.raises(ConfigError, match=r"MPSCTL_MEMORY_HIGH_WATERMARK_RATIO: .* below 0\.01"):
        load_settings()
    monkeypatch.delenv("MPSCTL_MEMORY_HIGH_WATERMARK_RATIO")
    with pytest.raises(ConfigError, match=r"high watermark ratio .* is below 0\.01"):
        resolve_watermarks(1e-320, None)
