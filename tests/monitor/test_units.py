"""Units for the service itself: systemd units checked by systemd-analyze, launchd plists
against launchd.plist(5), and ``start --foreground`` run the way the unit runs it."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.observe import processes
from mpsctl.settings import load_settings
from tests.conftest import free_port
from tests.monitor.external import require_tool
from tests.service_fixtures import stop_process, wait_healthy

#: the keys launchd.plist(5) documents (those the printed plists may use)
LAUNCHD_KEYS = {
    "Label", "Disabled", "UserName", "GroupName", "Program", "ProgramArguments",
    "EnableGlobbing", "EnableTransactions", "KeepAlive", "RunAtLoad", "RootDirectory",
    "WorkingDirectory", "EnvironmentVariables", "Umask", "TimeOut", "ExitTimeOut",
    "ThrottleInterval", "InitGroups", "WatchPaths", "QueueDirectories", "StartOnMount",
    "StartInterval", "StartCalendarInterval", "StandardInPath", "StandardOutPath",
    "StandardErrorPath", "Debug", "WaitForDebugger", "SoftResourceLimits",
    "HardResourceLimits", "Nice", "ProcessType", "AbandonProcessGroup", "LowPriorityIO",
    "LaunchOnlyOnce", "MachServices", "Sockets", "LimitLoadToSessionType",
    "AssociatedBundleIdentifiers",
}  # fmt: skip
KEEPALIVE_KEYS = {"SuccessfulExit", "NetworkState", "PathState", "OtherJobEnabled", "Crashed"}


def split_units(text: str) -> dict[str, str]:
    units: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# file: "):
            current = line.removeprefix("# file: ").strip()
            units[current] = ""
        elif current is not None:
            units[current] += line
    return units


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def unit_env(text: str) -> dict[str, str]:
    pairs = (shlex.split(v)[0] for v in unit_values(text, "Environment"))
    return dict(pair.split("=", 1) for pair in pairs)


def verify(tmp_path: Path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze", "systemd")
    folder = tmp_path / "units"
    folder.mkdir(exist_ok=True)
    for name, text in units.items():
        (folder / name).write_text(text, encoding="utf-8")
    env = {**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", str(tmp_path))}
    return subprocess.run(
        [tool, "--user", "verify", *sorted(str(folder / n) for n in units)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def reference_config(write_config: Callable[..., Path], tmp_path: Path, model: Path) -> int:
    port = free_port()
    command = [sys.executable, "-m", "mpsctl", "serve", "--model", str(model),
               "--device", "cpu", "--port", str(port), "--no-auth"]  # fmt: skip
    write_config(
        "[service]\n"
        'name = "mvp"\n'
        f"command = {json.dumps(command)}\n"
        f'url = "http://127.0.0.1:{port}"\n'
        f"workdir = {json.dumps(str(tmp_path))}\n"
        "stop_timeout = 20\n"
        "[memory]\nhigh_watermark_ratio = 0.7\nlow_watermark_ratio = 0.5\n"
    )
    return port


def systemd_units(*args: str) -> tuple[str, dict[str, str]]:
    result = CliRunner().invoke(main, ["cron", "--systemd", *args])
    assert result.exit_code == 0, result.stderr
    return result.stdout, split_units(result.stdout)


def test_systemd_units_pass_systemd_analyze_verify(
    write_config: Callable[..., Path], tmp_path: Path, isolated_home: Path
) -> None:
    config = write_config('[service]\nname = "mvp"\n[memory]\nhigh_watermark_ratio = 0.6\n')
    text, units = systemd_units("--fix-every", "10")
    assert sorted(units) == [
        "mpsctl-mvp-exporter.service", "mpsctl-mvp-fix.service", "mpsctl-mvp-fix.timer",
        "mpsctl-mvp-probe.service", "mpsctl-mvp-probe.timer", "mpsctl-mvp.service",
    ]  # fmt: skip
    assert (
        "systemctl --user daemon-reload && systemctl --user enable --now "
        "mpsctl-mvp-probe.timer mpsctl-mvp-fix.timer mpsctl-mvp.service "
        "mpsctl-mvp-exporter.service"
    ) in text
    service = units["mpsctl-mvp.service"]
    argv = shlex.split(unit_values(service, "ExecStart")[0])
    assert Path(argv[0]).is_absolute()
    assert argv[-4:] == ["--config", str(config), "start", "--foreground"]
    assert unit_values(service, "Restart") == ["on-failure"]
    assert unit_values(service, "RestartSec") == ["5"]
    # a start that cannot succeed is not retried; a crash loop stops after 5 starts in 5 min
    assert unit_values(service, "RestartPreventExitStatus") == ["2 73"]
    assert unit_values(service, "StartLimitBurst") == ["5"]
    assert unit_values(service, "StartLimitIntervalSec") == ["300"]
    assert unit_values(service, "MemoryMax") == []  # no [serve] memory_limit
    env = unit_env(service)
    assert env["MPSCTL_HOME"] == str(isolated_home)
    # start --foreground builds the service's environment from the settings at each start:
    # the unit copies none of it (nothing to go stale)
    assert "PYTORCH_MPS_HIGH_WATERMARK_RATIO" not in env
    assert unit_values(units["mpsctl-mvp-fix.timer"], "OnCalendar") == ["*:0/10"]
    assert unit_values(units["mpsctl-mvp-probe.service"], "TimeoutStartSec") == ["120"]
    assert unit_values(units["mpsctl-mvp-fix.service"], "TimeoutStartSec") == ["250"]
    exporter = shlex.split(unit_values(units["mpsctl-mvp-exporter.service"], "ExecStart")[0])
    assert exporter[-5:] == ["exporter", "--host", "127.0.0.1", "--port", "9808"]
    assert unit_values(units["mpsctl-mvp-probe.service"], "SuccessExitStatus") == ["1 2 3"]
    assert unit_values(units["mpsctl-mvp-fix.service"], "SuccessExitStatus") == ["75"]
    done = verify(tmp_path, units)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""  # systemd-analyze exits 0 on mere warnings


def test_the_reference_services_memory_limit_bounds_its_unit(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    write_config('[serve]\nmemory_limit = "8GiB"\n')
    _, units = systemd_units()
    service = units["mpsctl-serve.service"]
    assert unit_values(service, "MemoryMax") == [str(8 << 30)]
    assert unit_values(service, "MemoryHigh") == [str(int(0.9 * (8 << 30)))]
    done = verify(tmp_path, units)
    assert (done.returncode, done.stderr) == (0, "")


def test_systemd_analyze_check_catches_a_broken_unit(tmp_path: Path) -> None:
    # the check above must be able to fail: a bad setting is a diagnostic on stderr
    _, units = systemd_units()
    name = next(n for n, text in units.items() if "Type=oneshot" in text)
    units[name] = units[name].replace("Type=oneshot", "Type=bogus")
    done = verify(tmp_path, units)
    assert "bogus" in done.stderr


def test_percent_and_dollar_are_not_expanded_by_systemd(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    _, units = systemd_units("--alert-cmd", "notify 100% $HOME")
    exec_line = unit_values(units["mpsctl-serve-probe.service"], "ExecStart")[0]
    assert '"notify 100%% $$HOME"' in exec_line
    done = verify(tmp_path, units)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_launchd_plist_for_the_service(
    write_config: Callable[..., Path], tmp_path: Path, isolated_home: Path
) -> None:
    config = write_config('[service]\nname = "mvp"\n[memory]\nhigh_watermark_ratio = 0.6\n')
    result = CliRunner().invoke(main, ["cron", "--launchd", "--job", "service"])
    assert result.exit_code == 0, result.stderr
    plist = plistlib.loads(result.stdout.encode())
    assert set(plist) <= LAUNCHD_KEYS
    assert set(plist["KeepAlive"]) <= KEEPALIVE_KEYS
    assert plist["Label"] == "io.github.mpsctl.mvp"
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 10
    assert plist["ProgramArguments"][-4:] == ["--config", str(config), "start", "--foreground"]
    settings = load_settings()
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(settings.service.log_file)
    assert plist["WorkingDirectory"] == str(settings.service.workdir)
    env = plist["EnvironmentVariables"]
    assert env["MPSCTL_HOME"] == str(isolated_home)
    assert "PYTORCH_MPS_HIGH_WATERMARK_RATIO" not in env  # start --foreground sets it
    every = CliRunner().invoke(main, ["cron", "--launchd"]).stdout
    assert every.count("<plist") == 4
    assert "# save as ~/Library/LaunchAgents/io.github.mpsctl.mvp.plist" in every


def status_of() -> Any:
    return CliRunner().invoke(main, ["status"])


def run_like_the_unit(unit: str) -> tuple[subprocess.Popen[bytes], Path]:
    """ExecStart= with only the unit's Environment= (plus this checkout on PYTHONPATH), in
    its WorkingDirectory=, output appended to its StandardOutput=append: file."""
    argv = shlex.split(unit_values(unit, "ExecStart")[0])
    env = {**unit_env(unit), "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
    env["OMP_NUM_THREADS"] = "1"
    workdir = unit_values(unit, "WorkingDirectory")[0]
    log = Path(unit_values(unit, "StandardOutput")[0].removeprefix("append:"))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log


def test_start_foreground_runs_and_stops_like_a_systemd_main_process(
    tiny_model: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    port = reference_config(write_config, tmp_path, tiny_model)
    _, units = systemd_units()
    proc, log = run_like_the_unit(units["mpsctl-mvp.service"])
    assert log == load_settings().service.log_file
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log, 120)
        # the unit's main PID is mpsctl; its one child is the service, with the memory
        # settings
        (service,) = psutil.Process(proc.pid).children()
        assert "serve" in service.cmdline()
        # its pidfile names the service: status and probe find it
        snapshot = processes.find_service(load_settings())
        assert (snapshot.found_by, snapshot.roots) == ("pidfile", (service.pid,))
        assert status_of().exit_code == 0
        assert service.environ()["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.7"
        assert service.environ()["PYTORCH_MPS_LOW_WATERMARK_RATIO"] == "0.5"
        proc.send_signal(signal.SIGTERM)  # what `systemctl --user stop` sends first
        code = proc.wait(30)
    finally:
        stop_process(proc)
    # uvicorn shuts down gracefully, then re-raises SIGTERM: systemd counts an exit by
    # SIGTERM as clean (like 0), so Restart=on-failure leaves a stopped unit stopped
    assert code in (0, -signal.SIGTERM)
    assert "Finished server process" in log.read_text(encoding="utf-8")
    # a clean stop: no pidfile is left to read as a death, `status` says stopped
    assert status_of().exit_code == 3


def test_start_foreground_exit_status_is_the_services(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # a crash must reach systemd as a failure, so Restart=on-failure restarts it
    port = free_port()
    command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    write_config(
        f'[service]\nname = "mvp"\ncommand = {json.dumps(command)}\n'
        f'url = "http://127.0.0.1:{port}"\nworkdir = {json.dumps(str(tmp_path))}\n'
    )
    _, units = systemd_units()
    proc, log = run_like_the_unit(units["mpsctl-mvp.service"])
    assert proc.wait(60) == 3, log.read_text(encoding="utf-8")
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(proc.pid)
