"""How the service died: a real process killed with SIGKILL, the kernel's record of the kill
(a recorded dmesg, fed through the reader seam), the service's own last OOM, or nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.control.pidfile import default_pidfile_path, write_pidfile
from mpsctl.deaths import system_logs
from mpsctl.deaths.parsers import find_deaths
from mpsctl.observe.processes import PidRecord
from mpsctl.settings import load_settings
from tests.conftest import free_port, read_fixture

JOURNAL_HINT = (
    "Hint: You are currently not seeing messages from other users and the system.\n"
    "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
)
DMESG = read_fixture("linux-oomkill-8-memcg-dmesg-k8s-negative-adj.txt")


def killed_service(tmp_path: Path, write_config, extra: str = "") -> int:  # type: ignore[no-untyped-def]
    """A real process named python3, recorded in the pidfile as mpsctl start does, then
    killed with SIGKILL as the OOM killer kills."""
    exe = tmp_path / "python3"
    exe.symlink_to(sys.executable)
    argv = [str(exe), "-c", "import time; time.sleep(60)"]
    write_config(
        "[service]\n"
        f"command = {json.dumps(argv)}\n"
        'log_file = "backend.log"\n'
        f'url = "http://127.0.0.1:{free_port()}"\n' + extra
    )
    proc = subprocess.Popen(argv)
    create = psutil.Process(proc.pid).create_time()
    settings = load_settings()
    write_pidfile(default_pidfile_path(settings), PidRecord(proc.pid, create, tuple(argv)))
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    return proc.pid


def recorded_kernel(monkeypatch: pytest.MonkeyPatch, output: str, code: int = 0) -> None:
    """The reader seam answers with a recorded dmesg; journalctl is not installed."""

    def runner(argv: Sequence[str]) -> tuple[int, str, str]:
        if argv[0] == "dmesg":
            return code, output, ""
        return 127, "", ""

    monkeypatch.setattr(system_logs, "run_command", runner)
    # dmesg stamps seconds since boot: the recorded machine booted 18000 s before it logged
    boot = datetime.now(timezone.utc) - timedelta(seconds=18000)
    monkeypatch.setattr(system_logs, "_boot_time", lambda: boot)


def test_status_names_the_kernel_oom_kill(
    tmp_path: Path,
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    killed_service(tmp_path, write_config)
    recorded_kernel(monkeypatch, DMESG)
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 1, result.stderr
    death = json.loads(result.stdout)["death"]
    assert death["cause"] == "kernel_oom_kill"
    # the last kill of a python3 in the recorded log: pid 141320, anon-rss 24100 kB
    assert death["evidence"]["pid"] == 141320
    assert death["evidence"]["anon_rss_bytes"] == 24100 * 1024
    assert "died at " in death["text"]
    assert (
        "killed by the kernel OOM killer in a memory cgroup (anon-rss 23.54 MiB)" in death["text"]
    )
    assert "dmesg" in death["looked_in"]
    text = CliRunner().invoke(main, ["status"], env={"COLUMNS": "300"})
    assert "killed by the kernel OOM killer" in text.stdout


def test_probe_and_its_alert_say_how(
    tmp_path: Path,
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    killed_service(tmp_path, write_config)
    recorded_kernel(monkeypatch, DMESG)
    result = CliRunner().invoke(main, ["probe", "--json"])
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "CRITICAL"
    assert doc["death"]["cause"] == "kernel_oom_kill"
    assert any("killed by the kernel OOM killer" in r for r in doc["reasons"])


def test_no_evidence_names_every_place_and_privileges(
    tmp_path: Path,
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    killed_service(tmp_path, write_config)
    recorded_kernel(monkeypatch, "", code=1)
    settings = load_settings()
    from mpsctl.deaths.how_it_died import how_it_died
    from mpsctl.observe.processes import find_service

    denied = system_logs.read_system_logs(
        runner=lambda argv: (
            (1, "", "dmesg: read kernel buffer failed: Operation not permitted")
            if argv[0] == "dmesg"
            else (0, "-- No entries --\n", JOURNAL_HINT)
        ),
        root=tmp_path,
    )
    assert [p.text() for p in denied.places] == [
        "journalctl -k (not readable without privileges)",
        "dmesg (not readable without privileges)",
    ]
    cause = how_it_died(settings, find_service(settings), system=denied)
    assert cause is not None
    assert cause.cause == "unknown"
    assert "no evidence found (looked in: journalctl -k (not readable without privileges), " in (
        cause.text
    )
    assert str(settings.service.log_file) in cause.text


def test_the_services_own_last_oom_when_no_kill_is_recorded(
    tmp_path: Path,
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    killed_service(tmp_path, write_config, "[oom]\nsystem_logs = false\n")
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    oom = read_fixture("torch-mps-oom-12-logits-traceback.txt")
    (tmp_path / "backend.log").write_text(f"{stamp} ERROR generation failed\n{oom}")
    result = CliRunner().invoke(main, ["status", "--json"])
    death = json.loads(result.stdout)["death"]
    assert death["cause"] == "oom"
    assert "exited after: RuntimeError: MPS backend out of memory" in death["text"]
    assert "system logs (oom.system_logs = false)" in death["looked_in"]


def test_macos_places_jetsam_lines_and_reports(tmp_path: Path) -> None:
    """``log show`` output and JetsamEvent reports, both recorded, through the macOS readers."""
    reports = tmp_path / "home/Library/Logs/DiagnosticReports"
    reports.mkdir(parents=True)
    ips = read_fixture("macos-jetsam-2-ips-full-report-highwater.txt")
    (reports / "JetsamEvent-2020-10-15-172958.ips").write_text(ips)
    (reports / "Other-2020-10-15.ips").write_text(ips)  # not a jetsam report: not read
    unified = read_fixture("macos-jetsam-4-unified-log-killed-by-jetsam-reason.txt")
    seen: list[list[str]] = []

    def runner(argv: Sequence[str]) -> tuple[int, str, str]:
        seen.append(list(argv))
        return 0, unified, ""

    evidence = system_logs.read_system_logs(
        platform="darwin", runner=runner, root=tmp_path / "root", home=tmp_path / "home"
    )
    assert seen[0][:3] == ["log", "show", "--last"]
    assert "memorystatus" in seen[0][-1]
    assert evidence.looked_in == [
        "log show (memorystatus)",
        f"{tmp_path}/root/Library/Logs/DiagnosticReports/JetsamEvent-*.ips (absent)",
        f"{reports}/JetsamEvent-*.ips",
    ]
    kinds = [(f.kind, getattr(f.event, "process", None)) for f in evidence.found]
    assert ("jetsam_kill", "Tunnel") in kinds
    assert sum(1 for f in evidence.found if f.file and f.file.endswith(".ips")) == len(
        [e for e in find_deaths(ips) if e.kind == "jetsam_kill"]
    )


def test_linux_files_are_scanned_and_absent_ones_not_listed(tmp_path: Path) -> None:
    log = tmp_path / "var/log/kern.log"
    log.parent.mkdir(parents=True)
    log.write_text(read_fixture("linux-oomkill-4-kernlog-sacrifice-child-oom-reaper.txt"))
    evidence = system_logs.read_system_logs(
        platform="linux", runner=lambda argv: (127, "", ""), root=tmp_path
    )
    assert evidence.looked_in == ["dmesg (not installed)", "/var/log/kern.log"]
    [kill] = evidence.found
    assert (kill.kind, kill.file, getattr(kill.event, "pid", None)) == (
        "kernel_oom_kill", "/var/log/kern.log", 15889,
    )  # fmt: skip


def test_oom_lists_the_kernels_kills_of_the_service(
    tmp_path: Path,
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    killed_service(tmp_path, write_config)
    recorded_kernel(monkeypatch, DMESG)
    (tmp_path / "backend.log").write_text("")
    doc = json.loads(CliRunner().invoke(main, ["oom", "--json"]).stdout)
    assert doc["system_logs"][0] == "dmesg"
    kills = [e for e in doc["events"] if e["kind"] == "kernel_oom_kill" and e["file"] == "dmesg"]
    # the recorded log's kills of a process named python3 (the service's name here), not mount
    assert [e["pid"] for e in kills] == [140339, 141320]
