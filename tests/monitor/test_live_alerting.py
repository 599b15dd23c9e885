"""The shipped alerts, live: a real Prometheus evaluating `mpsctl exporter --rules`, a real
Alertmanager with the configuration `mpsctl exporter --alertmanager` prints, a webhook
receiver in this test, the reference service run by `mpsctl start`, `mpsctl exporter`, and
node_exporter's textfile collector serving the file the `mpsctl cron` probe line writes.

Everything runs on a 20x faster clock (`--time-scale 0.05`: the same rules and routes, every
duration multiplied, nothing written by hand), so a `for: 1m` is 3 s and a `[10m]` window
30 s. The test causes a memory failure in the service's log, a stop, the watchdog's restart,
a second stop the watchdog gives up on, an exporter kill, a hung service (SIGSTOP), a real
out-of-memory query under the service's `--memory-limit`, and a probe job that stops
writing its textfile; it asserts which alerts arrive, how soon after their cause, and when
each is resolved. About 2.5 minutes on two busy cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest

from mpsctl.paths import DEMO_DIR_NAME
from tests.conftest import free_port, read_fixture
from tests.monitor import Receiver, alert_receiver
from tests.monitor.external import require_tool
from tests.service_fixtures import stop_process

SCALE = "0.05"
PYTHON = sys.executable
#: the limited service's room above its loaded footprint (with its worker thread started):
#: a short question fits, a 20,000-token one does not. Measured on the tiny demo model
#: (VmPeak above the loaded VmSize): 8,000 tokens +8 MiB, 16,000 +31 MiB, 32,000 +78 MiB;
#: under this headroom the first tensor refused is the 20,017-token prompt's embedding
#: output (5,124,352 bytes), and with 64 MiB the same question is answered.
HEADROOM = 16 * 1024 * 1024
LONG_QUESTION = {"question": "a " * 20000, "max_new_tokens": 1}
SHORT_QUESTION = {"question": "工商银行", "max_new_tokens": 2}
#: `[10m]` and `for: 10m` at --time-scale 0.05, `for: 1m`, `for: 2m`, the probe's 180 s
WINDOW, UNHEALTHY_FOR, DOWN_FOR, EXPORTER_FOR, STALE_AGE = 30, 30, 3, 6, 9
#: a scrape (2 s), an evaluation (1 s), Alertmanager's group wait (2 s), and slack for two
#: busy cores
ON_TIME = 12
#: Alertmanager's group interval (5m x 0.05): resolved alerts are sent at its next tick
GROUP_INTERVAL = 15


def mpsctl(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "mpsctl", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def post(url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


class Alerts:
    """What the webhook received: (arrival, alertname, status, labels), in order."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def events(self) -> list[tuple[float, str, str, dict[str, str]]]:
        out = []
        for arrived, post_body in zip(self.receiver.arrivals, self.receiver.posts, strict=True):
            for alert in post_body["alerts"]:
                labels = alert["labels"]
                out.append((arrived, labels["alertname"], alert["status"], labels))
        return out

    def wait(self, name: str, status: str, after: float, timeout: float, **labels: str) -> float:
        """Seconds from ``after`` until ``name`` (with ``labels``) arrived with ``status``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, alertname, state, got in self.events():
                if (alertname == name and state == status and arrived >= after
                        and labels.items() <= got.items()):  # fmt: skip
                    return arrived - after
            time.sleep(0.2)
        seen = [(round(a - after, 1), n, s) for a, n, s, _ in self.events()]
        raise AssertionError(f"no {status} {name} {labels} within {timeout} s; received: {seen}")

    def names_before(self, moment: float) -> set[str]:
        return {name for arrived, name, _, _ in self.events() if arrived < moment}


def vm_size(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSize for {pid}")


def service_pid(port: int) -> int:
    """The reference service's process: `mpsctl serve` with this port on its command line."""
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if "serve" in argv and "--port" in argv and str(port) in argv:
            return int(proc.pid)
    raise AssertionError(f"no service process on port {port}")


@pytest.fixture
def stack(
    tiny_model: Path, tmp_path: Path, write_config: Callable[..., Path]
) -> Iterator[dict[str, Any]]:
    prometheus = require_tool("prometheus", "prometheus")
    alertmanager = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    node_exporter = require_tool("prometheus-node-exporter", "prometheus-node-exporter")
    port, exporter_port, node_port = free_port(), free_port(), free_port()
    log = tmp_path / "service.log"
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()

    def configure(memory_limit: int) -> Path:
        """The reference service (no `command`: `mpsctl serve --demo` on the url's port),
        its address space capped at ``memory_limit`` once loaded (`serve --memory-limit`)."""
        return write_config(
            f'[service]\nname = "mvp"\nurl = "http://127.0.0.1:{port}"\nlog_file = "{log}"\n'
            "start_timeout = 120\n"
            f"[serve]\nmax_question_bytes = 100000\nmemory_limit = {memory_limit}\n"
            "[fix]\nmax_restarts = 1\n"
        )

    # the demo checkpoint where `serve --demo` looks for it (MPSCTL_HOME), built once
    shutil.copytree(tiny_model, Path(os.environ["MPSCTL_HOME"]) / DEMO_DIR_NAME)
    # far above what it uses: the allocator settings of a limited service, never reached
    config = configure(100 << 30)
    env = {**os.environ, "MPSCTL_CONFIG": str(config), "OMP_NUM_THREADS": "1"}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        out = (tmp_path / f"{name}.out").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        procs.append(proc)
        return proc

    def exporter() -> subprocess.Popen[bytes]:
        return spawn([PYTHON, "-m", "mpsctl", "exporter", "--port", str(exporter_port),
                      "--timeout", "1", "--min-interval", "0.5"], "exporter")  # fmt: skip

    started = mpsctl("start", env=env)
    assert started.returncode == 0, started.stderr
    with alert_receiver() as receiver:
        am_port, prom_port = free_port(), free_port()
        am_config = mpsctl("exporter", "--alertmanager", "--webhook-url", receiver.url,
                           "--time-scale", SCALE, env=env).stdout  # fmt: skip
        (tmp_path / "am.yml").write_text(am_config)
        spawn([alertmanager, f"--config.file={tmp_path / 'am.yml'}",
               f"--storage.path={tmp_path / 'am-data'}",
               f"--web.listen-address=127.0.0.1:{am_port}",
               "--cluster.listen-address="], "alertmanager")  # fmt: skip
        # node_exporter with its textfile collector only: where cron's probe file is served
        spawn([node_exporter, f"--web.listen-address=127.0.0.1:{node_port}",
               "--collector.disable-defaults", "--collector.textfile",
               f"--collector.textfile.directory={textfiles}"], "node-exporter")  # fmt: skip
        rules = mpsctl("exporter", "--rules", "--time-scale", SCALE, env=env).stdout
        (tmp_path / "rules.yml").write_text(rules)
        scrape = mpsctl("exporter", "--scrape-config", "--port", str(exporter_port),
                        "--time-scale", SCALE, env=env).stdout  # fmt: skip
        # the host's node_exporter job, as an operator already has it (the same interval
        # and instance label as the printed jobs)
        node_job = (
            "  - job_name: node\n    scrape_interval: 2s\n    static_configs:\n"
            f'      - targets: ["127.0.0.1:{node_port}"]\n'
            "    relabel_configs:\n      - source_labels: [__address__]\n"
            '        regex: "([^:]+):\\\\d+"\n        target_label: instance\n'
        )
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  evaluation_interval: 1s\n"
            f'rule_files: ["{tmp_path / "rules.yml"}"]\n'
            "alerting:\n  alertmanagers:\n"
            f'    - static_configs:\n        - targets: ["127.0.0.1:{am_port}"]\n'
            + scrape
            + node_job
        )
        spawn([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
               f"--storage.tsdb.path={tmp_path / 'prom-data'}",
               f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus")  # fmt: skip
        exporters = [exporter()]
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", 60)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", 60)
        wait_http(f"http://127.0.0.1:{node_port}/metrics", 60)
        yield {"env": env, "log": log, "alerts": Alerts(receiver), "exporters": exporters,
               "exporter": exporter, "prom": f"http://127.0.0.1:{prom_port}",
               "am": f"http://127.0.0.1:{am_port}",
               "tmp": tmp_path, "port": port, "configure": configure,
               "textfile": textfiles / "mpsctl.prom"}  # fmt: skip
    for proc in reversed(procs):
        stop_process(proc)
    mpsctl("stop", env=env)


def scraped(prom: str, timeout: float) -> None:
    """Until Prometheus has scraped the exporter and evaluated the rules on its figures."""
    query = urllib.parse.quote('mpsctl_oom_events_total{kind="oom"}')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prom}/api/v1/query?query={query}", timeout=5) as answer:
            if json.load(answer)["data"]["result"]:
                return
        time.sleep(0.5)
    raise AssertionError("Prometheus never scraped the exporter")


def instant(prom: str, expr: str) -> list[dict[str, Any]]:
    query = urllib.parse.quote(expr)
    with urllib.request.urlopen(f"{prom}/api/v1/query?query={query}", timeout=5) as answer:
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
        return result


def cron_probe_command(env: dict[str, str], textfile: Path) -> str:
    """The probe job's command, exactly as `mpsctl cron --prometheus FILE` prints it."""
    from crontab import CronTab

    printed = mpsctl("cron", "--prometheus", str(textfile), env=env)
    assert printed.returncode == 0, printed.stderr
    [command] = [job.command for job in CronTab(tab=printed.stdout) if " probe " in job.command]
    return str(command)


def run_as_cron(command: str, home: Path) -> None:
    """As cron runs a job: sh -c, an empty environment but HOME and PATH, in /."""
    argv = ["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", "sh", "-c", command]
    done = subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    # the probe's exit status is its verdict (0-3); anything else is a failure to run
    assert done.returncode in (0, 1, 2, 3), (done.returncode, done.stderr)


def scraped_since(prom: str, metric: str, moment: float, timeout: float) -> None:
    """Until Prometheus holds a sample of ``metric`` taken after ``moment`` (Unix time)."""
    query = urllib.parse.quote(f"timestamp({metric})")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prom}/api/v1/query?query={query}", timeout=5) as answer:
            if any(float(r["value"][1]) > moment for r in json.load(answer)["data"]["result"]):
                return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus has no sample of {metric} since {moment}")


def active_in_alertmanager(am: str, name: str) -> bool:
    query = urllib.parse.quote(f'alertname="{name}"')
    with urllib.request.urlopen(f"{am}/api/v2/alerts?filter={query}", timeout=5) as answer:
        return any(a["status"]["state"] == "active" for a in json.load(answer))


def test_the_shipped_alerts_fire_on_time_and_resolve(stack: dict[str, Any]) -> None:
    env, alerts, port, prom = stack["env"], stack["alerts"], stack["port"], stack["prom"]
    url = f"http://127.0.0.1:{port}/api/v1/query"
    # the reference service's own token, made at its first start
    token = (Path(env["MPSCTL_HOME"]) / "token").read_text().strip()
    began = time.monotonic()
    scraped(prom, 60)
    # the loaded service's address space once a short answer has started its worker thread,
    # with the allocator settings of a limited service (its --memory-limit is far above)
    assert post(url, SHORT_QUESTION, token)[0] == 200
    loaded = vm_size(service_pid(port))

    # the exporter dies: ExporterDown after `for: 2m` (6 s). First, while no other alert
    # fires: it inhibits the host's other alerts, and Alertmanager sends no resolved notice
    # for an alert that resolves while inhibited
    stack["exporters"][0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    exporter_after = alerts.wait("MpsctlExporterDown", "firing", killed, 40)
    stack["exporters"].append(stack["exporter"]())
    deadline = time.monotonic() + 60
    while active_in_alertmanager(stack["am"], "MpsctlExporterDown"):
        assert time.monotonic() < deadline, "ExporterDown never resolved"
        time.sleep(0.5)
    back = time.time()
    scraped_since(prom, 'mpsctl_oom_events_total{kind="oom"}', back, 30)
    time.sleep(3)  # a few samples of every counter at 0 from the new exporter

    # a memory failure in the service's log: fires at the next scrape (no `for:`)
    cause = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with stack["log"].open("a") as out:
        out.write(f"{stamp} ERROR {read_fixture('torch-mps-oom-3.txt').strip()}\n")
    # and the service hangs (SIGSTOP: the process lives, its health check times out):
    # CRITICAL while running, ServiceUnhealthy after its `for: 10m` (30 s)
    hung_pid = service_pid(port)
    os.kill(hung_pid, signal.SIGSTOP)
    hung = time.monotonic()
    try:
        oom_after = alerts.wait("MpsctlOutOfMemoryInLogs", "firing", cause, 30, kind="oom")
        unhealthy_after = alerts.wait("MpsctlServiceUnhealthy", "firing", hung, UNHEALTHY_FOR + 40)
    finally:
        os.kill(hung_pid, signal.SIGCONT)
    resumed = time.monotonic()

    # the service stops: ServiceDown after its `for: 1m` (3 s here), and the unhealthy one
    # that stopped is resolved (no inhibit rule mutes its resolution)
    assert mpsctl("stop", env=env).returncode == 0
    stopped = time.monotonic()
    down_after = alerts.wait("MpsctlServiceDown", "firing", stopped, 30)
    unhealthy_resolved = alerts.wait("MpsctlServiceUnhealthy", "resolved", resumed, 60)
    # from here on the service runs under a memory limit just above what it needs
    stack["configure"](loaded + HEADROOM)
    # the watchdog restarts it once (fix.max_restarts = 1): ServiceDown resolves
    fixed = mpsctl("fix", "--if-unhealthy", env=env)
    assert fixed.returncode == 0, fixed.stderr
    alerts.wait("MpsctlServiceDown", "resolved", stopped, 60)
    # stopped again, the watchdog gives up: its budget is spent
    assert mpsctl("stop", env=env).returncode == 0
    again = time.monotonic()
    gave_up = mpsctl("fix", "--if-unhealthy", env=env)
    assert gave_up.returncode == 69, gave_up.stderr
    refused = time.monotonic()
    gave_up_after = alerts.wait("MpsctlWatchdogGaveUp", "firing", refused, 30)
    # the same alert again: Alertmanager sends it at its group's next interval (15 s here)
    alerts.wait("MpsctlServiceDown", "firing", again, 30)
    assert mpsctl("start", env=env).returncode == 0
    restarted = time.time()

    # a question the limit has no room for: a real allocation failure in PyTorch, 503, the
    # service's own counter; the same failure is in its log for the probe. (increase() needs
    # a sample before the failure: the new service's counter is scraped at 0 first)
    scraped_since(prom, "mpsctl_out_of_memory_total", restarted, 30)
    # (a failure before that first scrape fires by the counter's creation time, which the
    # service exports: the rule's other half has its input here)
    assert instant(prom, "time() - mpsctl_out_of_memory_created < 60")
    status, body = post(url, LONG_QUESTION, token)
    oom_time = time.monotonic()
    assert status == 503, body
    assert body["error"]["kind"] == "out_of_memory", body
    assert "DefaultCPUAllocator: can't allocate memory" in body["error"]["message"], body
    assert post(url, SHORT_QUESTION, token)[0] == 200  # and it answers on

    # the cron probe line writes its textfile once, then stops: ProbeStale after 180 s (9 s)
    textfile = stack["textfile"]
    cron_line = cron_probe_command(env, textfile)
    written = time.monotonic()
    run_as_cron(cron_line, stack["tmp"])
    assert "mpsctl_probe_timestamp_seconds" in textfile.read_text()

    real_oom_after = alerts.wait("MpsctlOutOfMemory", "firing", oom_time, 30)
    cpu_alloc_after = alerts.wait("MpsctlOutOfMemoryInLogs", "firing", oom_time, 30,
                                  kind="cpu_alloc")  # fmt: skip
    alerts.wait("MpsctlServiceDown", "resolved", again, 60)
    stale_after = alerts.wait("MpsctlProbeStale", "firing", written, STALE_AGE + 30, job="node")
    # the job runs again (every 3 s, a minute here) until the resolution arrives
    rewritten = time.monotonic()
    deadline = rewritten + 60
    while True:
        run_as_cron(cron_line, stack["tmp"])
        try:
            stale_resolved = alerts.wait("MpsctlProbeStale", "resolved", rewritten, 3)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    textfile.unlink()  # its series end; nothing of it can fire later

    # the counters' windows ([10m] -> 30 s, [15m] -> 45 s) pass: each resolves on its own
    real_oom_resolved = alerts.wait("MpsctlOutOfMemory", "resolved", oom_time, 90)
    alerts.wait("MpsctlOutOfMemoryInLogs", "resolved", oom_time, 90, kind="cpu_alloc")
    alerts.wait("MpsctlOutOfMemoryInLogs", "resolved", cause, 90, kind="oom")
    alerts.wait("MpsctlWatchdogGaveUp", "resolved", refused, 90)
    alerts.wait("MpsctlExporterDown", "resolved", killed, 90)
    elapsed = time.monotonic() - began

    timings = {"oom": oom_after, "gave_up": gave_up_after, "down": down_after,
               "exporter": exporter_after, "unhealthy": unhealthy_after,
               "unhealthy_resolved": unhealthy_resolved, "real_oom": real_oom_after,
               "cpu_alloc": cpu_alloc_after, "real_oom_resolved": real_oom_resolved,
               "stale": stale_after, "stale_resolved": stale_resolved,
               "elapsed": elapsed}  # fmt: skip
    print("alert timings (s):", {k: round(v, 1) for k, v in timings.items()})
    # on time: a scrape (2 s), an evaluation (1 s), the `for:`, Alertmanager's group wait (2 s)
    assert oom_after < ON_TIME, timings
    assert gave_up_after < ON_TIME, timings
    assert down_after < DOWN_FOR + ON_TIME, timings
    assert exporter_after < EXPORTER_FOR + ON_TIME, timings
    # a `for:` is waited out, never shortcut
    assert UNHEALTHY_FOR <= unhealthy_after < UNHEALTHY_FOR + ON_TIME, timings
    assert unhealthy_resolved < GROUP_INTERVAL + ON_TIME, timings
    assert real_oom_after < ON_TIME, timings
    assert cpu_alloc_after < ON_TIME, timings
    # resolved by its window running out (a scrape's worth early at most), not by a gap
    assert WINDOW - 3 <= real_oom_resolved < WINDOW + GROUP_INTERVAL + ON_TIME, timings
    assert STALE_AGE <= stale_after < STALE_AGE + ON_TIME, timings
    assert stale_resolved < GROUP_INTERVAL + ON_TIME, timings
    # ServiceUnhealthy only for the hung service: a stopped one is "down", not "unhealthy"
    late = [
        round(arrived - resumed, 1)
        for arrived, name, state, _ in alerts.events()
        if name == "MpsctlServiceUnhealthy" and state == "firing" and arrived > resumed
    ]
    assert late == [], timings  # fmt: skip
