"""Shared fixtures. Every test runs with its own MPSCTL_HOME and no config file."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Fixtures that start real services live in their own module.
pytest_plugins = ["tests.service_fixtures"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test touches the real home, a real pidfile or a real config file."""
    for name in list(os.environ):
        if name.startswith(("MPSCTL_", "PYTORCH_")):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mpsctl-home"
    monkeypatch.setenv("MPSCTL_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def fixtures_dir() -> Path:
    """Recorded real outputs (see tests/fixtures/SOURCES.md); never invented ones."""
    return FIXTURES


def read_fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def free_port() -> int:
    """A port nobody listens on right now (bound to 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Write an mpsctl.toml and point MPSCTL_CONFIG at it."""

    def write(text: str, name: str = "mpsctl.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv("MPSCTL_CONFIG", str(path))
        return path

    return write


PYTHON = sys.executable
