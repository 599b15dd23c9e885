"""stop / start never hit what is not the service, and never leave a half-started one behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mpsctl.control.signals import send, wait_any_exit
from mpsctl.control.start import StartFailed, start_service
from mpsctl.control.status import service_status
from mpsctl.control.stop import stop_service
from mpsctl.errors import ConfigError, ServiceError, StatusExit
from tests.control.fakes import FakeService, alive, fake_service, sleeper, spawned, wait_for

__all__ = ["fake_service", "spawned"]  # fixtures

Make = Callable[..., FakeService]


def test_pidfile_naming_mpsctls_own_process_signals_nothing(
    fake_service: Make, spawned: list, isolated_home: Path
) -> None:
    # a pidfile with the right pid *and* create_time, but of this very process (mpsctl, in
    # the test): its other children (a sibling job of the shell, say) must not be signalled
    settings = fake_service().settings()
    sibling = sleeper("sibling-of-mpsctl")
    spawned.append(sibling)
    isolated_home.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    record = {"pid": me.pid, "create_time": me.create_time(), "pgid": os.getpgrp()}
    (isolated_home / "service.pid").write_text(json.dumps(record))

    stopped = stop_service(settings, timeout=0.5)

    # mpsctl's own process (or an ancestor, or PID 1) is never the running service: the
    # pidfile is treated like one whose pid now belongs to another process
    assert stopped.status == "already-stopped"
    assert stopped.pidfile_state == "reused"
    assert "belongs to another process now (not signalled)" in stopped.message
    assert stopped.processes == ()
    assert alive(sibling.pid)
    assert alive(me.pid)


def test_a_root_that_exits_early_leaves_no_children(
    fake_service: Make, tmp_path: Path, isolated_home: Path
) -> None:
    # `sh -c "worker &"`: the first process exits at once, its worker would hold on forever
    marker = str(tmp_path / "orphan-worker-marker")
    worker = f"import time; time.sleep(600)  # {marker}"
    fake = fake_service()
    fake.config.write_text(
        fake.config.read_text().replace(
            "command = ",
            'command = ["sh", "-c", ' + json.dumps(f"python3 -c '{worker}' & exit 0") + "]\n#",
            1,
        )
    )

    with pytest.raises(StartFailed, match="exited with status 0"):
        start_service(fake.settings())

    def workers() -> list[int]:
        return [
            p.pid
            for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE
            and any(marker in part for part in p.info["cmdline"] or ())
        ]

    assert wait_for(lambda: workers() == [], 3), workers()
    assert not (isolated_home / "service.pid").exists()


def test_pidfile_that_is_a_directory_is_an_error_not_a_crash(
    fake_service: Make, isolated_home: Path
) -> None:
    settings = fake_service().settings()
    (isolated_home / "service.pid").mkdir(parents=True)

    status = service_status(settings)
    assert status.exit_code == StatusExit.UNKNOWN
    assert "service.pid" in (status.error or "")
    with pytest.raises(ServiceError, match=r"cannot read the pidfile .*service\.pid"):
        stop_service(settings)
    assert (isolated_home / "service.pid").is_dir()  # not removed behind the operator's back


def test_invalid_match_pattern_is_a_config_error(fake_service: Make) -> None:
    settings = fake_service(match="((").settings()
    with pytest.raises(ConfigError, match=r"service\.match: invalid regular expression"):
        stop_service(settings)


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf")])
def test_bad_stop_timeouts_are_refused_before_any_signal(
    fake_service: Make, spawned: list, timeout: float
) -> None:
    settings = fake_service(match="mpsctl-test-bad-timeout-77").settings()
    target = sleeper("mpsctl-test-bad-timeout-77")
    spawned.append(target)
    with pytest.raises(ConfigError, match="stop timeout"):
        stop_service(settings, timeout=timeout, use_match=True)
    assert alive(target.pid)


def test_a_reused_pid_is_never_signalled(spawned: list) -> None:
    other = subprocess.Popen(["sleep", "60"])
    spawned.append(other)
    created = psutil.Process(other.pid).create_time()
    assert not send(other.pid, created - 100, signal.SIGTERM)
    assert alive(other.pid)
    assert send(other.pid, created, signal.SIGTERM)
    assert wait_for(lambda: other.poll() is not None, 5)


def test_another_configurations_service_in_a_shared_home_is_left_alone(
    fake_service: Make, isolated_home: Path
) -> None:
    first = fake_service()
    first_settings = first.settings()  # read now: the fixture reuses the config file
    started = start_service(first_settings)
    other = fake_service()  # same MPSCTL_HOME, another service.url

    status = service_status(other.settings())
    assert (status.exit_code, status.pid) == (StatusExit.UNKNOWN, None)
    stopped = stop_service(other.settings())
    assert stopped.status == "refused"
    assert f"started for {first.url}" in stopped.message
    assert alive(started.pid)
    with pytest.raises(ServiceError, match="another service shares this MPSCTL_HOME"):
        start_service(other.settings())
    assert alive(started.pid)

    assert stop_service(first_settings).status == "stopped"
    assert not alive(started.pid)


def test_wait_any_exit_wakes_at_the_exit_not_at_the_timeout(spawned: list) -> None:
    stays = sleeper()
    leaves = sleeper(seconds=0.3)
    spawned.extend([stays, leaves])
    began = time.monotonic()
    wait_any_exit([stays.pid, leaves.pid], 20.0)
    woke = time.monotonic() - began
    assert leaves.poll() is not None or not alive(leaves.pid)  # it is the exit that woke us
    assert woke < 10.0  # the kernel's exit notice, not the 20 s timeout
    began = time.monotonic()
    wait_any_exit([stays.pid], 0.2)  # nothing exits: back after the timeout
    assert 0.15 <= time.monotonic() - began < 5.0
    assert alive(stays.pid)
