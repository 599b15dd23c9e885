"""Detecting a systemd / launchd unit that runs the service, and what to say instead.

This machine has no systemd user manager (systemd is not init here) and no launchd, so the
manager's answers go through the runner seam. The texts follow the formats the tools
document: ``systemctl show -p`` prints one ``Property=value`` line per property (for a
unit that is not installed: ``LoadState=not-found``); ``launchctl list LABEL`` prints the
job as a ``{ "Key" = value; }`` dictionary, with a ``"PID"`` key only while it runs, and
exits non-zero when the label is not loaded. They are written here to that format, not
recorded from a live manager. The real runner is exercised too: here ``systemctl --user``
cannot reach a manager, which must read as "no unit".
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mpsctl.control import supervisor
from mpsctl.settings import load_settings

LAUNCHCTL_RUNNING = """{
\t"StandardOutPath" = "/Users/op/Library/Application Support/mpsctl/service.log";
\t"LimitLoadToSessionType" = "Aqua";
\t"StandardErrorPath" = "/Users/op/Library/Application Support/mpsctl/service.log";
\t"Label" = "io.github.mpsctl.mvp";
\t"OnDemand" = false;
\t"LastExitStatus" = 0;
\t"PID" = 4242;
\t"Program" = "/Users/op/venv/bin/mpsctl";
\t"ProgramArguments" = (
\t\t"/Users/op/venv/bin/mpsctl";
\t\t"start";
\t\t"--foreground";
\t);
};
"""


def answer(code: int, text: str) -> supervisor.Runner:
    asked: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str]:
        asked.append(list(argv))
        return code, text

    run.asked = asked  # type: ignore[attr-defined]
    return run


@pytest.fixture
def settings(write_config):  # type: ignore[no-untyped-def]
    write_config('[service]\nname = "mvp"\n')
    return load_settings()


def test_systemd_unit_running(settings) -> None:  # type: ignore[no-untyped-def]
    run = answer(0, "MainPID=4242\nActiveState=active\nLoadState=loaded\n")
    found = supervisor.detect_supervisor(settings, runner=run, platform="linux", uid=1000)
    assert found is not None
    assert run.asked == [  # type: ignore[attr-defined]
        ["systemctl", "--user", "show", "-p", "LoadState,ActiveState,MainPID", "mpsctl-mvp.service"]
    ]
    assert (found.manager, found.active, found.main_pid) == ("systemd", True, 4242)
    assert found.advice("stop") == (
        "managed by systemd unit mpsctl-mvp.service (active, main pid 4242): it would restart "
        "or mark failed what mpsctl stops; run systemctl --user stop mpsctl-mvp.service"
    )
    assert found.command("restart") == ["systemctl", "--user", "restart", "mpsctl-mvp.service"]
    assert "it runs the service already" in found.advice("start")


def test_systemd_unit_installed_but_stopped(settings) -> None:  # type: ignore[no-untyped-def]
    run = answer(0, "LoadState=loaded\nActiveState=failed\nMainPID=0\n")
    found = supervisor.detect_supervisor(settings, runner=run, platform="linux")
    assert found is not None
    assert not found.active
    assert found.main_pid is None
    assert found.advice("start").endswith("run systemctl --user start mpsctl-mvp.service")


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "LoadState=not-found\nActiveState=inactive\nMainPID=0\n"),
        (1, ""),  # no user manager to ask
        (127, ""),  # no systemctl at all
    ],
)
def test_no_systemd_unit(settings, code: int, text: str) -> None:  # type: ignore[no-untyped-def]
    run = answer(code, text)
    assert supervisor.detect_supervisor(settings, runner=run, platform="linux") is None


def test_launchd_agent_running(settings) -> None:  # type: ignore[no-untyped-def]
    run = answer(0, LAUNCHCTL_RUNNING)
    found = supervisor.detect_supervisor(settings, runner=run, platform="darwin", uid=501)
    assert run.asked == [["launchctl", "list", "io.github.mpsctl.mvp"]]  # type: ignore[attr-defined]
    assert found is not None
    assert (found.manager, found.active, found.main_pid, found.state) == (
        "launchd", True, 4242, "running"
    )  # fmt: skip
    assert found.command("stop") == ["launchctl", "bootout", "gui/501/io.github.mpsctl.mvp"]
    assert found.command("restart") == [
        "launchctl", "kickstart", "-k", "gui/501/io.github.mpsctl.mvp"
    ]  # fmt: skip


def test_launchd_agent_loaded_not_running_and_not_loaded(settings) -> None:  # type: ignore[no-untyped-def]
    loaded = LAUNCHCTL_RUNNING.replace('\t"PID" = 4242;\n', "")
    found = supervisor.detect_supervisor(settings, runner=answer(0, loaded), platform="darwin")
    assert found is not None
    assert (found.active, found.main_pid, found.state) == (False, None, "loaded")
    # nested ProgramArguments entries are not top-level keys
    assert "start" not in supervisor.parse_launchctl_list(loaded)
    missing = answer(113, "")
    assert supervisor.detect_supervisor(settings, runner=missing, platform="darwin") is None


def test_the_real_runner_without_a_user_manager(settings) -> None:  # type: ignore[no-untyped-def]
    code, _ = supervisor.run_command(["mpsctl-no-such-program", "--version"])
    assert code == 127
    # a real systemctl: either no user manager to reach (systemd is not init in these
    # containers) or a manager without this unit; both mean "no unit"
    assert supervisor.detect_supervisor(settings, platform="linux") is None
