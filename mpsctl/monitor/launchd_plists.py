"""launchd agents for ``mpsctl cron --launchd``: the service, the exporter and the two jobs.

plistlib writes the XML. Every label carries the service's name
(``io.github.mpsctl.NAME.probe``), so the agents of two services never collide, and every
agent has a WorkingDirectory. The environment is the jobs' (``MPSCTL_HOME``, ``PATH``, this
shell's ``MPSCTL_*`` settings): no secret, and ``start --foreground`` reads the env_file
itself. One install syntax everywhere: ``launchctl bootstrap gui/$(id -u) PATH`` (and
``bootout`` to remove), the domain-target form that replaces ``load``/``unload``.
"""

from __future__ import annotations

import plistlib
from typing import Any

from mpsctl.control.supervisor import launchd_plist_path
from mpsctl.monitor.cron import RESTART_SEC, Job, Schedule, checked

_WHERE = "a launchd plist"


def job_label(schedule: Schedule, job: Job) -> str:
    """``io.github.mpsctl.NAME.probe``: the service's own label, then the job's name."""
    if schedule.service is None:
        raise ValueError("this schedule has no service unit")
    return f"{schedule.service.launchd_label}.{job.name}"


def _dump(document: dict[str, Any]) -> str:
    return plistlib.dumps(document, sort_keys=False).decode("utf-8").rstrip("\n") + "\n"


def launchd_plist(schedule: Schedule, job: Job) -> str:
    """A job's agent: every ``job.minutes`` (the exporter: kept running)."""
    checked(schedule, _WHERE)
    log_dir = schedule.log.parent
    document: dict[str, Any] = {
        "Label": job_label(schedule, job),
        "ProgramArguments": schedule.mpsctl_argv(*job.argv),
        "EnvironmentVariables": schedule.env,
        "WorkingDirectory": str(log_dir),
    }
    if job.minutes:
        document |= {"StartInterval": job.minutes * 60, "RunAtLoad": True}
    else:
        document |= {
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": RESTART_SEC * 2,
        }
    document |= {
        "StandardOutPath": "/dev/null",
        "StandardErrorPath": str(log_dir / f"launchd-{job.name}.log"),
        "ProcessType": "Background",
    }
    return _dump(document)


def launchd_path(schedule: Schedule, job: Job) -> str:
    return launchd_plist_path(job_label(schedule, job))


def launchd_service_plist(schedule: Schedule) -> str:
    """The agent for the service itself: launchd restarts it when it exits unsuccessfully."""
    checked(schedule, _WHERE)
    unit = schedule.service
    if unit is None:
        raise ValueError("this schedule has no service unit")
    document = {
        "Label": unit.launchd_label,
        "ProgramArguments": list(unit.argv),
        "EnvironmentVariables": unit.env,
        "WorkingDirectory": str(unit.workdir),
        "RunAtLoad": True,
        # a crash (or an OOM kill) brings it back; `launchctl bootout` or a clean exit does not
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_SEC * 2,
        "ExitTimeOut": max(1, round(unit.stop_timeout)),
        "StandardOutPath": str(unit.log),
        "StandardErrorPath": str(unit.log),
        "ProcessType": "Interactive",
    }
    return _dump(document)


def launchd_plists(schedule: Schedule) -> list[tuple[str, str, str]]:
    """(job name, where to save it, plist text) for the service, the exporter and the jobs."""
    if schedule.service is None:
        raise ValueError("this schedule has no service unit")
    label = schedule.service.launchd_label
    plists = [("service", launchd_plist_path(label), launchd_service_plist(schedule))]
    jobs = [*schedule.jobs, *([schedule.exporter] if schedule.exporter else [])]
    plists += [(j.name, launchd_path(schedule, j), launchd_plist(schedule, j)) for j in jobs]
    return plists


def bootstrap_command(path: str) -> str:
    """The one install line (the plist's path as printed: ``~`` expands in the shell)."""
    return f'launchctl bootstrap "gui/$(id -u)" {path}'
