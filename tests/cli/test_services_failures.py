"""Commands over several services when one of them fails: a start that dies, a stop whose
lock another run holds, a service that ignores SIGTERM. One service's failure must never
leave the others unstarted or running, and the output must still account for every one.

Real processes: the fake http.server service of tests/control/fakes.py, under
``[services.NAME]`` tables of one settings file, driven through ``python -m mpsctl``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from mpsctl.errors import ExitCode
from mpsctl.plan.budget import plan_service
from mpsctl.settings import load_settings
from tests.conftest import free_port
from tests.control.fakes import (
    FAKE_SERVICE,
    fake_command,
    kill_strays,
    wait_for,
    write_fake_service,
)


@dataclass
class Host:
    root: Path
    config: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
        env |= {"MPSCTL_HOME": str(self.home), "MPSCTL_CONFIG": str(self.config), **extra}
        return subprocess.run([sys.executable, "-m", "mpsctl", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    def running(self, name: str) -> bool:
        return self.run("status", name).returncode == 0


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    script = write_fake_service(tmp_path)
    (tmp_path / "home").mkdir()
    made = Host(tmp_path, tmp_path / "mpsctl.toml")
    made.script = script  # type: ignore[attr-defined]
    yield made
    made.run("stop", "--all", "--timeout", "0")
    kill_strays(str(script))
    kill_strays(str(made.script))  # type: ignore[attr-defined]  # a test's own script


def _write(host: Host, services: dict[str, tuple[list[str], list[str]]]) -> None:
    """``services``: name -> (extra fake-service args, after)."""
    lines = [
        "[service]",
        f"workdir = {json.dumps(str(host.root))}",
        "start_timeout = 15",
        "stop_timeout = 2",
        "[thresholds]",
        "host_used_percent = [99.8, 99.9]",
        "swap_used_percent = [99.8, 99.9]",
    ]
    for name, (extra, after) in services.items():
        port = free_port()
        command = fake_command(host.script, port, *extra)  # type: ignore[attr-defined]
        lines += [
            f"[services.{name}]",
            f"command = {json.dumps(command)}",
            f'url = "http://127.0.0.1:{port}"',
            f'log_file = "{name}.log"',
            f"after = {json.dumps(after)}",
        ]
    host.config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_start_all_goes_on_past_a_failure_and_skips_only_its_dependents(host: Host) -> None:
    _write(host, {"a": ([], []), "b": (["--fake-die"], []), "c": ([], ["b"]), "d": ([], [])})
    started = host.run("start", "--all", "--json")
    assert started.returncode == ExitCode.FAILURE, started.stderr
    document = json.loads(started.stdout)
    assert document["schema"] == "mpsctl.services/1"
    assert document["exit_code"] == ExitCode.FAILURE
    entries = document["services"]
    # every service accounted for, in start order: its result or its error
    assert [e["service"] for e in entries] == ["a", "b", "c", "d"]
    assert [e["schema"] for e in entries] == [
        "mpsctl.start/1", "mpsctl.error/1", "mpsctl.error/1", "mpsctl.start/1",
    ]  # fmt: skip
    assert "exited with status 3" in entries[1]["error"]
    assert entries[2]["error"] == "not started: it starts after b, which did not start"
    assert host.running("a")
    assert host.running("d")
    assert not host.running("b")
    assert not host.running("c")
    (line,) = [x for x in started.stderr.splitlines() if x.startswith("mpsctl: error:")]
    assert line.startswith("mpsctl: error: b: b exited with status 3")
    assert "; c: not started" in line


def test_stop_all_stops_the_others_when_one_is_busy_or_ignores_sigterm(host: Host) -> None:
    _write(host, {"a": (["--fake-ignore-term"], []), "b": ([], []), "c": ([], [])})
    assert host.run("start", "--all").returncode == 0
    # another mpsctl run (a hung fix, say) holds b's lock
    lock = host.home / "services" / "b" / "mpsctl.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True)\n"
         "time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        stopped = host.run("stop", "--all")
    finally:
        holder.kill()
        holder.wait()
    assert stopped.returncode == ExitCode.LOCKED, stopped.stderr
    assert "b: " in stopped.stderr
    assert "mpsctl.lock" in stopped.stderr
    # a ignored SIGTERM and was killed after stop_timeout; c stopped; b is still running
    assert wait_for(lambda: not host.running("a") and not host.running("c"), timeout=5)
    assert host.running("b")


def test_fix_all_json_lists_the_service_it_could_not_fix(host: Host) -> None:
    _write(host, {"a": ([], []), "b": ([], [])})
    lock = host.home / "services" / "b" / "mpsctl.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True)\n"
         "time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        fixed = host.run("fix", "--all", "--json")
    finally:
        holder.kill()
        holder.wait()
    assert fixed.returncode == ExitCode.FAILURE, fixed.stderr
    document = json.loads(fixed.stdout)
    assert document["schema"] == "mpsctl.services/1"
    first, second = document["services"]
    assert first["schema"] == "mpsctl.fix/1"
    assert first["service"] == "a"
    assert first["healthy"] is True
    assert second["schema"] == "mpsctl.error/1"
    assert (second["service"], second["exit_code"]) == ("b", ExitCode.LOCKED)
    assert "mpsctl.lock" in second["error"]
    assert host.running("a")


def test_a_service_left_running_by_a_one_service_file_is_taken_over(host: Host) -> None:
    # the operator turns [service] into [services.a] + [services.b] without `mpsctl stop`
    port = free_port()
    command = fake_command(host.script, port)  # type: ignore[attr-defined]
    own = [
        "[service]",
        f"workdir = {json.dumps(str(host.root))}",
        "start_timeout = 15",
        "stop_timeout = 2",
    ]
    service = [f"command = {json.dumps(command)}", f'url = "http://localhost:{port}"',
               'log_file = "a.log"']  # fmt: skip
    host.config.write_text("\n".join([*own, *service]) + "\n", encoding="utf-8")
    assert host.run("start").returncode == 0
    old = host.home / "service.pid"
    pid = json.loads(old.read_text())["pid"]
    second = fake_command(host.script, free_port())  # type: ignore[attr-defined]
    host.config.write_text(
        "\n".join([*own, "[services.a]", *service, "[services.b]",
                   f"command = {json.dumps(second)}", f'url = "http://127.0.0.1:{second[-1]}"'])
        + "\n", encoding="utf-8",
    )  # fmt: skip
    status = host.run("status")
    assert f"{old} names pid {pid} (running)" in status.stderr
    assert "it is service a's; `mpsctl stop a`" in status.stderr
    stopped = host.run("stop", "a")
    assert stopped.returncode == 0, stopped.stderr
    assert f"a: took over pid {pid} from {old}" in stopped.stderr
    assert wait_for(lambda: not psutil.pid_exists(pid) or _zombie(pid), timeout=5)
    assert not old.exists()
    assert not (host.home / "services" / "a" / "service.pid").exists()
    assert "names pid" not in host.run("status").stderr


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_start_the_budget_cannot_judge_says_so(host: Host) -> None:
    _write(host, {"a": ([], []), "b": ([], [])})
    text = host.config.read_text(encoding="utf-8")
    # one byte: any planned service would be refused; a model nobody can read is counted 0
    text = '[host]\nbudget = 1\n[serve]\nmodel = "/nonexistent/model"\n' + text
    host.config.write_text(text, encoding="utf-8")
    started = host.run("start", "a")
    assert started.returncode == 0, started.stderr
    assert (
        "mpsctl: warning: the host's memory budget counts as 0 what it cannot plan: "
        "a (/nonexistent/model is not a local model directory)"
    ) in started.stderr


def test_names_on_the_command_line_beat_mpsctl_service(host: Host) -> None:
    _write(host, {"a": ([], []), "b": ([], [])})
    assert host.run("start", "b", MPSCTL_SERVICE="a").returncode == 0
    assert host.running("b")
    status = host.run("status", "a", "b", "--json", MPSCTL_SERVICE="a")
    assert status.returncode == 3, status.stderr
    assert [d["service"] for d in json.loads(status.stdout)["services"]] == ["a", "b"]
    stopped = host.run("stop", "--all", "--json", MPSCTL_SERVICE="a")
    assert stopped.returncode == 0, stopped.stderr
    assert [d["service"] for d in json.loads(stopped.stdout)["services"]] == ["b", "a"]
    assert not host.running("b")
    # no name: the variable still picks its one service
    alone = host.run("status", "--json", MPSCTL_SERVICE="a")
    assert json.loads(alone.stdout)["name"] == "a"
    assert "service" not in json.loads(alone.stdout)  # one service: its document as always


def test_two_starts_at_once_cannot_both_pass_the_budget(host: Host) -> None:
    # the fake service ignores --model; the budget plans the preset it names
    planned = ["--model", "qwen2.5-0.5b", "--fake-delay", "1"]
    _write(host, {"a": (planned, []), "b": (planned, [])})
    text = '[memory]\ndevice = "cpu"\n' + host.config.read_text(encoding="utf-8")
    host.config.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
    env |= {"MPSCTL_HOME": str(host.home), "MPSCTL_CONFIG": str(host.config)}
    peak = plan_service(load_settings(environ=env, service="a")).peak_bytes
    assert peak is not None
    # room for one, never for two
    host.config.write_text(f"[host]\nbudget = {peak * 3 // 2}\n" + text, encoding="utf-8")
    runs = [
        subprocess.Popen([sys.executable, "-m", "mpsctl", "start", name, "--wait", "60"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]  # fmt: skip
    codes = sorted(run.wait(timeout=120) for run in runs)
    errors = [run.stderr.read() for run in runs if run.stderr is not None]
    assert codes == [0, ExitCode.OVER_BUDGET], errors
    assert [host.running("a"), host.running("b")].count(True) == 1


def test_starting_or_stopping_out_of_after_order_warns(host: Host) -> None:
    _write(host, {"a": ([], []), "b": ([], ["a"])})
    started = host.run("start", "b")
    assert started.returncode == 0, started.stderr
    assert "mpsctl: warning: b starts after a, not running now" in started.stderr
    assert host.run("start", "a").returncode == 0
    stopped = host.run("stop", "a")
    assert stopped.returncode == 0, stopped.stderr
    assert "mpsctl: warning: b (running) starts after a, stopped now" in stopped.stderr
    # in order, nothing to say
    assert host.run("start", "--all").stderr.count("warning") == 0
    assert "warning" not in host.run("stop", "--all").stderr


def test_cron_for_the_service_mpsctl_service_picks_runs_that_service(host: Host) -> None:
    _write(host, {"a": ([], []), "b": ([], [])})
    printed = host.run("cron", MPSCTL_SERVICE="a")
    assert printed.returncode == 0, printed.stderr
    lines = [x.split(" ", 5)[5] for x in printed.stdout.splitlines() if x and x[0] != "#"]
    fix = next(x for x in lines if " fix " in x)
    assert f"MPSCTL_HOME={host.home.resolve()} " in fix
    assert "MPSCTL_SERVICE=a " in fix
    # as cron runs it: a bare environment, from /
    ran = subprocess.run(
        ["env", "-i", f"HOME={host.root}", "PATH=/usr/bin:/bin", "sh", "-c", fix],
        cwd="/", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    log = host.home / "cron.log"
    assert ran.returncode == 0, log.read_text() if log.exists() else ran.stderr
    assert host.running("a")
    assert not host.running("b")
    assert (host.home / "services" / "a" / "service.pid").is_file()


def test_a_loading_sibling_is_not_taken_for_a_service_sharing_its_match(host: Host) -> None:
    # staging and production copies of one app share `match`; while one loads (no port
    # yet) the other's status, watchdog and `stop --match` must not take it for theirs
    _write(host, {"a": ([], []), "b": (["--fake-delay", "6"], [])})
    script = str(host.script)  # type: ignore[attr-defined]
    text = host.config.read_text(encoding="utf-8").replace(
        "[service]\n", f"[service]\nmatch = {json.dumps(script)}\n", 1
    )
    host.config.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
    env |= {"MPSCTL_HOME": str(host.home), "MPSCTL_CONFIG": str(host.config)}
    loading = subprocess.Popen([sys.executable, "-m", "mpsctl", "start", "b"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        pidfile = host.home / "services" / "b" / "service.pid"
        assert wait_for(pidfile.is_file, timeout=10)
        b_pid = json.loads(pidfile.read_text())["pid"]
        status = host.run("status", "a", "--json")
        assert status.returncode == 3, status.stdout
        dry = host.run("stop", "a", "--match", "--dry-run", "--json")
        assert str(b_pid) not in dry.stdout
    finally:
        assert loading.wait(timeout=60) == 0
    assert host.running("b")


def test_the_service_that_grew_is_blamed_and_restarted_not_the_first(host: Host) -> None:
    # b (second in the file) holds ~300 MiB of its own; a stays small
    grown = host.root / "grown_service.py"
    grown.write_text(
        "import os\n_ballast = b'x' * (int(os.environ.get('BALLAST_MIB', '0')) << 20)\n"
        + FAKE_SERVICE, encoding="utf-8",
    )  # fmt: skip
    host.script = grown  # type: ignore[attr-defined]
    _write(host, {"a": ([], []), "b": ([], [])})
    text = host.config.read_text(encoding="utf-8").replace(
        "[thresholds]\n", "[thresholds]\nservice_memory_gib = [0.15, 0.2]\n", 1
    )
    host.config.write_text(text + '[services.b.env]\nBALLAST_MIB = "300"\n', encoding="utf-8")
    assert host.run("start", "--all").returncode == 0
    pids = {n: json.loads((host.home / "services" / n / "service.pid").read_text())["pid"]
            for n in ("a", "b")}  # fmt: skip
    probed = host.run("probe", "--json")
    view = json.loads(probed.stdout)
    assert view["schema"] == "mpsctl.host-probe/1"
    assert (view["verdict"], view["blame"]) == ("CRITICAL", "b"), view["reasons"]
    fixed = host.run("fix", "--all", "--if-unhealthy", "--json")
    document = json.loads(fixed.stdout)
    restarted = {d["service"]: d["restarted"] for d in document["services"]}
    assert restarted == {"a": False, "b": True}, fixed.stderr
    new = {n: json.loads((host.home / "services" / n / "service.pid").read_text())["pid"]
           for n in ("a", "b")}  # fmt: skip
    assert new["a"] == pids["a"]
    assert new["b"] != pids["b"]


def test_the_host_sum_is_judged_by_the_top_level_thresholds_not_the_first_service(
    host: Host,
) -> None:
    _write(host, {"a": ([], []), "b": ([], [])})
    loose = "host_used_percent = [99.8, 99.9]"
    # the host: any sum of the services' memory is too much; each service: anything goes
    text = host.config.read_text(encoding="utf-8").replace(
        loose, "host_used_percent = [0.01, 0.02]"
    )
    text += f"[services.a.thresholds]\n{loose}\n[services.b.thresholds]\n{loose}\n"
    host.config.write_text(text, encoding="utf-8")
    assert host.run("start", "--all").returncode == 0
    probed = host.run("probe", "--json")
    view = json.loads(probed.stdout)
    host_reasons = [r for r in view["reasons"] if "host: the services together use" in r]
    assert host_reasons, view["reasons"]
    assert host_reasons[0].startswith("CRITICAL: host:")
    # each service's own probe kept its own (loose) host threshold
    own = [r for r in view["reasons"] if r.startswith(("a: ", "b: ")) and "host memory" in r]
    assert own == [], own
