"""ripgrep comes with mpsctl: the ``ripgrep`` wheel puts ``rg`` beside the interpreter's
scripts, and ``mpsctl oom`` finds it there with a bare PATH (cron, an unactivated venv)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

WHEEL_PLATFORMS = sys.platform == "darwin" or (
    sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
)
PROGRAM = "from mpsctl.deaths.grep_pass import grep_path; print(grep_path())"


def test_the_dependency_installed_rg_beside_the_scripts() -> None:
    if not WHEEL_PLATFORMS:
        pytest.skip("the ripgrep wheel exists for Linux x86_64/aarch64 and macOS only")
    rg = Path(sysconfig.get_path("scripts")) / "rg"
    assert rg.is_file()
    version = subprocess.run([str(rg), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ripgrep 14.1.0")


def test_oom_finds_the_bundled_rg_without_the_venv_on_path() -> None:
    rg = Path(sysconfig.get_path("scripts")) / "rg"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("MPSCTL_GREP", None)
    chosen = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    if rg.is_file():
        assert chosen == str(rg)
    else:  # a platform without the wheel: a system rg, else grep
        assert Path(chosen).name in ("rg", "grep")


def test_mpsctl_grep_still_chooses() -> None:
    env = {**os.environ, "MPSCTL_GREP": "grep"}
    chosen = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    assert Path(chosen).name == "grep"
    env["MPSCTL_GREP"] = ""
    none = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert none == "None"
