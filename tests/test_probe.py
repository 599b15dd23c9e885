"""The probe's verdict from measured parts, and the probe against real processes and HTTP."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from mpsctl.cli import main
from mpsctl.errors import ProbeExit
from mpsctl.observe.accelerator import UNKNOWN, from_memory_report
from mpsctl.observe.host import HostMemory
from mpsctl.observe.processes import ProcInfo, ServiceSnapshot
from mpsctl.probe import HealthFigures, ProbeResult, judge
from mpsctl.render.nagios import nagios_line
from mpsctl.settings import load_settings
from tests.conftest import free_port

GIB = 1024**3
OK_HEALTH = HealthFigures(True, True, 200, 3.0, None, "ok")


def host(percent: float = 40.0, swap_used: int = 0, pressure: str | None = None) -> HostMemory:
    total = 16 * GIB
    used = int(total * percent / 100)
    return HostMemory(total, total - used, used, percent, total - used, 4 * GIB, swap_used,
                      None, None, pressure, None, "linux")  # fmt: skip


def snapshot(rss: int = GIB, footprint: int | None = None) -> ServiceSnapshot:
    proc = ProcInfo(4242, 1, ("uvicorn", "app.main:app"), "me", rss, footprint, None, 4,
                    0.0, 10.0, {}, "sleeping")  # fmt: skip
    return ServiceSnapshot("pidfile", "ok", None, (4242,), (proc,))


def verdict(**parts: Any) -> tuple[ProbeExit, list[str]]:
    args = {"host": host(), "service": snapshot(), "health": OK_HEALTH,
            "accelerator": UNKNOWN, "oom_events": (),
            "thresholds": load_settings().thresholds, **parts}  # fmt: skip
    found = judge(**args)
    worst = found[0].level if found else ProbeExit.OK
    return worst, [f.message for f in found]


def test_healthy_service_is_ok() -> None:
    assert verdict() == (ProbeExit.OK, [])


@pytest.mark.parametrize(
    ("parts", "level", "words"),
    [
        ({"host": host(percent=90)}, ProbeExit.WARNING, "host memory 90.0% used"),
        ({"host": host(percent=97)}, ProbeExit.CRITICAL, "host memory 97.0% used"),
        ({"host": host(swap_used=3 * GIB)}, ProbeExit.WARNING, "swap 75.0% used"),
        ({"host": host(pressure="critical")}, ProbeExit.CRITICAL, "pressure is critical"),
        ({"service": snapshot(rss=13 * GIB)}, ProbeExit.WARNING, "service RSS 13.00 GiB"),
        # phys_footprint wins over RSS: it includes the Metal memory RSS misses
        ({"service": snapshot(rss=GIB, footprint=15 * GIB)}, ProbeExit.CRITICAL,
         "service footprint 15.00 GiB"),
        ({"host": None}, ProbeExit.UNKNOWN, "host memory unreadable"),
        ({"oom_events": ({"backend": "mps"},)}, ProbeExit.WARNING, "1 out-of-memory event"),
    ],
)  # fmt: skip
def test_thresholds(parts: dict[str, Any], level: ProbeExit, words: str) -> None:
    worst, messages = verdict(**parts)
    assert worst == level
    assert any(words in m for m in messages), messages


def plugin_range_level(perfdata: str, label: str) -> ProbeExit:
    """The monitoring-plugins reading of ``label=value;warn;crit`` (as nagiosplugin and
    Monitoring::Plugin read it): a bare threshold N is the range 0..N, alert outside it."""
    for item in perfdata.split():
        name, _, rest = item.partition("=")
        if name == label:
            value, warn, crit = (re.match(r"[-0-9.]+", f)[0] for f in rest.split(";")[:3])  # type: ignore[index]
            if float(value) > float(crit):
                return ProbeExit.CRITICAL
            return ProbeExit.WARNING if float(value) > float(warn) else ProbeExit.OK
    raise AssertionError(f"no {label} in {perfdata!r}")


@pytest.mark.parametrize(
    ("parts", "label", "level"),
    [
        ({"host": host(percent=85.0)}, "host_used", ProbeExit.OK),
        ({"host": host(percent=85.04)}, "host_used", ProbeExit.OK),  # printed as 85.0
        ({"host": host(percent=85.06)}, "host_used", ProbeExit.WARNING),  # printed as 85.1
        ({"host": host(percent=95.0)}, "host_used", ProbeExit.WARNING),
        ({"service": snapshot(rss=12 * GIB)}, "service_memory", ProbeExit.OK),
        ({"service": snapshot(rss=12 * GIB + 1)}, "service_memory", ProbeExit.WARNING),
        ({"service": snapshot(rss=14 * GIB)}, "service_memory", ProbeExit.WARNING),
        ({"service": snapshot(rss=14 * GIB + 1)}, "service_memory", ProbeExit.CRITICAL),
    ],
)  # fmt: skip
def test_verdict_and_perfdata_agree_at_the_threshold(
    parts: dict[str, Any], label: str, level: ProbeExit
) -> None:
    """#13 item 13: a value exactly at a threshold is OK, as the perfdata range says (alert
    when value > warn); the verdict is judged on the figure the perfdata prints."""
    args = {"host": host(), "service": snapshot(), "health": OK_HEALTH,
            "accelerator": UNKNOWN, "oom_events": (),
            "thresholds": load_settings().thresholds, **parts}  # fmt: skip
    findings = tuple(judge(**args))
    result = ProbeResult("2026-01-01T00:00:00Z", "svc", "http://x", args["host"],
                         args["service"], OK_HEALTH, UNKNOWN, (), findings,
                         args["thresholds"])  # fmt: skip
    perfdata = nagios_line(result).split(" | ", 1)[1]
    assert result.verdict == level
    assert plugin_range_level(perfdata, label) == level


def test_stopped_service_is_critical_with_reason() -> None:
    stopped = ServiceSnapshot(None, "stale", None, (), ())
    failed = HealthFigures(True, False, None, None, "no service at http://127.0.0.1:9", None)
    worst, messages = verdict(service=stopped, health=failed)
    assert worst == ProbeExit.CRITICAL
    assert messages == ["service not running (stale pidfile: the process is gone): "
                        "no service at http://127.0.0.1:9"]  # fmt: skip


def test_running_but_unhealthy_is_critical() -> None:
    failed = HealthFigures(True, False, 503, 2.0, "health answered HTTP 503", "degraded")
    worst, messages = verdict(health=failed)
    assert worst == ProbeExit.CRITICAL
    assert messages == ["service running but unhealthy: health answered HTTP 503"]


def test_accelerator_percent_of_limit_from_the_memory_report() -> None:
    # 1.7 x 10.67 GiB = 18.13 GiB, the limit in torch-mps-oom-6-gib.txt (a 16 GB Mac)
    report = {"device": "mps", "mps": {
        "current_allocated_bytes": 15 * GIB, "driver_allocated_bytes": 17 * GIB,
        "recommended_max_bytes": int(10.67 * GIB), "high_watermark_ratio": 1.7,
        "low_watermark_ratio": 1.4, "limit_bytes": int(18.13 * GIB)}}  # fmt: skip
    figures = from_memory_report(report)
    assert figures.limit_percent == pytest.approx(100 * 17 / 18.13, rel=1e-3)
    worst, messages = verdict(accelerator=figures)
    assert worst == ProbeExit.WARNING
    assert messages == ["mps driver allocated 17.00 GiB = 93.8% of its limit 18.13 GiB"]


def test_one_accelerator_figure_named_in_verdict_table_and_json() -> None:
    """#13 item 19: the verdict's percent, the table's "of limit" row and the JSON all use one
    figure (MPS: driver allocated; CUDA: reserved) and name it; the tensors' figure (15 GiB,
    83 %) never appears as the percent."""
    report = {"device": "mps", "mps": {
        "current_allocated_bytes": 15 * GIB, "driver_allocated_bytes": 17 * GIB,
        "recommended_max_bytes": int(10.67 * GIB), "high_watermark_ratio": 1.7,
        "low_watermark_ratio": 1.4, "limit_bytes": int(18.13 * GIB)}}  # fmt: skip
    figures = from_memory_report(report)
    _worst, messages = verdict(accelerator=figures)
    assert "driver allocated 17.00 GiB = 93.8%" in messages[0]
    document = figures.to_json()
    assert (document["held_name"], document["held_bytes"]) == ("driver allocated", 17 * GIB)
    assert document["limit_percent"] == 93.8
    from mpsctl.render.probe import accelerator_table

    result = ProbeResult("t", "svc", "u", host(), snapshot(), OK_HEALTH, figures, (), (),
                         load_settings().thresholds)  # fmt: skip
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(accelerator_table(result))
    assert "driver allocated 93.8%" in buffer.getvalue()
    cuda = from_memory_report({"device": "cuda", "cuda": {
        "allocated_bytes": GIB, "reserved_bytes": 2 * GIB, "limit_bytes": 4 * GIB}})  # fmt: skip
    assert (cuda.held_name, cuda.limit_percent) == ("reserved", 50.0)


def test_unmeasured_accelerator_is_null_not_zero() -> None:
    doc = UNKNOWN.to_json()
    assert doc["source"] is None
    assert all(doc[k] is None for k in ("allocated_bytes", "limit_bytes", "reserved_bytes"))


def test_probe_cli_dead_service_exits_critical(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, ["probe", "--json"])
    assert result.exit_code == 2, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.probe/1"
    assert doc["verdict"] == "CRITICAL"
    assert doc["service"]["running"] is False
    assert doc["health"]["ok"] is False
    assert doc["accelerator"]["source"] is None
    for key in ("total_bytes", "available_bytes", "used_bytes", "swap_total_bytes"):
        assert isinstance(doc["host"][key], int)


def test_probe_nagios_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, ["probe", "--nagios", "--host-used", "0,100"])
    assert result.exit_code == 2
    line = result.stdout.strip()
    assert line.startswith("MPSCTL CRITICAL - service not running")
    status, perf = line.split(" | ")
    assert "|" not in status
    first = perf.split()[0]
    assert first.startswith("host_used=")
    assert first.endswith(";0;100;0;100")


def test_bad_threshold_flag_is_unknown_not_critical() -> None:
    # monitoring-plugin convention: a usage or config error is UNKNOWN (3), never CRITICAL (2)
    result = CliRunner().invoke(main, ["probe", "--host-used", "95,85"])
    assert result.exit_code == 3
    assert result.stderr.startswith("mpsctl: error: --host-used: warning 95 is above critical 85")
    nagios = CliRunner().invoke(main, ["probe", "--nagios", "--host-used", "95,85"])
    assert nagios.exit_code == 3
    assert nagios.stdout == "MPSCTL UNKNOWN - --host-used: warning 95 is above critical 85\n"
    doc = json.loads(CliRunner().invoke(main, ["probe", "--json", "--host-used", "9,8"]).stdout)
    assert (doc["verdict"], doc["exit_code"]) == ("UNKNOWN", 3)


def test_bad_option_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CliRunner().invoke(main, ["probe", "--no-such"]).exit_code == 3
    monkeypatch.setenv("MPSCTL_MEMORY_HIGH_WATERMARK_RATIO", "abc")
    assert CliRunner().invoke(main, ["probe"]).exit_code == 3
    status = CliRunner().invoke(main, ["status", "--json"])
    assert status.exit_code == 4
    assert json.loads(status.stdout)["state"] == "unknown"


class _Health(BaseHTTPRequestHandler):
    body: bytes = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sleeper_service(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process whose command line looks like the operator's uvicorn service."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "uvicorn",
                             "app.main:app", "--port", str(port)])  # fmt: skip
    yield proc
    proc.kill()
    proc.wait()


def probe_json_with_health(write_config, report: dict[str, Any], port: int) -> Result:  # type: ignore[no-untyped-def]
    """``mpsctl probe --json`` for a service found by its ``--port`` on the command line,
    whose health answer (a real HTTP server on 127.0.0.1, on that port) is ``report``."""
    handler = type("H", (_Health,), {"body": json.dumps(report).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write_config(
            f'[service]\ncommand = ["uvicorn", "app.main:app"]\n'
            f'url = "http://127.0.0.1:{server.server_address[1]}"\n'
            f'match = "uvicorn app.main:app --port {port}$"\n'
        )
        return CliRunner().invoke(main, ["probe", "--json"])
    finally:
        server.shutdown()


def test_probe_finds_a_service_by_match_and_reads_its_report(
    sleeper_service: subprocess.Popen[bytes],
    write_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    report = {"status": "ok", "memory": {"schema": "mpsctl.memory/1", "device": "cpu",
              "mps": None, "cuda": None, "rss_bytes": 1000}}  # fmt: skip
    result = probe_json_with_health(write_config, report, int(sleeper_service.args[-1]))
    doc = json.loads(result.stdout)
    assert doc["service"]["found_by"] == "match"
    assert [p["pid"] for p in doc["service"]["processes"]] == [sleeper_service.pid]
    # sampled over an interval: psutil's first reading alone would be a meaningless 0.0
    assert isinstance(doc["service"]["processes"][0]["cpu_percent"], float)
    assert doc["service"]["rss_bytes"] > 0
    assert doc["health"]["ok"] is True
    assert doc["accelerator"]["source"] == "service"
    assert doc["accelerator"]["device"] == "cpu"
    assert result.exit_code in (0, 1), doc["reasons"]


REQUIRED = {
    "host": {"total_bytes", "available_bytes", "used_bytes", "percent", "swap_total_bytes",
             "swap_used_bytes", "wired_bytes", "compressed_bytes", "pressure"},
    "service": {"running", "rss_bytes", "processes", "env"},
    "health": {"ok", "status", "latency_ms"},
    "accelerator": {"source", "device", "allocated_bytes", "driver_allocated_bytes",
                    "reserved_bytes", "limit_bytes"},
}  # fmt: skip
PROCESS_KEYS = {"pid", "ppid", "cmdline", "rss_bytes", "footprint_bytes"}


def test_real_probe_json_has_every_required_key(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mps = {"current_allocated_bytes": 3 * GIB, "driver_allocated_bytes": 4 * GIB,
           "recommended_max_bytes": 10 * GIB, "high_watermark_ratio": 0.7,
           "low_watermark_ratio": 0.5, "limit_bytes": 7 * GIB}  # fmt: skip
    report = {"status": "ok", "memory": {"schema": "mpsctl.memory/1", "device": "mps", "mps": mps}}
    port = free_port()
    env = {**os.environ, "PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.7"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "uvicorn",
                             "app.main:app", "--port", str(port)], env=env)  # fmt: skip
    try:
        result = probe_json_with_health(write_config, report, port)
    finally:
        proc.kill()
        proc.wait()
    doc = json.loads(result.stdout)
    assert doc["verdict"] in ("OK", "WARNING", "CRITICAL", "UNKNOWN")
    assert isinstance(doc["reasons"], list)
    for part, keys in REQUIRED.items():
        assert keys <= doc[part].keys(), (part, keys - doc[part].keys())
    (process,) = doc["service"]["processes"]
    assert process.keys() >= PROCESS_KEYS
    assert (process["pid"], process["ppid"]) == (proc.pid, os.getpid())
    assert process["cmdline"][-3:] == ["app.main:app", "--port", str(port)]
    assert process["rss_bytes"] > 0
    assert process["footprint_bytes"] is None  # macOS only: unknown here, not 0
    assert doc["service"]["running"] is True
    assert doc["service"]["rss_bytes"] == process["rss_bytes"]
    assert doc["service"]["env"]["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.7"
    assert (doc["health"]["ok"], doc["health"]["status"]) == (True, 200)
    assert doc["health"]["latency_ms"] > 0
    assert doc["accelerator"].items() >= {
        "source": "service", "device": "mps", "allocated_bytes": 3 * GIB,
        "driver_allocated_bytes": 4 * GIB, "reserved_bytes": None, "limit_bytes": 7 * GIB,
    }.items()  # fmt: skip
    host = doc["host"]
    assert host["total_bytes"] == psutil.virtual_memory().total
    # Linux: the macOS-only figures are unknown (null), never 0; pressure is PSI's level
    assert (host["wired_bytes"], host["compressed_bytes"]) == (None, None)
    assert host["pressure"] in (None, "normal", "warn", "critical")


def test_stopped_service_json_says_unknown_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, ["probe", "--json"])
    service = json.loads(result.stdout)["service"]
    assert service["running"] is False
    assert (service["rss_bytes"], service["footprint_bytes"], service["env"]) == (None, None, None)
    assert service["processes"] == []
    nagios = CliRunner().invoke(main, ["probe", "--nagios"]).stdout
    assert "service_memory=" not in nagios  # no perfdata for what was not measured
    assert "accelerator_used=" not in nagios


def test_health_not_asked_is_unknown_not_failed() -> None:
    from mpsctl.probe import take_probe

    result = take_probe(load_settings(), check_health_endpoint=False)
    document = result.to_json()
    assert document["health"] == {
        "checked": False, "ok": None, "status": None, "latency_ms": None, "error": None,
        "service_status": None,
    }  # fmt: skip
    # the verdict comes from the process table alone: no health failure among the reasons
    assert document["reasons"] == ["CRITICAL: service not running"]


def test_mac_figures_a_mac_could_not_read_are_unknown_not_na() -> None:
    from rich.console import Console

    from mpsctl.observe.host import host_memory
    from mpsctl.probe import take_probe
    from mpsctl.render.probe import host_table

    def broken(argv: list[str]) -> str:
        raise FileNotFoundError(2, "No such file or directory")

    for platform, shown in (("darwin", "unknown"), ("linux", "n/a on this OS")):
        result = take_probe(load_settings(), check_health_endpoint=False,
                            host_reader=lambda p=platform: host_memory(broken, platform=p))  # type: ignore[misc]  # fmt: skip
        console = Console(record=True, width=80)
        console.print(host_table(result))
        rows = {line.split()[0]: line.split(None, 1)[1].strip()
                for line in console.export_text().splitlines()[1:] if line.strip()}  # fmt: skip
        assert (rows["wired"], rows["compressed"]) == (shown, shown)
        # pressure exists on both: macOS's level, Linux's PSI (unknown when unreadable)
        assert result.host is not None
        assert rows["pressure"] == (result.host.pressure or "unknown")


def _values(document: Any, key: str) -> list[Any]:
    if isinstance(document, dict):
        found = [document[key]] if key in document else []
        return found + [v for item in document.values() for v in _values(item, key)]
    if isinstance(document, list):
        return [v for item in document for v in _values(item, key)]
    return []


def test_unknown_is_null_everywhere_in_probe_and_clean_cache_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """#13 item 17: a stopped service has no RSS: every rss figure is null, never 0; and
    clean-cache --json names its figure freed_bytes like every other byte count."""
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    document = json.loads(CliRunner().invoke(main, ["probe", "--json"]).stdout)
    for key in ("rss_bytes", "total_rss_bytes", "footprint_bytes", "total_footprint_bytes"):
        assert set(map(repr, _values(document["service"], key))) <= {"None"}, key
    assert _values(document["service"], "total_rss_bytes") == [None]
    monkeypatch.setenv("MPSCTL_SERVICE_WORKDIR", os.getcwd())
    cleaned = json.loads(CliRunner().invoke(main, ["clean-cache", "--json"]).stdout)
    assert cleaned["python"]["freed_bytes"] == 0
    assert "bytes_freed" not in cleaned["python"]
