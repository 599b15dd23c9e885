"""Whose kill a kill is: two services, each with its own MPSCTL_HOME, and the kernel's recorded
kills of both (and of the same process name before either started), read through the system
log reader's seam: each service lists only its own kills, and its probe counts them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.control.pidfile import write_pidfile
from mpsctl.deaths.attribution import read_runs, record_run
from mpsctl.deaths.how_it_died import service_kills
from mpsctl.observe.processes import PidRecord, default_pidfile_path
from mpsctl.probe import recent_oom_events
from mpsctl.settings import load_settings
from tests.corpus.test_corpus import CORPUS

# Two real journals (syslog stamps, no year): a Raspberry Pi's two kills of "python" (pid
# 27241 on Nov 20 at 15:10:43, pid 36707 at 17:40:45), and a host's kills of "python3"
# processes on May 15, months before either service started.
TWO_KILLS = (CORPUS / "k-inkypi-428-two-journals-bash-killed-systemd.txt").read_text("utf-8")
EARLIER = (CORPUS / "k-docker-for-linux-1001-memcg-four-python3.txt").read_text("utf-8")


def at(month: int, day: int, hour: int, minute: int) -> float:
    """A moment this year, as syslog's yearless stamps above are read (the local zone)."""
    return datetime(datetime.now().year, month, day, hour, minute).timestamp()


def runner(argv: Sequence[str]) -> tuple[int, str, str]:
    if argv[0] == "journalctl":
        return 0, EARLIER + TWO_KILLS, ""
    return 127, "", ""


def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    home = tmp_path / name
    home.mkdir()
    config = tmp_path / f"{name}.toml"
    config.write_text(
        '[service]\ncommand = ["python", "-m", "demo"]\nlog_file = "backend.log"\n'
        'url = "http://127.0.0.1:9"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("MPSCTL_HOME", str(home))
    monkeypatch.setenv("MPSCTL_CONFIG", str(config))
    return home


def kills_of(monkeypatch: pytest.MonkeyPatch, home: Path, others: bool = False) -> list[int]:
    monkeypatch.setenv("MPSCTL_HOME", str(home))
    found, looked = service_kills(load_settings(), runner=runner, root=home, others=others)
    assert looked[0] == "journalctl -k"
    return [item.event.pid for item in found]  # type: ignore[union-attr]


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    first = service(tmp_path, monkeypatch, "first")
    # the first service ran as pid 27241 from 15:00 (the pidfile is written as start does;
    # it records the run), and was killed at 15:10:43
    settings = load_settings()
    record = PidRecord(27241, at(11, 20, 15, 0), ("python", "-m", "demo"))
    write_pidfile(default_pidfile_path(settings), record)
    second = service(tmp_path, monkeypatch, "second")
    # the second service, started on the same machine after the first was killed: an
    # earlier run recorded in its history (15:30), then pid 36707 from 16:00
    record_run(second, 1234, at(11, 20, 15, 30), ["python", "-m", "demo"])
    settings = load_settings()
    write_pidfile(default_pidfile_path(settings), PidRecord(36707, at(11, 20, 16, 0), ("python",)))
    return first, second


def test_each_service_lists_only_its_own_kills(
    two: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two
    assert [run.pid for run in read_runs(second)] == [1234, 36707]
    assert kills_of(monkeypatch, first) == [27241]
    assert kills_of(monkeypatch, second) == [36707]
    # the others are there, labelled, when asked for: the May kills before either started
    # and the other service's kill
    everyone = kills_of(monkeypatch, first, others=True)
    assert sorted(everyone) == sorted([27241, 15617, 15674, 15623, 15694, 36707])


def test_oom_all_labels_other_processes(
    two: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _second = two
    monkeypatch.setenv("MPSCTL_HOME", str(first))
    monkeypatch.setattr("mpsctl.deaths.system_logs.run_command", runner)
    result = CliRunner().invoke(main, ["oom", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(e["kind"], e["pid"]) for e in doc["events"]] == [("kernel_oom_kill", 27241)]
    result = CliRunner().invoke(main, ["oom", "--json", "--all"])
    doc = json.loads(result.stdout)
    others = [e["pid"] for e in doc["events"] if e.get("other_process")]
    assert sorted(others) == sorted([15617, 15674, 15623, 15694, 36707])
    assert [e["pid"] for e in doc["events"] if not e.get("other_process")] == [27241]


def test_probe_counts_the_services_kernel_kill(
    two: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two
    window = time.time() - at(11, 20, 17, 30)  # back to just before the second kill
    monkeypatch.setenv("MPSCTL_HOME", str(second))
    events = recent_oom_events(load_settings(), window, runner=runner, root=second)
    assert [(e["kind"], e["pid"]) for e in events] == [("kernel_oom_kill", 36707)]
    monkeypatch.setenv("MPSCTL_HOME", str(first))
    assert recent_oom_events(load_settings(), window, runner=runner, root=first) == []
    wider = time.time() - at(11, 20, 15, 0)
    events = recent_oom_events(load_settings(), wider, runner=runner, root=first)
    assert [e["pid"] for e in events] == [27241]
    assert events[0]["time"].endswith(":10:43Z")


def test_a_recorded_earlier_runs_pid_is_the_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = service(tmp_path, monkeypatch, "only")
    # pid 36707's run is over (recorded in the history); the pidfile names a later run, and
    # the service's process is named differently now: only the recorded pid ties the kill
    record_run(home, 36707, at(11, 20, 16, 0), ["python", "-m", "demo"])
    settings = load_settings()
    write_pidfile(default_pidfile_path(settings), PidRecord(4242, at(11, 20, 18, 0), ("uvicorn",)))
    assert kills_of(monkeypatch, home) == [36707]
