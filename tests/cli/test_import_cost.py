"""What a cron-speed command imports, read from the real interpreter's ``sys.modules``.

A module imported at the top of the wrong file costs every probe tens of milliseconds
(requests ~50 ms, rich's console and tables ~25 ms): these runs catch it where a timing
would only be noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mpsctl.control.start import start_service
from mpsctl.control.stop import stop_service
from mpsctl.observe.processes.tree import create_time_of, is_alive
from tests.control.fakes import FakeService, fake_service

__all__ = ["fake_service"]  # a fixture

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


# what `status` and `stop` may never load: start's path (its preflight, memory limits and
# log follower), the table renderer, the log and system-log readers of a death diagnosis,
# an HTTP stack (a refused connect needs only a socket), the model's libraries
NOT_FOR_STATUS_OR_STOP = (
    "mpsctl.control.start",
    "mpsctl.control.preflight",
    "mpsctl.render.lifecycle",
    "mpsctl.deaths",
    "rich",
    "requests",
    "http.client",
    "torch",
    "transformers",
)


@pytest.mark.parametrize(("command", "exit_code"), [("status", 3), ("stop", 0)])
def test_status_and_stop_with_nothing_running_load_only_what_they_use(
    command: str, exit_code: int
) -> None:
    code, modules = imported(command)
    assert code == exit_code
    assert f"mpsctl.control.{command}" in modules  # the command really ran
    assert heavy(modules, *NOT_FOR_STATUS_OR_STOP) == []


def test_stop_of_a_running_service_loads_no_start_path(
    fake_service: Callable[..., FakeService],
) -> None:
    fake = fake_service()
    started = start_service(fake.settings())
    assert started.status == "started"
    code, modules = imported("stop", url=f"http://127.0.0.1:{fake.port}")
    assert code == 0
    assert not is_alive(started.pid, create_time_of(started.pid) or 0.0)
    assert "rich.table" in modules  # it printed the table of what it signalled
    assert heavy(modules, "mpsctl.control.start", "mpsctl.control.preflight",
                 "mpsctl.deaths", "requests", "torch") == []  # fmt: skip


def test_status_of_a_running_service_loads_no_start_path_and_no_tables(
    fake_service: Callable[..., FakeService],
) -> None:
    fake = fake_service()
    started = start_service(fake.settings())
    try:
        code, modules = imported("status", url=f"http://127.0.0.1:{fake.port}")
        assert code == 0
        assert "http.client" in modules  # the health check got its answer
        assert heavy(modules, "mpsctl.control.start", "mpsctl.render.lifecycle", "rich",
                     "requests", "mpsctl.deaths", "torch") == []  # fmt: skip
    finally:
        stop_service(fake.settings())
    assert started.pid is not None


@pytest.mark.parametrize(
    ("args", "exit_code", "stdout"),
    [
        (["status", "--json"], 3, '"state": "stopped"'),
        (["stop"], 0, "is not running"),
        (["--config", "/nonexistent/mpsctl.toml", "status"], 4, ""),
    ],
)
def test_the_program_ends_quickly_with_its_output_and_exit_status(
    args: list[str], exit_code: int, stdout: str
) -> None:
    """``python -m mpsctl`` skips the interpreter's teardown for these commands: what they
    printed still arrives whole through a pipe, with the command's own exit status."""
    env = {**os.environ, "MPSCTL_SERVICE_URL": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "mpsctl", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == exit_code, proc.stderr
    assert stdout in proc.stdout
    assert proc.stdout.endswith("\n") or proc.stdout == ""
    if exit_code == 4:
        assert proc.stderr.startswith("mpsctl: error: ")


def test_probe_of_a_running_service_with_a_fresh_log_loads_no_log_parsers(
    fake_service: Callable[..., FakeService],
) -> None:
    """The service's log is written all the time (every request): the probe reads what is
    new since its cursor, and only a memory failure's prefilter string loads the scanner."""
    fake = fake_service()
    started = start_service(fake.settings())
    url = f"http://127.0.0.1:{fake.port}"
    try:
        imported("probe", "--json", url=url)  # the first probe: the cursor starts
        with fake.log.open("a") as out:
            out.write('INFO:     127.0.0.1:50000 - "GET /health HTTP/1.1" 200 OK\n' * 20)
        code, modules = imported("probe", "--json", url=url)
        assert "mpsctl.deaths.cursor" in modules  # the new bytes were looked at
        assert heavy(modules, "mpsctl.deaths.scanner", "mpsctl.deaths.parsers",
                     "mpsctl.deaths.allocator", "requests", "torch") == []  # fmt: skip
        with fake.log.open("a") as out:
            out.write("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
        code, modules = imported("probe", "--json", url=url)
        assert "mpsctl.deaths.scanner" in modules  # a candidate: the scanner reads it
    finally:
        stop_service(fake.settings())
    assert started.status == "started"
    assert code in (0, 1, 2)
