"""Who is the service: pidfile identity (argv, PID 1, corrupt bytes) and ``service.match``
limited to the process that listens on the service's port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.control.status import service_status
from mpsctl.control.stop import stop_service
from mpsctl.errors import StatusExit
from mpsctl.observe import processes
from mpsctl.observe.procfs import argv_matches
from tests.conftest import free_port
from tests.control.fakes import alive, fake_service, kill_strays, sleeper, spawned, wait_for
from tests.scenarios.conftest import MAIN
from tests.service_fixtures import http_request

__all__ = ["fake_service", "spawned"]  # fixtures


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def test_argv_matches_the_forms_the_process_table_shows() -> None:
    recorded = ("uvicorn", "app.main:app", "--port", "8000")
    # exec of a script: the kernel puts the interpreter first and the program's full path
    assert argv_matches(recorded, ("/v/bin/python3", "/v/bin/uvicorn", "app.main:app",
                                   "--port", "8000"))  # fmt: skip
    assert argv_matches(recorded, recorded)
    assert argv_matches((), ("anything",))  # an old pidfile without argv: nothing to compare
    assert not argv_matches(recorded, ("/bin/sleep", "600"))
    assert not argv_matches(recorded, ("/v/bin/uvicorn", "app.main:app", "--port", "9000"))
    assert not argv_matches(recorded, ("/v/bin/gunicorn", "app.main:app", "--port", "8000"))


def test_a_pidfile_naming_pid_1_is_not_a_running_service(fake_service, isolated_home: Path) -> None:
    """Item: a pidfile naming PID 1 made `status` say `running, pid 1`."""
    settings = fake_service().settings()
    init = psutil.Process(1)
    isolated_home.mkdir(parents=True, exist_ok=True)
    record = {"pid": 1, "create_time": init.create_time(), "argv": init.cmdline()}
    (isolated_home / "service.pid").write_text(json.dumps(record))

    status = service_status(settings)

    assert status.state != "running"
    assert status.exit_code == StatusExit.DEAD_PIDFILE
    assert processes.find_service(settings).pidfile_state == "reused"


def test_a_pidfile_whose_command_line_is_not_the_recorded_one_is_reused(
    fake_service, spawned: list, isolated_home: Path
) -> None:
    settings = fake_service().settings()
    other = sleeper("an-unrelated-job")
    spawned.append(other)
    isolated_home.mkdir(parents=True, exist_ok=True)
    record = {"pid": other.pid, "create_time": psutil.Process(other.pid).create_time(),
              "argv": ["uvicorn", "app.main:app", "--port", "8000"]}  # fmt: skip
    (isolated_home / "service.pid").write_text(json.dumps(record))

    stopped = stop_service(settings, timeout=0.5)

    assert stopped.status == "already-stopped"
    assert stopped.pidfile_state == "reused"
    assert alive(other.pid)  # never signalled


@pytest.mark.parametrize("command", ["stop", "start", "restart", "fix"])
def test_a_corrupt_pidfile_is_moved_aside_and_the_command_carries_on(
    command: str, fake_service, isolated_home: Path
) -> None:
    """#13 item 8: a pidfile of invalid UTF-8 (`printf '\\xff\\xfe\\x00' > service.pid`) made
    stop/start/restart print a UnicodeDecodeError traceback and fix fail on every run."""
    fake_service()
    isolated_home.mkdir(parents=True, exist_ok=True)
    pidfile = isolated_home / "service.pid"
    pidfile.write_bytes(b"\xff\xfe\x00")
    try:
        result = run(command)
        assert result.exit_code == 0, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        aside = isolated_home / "service.pid.corrupt"
        assert aside.read_bytes() == b"\xff\xfe\x00"
        if command == "stop":
            assert "corrupt: moved it to" in result.output
        else:
            assert json.loads(pidfile.read_text())["pid"] > 0  # a new, valid pidfile
    finally:
        run("stop")


# --------------------------------------------------------------------------- match and ports
@pytest.fixture
def mvp(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "mvp"
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(MAIN)
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "uvicorn").symlink_to(Path(sys.executable).parent / "uvicorn")
    yield root
    kill_strays("app.main:app")


def by_hand(root: Path, port: int) -> subprocess.Popen[bytes]:
    """``cd mvp && venv/bin/uvicorn app.main:app --port N``: a relative program path."""
    proc = subprocess.Popen(
        ["venv/bin/uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip

    def answers() -> bool:
        try:
            return http_request(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    assert wait_for(answers, 20), "the hand-started service did not answer"
    return proc


def test_a_relative_venv_path_is_matched_and_a_copy_on_another_port_is_not_the_service(
    mvp: Path, write_config, isolated_home: Path
) -> None:
    """#13 item 24: a service started as `venv/bin/uvicorn ...` (relative path) was "unknown
    (set service.match)" although match was set. And a staging copy whose command line
    matches too, listening on another port, is never the service."""
    port, other = free_port(), free_port()
    write_config(
        "[service]\n"
        f'workdir = "{mvp}"\n'
        'command = ["uvicorn", "app.main:app"]\n'
        f'url = "http://127.0.0.1:{port}"\n'
        f'match = "{mvp}/venv/bin/uvicorn app.main:app"\n'
    )
    service, copy = by_hand(mvp, port), None
    try:
        copy = by_hand(mvp, other)  # the same program on another port: a staging copy
        from mpsctl.settings import load_settings

        snapshot = processes.find_service(load_settings())

        assert snapshot.found_by == "match"
        assert snapshot.roots == (service.pid,)
        assert [p.pid for p in snapshot.others] == [copy.pid]

        stopped = run("stop", "--match")
        assert stopped.exit_code == 0, stopped.output
        assert wait_for(lambda: service.poll() is not None, 10)
        assert copy.poll() is None  # the copy was left alone
        status = run("status")
        assert status.exit_code == StatusExit.NOT_RUNNING, status.output
    finally:
        for proc in (service, copy):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


def test_a_loading_match_is_the_service_only_when_its_argv_names_the_port(
    spawned: list, write_config, isolated_home: Path
) -> None:
    """Not listening yet: a copy loading its model for another port, or one whose argv says
    nothing, is never the service; one whose argv names the service's port is."""
    port = free_port()
    other = free_port()
    ours = sleeper("mvp-service-marker", "--port", str(port))
    neighbour = sleeper("mvp-service-marker", f"--port={other}")
    silent = sleeper("mvp-service-marker", "--host", "127.0.0.1")
    spawned.extend([ours, neighbour, silent])
    write_config(
        "[service]\n"
        f'url = "http://127.0.0.1:{port}"\n'
        'command = ["x"]\n'
        'match = "mvp-service-marker"\n'
        "start_timeout = 600\n"
    )
    from mpsctl.settings import load_settings

    found = processes.find_service(load_settings())

    assert (found.found_by, found.roots) == ("match", (ours.pid,))
    assert sorted(p.pid for p in found.others) == sorted([neighbour.pid, silent.pid])
    status = run("status", "--json")
    assert json.loads(status.stdout)["pid"] == ours.pid


def test_start_waits_for_a_port_the_stopped_process_still_holds(
    fake_service, spawned: list
) -> None:
    """After a stop, a socket can outlive its process for a moment: start waits for it
    (within stop_timeout) and names the process it just stopped, never "another process"."""
    from mpsctl.control.preflight import check_port_free
    from mpsctl.errors import ServiceError

    fake = fake_service()
    settings = fake.settings()
    code = (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {fake.port})); s.listen(); time.sleep(1.5)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code])
    spawned.append(holder)
    assert wait_for(lambda: processes.port_holder("127.0.0.1", fake.port) is not None, 10)

    with pytest.raises(ServiceError, match=f"pid {holder.pid}, stopped a moment ago"):
        check_port_free(settings, just_stopped={holder.pid})
    check_port_free(settings, wait=10, just_stopped={holder.pid})  # returns once it is free

    assert holder.poll() is not None


def test_root_is_never_told_to_use_sudo() -> None:
    from mpsctl.control.preflight import _describe_holder

    text = _describe_holder(None, set())
    if os.geteuid() == 0:
        assert "sudo" not in text
        assert "no live process" in text
    else:
        assert "sudo lsof" in text
    assert "stopped a moment ago" in _describe_holder(4242, {4242})


def test_clean_cache_and_status_read_a_corrupt_pidfile_without_a_traceback(
    fake_service, isolated_home: Path
) -> None:
    """#13 item 8, the read-only commands: no UnicodeDecodeError, one clear line."""
    fake_service()
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "service.pid").write_bytes(b"\xff\xfe\x00")

    cleaned = run("clean-cache")
    status = run("status")

    assert cleaned.exit_code == 0, cleaned.output
    assert status.exit_code == StatusExit.UNKNOWN
    assert "cannot be read" in status.output
    for result in (cleaned, status):
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, UnicodeDecodeError)


def test_a_lifecycle_command_without_a_settings_file_says_it_manages_the_demo(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From cron's cwd no mpsctl.toml is found: say so instead of silently managing the
    built-in demo service."""
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    result = run("status")

    assert result.exit_code == StatusExit.NOT_RUNNING
    lines = [line for line in result.stderr.splitlines() if "built-in demo service" in line]
    assert len(lines) == 1
    assert "no settings file" in lines[0]
    assert "mpsctl.toml" in lines[0]
