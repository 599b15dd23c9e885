"""On a real CUDA GPU: a real CUDA OOM -> 503 -> recovery, the memory report equal to torch's
own figures, NVML's per-process figure for the service's pid, ``mpsctl oom`` on the real
message. Marked ``gpu``: skipped where torch sees no CUDA device (the one allowed skip).

Run them with ``tests/gpu/run_gpu_checks.sh`` (prints a summary).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from tests.conftest import free_port
from tests.service_fixtures import InProcessService, start_service, stop_process


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="no CUDA device")]
QUERY = "/api/v1/query"
SHORT = {"question": "工商银行", "max_new_tokens": 2}
LONG = {"question": "a " * 4000, "max_new_tokens": 1}
MIB = 1024**2


@pytest.fixture(scope="module")
def half_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mpsctl.server.demo import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("half") / "model", "0.5b")


@pytest.fixture
def cuda_service(half_model: Path, tmp_path: Path) -> Iterator[tuple[InProcessService, Path]]:
    """The reference app on cuda in this process (so torch's own counters can be read), its
    log lines written to a file as ``serve`` writes them."""
    import uvicorn

    from mpsctl.server.app import ServiceConfig, create_service
    from mpsctl.server.model import ModelHolder

    log_path = tmp_path / "service.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("mpsctl.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    holder = ModelHolder(device="cuda", max_new_tokens=8)
    holder.load(str(half_model))
    service = create_service(holder, ServiceConfig(token=None, max_question_bytes=20000))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(service.asgi, host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.02)
    running = InProcessService(f"http://127.0.0.1:{port}", None, service, server, thread)
    try:
        yield running, log_path
    finally:
        running.stop()
        logger.removeHandler(handler)
        handler.close()
        import torch

        torch.cuda.set_per_process_memory_fraction(1.0)
        holder.model = None
        torch.cuda.empty_cache()


def test_real_cuda_oom_is_503_then_recovers_and_oom_reads_it(
    cuda_service: tuple[InProcessService, Path],
) -> None:
    import torch

    svc, log_path = cuda_service
    assert svc.request("POST", QUERY, SHORT, timeout=120).status == 200
    total = torch.cuda.mem_get_info(0)[1]
    allowed = torch.cuda.memory_reserved(0) + 64 * MIB  # room for a short answer only
    torch.cuda.set_per_process_memory_fraction(allowed / total, 0)
    failed = svc.request("POST", QUERY, LONG, timeout=300)
    assert failed.status == 503, failed.body
    assert failed.json["error"]["kind"] == "out_of_memory"
    assert "CUDA out of memory" in failed.json["error"]["message"]
    assert int(failed.headers["retry-after"]) > 0
    assert torch.cuda.memory_reserved(0) <= allowed  # given back, not held
    assert svc.request("POST", QUERY, SHORT, timeout=120).status == 200

    result = CliRunner().invoke(main, ["oom", "--json", str(log_path)])
    doc = json.loads(result.stdout)
    [event] = [e for e in doc["events"] if e["backend"] == "cuda"]
    assert event["kind"] == "oom"
    assert event["gpu_index"] == 0
    assert event["allowed_bytes"] is not None
    assert abs(event["allowed_bytes"] - allowed) <= 0.01 * 1024**3  # printed with 2 decimals
    assert abs(event["total_bytes"] - total) <= 0.01 * 1024**3
    [tried] = re.findall(r"Tried to allocate (\d+(?:\.\d+)?) (GiB|MiB|KiB)", log_path.read_text())
    scale = {"GiB": 1024**3, "MiB": MIB, "KiB": 1024}[tried[1]]
    assert event["requested_bytes"] == round(float(tried[0]) * scale)


def test_memory_report_equals_torchs_own_figures(
    cuda_service: tuple[InProcessService, Path],
) -> None:
    import torch

    svc, _ = cuda_service
    assert svc.request("POST", QUERY, SHORT, timeout=120).status == 200
    report = svc.request("GET", "/health").json["memory"]
    cuda: dict[str, Any] = report["cuda"]
    assert cuda["allocated_bytes"] == torch.cuda.memory_allocated(0)
    assert cuda["reserved_bytes"] == torch.cuda.memory_reserved(0)
    assert cuda["max_allocated_bytes"] == torch.cuda.max_memory_allocated(0)
    assert cuda["total_bytes"] == torch.cuda.mem_get_info(0)[1]


def test_probe_reads_nvmls_per_process_figure_for_the_service(
    half_model: Path, tmp_path: Path
) -> None:
    from mpsctl.observe.accelerator import from_nvml

    svc = start_service(half_model, tmp_path / "logs", token=None, extra_args=["--device", "cuda"])
    try:
        assert svc.request("POST", QUERY, SHORT, timeout=120).status == 200
        figures = from_nvml([svc.proc.pid])
        smi = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        by_pid = {int(p): int(m) for p, m in (r.split(",") for r in smi.strip().splitlines())}
        assert figures is not None, f"NVML lists no process for pid {svc.proc.pid}: {smi!r}"
        assert figures.source == "nvml"
        assert figures.reserved_bytes == by_pid[svc.proc.pid] * MIB
        reported = svc.request("GET", "/health").json["memory"]["cuda"]["reserved_bytes"]
        assert figures.reserved_bytes is not None
        assert figures.reserved_bytes > reported  # the CUDA context on top of PyTorch's cache
    finally:
        stop_process(svc.proc)
