"""``start`` says what the service is doing while it waits, and warns when the plan does not fit.

Both through the ``Events`` seam start reports to, with a real start of the reference service:
the phases are the ones read from the service's real log.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from mpsctl.control.start import start_service
from mpsctl.control.stop import stop_service
from mpsctl.plan import plan_for_settings
from mpsctl.settings import load_settings
from tests.conftest import free_port


class RecordingEvents:
    """What start reports, in order (phases come from the log-reading thread)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.infos: list[str] = []
        self.phases: list[str] = []
        self.waits: list[str] = []
        self._lock = threading.Lock()

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def waiting(self, message: str) -> contextlib.AbstractContextManager[object]:
        self.waits.append(message)
        return contextlib.nullcontext()

    def phase(self, message: str) -> None:
        with self._lock:
            self.phases.append(message)


def _index(phases: list[str], prefix: str) -> int:
    found = [i for i, phase in enumerate(phases) if phase.startswith(prefix)]
    assert len(found) == 1, (prefix, phases)
    return found[0]


def test_first_start_of_the_demo_reports_each_phase_from_the_log(
    write_config: Callable[..., Path], isolated_home: Path, tmp_path: Path
) -> None:
    port = free_port()
    write_config(
        f'[service]\nurl = "http://127.0.0.1:{port}"\nstart_timeout = 180\n'
        f"workdir = {json.dumps(str(tmp_path))}\n"
    )
    settings = load_settings()
    events = RecordingEvents()
    started = start_service(settings, events=events)
    try:
        assert started.status == "started"
    finally:
        stop_service(settings)
    demo = isolated_home / "demo-model"
    phases = events.phases
    order = [
        _index(phases, "importing torch and transformers"),
        _index(phases, "building the demo checkpoint (first start only"),
        _index(phases, "built the demo checkpoint in "),
        _index(phases, f"loading model {demo} on cpu"),
        _index(phases, "model loaded in "),
        _index(phases, f"listening on http://127.0.0.1:{port}"),
    ]
    assert order == sorted(order), phases
    # the plan is silent on the demo's first start: its checkpoint did not exist yet
    assert not [w for w in events.warnings if "plan" in w]
    assert events.infos == []


def test_second_start_does_not_build_and_reports_no_build_phase(
    write_config: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "mpsctl", "serve", "--model", str(tiny_model),
               "--device", "cpu", "--port", str(port), "--no-auth"]  # fmt: skip
    write_config(
        f"[service]\ncommand = {json.dumps(command)}\n"
        f'url = "http://127.0.0.1:{port}"\nstart_timeout = 120\n'
        f"workdir = {json.dumps(str(tmp_path))}\n"
        # a query could generate 10^9 tokens: its KV cache alone would need ~512 GB
        "[serve]\nmax_new_tokens = 1000000000\nmax_new_tokens_limit = 1000000000\n"
        '[memory]\ndevice = "cpu"\n'
    )
    settings = load_settings()
    plan = plan_for_settings(settings, model_dir=str(tiny_model))
    events = RecordingEvents()
    started = start_service(settings, events=events)
    try:
        assert started.status == "started"  # a plan that does not fit warns, never stops
    finally:
        stop_service(settings)
    assert not [p for p in events.phases if "demo checkpoint" in p]
    assert _index(events.phases, f"loading model {tiny_model} on cpu") < _index(
        events.phases, "model loaded in "
    )

    warned = [w for w in events.warnings if w.startswith("the memory plan does not fit: ")]
    assert len(warned) == 1, events.warnings
    assert warned[0] in started.warnings
    assert not plan.fits
    assert plan.max_concurrent_that_fits == 0
    assert f"needs {plan.total_bytes} bytes" in warned[0]
    # on the CPU the limit is the RAM available at that moment: it moves between two reads
    usable = re.search(r"of (\d+) bytes usable \([^)]*: the RAM available ", warned[0])
    assert usable is not None, warned[0]
    assert 0 < int(usable.group(1)) < plan.total_bytes
    assert "does not fit even at 1 query: use a smaller model or dtype" in warned[0]
    # the weights in the plan are the checkpoint's tensor bytes, read from its file
    data = (tiny_model / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    assert plan.figures.weights_bytes == len(data) - 8 - header_len
