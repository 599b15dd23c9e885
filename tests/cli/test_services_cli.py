"""Two reference services (``mpsctl serve --demo``) under two names on two ports, from one
settings file: every per-service command against the real processes, the host view, the
watchdog per service, and the one memory budget refusing a start with its numbers.

The two services are shared by the module (each loads torch: seconds on two cores); each
test starts what it needs (``start`` on a running service is a no-op).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from mpsctl.control import audit
from mpsctl.errors import ExitCode
from mpsctl.plan.budget import plan_service
from mpsctl.settings import load_settings
from mpsctl.units import fmt_bytes
from tests.conftest import free_port
from tests.service_fixtures import http_request


@dataclass(frozen=True)
class Host:
    home: Path
    config: Path
    ports: dict[str, int]

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
        return {**base, "MPSCTL_HOME": str(self.home), "MPSCTL_CONFIG": str(self.config),
                "OMP_NUM_THREADS": "1", **extra}  # fmt: skip

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mpsctl", *args], env=self.env(**extra),
                              capture_output=True, text=True, timeout=240, check=False)  # fmt: skip

    def pid(self, name: str) -> int:
        return int(json.loads((self.home / "services" / name / "service.pid").read_text())["pid"])


def _config(ports: dict[str, int], extra: str = "") -> str:
    return f"""{extra}
[memory]
device = "cpu"

[service]
start_timeout = 120

[services.embed]
url = "http://127.0.0.1:{ports["embed"]}"

[services.chat]
url = "http://127.0.0.1:{ports["chat"]}"
after = ["embed"]

[services.chat.serve]
max_concurrent = 2
"""


def _host(root: Path, tiny_model: Path, extra: str = "") -> Host:
    home = root / "home"
    home.mkdir()
    # both services reuse the host's one demo checkpoint instead of building their own
    shutil.copytree(tiny_model, home / "demo-model")
    ports = {"embed": free_port(), "chat": free_port()}
    config = root / "mpsctl.toml"
    config.write_text(_config(ports, extra), encoding="utf-8")
    return Host(home, config, ports)


def _gone(pids: list[int], within: float = 10.0) -> bool:
    """True once none of ``pids`` is alive (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                alive.append(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        if not any(alive):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def two(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    host = _host(tmp_path_factory.mktemp("two-services"), tiny_model)
    yield host
    host.run("stop", "--all")


def test_changing_commands_ask_for_a_name_and_read_only_ones_show_all(two: Host) -> None:
    refused = two.run("start")
    assert refused.returncode == ExitCode.USAGE
    assert refused.stderr.strip().splitlines() == [
        "mpsctl: error: several services are configured (embed, chat): name the ones to act "
        "on, or pass --all"
    ]
    assert two.run("ask", "hi").returncode == ExitCode.USAGE
    down = two.run("status")
    assert down.returncode == 3
    assert [line.split(":")[0] for line in down.stdout.splitlines()] == ["embed", "chat"]


def test_both_start_answer_and_show_in_status_probe_logs_oom(two: Host) -> None:
    started = two.run("start", "--all", "--json")
    assert started.returncode == 0, started.stderr
    document = json.loads(started.stdout)
    assert [s["name"] for s in document["services"]] == ["embed", "chat"]  # after order
    for name, port in two.ports.items():
        token = (two.home / "services" / name / "token").read_text().strip()
        answer = http_request(f"http://127.0.0.1:{port}/api/v1/query", "POST",
                              {"question": "hello", "max_new_tokens": 2}, token=token)  # fmt: skip
        assert answer.status == 200
    # each service runs with its own table: chat's serve.max_concurrent reached its process
    chat_log = (two.home / "services" / "chat" / "service.log").read_text()
    assert "max 2 in flight" in chat_log

    status = two.run("status", "--json")
    assert status.returncode == 0, status.stderr
    states = {s["name"]: s["state"] for s in json.loads(status.stdout)["services"]}
    assert states == {"embed": "running", "chat": "running"}

    probe = json.loads(two.run("probe", "--json").stdout)
    assert probe["schema"] == "mpsctl.host-probe/1"
    assert [s["service"]["name"] for s in probe["services"]] == ["embed", "chat"]
    each = [s["service"]["footprint_bytes"] or s["service"]["rss_bytes"] for s in probe["services"]]
    assert probe["host"]["services_memory_bytes"] == sum(each) > 0
    assert probe["host"]["ram_bytes"] == psutil.virtual_memory().total

    asked = two.run("ask", "-s", "chat", "hello", "--json")
    assert asked.returncode == 0, asked.stderr
    logs = two.run("logs", "-s", "embed", "-n", "200")
    assert f"Uvicorn running on http://127.0.0.1:{two.ports['embed']}" in logs.stdout
    assert f":{two.ports['chat']}" not in logs.stdout
    oom = two.run("oom", "-s", "embed", "--json")
    assert oom.returncode == 0, oom.stderr


def test_textfile_labels_every_service(two: Host) -> None:
    assert two.run("start", "--all").returncode == 0
    prom = two.home / "mpsctl.prom"
    two.run("probe", "--prometheus", str(prom))
    text = prom.read_text()
    for name in ("embed", "chat"):
        assert f'mpsctl_verdict{{service="{name}"}} 0.0' in text
    assert text.count("# HELP mpsctl_verdict ") == 1  # one family, two labelled samples


def test_fix_and_the_watchdog_touch_only_their_service(two: Host) -> None:
    assert two.run("start", "--all").returncode == 0
    chat_before, embed_before = two.pid("chat"), two.pid("embed")
    fixed = two.run("fix", "chat")
    assert fixed.returncode == 0, fixed.stderr
    assert two.pid("chat") != chat_before
    assert two.pid("embed") == embed_before

    os.kill(embed_before, signal.SIGKILL)
    _gone([embed_before])
    chat_now = two.pid("chat")
    # each watchdog line as cron runs it: a bare environment, from /, the line as printed
    for line in _cron_lines(two)[1:]:
        ran = subprocess.run(
            ["env", "-i", f"HOME={two.home.parent}", "PATH=/usr/bin:/bin", "sh", "-c", line],
            cwd="/", capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, (line, (two.home / "cron.log").read_text())
    assert two.pid("embed") != embed_before
    assert two.pid("chat") == chat_now
    # each service's audit trail in its own state: the restart is embed's only
    embed_trail = audit.read_records(audit.fix_history_path(two.home / "services" / "embed"))
    chat_trail = audit.read_records(audit.fix_history_path(two.home / "services" / "chat"))
    assert (embed_trail[-1]["trigger"], embed_trail[-1]["restarted"]) == ("if-unhealthy", True)
    assert (chat_trail[-1]["trigger"], chat_trail[-1]["restarted"]) == ("if-unhealthy", False)
    assert [r["restarted"] for r in chat_trail] == [True, False]  # the fix by hand, then none
    assert [r["restarted"] for r in embed_trail] == [True]


def _cron_lines(host: Host) -> list[str]:
    printed = host.run("cron")
    assert printed.returncode == 0, printed.stderr
    # the command after the five schedule fields
    return [x.split(" ", 5)[5] for x in printed.stdout.splitlines() if x and x[0] != "#"]


def test_cron_prints_one_probe_and_a_watchdog_per_service(two: Host) -> None:
    lines = _cron_lines(two)
    assert len(lines) == 3
    assert " probe --record " in lines[0]
    assert " fix embed --if-unhealthy " in lines[1]
    assert " fix chat --if-unhealthy " in lines[2]


def test_stop_all_stops_both(two: Host) -> None:
    assert two.run("start", "--all").returncode == 0
    pids = [two.pid("embed"), two.pid("chat")]
    stopped = two.run("stop", "--all")
    assert stopped.returncode == 0, stopped.stderr
    assert _gone(pids)
    assert two.run("status").returncode == 3


def test_a_start_over_the_host_budget_is_refused_with_the_numbers(
    tiny_model: Path, tmp_path: Path
) -> None:
    host = _host(tmp_path, tiny_model)
    env = host.env()
    members = load_settings(environ=env).members
    peaks: dict[str, int] = {}
    for member in members:
        peak = plan_service(member).peak_bytes
        assert peak is not None, member.service.name
        peaks[member.service.name] = peak
    # room for either one, never for both
    budget = (max(peaks.values()) + sum(peaks.values())) // 2
    host.config.write_text(_config(host.ports, f"[host]\nbudget = {budget}\n"), encoding="utf-8")
    try:
        assert host.run("start", "embed").returncode == 0
        refused = host.run("start", "chat")
        assert refused.returncode == ExitCode.OVER_BUDGET == 78
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("mpsctl: error: starting chat would put the planned memory")
        assert f"of {fmt_bytes(budget)} (host.budget)" in line
        for name, peak in peaks.items():
            assert f"{name} {fmt_bytes(peak)}" in line
        assert "shrink " in line
        assert host.run("status", "chat").returncode == 3
        plan = json.loads(host.run("plan", "--json").stdout)
        assert (plan["fits"], plan["sum_bytes"]) == (False, sum(peaks.values()))
    finally:
        host.run("stop", "--all")


def test_exporter_serves_every_service_labelled(tiny_model: Path, tmp_path: Path) -> None:
    host = _host(tmp_path, tiny_model)
    port = free_port()
    served = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "exporter", "--port", str(port)],
        env=host.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline and "mpsctl_verdict" not in text:
            with contextlib.suppress(OSError):
                text = http_request(f"http://127.0.0.1:{port}/metrics").body.decode()
            time.sleep(0.2)
        # both stopped: CRITICAL (2) each, one family with a sample per service
        assert 'mpsctl_verdict{service="embed"} 2.0' in text
        assert 'mpsctl_verdict{service="chat"} 2.0' in text
        assert text.count("# HELP mpsctl_verdict ") == 1
    finally:
        served.send_signal(signal.SIGINT)
        served.communicate(timeout=20)
