"""Every cron example is the ``mpsctl cron`` form: README's and docs/lifecycle.md's blocks equal
what ``mpsctl cron`` prints (paths aside), and ``fix --help`` carries ``--config``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: what differs between machines: the interpreter, PATH, the settings file, MPSCTL_HOME
_PATHS = [
    (re.compile(r"MPSCTL_HOME=\S+"), "MPSCTL_HOME=<HOME>"),
    (re.compile(r"PATH=\S+"), "PATH=<PATH>"),
    (re.compile(r"\S+/python[0-9.]* -m mpsctl"), "<PYTHON> -m mpsctl"),
    (re.compile(r"--config \S+"), "--config <CONFIG>"),
    (re.compile(r"--error-log \S+"), "--error-log <LOG>"),
]


def paths_aside(text: str) -> str:
    for pattern, placeholder in _PATHS:
        text = pattern.sub(placeholder, text)
    return text.strip()


def cron_blocks(path: Path) -> list[str]:
    return re.findall(r"```cron\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``mpsctl cron`` for an operator's settings (an alert target set, as the docs advise)."""
    where = tmp_path_factory.mktemp("cron")
    config = where / "mpsctl.toml"
    config.write_text(
        '[service]\nname = "mvp"\ncommand = ["uvicorn", "app.main:app"]\n'
        '[alerts]\nurl = "https://hooks.example.com/mpsctl"\n'
    )
    env = {"HOME": str(where), "PATH": "/usr/bin:/bin", "MPSCTL_HOME": str(where / "state")}
    env.update({k: v for k, v in os.environ.items() if k == "PYTHONPATH"})
    done = subprocess.run(
        [sys.executable, "-m", "mpsctl", "--config", str(config), "cron"],
        env=env, cwd="/", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.mark.parametrize("doc", ["README.md", "docs/lifecycle.md"])
def test_the_documented_cron_block_is_what_mpsctl_cron_prints(doc: str, printed: str) -> None:
    blocks = cron_blocks(REPO / doc)

    assert blocks, f"{doc} has no ```cron block"
    for block in blocks:
        assert paths_aside(block) == paths_aside(printed)


def test_every_printed_job_names_its_settings_file_and_home(printed: str) -> None:
    jobs = [line for line in printed.splitlines() if line and not line.startswith("#")]

    assert len(jobs) == 2
    for job in jobs:
        assert " --config /" in job
        assert "MPSCTL_HOME=/" in job
        assert re.search(r" /\S+/python[0-9.]* -m mpsctl ", job)


def test_fix_help_shows_the_cron_form() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mpsctl", "fix", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if "* * * *" in line]

    assert lines
    assert "MPSCTL_HOME=" in lines[0]
    assert "mpsctl cron" in done.stdout
    assert "--config /" in done.stdout
