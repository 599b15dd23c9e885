"""What a cron-speed command imports, read from the real interpreter's ``sys.modules``.

A module imported at the top of the wrong file costs every probe tens of milliseconds
(requests ~50 ms, rich's console and tables ~25 ms): these runs catch it where a timing
would only be noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# prints the imported module names at exit, whatever exit code the command chose
RUNNER = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n"))
from mpsctl.cli import main
main(sys.argv[1:], prog_name="mpsctl")
"""


def imported(*args: str, url: str = "http://127.0.0.1:9") -> tuple[int, set[str]]:
    env = {**os.environ, "MPSCTL_SERVICE_URL": url}
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return proc.returncode, set(line.split()[1:])


def heavy(modules: set[str], *names: str) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("flag", ["--json", "--nagios"])
def test_machine_probe_of_a_stopped_service_imports_no_tables_no_requests_no_torch(
    flag: str,
) -> None:
    code, modules = imported("probe", flag)
    assert code == 2  # CRITICAL: nothing listens at port 9
    assert "mpsctl.probe" in modules  # the probe really ran
    assert heavy(modules, "rich.console", "rich.table", "requests", "urllib3", "torch",
                 "transformers") == []  # fmt: skip


def test_table_probe_still_prints_with_rich() -> None:
    code, modules = imported("probe")
    assert code == 2
    assert {"rich.console", "rich.table"} <= modules
    assert heavy(modules, "requests", "torch") == []


def test_help_imports_no_command_module_and_no_settings(tmp_path: Path) -> None:
    code, modules = imported("--help")
    assert code == 0
    commands = sorted(m for m in modules if m.startswith("mpsctl.cli.") and m != "mpsctl.cli.app")
    assert commands == []
    assert (
        heavy(
            modules,
            "mpsctl.settings",
            "mpsctl.settings_schema",
            "rich.console",
            "requests",
            "psutil",
        )
        == []
    )
