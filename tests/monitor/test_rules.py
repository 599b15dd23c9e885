"""The shipped alert rules: printed by the CLI, accepted by promtool, and firing on the
input series each alert is for (``promtool test rules``), and not on their neighbours."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mpsctl import contrib
from mpsctl.cli import main
from tests.monitor.external import require_tool

EXPORTER = {"instance": "mac1:9808", "job": "mpsctl-exporter", "service": "mpsctl-mvp"}
SERVICE = {"instance": "mac1:8000", "job": "mpsctl-service"}
OLD_SERVICE = {"instance": "mac2:8000", "job": "mpsctl-service"}
MAC2 = {"instance": "mac2:9808", "job": "mpsctl-exporter"}
GPU1 = {"instance": "gpu1:9808", "job": "mpsctl-exporter"}
MIB = 1024 * 1024


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{label_text}}}", "values": values}


def mps_limits(host: dict[str, str], ratio: float) -> list[dict[str, str]]:
    """Two services on one Mac of 16 GiB recommended working set, each allowed ``ratio``."""
    out = []
    for name in ("chat", "embed"):
        labels = {**host, "service": name, "device": "mps"}
        out.append(series("mpsctl_accelerator_limit_bytes", f"{int(ratio * 16384) * MIB}x12",
                          **labels))  # fmt: skip
        out.append(series("mpsctl_accelerator_recommended_max_bytes", f"{16384 * MIB}x12",
                          **labels))  # fmt: skip
    return out


def alert(
    eval_time: str, name: str, labels: dict[str, str] | None = None, **annotations: str
) -> dict[str, Any]:
    # every alert points at its section of docs/fleet.md
    annotations = {**annotations, "runbook_url": f"docs/fleet.md#{name.lower()}"}
    expected = [] if labels is None else [{"exp_labels": labels, "exp_annotations": annotations}]
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": expected}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "prometheus")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_exporter_rules_prints_the_shipped_file() -> None:
    result = CliRunner().invoke(main, ["exporter", "--rules"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == contrib.read_text(contrib.RULES)
    assert "MpsctlWatchdogGaveUp" in result.stdout


def test_promtool_check_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(contrib.read_text(contrib.RULES), encoding="utf-8")
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_promtool_test_rules_on_input_series(tmp_path: Path) -> None:
    mvp = "mpsctl-mvp on mac1:9808"
    crit = {**EXPORTER, "severity": "critical"}
    warn = {**EXPORTER, "severity": "warning"}
    other = {**EXPORTER, "service": "other"}
    # a host's own figures: one alert per host, whichever services reported them
    host_warn = {k: v for k, v in warn.items() if k != "service"}
    host_crit = {k: v for k, v in crit.items() if k != "service"}
    tests = [
        {  # down for 4 minutes: fires; down for 1 minute: still pending
            "interval": "1m",
            "input_series": [series("mpsctl_service_up", "1 1 0 0 0 0", **EXPORTER)],
            "alert_rule_test": [
                alert("2m", "MpsctlServiceDown"),
                alert(
                    "5m",
                    "MpsctlServiceDown",
                    crit,
                    summary=f"{mvp} is not running",
                    description="No process of the service was found for 1 minute.",
                ),
            ],
        },
        {  # CRITICAL while running fires after 10 minutes; CRITICAL because down does not
            "interval": "1m",
            "input_series": [
                series("mpsctl_verdict", "2x12", **EXPORTER),
                series("mpsctl_service_up", "1x12", **EXPORTER),
                series("mpsctl_verdict", "2x12", **other),
                series("mpsctl_service_up", "0x12", **other),
                series("mpsctl_up_unrelated", "1x12", **EXPORTER),
            ],
            "alert_rule_test": [
                alert("9m", "MpsctlServiceUnhealthy"),
                alert(
                    "11m",
                    "MpsctlServiceUnhealthy",
                    crit,
                    summary=f"{mvp} has been CRITICAL for 10 minutes",
                    description="Run `mpsctl probe` on the host for the reasons; the watchdog "
                    "(fix --if-unhealthy) should have restarted it.",
                ),
            ],
        },
        {  # 95% of the limit (MPS driver memory) fires after 5 minutes; 50% (CUDA) does not
            "interval": "1m",
            "input_series": [
                series(
                    "mpsctl_accelerator_driver_allocated_bytes", "95x8", device="mps", **EXPORTER
                ),
                series("mpsctl_accelerator_allocated_bytes", "40x8", device="mps", **EXPORTER),
                series("mpsctl_accelerator_limit_bytes", "100x8", device="mps", **EXPORTER),
                series("mpsctl_accelerator_allocated_bytes", "50x8", device="cuda:0", **other),
                series("mpsctl_accelerator_limit_bytes", "100x8", device="cuda:0", **other),
            ],
            "alert_rule_test": [
                alert("4m", "MpsctlAcceleratorMemoryHigh"),
                alert(
                    "6m",
                    "MpsctlAcceleratorMemoryHigh",
                    {**warn, "device": "mps"},
                    summary=f"{mvp} uses 95% of its accelerator memory limit",
                    description="Above 90% of the allocator limit for 5 minutes: the next "
                    "large request may fail with out-of-memory.",
                ),
            ],
        },
        {  # two services on one Mac allowed 0.7 of its working set each: fires after 10
            # minutes; two allowed 0.4 each on another Mac, and a CUDA host, do not
            "interval": "1m",
            "input_series": [
                *mps_limits(EXPORTER, 0.7),
                *mps_limits(MAC2, 0.4),
                *(
                    series(
                        "mpsctl_accelerator_limit_bytes",
                        f"{80 * 1024 * MIB}x12",
                        device="cuda:0",
                        **{**GPU1, "service": name},
                    )
                    for name in ("chat", "embed")
                ),
            ],
            "alert_rule_test": [
                alert("9m", "MpsctlAcceleratorLimitsOversubscribed"),
                alert(
                    "11m",
                    "MpsctlAcceleratorLimitsOversubscribed",
                    {"instance": "mac1:9808", "severity": "warning"},
                    summary="mac1:9808: the services' MPS limits add up to 22.4GiB, more "
                    "than the working set they share",
                    description="Together the services may grow past the recommended working "
                    "set while each stays within its own limit: lower "
                    "memory.high_watermark_ratio so their ratios sum to 1.0 or less.",
                ),
            ],
        },
        {  # one new OOM from the service's counter, and one new memory failure in the logs:
            # the counter fires at the first scrape that shows it, not minutes later
            "interval": "1m",
            "input_series": [
                series("mpsctl_out_of_memory_total", "0 0 0 1 1 1", **SERVICE),
                series("mpsctl_oom_events_total", "0x12 1x4", kind="oom", **EXPORTER),
                series("mpsctl_oom_events_total", "0x16", kind="kernel_oom_kill", **EXPORTER),
            ],
            "alert_rule_test": [
                alert("2m", "MpsctlOutOfMemory"),
                alert(
                    "4m",
                    "MpsctlOutOfMemory",
                    {**SERVICE, "severity": "warning"},
                    summary="mac1:8000: a query ran out of memory",
                    description="About 1 out-of-memory error(s) in 10 minutes (increase() "
                    "extrapolates); see `mpsctl oom`.",
                ),
                alert("12m", "MpsctlOutOfMemoryInLogs"),
                alert(
                    "13m",
                    "MpsctlOutOfMemoryInLogs",
                    {**warn, "kind": "oom"},
                    summary=f"{mvp}: a new memory failure (oom) in the logs",
                    description="See `mpsctl oom` on the host.",
                ),
            ],
        },
        {  # a service whose first scrape already counts a failure: new (its counter made
            # at 4m, first scraped at 5m), it fires until 10 minutes after it started; a
            # process older than that, first seen with a count (Prometheus restarted),
            # does not
            "interval": "1m",
            "input_series": [
                series("mpsctl_out_of_memory_total", "_x5 2x12", **SERVICE),
                series("mpsctl_out_of_memory_created", "_x5 240x12", **SERVICE),
                series("mpsctl_out_of_memory_total", "_x5 1x12", **OLD_SERVICE),
                series("mpsctl_out_of_memory_created", "_x5 -86400x12", **OLD_SERVICE),
            ],
            "alert_rule_test": [
                alert("4m", "MpsctlOutOfMemory"),
                alert(
                    "6m",
                    "MpsctlOutOfMemory",
                    {**SERVICE, "severity": "warning"},
                    summary="mac1:8000: a query ran out of memory",
                    description="About 2 out-of-memory error(s) in 10 minutes (increase() "
                    "extrapolates); see `mpsctl oom`.",
                ),
                alert("15m", "MpsctlOutOfMemory"),
            ],
        },
        {  # an exporter first scraped at 19m: its counters are there at 0 from that first
            # scrape, so a failure found by the next one fires at once (a window compared
            # with `offset 10m` had nothing to compare with for 10 minutes)
            "interval": "1m",
            "input_series": [
                series("mpsctl_oom_events_total", "_x19 0 1 1", kind="oom", **EXPORTER),
            ],
            "alert_rule_test": [
                alert("19m", "MpsctlOutOfMemoryInLogs"),
                alert(
                    "20m",
                    "MpsctlOutOfMemoryInLogs",
                    {**warn, "kind": "oom"},
                    summary=f"{mvp}: a new memory failure (oom) in the logs",
                    description="See `mpsctl oom` on the host.",
                ),
            ],
        },
        {  # the probe job stops: its last textfile is served on, with a frozen timestamp
            "interval": "1m",
            "input_series": [
                series("mpsctl_probe_timestamp_seconds", "0+60x5 300x10", **EXPORTER),
            ],
            "alert_rule_test": [
                alert("7m", "MpsctlProbeStale"),
                alert(
                    "9m",
                    "MpsctlProbeStale",
                    warn,
                    summary=f"{mvp}: the last probe is 4m 0s old",
                    description="The probe job stopped running (cron, the systemd timer or "
                    "the launchd agent): the other figures are stale.",
                ),
            ],
        },
        {  # swap grows 64 MiB a minute on one host (reported by both its services: one
            # alert for the host); a constant (large) swap on another host
            "interval": "1m",
            "input_series": [
                series("mpsctl_host_swap_used_bytes", f"0+{64 * MIB}x20", **EXPORTER),
                series("mpsctl_host_swap_used_bytes", f"0+{64 * MIB}x20", **other),
                series("mpsctl_host_swap_used_bytes", f"{8192 * MIB}x20", **MAC2),
            ],
            "alert_rule_test": [
                alert(
                    "15m",
                    "MpsctlHostSwapping",
                    host_warn,
                    summary="mac1:9808 is swapping",
                    description="Swap use grew by more than 256 MiB in 10 minutes: model "
                    "memory is being paged out.",
                ),
            ],
        },
        {  # pressure critical for 3 minutes fires, once for the host of two services;
            # warn does not
            "interval": "1m",
            "input_series": [
                series("mpsctl_host_memory_pressure_level", "0 0 2 2 2 2", **EXPORTER),
                series("mpsctl_host_memory_pressure_level", "0 0 2 2 2 2", **other),
                series("mpsctl_host_memory_pressure_level", "1x6", **MAC2),
            ],
            "alert_rule_test": [
                alert(
                    "5m",
                    "MpsctlMemoryPressureCritical",
                    host_crit,
                    summary="mac1:9808: memory pressure is critical",
                    description="macOS's pressure level is critical, or on Linux tasks "
                    "stalled on memory most of the last 10 s (PSI full avg10 >= 60%); the "
                    "watchdog restarts the service on CRITICAL.",
                ),
            ],
        },
        {  # the watchdog refuses once; its restarts alone do not fire
            "interval": "1m",
            "input_series": [
                series("mpsctl_watchdog_refusals_total", "0 0 0 1 1", **EXPORTER),
                series("mpsctl_watchdog_refusals_total", "0x5", **other),
                series("mpsctl_watchdog_restarts_total", "0 1 2 3 3", **other),
            ],
            "alert_rule_test": [
                alert("2m", "MpsctlWatchdogGaveUp"),
                alert(
                    "4m",
                    "MpsctlWatchdogGaveUp",
                    crit,
                    summary=f"{mvp}: the watchdog gave up restarting",
                    description="fix --if-unhealthy spent its restart budget "
                    "(fix.max_restarts): a person has to look (`mpsctl logs`, `mpsctl oom`).",
                ),
            ],
        },
        {  # the exporter does not answer for 3 minutes
            "interval": "1m",
            "input_series": [
                series("up", "1 0 0 0 0", instance="mac1:9808", job="mpsctl-exporter")
            ],
            "alert_rule_test": [
                alert(
                    "4m",
                    "MpsctlExporterDown",
                    {"instance": "mac1:9808", "job": "mpsctl-exporter", "severity": "critical"},
                    summary="mpsctl exporter on mac1:9808 does not answer",
                    description="No figures from this host: the other mpsctl alerts cannot "
                    "fire for it.",
                ),
            ],
        },
    ]
    (tmp_path / "rules.yml").write_text(contrib.read_text(contrib.RULES), encoding="utf-8")
    document = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    # JSON is YAML: promtool reads it as is
    (tmp_path / "tests.yml").write_text(json.dumps(document, indent=1), encoding="utf-8")
    done = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no promtool on it
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is not installed"):
        require_tool("promtool", "prometheus")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tool("promtool", "prometheus")


def test_every_runbook_url_names_a_section_of_the_fleet_doc() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "fleet.md").read_text(encoding="utf-8")
    anchors = {
        line.lstrip("#").strip().lower() for line in doc.splitlines() if line.startswith("#")
    }
    names = re.findall(r"(?m)^      - alert: (\w+)$", contrib.read_text(contrib.RULES))
    assert len(names) == 11
    for name in names:
        assert name.lower() in {a.strip("`") for a in anchors}, name


def test_time_scale_shortens_every_duration_and_promtool_accepts_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["exporter", "--rules", "--time-scale", "0.05"])
    assert result.exit_code == 0, result.stderr
    fors = ["6s", "3s", "30s", "15s", "30s", "15s", "6s"]
    assert re.findall(r"for: (\S+)", result.stdout) == fors
    assert "[10m]" not in result.stdout
    assert "increase(mpsctl_oom_events_total[30s])" in result.stdout
    assert "mpsctl_probe_timestamp_seconds > 9" in result.stdout
    assert "time() - mpsctl_out_of_memory_created < 30)" in result.stdout
    (tmp_path / "rules.yml").write_text(result.stdout, encoding="utf-8")
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert "SUCCESS: 11 rules found" in done.stdout, done.stderr
    bad = CliRunner().invoke(main, ["exporter", "--rules", "--time-scale", "2"])
    assert bad.exit_code == 2


def test_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    url = 'http://127.0.0.1:5001/hook?a=1&b="q"'
    result = CliRunner().invoke(main, ["exporter", "--alertmanager", "--webhook-url", url])
    assert result.exit_code == 0, result.stderr
    (tmp_path / "am.yml").write_text(result.stdout, encoding="utf-8")
    done = subprocess.run([amtool, "check-config", "am.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 inhibit rules" in done.stdout
    import yaml

    assert yaml.safe_load(result.stdout)["receivers"][0]["webhook_configs"][0]["url"] == url


def test_scrape_config_and_rules_pass_promtool_check_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["exporter", "--scrape-config", "--port", "9810"])
    assert result.exit_code == 0, result.stderr
    (tmp_path / "rules.yml").write_text(contrib.read_text(contrib.RULES), encoding="utf-8")
    config = 'rule_files: ["rules.yml"]\n' + result.stdout
    (tmp_path / "prometheus.yml").write_text(config, encoding="utf-8")
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"127.0.0.1:9810"' in result.stdout
    assert "job_name: mpsctl-exporter" in result.stdout


def test_runbook_base_makes_every_runbook_url_absolute(tmp_path: Path) -> None:
    base = "https://git.example.com/ops/mpsctl/blob/v1.0"
    result = CliRunner().invoke(main, ["exporter", "--rules", "--runbook-base", base])
    assert result.exit_code == 0, result.stderr
    import yaml

    rules = yaml.safe_load(result.stdout)["groups"][0]["rules"]
    urls = [rule["annotations"]["runbook_url"] for rule in rules]
    assert urls == [f"{base}/docs/fleet.md#{rule['alert'].lower()}" for rule in rules]
    (tmp_path / "rules.yml").write_text(result.stdout, encoding="utf-8")
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert "SUCCESS: 11 rules found" in done.stdout, done.stderr
    # with the time scale too: both changes, nothing else
    both = CliRunner().invoke(
        main, ["exporter", "--rules", "--runbook-base", base + "/", "--time-scale", "0.05"]
    )
    assert both.stdout.count(f'"{base}/docs/fleet.md#') == 11
    assert "for: 30s" in both.stdout


@pytest.mark.parametrize(
    "bad", ["docs.example.com/mpsctl", "ftp://example.com/", 'https://x/a"b', "https://x/a b",
            "https://x/a\nb", "https://"],
)  # fmt: skip
def test_runbook_base_refuses_what_is_not_an_absolute_url(bad: str) -> None:
    result = CliRunner().invoke(main, ["exporter", "--rules", "--runbook-base", bad])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("mpsctl: error: --runbook-base"), line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("command", "scraped"),
    [
        (["/opt/mvp/.venv/bin/mpsctl", "serve", "--model", "/models/qwen", "--port", "8001"], True),
        (["python3", "-m", "mpsctl", "serve", "--model", "/models/qwen", "--port", "8001"], True),
        (["/opt/mvp/.venv/bin/uvicorn", "app.main:app", "--port", "8001"], False),
        (["/usr/bin/mpsctl-serve-wrapper", "--port", "8001"], False),
    ],
)
def test_scrape_config_has_a_service_job_for_every_reference_service(
    write_config: Callable[..., Path], tmp_path: Path, command: list[str], scraped: bool
) -> None:
    # the reference service serves /metrics however it is started; another app does not
    write_config(f'[service]\ncommand = {json.dumps(command)}\nurl = "http://127.0.0.1:8001"\n')
    result = CliRunner().invoke(main, ["exporter", "--scrape-config", "--port", "9810"])
    assert result.exit_code == 0, result.stderr
    jobs = {job["job_name"]: job for job in yaml_load(result.stdout)["scrape_configs"]}
    if scraped:
        assert jobs["mpsctl-service"]["static_configs"] == [{"targets": ["127.0.0.1:8001"]}]
    else:
        assert "mpsctl-service" not in jobs


def test_scrape_config_of_several_services_lists_each_reference_service(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    write_config(
        '[services.chat]\nurl = "http://127.0.0.1:8001"\n'
        '[services.embed]\nurl = "http://127.0.0.1:8002"\n'
        'command = ["uvicorn", "embed:app", "--port", "8002"]\nlog_file = "embed.log"\n'
        '[services.rerank]\nurl = "http://127.0.0.1:8003"\n'
        'command = ["mpsctl", "serve", "--port", "8003"]\nlog_file = "rerank.log"\n'
    )
    result = CliRunner().invoke(main, ["exporter", "--scrape-config", "--port", "9810"])
    assert result.exit_code == 0, result.stderr
    jobs = {job["job_name"]: job for job in yaml_load(result.stdout)["scrape_configs"]}
    targets = jobs["mpsctl-service"]["static_configs"][0]["targets"]
    assert sorted(targets) == ["127.0.0.1:8001", "127.0.0.1:8003"]
    (tmp_path / "prometheus.yml").write_text(result.stdout, encoding="utf-8")
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def yaml_load(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
