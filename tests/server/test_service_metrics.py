"""The reference service's /metrics: a latency histogram, the process's own metrics, and the
accelerator figures under the exporter's names; promtool accepts the text."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from mpsctl.server.metrics import ServiceMetrics
from tests.monitor import mps_report
from tests.monitor.external import require_tool
from tests.service_fixtures import InProcessService

Start = Callable[..., InProcessService]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_latency_histogram_and_process_metrics(inprocess_factory: Start, tmp_path: Path) -> None:
    svc = inprocess_factory(max_question_bytes=64, max_new_tokens_limit=8)
    began = time.perf_counter()
    assert svc.request("POST", "/api/v1/query", {"question": "x"}).status == 200
    took = time.perf_counter() - began
    assert svc.request("POST", "/api/v1/query", {"wrong": 1}).status == 422
    text = svc.request("GET", "/metrics", token=None).body.decode()
    values = samples(text)
    ok = (("outcome", "ok"),)
    assert values[("mpsctl_query_duration_seconds_count", ok)] == 1
    assert 0 < values[("mpsctl_query_duration_seconds_sum", ok)] <= took
    assert values[("mpsctl_query_duration_seconds_bucket", (("le", "+Inf"), *ok))] == 1
    assert values[("mpsctl_query_duration_seconds_count", (("outcome", "bad_request"),))] == 1
    # this very process (the service runs in the test's process here)
    started = values[("process_start_time_seconds", ())]
    assert abs(started - psutil.Process().create_time()) < 2
    assert values[("process_resident_memory_bytes", ())] > 10 * 1024 * 1024
    (tmp_path / "metrics.txt").write_text(text, encoding="utf-8")
    promtool = require_tool("promtool", "prometheus")
    with (tmp_path / "metrics.txt").open("rb") as handle:
        done = subprocess.run([promtool, "check", "metrics"], stdin=handle,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    # promtool lints names and help; a counter without _total would be an error here
    assert done.returncode == 0, done.stdout + done.stderr


def test_accelerator_figures_carry_the_exporters_names() -> None:
    report = mps_report(11453251584, high=0.7)
    text = ServiceMetrics(lambda: {"memory": report}, started=1.0).render().decode()
    values = samples(text)
    mps = (("device", "mps"),)
    assert values[("mpsctl_accelerator_allocated_bytes", mps)] == 1073741824
    assert values[("mpsctl_accelerator_driver_allocated_bytes", mps)] == 1400897536
    assert values[("mpsctl_accelerator_limit_bytes", mps)] == int(0.7 * 11453251584)
    assert ("mpsctl_accelerator_reserved_bytes", mps) not in values  # CUDA only: absent
