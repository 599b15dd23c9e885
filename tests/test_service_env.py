"""The environment ``start`` gives the service (mpsctl.service_env): the documented base, the
venv first on PATH, [memory]'s ratios instead of inherited ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpsctl.service_env import inherited_env_checks, service_env, system_locale
from mpsctl.settings import load_settings
from mpsctl.torch_env import FALLBACK_ENV, HIGH_ENV, LOW_ENV, Check


def test_service_env_drops_inherited_ratios_and_puts_the_venv_first(
    write_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    venv = tmp_path / "venv"
    write_config(
        f"[service]\nvenv = '{venv}'\n[memory]\nhigh_watermark_ratio = 0.7\n"
        "low_watermark_ratio = 0.5\n"
    )
    settings = load_settings()
    base = {LOW_ENV: "1.9", FALLBACK_ENV: "1", "PATH": "/usr/bin", "PYTHONHOME": "/x", "A": "b",
            "LC_ALL": "C.UTF-8", "TZ": "UTC"}  # fmt: skip
    env = service_env(settings, base)
    # the documented base only: an operator's own service gets the same environment from a
    # shell and from cron, so an arbitrary export ("A") does not leak into it
    assert env == {
        HIGH_ENV: "0.7",
        LOW_ENV: "0.5",
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin",
        "VIRTUAL_ENV": str(venv),
        **system_locale(),  # the system's, not the caller's LC_ALL
        "TZ": "UTC",
    }
    assert base[LOW_ENV] == "1.9"  # the caller's mapping is not changed
    assert service_env(settings, {})["PATH"] == f"{venv / 'bin'}{os.pathsep}{os.defpath}"


def test_service_env_without_venv_keeps_path_and_defaults_to_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HIGH_ENV, "1.9")
    monkeypatch.setenv("HOME", "/home/torch-env-test")
    monkeypatch.setenv("TORCH_ENV_TEST_MARK", "here")
    settings = load_settings()
    env = service_env(settings)
    assert env[HIGH_ENV] == "1"  # the default settings' ratio, not the inherited 1.9
    assert env["HOME"] == "/home/torch-env-test"  # read from this process's environment
    assert "TORCH_ENV_TEST_MARK" not in env  # the shell's other variables stay behind
    assert env["PATH"] == os.environ["PATH"]
    assert "VIRTUAL_ENV" not in env or env["VIRTUAL_ENV"] == os.environ.get("VIRTUAL_ENV")


def test_inherited_env_checks_warn_for_each_value_start_replaces(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config("[memory]\nhigh_watermark_ratio = 0.7\nlow_watermark_ratio = 0.5\n")
    settings = load_settings()
    environ = {HIGH_ENV: "0.7", LOW_ENV: "1.0", FALLBACK_ENV: "1", "OTHER": "x"}
    assert inherited_env_checks(settings, environ) == [
        Check(
            "start.env_ignored",
            "warning",
            f"ignoring {LOW_ENV}='1.0' from the environment: the service gets '0.5' "
            "from mpsctl's settings",
        ),
        Check(
            "start.env_ignored",
            "warning",
            f"ignoring {FALLBACK_ENV}='1' from the environment: the service gets 'unset' "
            "from mpsctl's settings",
        ),
    ]
