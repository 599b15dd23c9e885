"""Run a command with its stdout on a real pseudo-terminal (what an operator's shell gives)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys


def run_on_tty(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> bytes:
    """stdout of ``python -m mpsctl ARGS`` written to a pty; stderr is discarded."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", *args],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, COLUMNS="200", **(env or {})),
    )
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return out
