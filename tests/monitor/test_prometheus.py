"""Prometheus: textfile parsed back, unknown figures omitted, the exporter scraped over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mpsctl.cli import main
from mpsctl.monitor.prometheus import CachedProbe, start_exporter
from mpsctl.probe import take_probe
from mpsctl.settings import load_settings
from tests.conftest import free_port
from tests.monitor import mps_report, stub_service


@pytest.fixture
def dead_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MPSCTL_SERVICE_URL", url)
    return url


def parse(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_textfile_parses_and_omits_what_is_unknown(dead_url: str, tmp_path: Path) -> None:
    target = tmp_path / "mpsctl.prom"
    result = CliRunner().invoke(main, ["probe", "--prometheus", str(target)])
    assert result.exit_code == 2, result.stderr
    values = parse(target.read_text(encoding="utf-8"))
    assert values["mpsctl_verdict"] == 2
    assert values["mpsctl_service_up"] == 0
    assert values["mpsctl_health_ok"] == 0
    assert values["mpsctl_host_memory_total_bytes"] > 0
    # what the rules use is in the textfile as in the exporter: the watchdog's counters
    # (WatchdogGaveUp), the probe's time (ProbeStale) and the memory failures
    assert values["mpsctl_watchdog_refusals_total"] == 0
    assert values["mpsctl_oom_events_total"] == 0
    assert abs(values["mpsctl_probe_timestamp_seconds"] - time.time()) < 60
    assert 0 < values["mpsctl_probe_duration_seconds"] < 30
    # the service is down: no memory figure at all rather than a misleading 0
    for name in ("mpsctl_service_rss_bytes", "mpsctl_accelerator_allocated_bytes",
                 "mpsctl_accelerator_limit_bytes", "mpsctl_health_latency_seconds"):  # fmt: skip
        assert name not in values
    assert not list(tmp_path.glob("mpsctl.prom.*"))  # no temporary file left behind


def test_textfile_carries_the_services_accelerator_figures(
    write_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    with stub_service(memory=mps_report(11453251584, high=0.7)) as service:
        write_config(service.config())
        target = tmp_path / "m.prom"
        CliRunner().invoke(main, ["probe", "--prometheus", str(target)])
    families = {f.name: f for f in text_string_to_metric_families(target.read_text())}
    limit = families["mpsctl_accelerator_limit_bytes"].samples[0]
    assert limit.value == int(0.7 * 11453251584)
    assert limit.labels == {"service": "stub", "device": "mps"}
    assert families["mpsctl_service_up"].samples[0].value == 1
    assert families["mpsctl_health_ok"].samples[0].value == 1


def test_unwritable_textfile_is_a_warning(dead_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["probe", "--prometheus", str(tmp_path / "no" / "x.prom")])
    assert result.exit_code == 2
    assert "--prometheus: cannot write" in result.stderr


def test_exporter_serves_one_probe_per_scrape(dead_url: str) -> None:
    settings = load_settings()
    exporter = start_exporter(lambda: take_probe(settings), "127.0.0.1", 0, min_interval=0)
    try:
        with urllib.request.urlopen(exporter.url, timeout=10) as response:
            values = parse(response.read().decode("utf-8"))
        assert values["mpsctl_verdict"] == 2
        assert values["mpsctl_probe_duration_seconds"] > 0
        assert exporter.cache.probes == 1
    finally:
        exporter.shutdown()


def test_close_scrapes_share_one_probe(dead_url: str) -> None:
    settings = load_settings()
    now = [100.0]
    cache = CachedProbe(lambda: take_probe(settings), 5.0, clock=lambda: now[0])
    cache.samples()
    cache.samples()
    now[0] += 6
    cache.samples()
    assert cache.probes == 2


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("exporter did not listen")


def test_exporter_command_scraped_over_http_then_ctrl_c_exits_130(dead_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "exporter", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        _wait_listening(port, proc)
        # no --host: loopback only, never every interface
        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}  # fmt: skip
        assert [tuple(addr) for addr in listening] == [("127.0.0.1", port)]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert parse(response.read().decode())["mpsctl_verdict"] == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert out == ""
    assert f"http://127.0.0.1:{port}/metrics" in err


def test_missing_prometheus_client_is_one_clear_line(
    dead_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    result = CliRunner().invoke(main, ["exporter", "--port", "0"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "mpsctl: error: Prometheus output needs prometheus_client: pip install 'mpsctl[metrics]'"
    )


def test_a_name_the_textfile_collector_ignores_is_a_warning(dead_url: str, tmp_path: Path) -> None:
    target = tmp_path / "mpsctl.txt"
    result = CliRunner().invoke(main, ["probe", "--prometheus", str(target)])
    assert result.exit_code == 2
    assert "reads only *.prom files" in result.stderr
    assert target.exists()  # written anyway: the operator may rename it on purpose
