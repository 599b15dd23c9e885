"""systemd user units for ``mpsctl cron --systemd``: the service, the exporter, and a timer +
oneshot per job. Every value is written by systemd.syntax(7)'s rules (``unit_text``).

Units meant to be left alone:

- the service's unit restarts a crash (``Restart=on-failure``), but not a start that cannot
  succeed: ``start --foreground`` exits ``ALREADY_RUNNING`` when the service already runs
  outside the unit and ``USAGE`` on a settings error, both in ``RestartPreventExitStatus=``;
  and ``StartLimitIntervalSec=``/``StartLimitBurst=`` stop a loop of fast failures (with
  ``RestartSec=5`` systemd's default limit, 5 starts in 10 s, is never reached).
- ``[serve] memory_limit`` (the reference service's address-space limit) becomes
  ``MemoryMax=`` (and ``MemoryHigh=`` at 90%, where the kernel reclaims before it kills).
- the oneshots have a ``TimeoutStartSec=``: a probe or a watchdog run that hangs is killed
  instead of blocking its timer for ever.
"""

from __future__ import annotations

from mpsctl.errors import ExitCode
from mpsctl.monitor.cron import RESTART_SEC, Job, Schedule, ServiceUnit, checked
from mpsctl.monitor.unit_text import systemd_env, systemd_path, systemd_program, systemd_word

#: a crash loop: more than this many starts within the interval leaves the unit failed
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_SEC = 300
#: exit statuses of ``start --foreground`` that a restart cannot change
RESTART_PREVENT = (int(ExitCode.USAGE), int(ExitCode.ALREADY_RUNNING))
#: the share of [serve] memory_limit where MemoryHigh= starts reclaiming
MEMORY_HIGH_SHARE = 0.9
#: a probe takes seconds; past this it is stuck (a hung NFS log, a wedged health request)
PROBE_TIMEOUT_SEC = 120

_WHERE = "a systemd unit"


def _exec(argv: list[str] | tuple[str, ...]) -> str:
    program = systemd_program("the path of mpsctl (or of its Python)", argv[0])
    return "ExecStart=" + " ".join([program, *(systemd_word(w) for w in argv[1:])])


def _env_lines(schedule: Schedule, unit: ServiceUnit | None = None) -> list[str]:
    lines = []
    if unit is not None and unit.env_file is not None:
        lines.append("EnvironmentFile=" + systemd_path("service.env_file", str(unit.env_file)))
    return lines + [systemd_env(k, v) for k, v in schedule.env.items()]


def _start_limit() -> list[str]:
    return [
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}",
        f"StartLimitBurst={START_LIMIT_BURST}",
    ]


def _service_unit(schedule: Schedule, unit: ServiceUnit, base: str) -> str:
    lines = [
        "[Unit]",
        f"Description=mpsctl: model-serving service ({base})",
        *_start_limit(),
        "",
        "[Service]",
        # --foreground runs the service as its child, forwards the stop signal, ends as the
        # service ended (its status, or its signal) and removes the pidfile on a clean stop;
        # KillMode=mixed: SIGTERM to mpsctl only (forwarded once), SIGKILL to all at the end
        "Type=exec",
        "KillMode=mixed",
        _exec(unit.argv),
        "WorkingDirectory=" + systemd_path("service.workdir", str(unit.workdir)),
        *_env_lines(schedule, unit),
        # the log file, not only the journal: `mpsctl logs` and the probe's OOM scan read it
        "StandardOutput=append:" + systemd_path("service.log_file", str(unit.log)),
        "StandardError=inherit",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "RestartPreventExitStatus=" + " ".join(str(c) for c in RESTART_PREVENT),
        f"TimeoutStopSec={max(1, round(unit.stop_timeout))}",
    ]
    if unit.memory_limit is not None:
        lines += [
            f"MemoryHigh={int(unit.memory_limit * MEMORY_HIGH_SHARE)}",
            f"MemoryMax={unit.memory_limit}",
        ]
    lines += ["", "[Install]", "WantedBy=default.target"]
    return "\n".join(lines) + "\n"


def _exporter_unit(schedule: Schedule, job: Job, base: str) -> str:
    lines = [
        "[Unit]",
        f"Description=mpsctl {job.comment} ({base})",
        *_start_limit(),
        "",
        "[Service]",
        "Type=exec",
        _exec(schedule.mpsctl_argv(*job.argv)),
        "WorkingDirectory=" + systemd_path("MPSCTL_HOME", str(schedule.log.parent)),
        *_env_lines(schedule),
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "RestartPreventExitStatus=" + str(int(ExitCode.USAGE)),
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"


def _job_timeout(job: Job, unit: ServiceUnit) -> int:
    if job.name == "probe":
        return PROBE_TIMEOUT_SEC
    # the watchdog may stop the service and start it again, waiting for its health
    return round(unit.stop_timeout + unit.start_timeout) + PROBE_TIMEOUT_SEC


def systemd_units(schedule: Schedule) -> dict[str, str]:
    """File name -> text: the service's unit, the exporter's, and a timer + oneshot per job."""
    checked(schedule, _WHERE)
    unit = schedule.service
    if unit is None:
        raise ValueError("this schedule has no service unit")
    base = unit.systemd_name.removesuffix(".service")
    units = {unit.systemd_name: _service_unit(schedule, unit, base)}
    if schedule.exporter is not None:
        units[f"{base}-exporter.service"] = _exporter_unit(schedule, schedule.exporter, base)
    for job in schedule.jobs:
        name = f"{base}-{job.name}"
        lines = [
            "[Unit]",
            f"Description=mpsctl {job.comment}",
            "",
            "[Service]",
            "Type=oneshot",
            _exec(schedule.mpsctl_argv(*job.argv)),
            "WorkingDirectory=" + systemd_path("MPSCTL_HOME", str(schedule.log.parent)),
            *_env_lines(schedule),
            f"TimeoutStartSec={_job_timeout(job, unit)}",
        ]
        if job.name == "probe":
            # the probe's exit status is its verdict (1 WARNING, 2 CRITICAL, 3 UNKNOWN),
            # not a failure of the job
            lines.append("SuccessExitStatus=1 2 3")
        elif job.ok_codes:
            lines.append("SuccessExitStatus=" + " ".join(str(c) for c in job.ok_codes))
        units[f"{name}.service"] = "\n".join(lines) + "\n"
        timer = [
            "[Unit]",
            f"Description=mpsctl {job.name} every {job.minutes} min ({base})",
            "",
            "[Timer]",
            f"OnCalendar=*:0/{job.minutes}",
            "AccuracySec=1s",
            f"Unit={name}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
        ]
        units[f"{name}.timer"] = "\n".join(timer) + "\n"
    return units


def systemd_install_commands(units: dict[str, str]) -> list[str]:
    """The shell lines that install ``units`` (the timers, and the long-running services)."""
    enable = [n for n in units if n.endswith(".timer")]
    enable += [n for n in units if n.endswith(".service") and f"{n[:-8]}.timer" not in units]
    return [
        "mkdir -p ~/.config/systemd/user",
        "# save each unit below as ~/.config/systemd/user/NAME (NAME: its '# file:' line)",
        "systemctl --user daemon-reload && systemctl --user enable --now " + " ".join(enable),
        'loginctl enable-linger "$USER"  # keep them running after logout',
    ]
