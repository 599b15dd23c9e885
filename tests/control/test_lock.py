"""The lock: one holder, a named holder for the refused, released by the kernel on exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpsctl.control.lock import lock_path, service_lock
from mpsctl.errors import ExitCode, LockedError
from tests.control.fakes import wait_for

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from mpsctl.control.lock import service_lock\n"
    "with service_lock(Path(sys.argv[1]), purpose='fix'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)


def test_second_holder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(LockedError, match=rf"pid {holder.pid} \(fix\)") as info,
            service_lock(tmp_path),
        ):
            pass
        assert info.value.exit_code == ExitCode.LOCKED == 75
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: no stale lock to clean up
    with service_lock(tmp_path, purpose="start"):
        assert lock_path(tmp_path).read_text().startswith(f"{os.getpid()} start")


def test_wait_gets_the_lock_once_released(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "0.3"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    began = time.monotonic()
    with service_lock(tmp_path, wait=10):
        assert time.monotonic() - began < 10
        # we got it only because the holder let go: it is gone (or going) by now
        assert holder.wait(timeout=5) == 0
        assert lock_path(tmp_path).read_text() == f"{os.getpid()} mpsctl\n"
    holder.wait()


def test_a_refused_run_leaves_the_holders_line_intact(tmp_path: Path) -> None:
    with service_lock(tmp_path, purpose="fix"):
        for _ in range(3):
            with pytest.raises(LockedError), service_lock(tmp_path, purpose="stop"):
                pass
        assert lock_path(tmp_path).read_text() == f"{os.getpid()} fix\n"


def test_lock_is_not_inherited_by_children(tmp_path: Path) -> None:
    with service_lock(tmp_path):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with service_lock(tmp_path):  # would fail if the child had inherited the descriptor
            pass
    finally:
        child.kill()
        child.wait()
    assert wait_for(lambda: child.poll() is not None)
