"""The MPS memory limit a service will run under: high ratio x recommendedMaxWorkingSetSize.

The recommended size comes from the service's last health report, or once from
``torch.mps.recommended_max_memory()`` run in the service's venv (cached in MPSCTL_HOME)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsctl.observe.accelerator import from_memory_report
from mpsctl.paths import LAST_HEALTH
from mpsctl.settings import Settings
from mpsctl.storage import atomic_write_json, read_regular
from mpsctl.torch_env import (
    DEFAULT_HIGH_RATIO,
)
from mpsctl.units import fmt_bytes

RECOMMENDED_MAX = "recommended_max.json"


@dataclass(frozen=True)
class MemoryLimit:
    """The MPS limit the service will run under, in bytes where they can be known."""

    high: float | None
    low: float | None
    fallback: bool
    device: str
    recommended_max_bytes: int | None
    recommended_source: str | None  # "last health report" | "torch.mps" | None

    @property
    def limit_bytes(self) -> int | None:
        if self.high is None or self.high == 0.0 or self.recommended_max_bytes is None:
            return None
        return int(self.high * self.recommended_max_bytes)

    def describe(self) -> str:
        if self.high is None:
            return f"high: PyTorch's default ({DEFAULT_HIGH_RATIO:g})"
        if self.high == 0.0:
            return "high 0.00 = no limit"
        if self.recommended_max_bytes is None:
            return f"high {self.high:.2f} x recommendedMaxWorkingSetSize (not known yet)"
        return (
            f"high {self.high:.2f} x {fmt_bytes(self.recommended_max_bytes)} = "
            f"{fmt_bytes(self.limit_bytes)}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "high_watermark_ratio": self.high,
            "low_watermark_ratio": self.low,
            "mps_fallback": self.fallback,
            "recommended_max_bytes": self.recommended_max_bytes,
            "recommended_max_source": self.recommended_source,
            "limit_bytes": self.limit_bytes,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_regular(path, follow=False))
    except (OSError, ValueError):
        return None


def _recommended_from_health(home: Path) -> int | None:
    body = _read_json(home / LAST_HEALTH)
    report = body.get("memory") if isinstance(body, dict) else None
    if not isinstance(report, dict):
        return None
    value = from_memory_report(report).recommended_max_bytes
    return value if value is not None and value > 0 else None


def _venv_python(settings: Settings) -> str:
    venv = settings.service.venv
    if venv is not None and (venv / "bin" / "python").exists():
        return str(venv / "bin" / "python")
    return sys.executable


def _recommended_from_torch(settings: Settings) -> int | None:
    """One-off ``torch.mps.recommended_max_memory()`` in the service's venv (macOS only).

    Cached in MPSCTL_HOME: importing torch takes seconds and the figure is fixed per machine.
    """
    cached = _read_json(settings.home / RECOMMENDED_MAX)
    if isinstance(cached, dict) and isinstance(cached.get("recommended_max_bytes"), int):
        return int(cached["recommended_max_bytes"])
    code = "import torch; print(torch.mps.recommended_max_memory())"
    try:
        done = subprocess.run(
            [_venv_python(settings), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        value = int(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if value <= 0:
        return None
    with contextlib.suppress(OSError):
        atomic_write_json(settings.home / RECOMMENDED_MAX, {"recommended_max_bytes": value})
    return value


def memory_limit(settings: Settings, *, query_torch: bool = True) -> MemoryLimit:
    memory = settings.memory
    recommended = _recommended_from_health(settings.home)
    source = "last health report" if recommended is not None else None
    mps_possible = sys.platform == "darwin" and memory.device in ("auto", "mps")
    if recommended is None and query_torch and mps_possible:
        recommended = _recommended_from_torch(settings)
        source = "torch.mps" if recommended is not None else None
    return MemoryLimit(
        memory.high_watermark_ratio,
        memory.low_watermark_ratio,
        memory.mps_fallback,
        memory.device,
        recommended,
        source,
    )


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
