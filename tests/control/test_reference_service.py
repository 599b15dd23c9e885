"""start -> healthy -> ask -> clean-cache -> stop with the real reference service (tiny Qwen2)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mpsctl.control import cache, fix
from mpsctl.control.start import start_service
from mpsctl.control.status import service_status
from mpsctl.control.stop import stop_service
from mpsctl.errors import StatusExit
from mpsctl.observe import processes
from mpsctl.settings import load_settings
from tests.conftest import free_port


def test_reference_service_lifecycle(
    tiny_model: Path, write_config: Callable[..., Path], tmp_path: Path, isolated_home: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "mpsctl", "serve", "--model", str(tiny_model),
               "--device", "cpu", "--port", str(port), "--no-auth"]  # fmt: skip
    write_config(
        "[service]\n"
        f"command = {json.dumps(command)}\n"
        f'url = "http://127.0.0.1:{port}"\n'
        f"workdir = {json.dumps(str(tmp_path))}\n"
        "start_timeout = 120\n"
        "[memory]\nhigh_watermark_ratio = 0.7\nlow_watermark_ratio = 0.5\n"
        "[serve]\nthreads = 2\n"  # the default is 1: 2 shows the key reached torch
    )
    settings = load_settings()
    assert service_status(settings).exit_code == StatusExit.NOT_RUNNING

    started = start_service(settings)
    created = psutil.Process(started.pid).create_time()
    try:
        assert started.status == "started"
        record = json.loads((isolated_home / "service.pid").read_text())
        assert record["pid"] == started.pid
        assert record["create_time"] == pytest.approx(created)
        assert record["url"] == f"http://127.0.0.1:{port}"
        assert service_status(settings).exit_code == StatusExit.RUNNING
        assert start_service(settings).status == "already-running"
        env = psutil.Process(started.pid).environ()
        assert env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.7"
        assert env["PYTORCH_MPS_LOW_WATERMARK_RATIO"] == "0.5"
        health = json.loads((isolated_home / "last_health.json").read_text())
        assert health["memory"]["device"] == "cpu"
        log = settings.service.log_file.read_text(encoding="utf-8")
        assert "mpsctl.server: torch CPU threads: 2 (serve.threads)" in log
        assert fix.ask_question(settings, "工商银行")
        released = cache.clean_cache(settings)
        assert released.release is not None
        assert released.release.ok, released.release.error
    finally:
        stopped = stop_service(settings)
    assert stopped.status == "stopped"
    assert stopped.processes[0].outcome == "SIGTERM"
    assert stopped.freed_rss_bytes > 0
    assert not processes.is_alive(started.pid, created)
    assert not (isolated_home / "service.pid").exists()
    assert service_status(settings).exit_code == StatusExit.NOT_RUNNING
    assert stop_service(settings).status == "already-stopped"
