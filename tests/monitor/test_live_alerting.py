"""The shipped alerts, live: a real Prometheus evaluating `mpsctl exporter --rules`, a real
Alertmanager with the configuration `mpsctl exporter --alertmanager` prints, a webhook
receiver in this test, the reference service run by `mpsctl start`, and `mpsctl exporter`.

Everything runs on a 20x faster clock (`--time-scale 0.05`: the same rules and routes, every
duration multiplied, nothing written by hand), so a `for: 1m` is 3 s. The test causes a memory
failure in the service's log, a stop, the watchdog's restart, a second stop the watchdog gives
up on, and an exporter kill, and asserts which alerts arrive, how soon after their cause, and
that each is resolved. About 1.5-2 minutes on two busy cores.
"""

from __future__ import annotations

import json
import os
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

import pytest

from tests.conftest import free_port, read_fixture
from tests.monitor import Receiver, alert_receiver
from tests.monitor.external import require_tool
from tests.service_fixtures import stop_process

SCALE = "0.05"
PYTHON = sys.executable
Done = subprocess.CompletedProcess[str]


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


class Alerts:
    """What the webhook received: (arrival, alertname, status, labels), in order."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def events(self) -> list[tuple[float, str, str, dict[str, str]]]:
        out = []
        for arrived, post in zip(self.receiver.arrivals, self.receiver.posts, strict=True):
            for alert in post["alerts"]:
                labels = alert["labels"]
                out.append((arrived, labels["alertname"], alert["status"], labels))
        return out

    def wait(self, name: str, status: str, after: float, timeout: float) -> float:
        """Seconds from ``after`` until ``name`` arrived with ``status``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, alertname, state, _labels in self.events():
                if alertname == name and state == status and arrived >= after:
                    return arrived - after
            time.sleep(0.2)
        seen = [(round(a - after, 1), n, s) for a, n, s, _ in self.events()]
        raise AssertionError(f"no {status} {name} within {timeout} s; received: {seen}")


@pytest.fixture
def stack(
    tiny_model: Path, tmp_path: Path, write_config: Callable[..., Path]
) -> Iterator[dict[str, Any]]:
    prometheus = require_tool("prometheus", "prometheus")
    alertmanager = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    port, exporter_port = free_port(), free_port()
    log = tmp_path / "service.log"
    command = [PYTHON, "-m", "mpsctl", "serve", "--model", str(tiny_model), "--device", "cpu",
               "--port", str(port), "--no-auth", "--cleanup-interval", "0"]  # fmt: skip
    config = write_config(
        f'[service]\nname = "mvp"\ncommand = {json.dumps(command)}\n'
        f'url = "http://127.0.0.1:{port}"\nlog_file = "{log}"\nstart_timeout = 120\n'
        "[fix]\nmax_restarts = 1\n"
    )
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
        rules = mpsctl("exporter", "--rules", "--time-scale", SCALE, env=env).stdout
        (tmp_path / "rules.yml").write_text(rules)
        scrape = mpsctl("exporter", "--scrape-config", "--port", str(exporter_port),
                        "--time-scale", SCALE, env=env).stdout  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  evaluation_interval: 1s\n"
            f'rule_files: ["{tmp_path / "rules.yml"}"]\n'
            "alerting:\n  alertmanagers:\n"
            f'    - static_configs:\n        - targets: ["127.0.0.1:{am_port}"]\n' + scrape
        )
        spawn([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
               f"--storage.tsdb.path={tmp_path / 'prom-data'}",
               f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus")  # fmt: skip
        exporters = [exporter()]
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", 60)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", 60)
        yield {"env": env, "log": log, "alerts": Alerts(receiver), "exporters": exporters,
               "exporter": exporter, "prom": f"http://127.0.0.1:{prom_port}",
               "tmp": tmp_path}  # fmt: skip
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


def test_the_shipped_alerts_fire_on_time_and_resolve(stack: dict[str, Any]) -> None:
    env, alerts = stack["env"], stack["alerts"]
    scraped(stack["prom"], 60)
    time.sleep(3)  # a few samples of every counter at 0

    # a memory failure in the service's log: fires at the next scrape (no `for:`)
    cause = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with stack["log"].open("a") as out:
        out.write(f"{stamp} ERROR {read_fixture('torch-mps-oom-3.txt').strip()}\n")
    oom_after = alerts.wait("MpsctlOutOfMemoryInLogs", "firing", cause, 30)

    # the service stops: ServiceDown after its `for: 1m` (3 s here)
    assert mpsctl("stop", env=env).returncode == 0
    stopped = time.monotonic()
    down_after = alerts.wait("MpsctlServiceDown", "firing", stopped, 30)
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
    alerts.wait("MpsctlServiceDown", "resolved", again, 60)

    # the exporter dies: ExporterDown after `for: 2m` (6 s), resolved once it is back
    stack["exporters"][0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    exporter_after = alerts.wait("MpsctlExporterDown", "firing", killed, 40)
    stack["exporters"].append(stack["exporter"]())
    alerts.wait("MpsctlExporterDown", "resolved", killed, 60)

    # the counters' windows ([10m] -> 30 s, [15m] -> 45 s) pass: both resolve on their own
    alerts.wait("MpsctlOutOfMemoryInLogs", "resolved", cause, 90)
    alerts.wait("MpsctlWatchdogGaveUp", "resolved", refused, 90)

    # on time: a scrape (2 s), an evaluation (1 s), the `for:`, Alertmanager's group wait (2 s)
    assert oom_after < 12, oom_after
    assert gave_up_after < 12, gave_up_after
    assert down_after < 3 + 12, down_after
    assert exporter_after < 6 + 12, exporter_after
    # ServiceUnhealthy never fired: a stopped service is "down", not "unhealthy"
    assert "MpsctlServiceUnhealthy" not in {name for _, name, _, _ in alerts.events()}
