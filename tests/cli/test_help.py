"""`mpsctl --help`: commands grouped in a newcomer's order, listed without importing them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from click.testing import CliRunner

from mpsctl.cli import COMMAND_GROUPS, COMMANDS, main

GROUPED = [name for _, entries in COMMAND_GROUPS for name, _ in entries]


def test_every_command_is_in_exactly_one_group() -> None:
    assert sorted(GROUPED) == sorted(COMMANDS)


def test_help_lists_the_groups_in_order() -> None:
    result = CliRunner().invoke(main, ["--help"])

    assert result.exit_code == 0, result.output
    titles = re.findall(r"^(\w+) commands:$", result.stdout, re.MULTILINE)
    listed = re.findall(r"^  ([a-z][a-z-]*) ", result.stdout, re.MULTILINE)
    assert titles == ["Service", "Memory", "Monitoring", "Setup"]
    assert listed == GROUPED


def test_help_imports_no_command_module() -> None:
    script = (
        "import sys\n"
        "from mpsctl.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('mpsctl.cli.')), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    command_modules = {"mpsctl.cli." + spec.split(":", 1)[0] for spec in COMMANDS.values()}
    assert "Service commands:" in result.stdout
    loaded = set(ast.literal_eval(result.stderr.strip()))
    assert loaded & command_modules == set()
