"""The 0.5b demo checkpoint, shared by the tests that load it with torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_05b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 0.5b demo checkpoint (Qwen2.5-0.5B's layer shapes, 384-token vocabulary):
    ~22 s and ~1.8 GB peak to build on one core, 716 MB on disk, so a child process
    builds it and gives its memory back when it exits."""
    target = tmp_path_factory.mktemp("demo-05b") / "model"
    subprocess.run([sys.executable, "-m", "mpsctl", "demo-model", str(target), "--size", "0.5b"],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    return target
