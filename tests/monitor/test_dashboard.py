"""The shipped Grafana dashboard, and the exporter's fleet metrics, against live output.

Every metric an expression of the dashboard names must be in what a real ``mpsctl
exporter`` (probing a stand-in service that reports MPS memory, the way a Mac's service
does) or the real reference service's ``/metrics`` serves: a renamed metric breaks
this test, not an operator's graphs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mpsctl import contrib
from mpsctl.cli import main
from mpsctl.control import audit
from mpsctl.monitor.prometheus import probe_samples, watchdog_samples
from mpsctl.observe.macos import parse_pressure_level
from mpsctl.probe import take_probe
from mpsctl.settings import load_settings
from tests.conftest import free_port, read_fixture
from tests.monitor import mps_report, stub_service
from tests.service_fixtures import RunningService

#: PromQL words that look like names: functions, aggregations, keywords
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "sum", "avg", "max", "min", "count",
                "rate", "increase", "irate", "delta", "deriv", "changes", "resets",
                "label_values", "histogram_quantile", "topk", "bottomk", "abs"}  # fmt: skip
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names of one PromQL expression (label matchers, groupings and
    ``$variables`` / ``[ranges]`` removed first)."""
    text = re.sub(r"\{[^}]*\}", " ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    text = re.sub(r"\b\d[\w.]*", " ", text)  # numbers and durations (5m, 0.9, 1e3)
    return {word for word in NAME.findall(text) if word not in PROMQL_WORDS}


def live_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=15) as response:
        return response.read().decode()


def run_exporter(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "exporter", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("exporter did not listen")


def test_metric_names_of_an_expression() -> None:
    expr = (
        'sum by (instance, outcome) (rate(mpsctl_queries_total{instance=~"$instance"}'
        "[$__rate_interval])) / on (instance) mpsctl_limiter_max_concurrent offset 5m > 0.9"
    )
    assert metric_names(expr) == {"mpsctl_queries_total", "mpsctl_limiter_max_concurrent"}


def test_every_dashboard_metric_is_in_live_output(
    write_config: Callable[..., Path],
    isolated_home: Path,
    reference_service: RunningService,
) -> None:
    result = CliRunner().invoke(main, ["exporter", "--dashboard"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == contrib.read_text(contrib.DASHBOARD)
    dashboard = json.loads(result.stdout)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10

    # the reference service: one answered query, so the labelled counters have samples
    asked = reference_service.request("POST", "/api/v1/query", {"question": "工商银行"})
    assert asked.status == 200, asked.body
    service_text = reference_service.request("GET", "/metrics").body.decode()
    with stub_service(memory=mps_report(11453251584, high=0.7)) as stub:
        write_config(stub.config())
        port = free_port()
        proc = run_exporter(port)
        try:
            exporter_text = scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
    live = live_names(service_text) | live_names(exporter_text)
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= live, f"{expr}: {sorted(names - live)} not served"
    # the host variable's query too: label_values(METRIC, LABEL)
    variable = dashboard["templating"]["list"][1]["definition"]
    match = re.fullmatch(r"label_values\((\w+), *instance\)", variable)
    assert match is not None, variable
    assert match[1] in live


def test_watchdog_counters_from_the_fix_history(write_config: Callable[..., Path]) -> None:
    write_config('[service]\nname = "mvp"\n')
    home = load_settings().home
    path = audit.fix_history_path(home)
    # lines as `fix` writes them; a person's own fix (trigger manual) is not the watchdog's
    runs = [("if-unhealthy", "fixed", True), ("if-unhealthy", "fixed", True),
            ("manual", "fixed", True), ("if-unhealthy", "refused", False),
            ("if-unhealthy", "healthy", False)]  # fmt: skip
    for trigger, outcome, restarted in runs:
        audit.append_record(path, {"time": "2026-11-28T04:00:00Z", "trigger": trigger,
                                     "result": outcome, "restarted": restarted})  # fmt: skip
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"torn": \n')  # a torn line is skipped, not fatal
    port = free_port()
    proc = run_exporter(port)
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["mpsctl_watchdog_restarts"].type == "counter"
    restarts = families["mpsctl_watchdog_restarts"].samples[0]
    assert (restarts.name, restarts.value) == ("mpsctl_watchdog_restarts_total", 2)
    assert restarts.labels == {"service": "mvp"}
    assert families["mpsctl_watchdog_refusals"].samples[0].value == 1


def test_watchdog_counters_are_zero_before_any_run(isolated_home: Path) -> None:
    samples = {s.name: s.value for s in watchdog_samples(isolated_home, "mvp")}
    assert samples == {"mpsctl_watchdog_restarts": 0, "mpsctl_watchdog_refusals": 0}


def test_memory_pressure_level_gauge(write_config: Callable[..., Path]) -> None:
    write_config(f'[service]\nurl = "http://127.0.0.1:{free_port()}"\n')
    result = take_probe(load_settings())
    assert result.host is not None
    values = {s.name: s.value for s in probe_samples(result)}
    # Linux: PSI's level when the kernel has it (tests/observe/test_psi.py), else left out
    expected = {"normal": 0, "warn": 1, "critical": 2}.get(result.host.pressure or "")
    assert values.get("mpsctl_host_memory_pressure_level") == expected
    # macOS's level, parsed from a recorded `sysctl kern.memorystatus_vm_pressure_level`
    level = parse_pressure_level(
        read_fixture("macos-sysctl-memorystatus-pressure-level-2-critical.txt")
    )
    mac = type(result)(**{**result.__dict__, "host": type(result.host)(
        **{**result.host.__dict__, "pressure": level})})  # fmt: skip
    values = {s.name: s.value for s in probe_samples(mac)}
    assert values["mpsctl_host_memory_pressure_level"] == 2


def test_import_asks_for_the_data_source_and_requires_what_it_uses() -> None:
    text = contrib.read_text(contrib.DASHBOARD)
    dashboard = json.loads(text)
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    # every ${DS_...} placeholder Grafana's import replaces is declared, and used
    assert set(re.findall(r"\$\{(DS_\w+)\}", text)) == set(inputs)
    assert dashboard["templating"]["list"][0]["current"]["value"] == "${DS_PROMETHEUS}"
    required = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    assert required == {panel["type"] for panel in dashboard["panels"]}
