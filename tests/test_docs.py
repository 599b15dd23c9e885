"""README and docs/: short README, generated parts current, every command and key documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpsctl.cli import COMMAND_GROUPS, COMMANDS
from mpsctl.settings_schema import SCHEMA, env_name

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
DOCS_TEXT = "\n".join(path.read_text(encoding="utf-8") for path in DOCS)


def test_generated_configuration_table_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_is_documented(name: str) -> None:
    assert re.search(rf"`mpsctl {re.escape(name)}[` ]", DOCS_TEXT), f"mpsctl {name}"


@pytest.mark.parametrize(
    "dotted", [f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys]
)
def test_every_settings_key_is_documented(dotted: str) -> None:
    section, key = dotted.split(".")
    assert f"[{section}]" in DOCS_TEXT
    assert f"`{key}`" in DOCS_TEXT
    assert env_name(dotted) in DOCS_TEXT


def test_readme_is_short_and_says_what_mpsctl_is_first() -> None:
    text = README.read_text(encoding="utf-8")

    assert len(text.encode("utf-8")) <= 10 * 1024
    first_paragraph = text.split("\n\n")[1]
    assert first_paragraph.startswith("**mpsctl** is a command-line tool")


def test_readme_runs_the_test_command_that_ci_runs() -> None:
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in ci_lines if line.startswith("pip install torch"))

    commands = re.findall(r"^(python3 -m venv .*)$", README.read_text(encoding="utf-8"), re.M)

    assert len(commands) == 2
    assert commands[1].endswith("&& " + command)
    assert commands[0].endswith('mpsctl ask "工商银行" && mpsctl probe && mpsctl stop')


def test_readme_command_table_follows_the_help_groups() -> None:
    rows = re.findall(r"^\| ?(\w*) ?\| `mpsctl ([a-z-]+)", README.read_text(encoding="utf-8"), re.M)
    groups, names = [], [name for _, name in rows]
    for group, _ in rows:
        groups.append(group or groups[-1])

    expected = [(title.lower(), name) for title, entries in COMMAND_GROUPS for name, _ in entries]
    assert list(zip(groups, names, strict=True)) == expected


@pytest.mark.parametrize("path", [README, REPO / "HACKING.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(path: Path) -> None:
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))

    missing = [link for link in links if not (path.parent / link).exists()]

    assert links or path.name == "HACKING.md"
    assert missing == []
