"""``mpsctl cron``: the crontab block, launchd plists or systemd user units that run mpsctl.

Printed, never installed: the operator reads it, then pastes it into ``crontab -e`` or saves
it under ``~/Library/LaunchAgents`` or ``~/.config/systemd/user``. The plist and the unit
for the service itself run ``mpsctl start --foreground`` and bring a crashed service back
within seconds; the probe and watchdog jobs handle a hung or unhealthy one. Everything is
absolute (cron starts in ``$HOME`` with a bare PATH): this interpreter with ``-m mpsctl``,
the settings file, ``MPSCTL_HOME``, and the ``MPSCTL_*`` settings of this shell, which cron
would not see otherwise. The bearer token never goes into the block.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mpsctl.control.supervisor import (
    LABEL_PREFIX,
    launchd_label,
    systemd_unit_name,
)
from mpsctl.paths import ensure_home, home_dir
from mpsctl.service_env import service_env
from mpsctl.settings import Settings
from mpsctl.settings_schema import env_name
from mpsctl.settings_services import start_order

#: seconds before the service manager starts a crashed service again
RESTART_SEC = 5
#: settings carried from this shell; secrets (the token) never are
_SECRET_ENV = {"MPSCTL_TOKEN"}


@dataclass(frozen=True)
class Job:
    name: str  # "probe" | "fix"
    minutes: int
    argv: tuple[str, ...]  # mpsctl's own argv, after the interpreter
    comment: str
    ok_codes: tuple[int, ...] = ()  # exit codes the scheduler should treat as success


@dataclass(frozen=True)
class ServiceUnit:
    """How a service manager runs the service itself: ``mpsctl start --foreground``."""

    argv: tuple[str, ...]  # absolute mpsctl (or this python -m mpsctl), then its own argv
    env: dict[str, str]  # the jobs' env and the memory settings the service starts with
    workdir: Path
    log: Path
    stop_timeout: float
    systemd_name: str
    launchd_label: str


@dataclass(frozen=True)
class Schedule:
    python: str
    env: dict[str, str]
    jobs: tuple[Job, ...]
    log: Path
    notes: tuple[str, ...]
    service: ServiceUnit | None = None
    mpsctl: tuple[str, ...] = ()  # how a unit runs mpsctl: its script, or python -m mpsctl

    def mpsctl_argv(self, *argv: str) -> list[str]:
        return [*(self.mpsctl or (self.python, "-m", "mpsctl")), *argv]


def carried_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """MPSCTL_HOME, a PATH with the system tools, and this shell's MPSCTL_* settings."""
    # MPSCTL_HOME itself: one of several services (chosen by MPSCTL_SERVICE) keeps its
    # state below it, and the job must name that service again, since cron's environment
    # is bare
    env = {"MPSCTL_HOME": str(settings.host_dir.resolve())}
    if settings.home != settings.host_dir:
        env["MPSCTL_SERVICE"] = settings.service.name
    bindir = str(Path(sys.executable).parent)
    system = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
    if sys.platform == "darwin":
        system.insert(0, "/opt/homebrew/bin")
    # /usr/sbin: sysctl lives there on macOS, and the probe reads swap and pressure with it
    env["PATH"] = os.pathsep.join(dict.fromkeys([bindir, *system]))
    secret = _SECRET_ENV | {settings.service.token_env or ""}
    prefixes = tuple(env_name(section) + "_" for section in settings.as_dict())
    for name in sorted(environ):
        if name.startswith(prefixes) and name not in secret:
            env[name] = environ[name]
    workdir = env_name("service.workdir")
    if workdir in env:  # relative to this shell's cwd; cron starts in $HOME
        env[workdir] = str(settings.service.workdir)
    return env


def build_schedule(
    settings: Settings,
    *,
    alert_url: str | None = None,
    alert_cmd: str | None = None,
    prometheus: Path | None = None,
    probe_minutes: int = 1,
    fix_minutes: int = 5,
    environ: Mapping[str, str] | None = None,
) -> Schedule:
    env_in = os.environ if environ is None else environ
    base: list[str] = []
    if settings.config_file is not None:
        base += ["--config", str(settings.config_file.resolve())]
    probe = [*base, "probe", "--record"]
    notes = []
    if alert_url:
        probe += ["--alert-url", alert_url]
    if alert_cmd:
        probe += ["--alert-cmd", alert_cmd]
    if not (alert_url or alert_cmd or settings.alerts.url or settings.alerts.command):
        notes.append(
            "no alert target: add --alert-url URL / --alert-cmd CMD, or set "
            "[alerts] url / command in the settings"
        )
    if prometheus is not None:
        probe += ["--prometheus", str(prometheus.resolve())]
    env = carried_env(settings, env_in)
    carried = sorted(k for k in env if k not in ("MPSCTL_HOME", "PATH"))
    if carried:
        notes.append("carried from this shell: " + ", ".join(carried))
    token_env = settings.service.token_env
    if token_env and env_in.get(token_env):
        notes.append(
            f"{token_env} is not carried (a secret): use service.token_file for jobs "
            "that need the token"
        )
    jobs = (
        Job(
            "probe", probe_minutes, tuple(probe), "probe: record history, alert on verdict changes"
        ),
        Job(
            "fix",
            fix_minutes,
            (*base, "fix", "--if-unhealthy"),
            "watchdog: restarts only for fix.restart_on; 75 = another mpsctl run holds the "
            "lock; 69 = gave up (restart budget spent, alert sent)",
            ok_codes=(75,),
        ),
    )
    log = home_dir(env) / "cron.log"
    mpsctl = mpsctl_command()
    if settings.members:
        return Schedule(sys.executable, env, _per_service(jobs, base, settings), log,
                        tuple(notes), None, mpsctl)  # fmt: skip
    # the memory settings exactly as `start` applies them (inherited values dropped), so
    # the unit shows what the service gets; PATH and MPSCTL_HOME are the jobs'
    unit_env = {**service_env(settings, base={}), **env}
    service = ServiceUnit(
        argv=(*mpsctl, *base, "start", "--foreground"),
        env=unit_env,
        workdir=settings.service.workdir,
        log=settings.service.log_file,
        stop_timeout=settings.service.stop_timeout,
        systemd_name=systemd_unit_name(settings),
        launchd_label=launchd_label(settings),
    )
    return Schedule(sys.executable, env, jobs, log, tuple(notes), service, mpsctl)


def _per_service(jobs: tuple[Job, ...], base: list[str], settings: Settings) -> tuple[Job, ...]:
    """Several services: the one probe job (it probes every service and the host's sum,
    and records each one's history), then one watchdog job per service, in start order:
    each has its own lock, restart budget and alerts, so one giving up stops no other."""
    probe, fix = jobs
    watchdogs = tuple(
        replace(fix, name=f"fix-{m.service.name}",
                argv=(*base, "fix", m.service.name, "--if-unhealthy"),
                comment=f"watchdog of {m.service.name}: {fix.comment.split(': ', 1)[1]}")
        for m in start_order(settings.members)
    )  # fmt: skip
    return (probe, *watchdogs)


def mpsctl_command() -> tuple[str, ...]:
    """The absolute ``mpsctl`` script beside this interpreter, else ``python -m mpsctl``."""
    script = Path(sys.executable).parent / "mpsctl"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "mpsctl")


def _minutes(every: int) -> str:
    return "*" if every == 1 else f"*/{every}"


def _cron_quote(word: str) -> str:
    # cron turns an unescaped % into a newline: escape it after shell quoting
    return shlex.quote(word).replace("%", "\\%")


def prepare_home(schedule: Schedule) -> None:
    """Create MPSCTL_HOME now: the shell opens the ``2>>cron.log`` redirection before mpsctl
    runs, and fails (the job never starts) when the directory does not exist yet."""
    ensure_home(schedule.env)


def crontab_text(schedule: Schedule) -> str:
    env = " ".join(f"{k}={_cron_quote(v)}" for k, v in schedule.env.items())
    log = _cron_quote(str(schedule.log))
    lines = [
        "# mpsctl: generated by `mpsctl cron`; install with `crontab -e` (printed, not installed).",
        "# stdout is discarded (history and alerts carry the results); errors go to the log.",
    ]
    lines += [f"# note: {note}" for note in schedule.notes]
    for job in schedule.jobs:
        words = " ".join(_cron_quote(w) for w in (schedule.python, "-m", "mpsctl", *job.argv))
        command = f"{env} {words} >/dev/null 2>>{log}"
        for code in job.ok_codes:
            command += f" || [ $? -eq {code} ]"
        lines += [f"# {job.comment}", f"{_minutes(job.minutes)} * * * * {command}"]
    return "\n".join(lines) + "\n"


def launchd_plist(schedule: Schedule, job: Job) -> str:
    log_dir = schedule.log.parent
    document = {
        "Label": f"{LABEL_PREFIX}.{job.name}",
        "ProgramArguments": [schedule.python, "-m", "mpsctl", *job.argv],
        "EnvironmentVariables": schedule.env,
        "StartInterval": job.minutes * 60,
        "RunAtLoad": True,
        "StandardOutPath": "/dev/null",
        "StandardErrorPath": str(log_dir / f"launchd-{job.name}.log"),
        "ProcessType": "Background",
    }
    return plistlib.dumps(document, sort_keys=False).decode("utf-8").rstrip("\n") + "\n"


def launchd_path(job: Job) -> str:
    return f"~/Library/LaunchAgents/{LABEL_PREFIX}.{job.name}.plist"


def launchd_service_plist(schedule: Schedule) -> str:
    """The agent for the service itself: launchd restarts it when it exits unsuccessfully."""
    unit = _service(schedule)
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
    return plistlib.dumps(document, sort_keys=False).decode("utf-8").rstrip("\n") + "\n"


def _service(schedule: Schedule) -> ServiceUnit:
    if schedule.service is None:
        raise ValueError("this schedule has no service unit")
    return schedule.service


# --------------------------------------------------------------------------- systemd
def _systemd_word(word: str) -> str:
    """One ExecStart= word: quoted when needed, ``%`` and ``$`` doubled (no expansion)."""
    text = word.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_env(env: dict[str, str]) -> list[str]:
    # one assignment a line: a value may hold spaces; specifiers (%) are expanded here too
    lines = []
    for key, value in env.items():
        text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'Environment="{text}"')
    return lines


def _exec(argv: list[str] | tuple[str, ...]) -> str:
    return "ExecStart=" + " ".join(_systemd_word(w) for w in argv)


def systemd_units(schedule: Schedule) -> dict[str, str]:
    """File name -> text: the service's unit, and a timer + oneshot service per job."""
    unit = _service(schedule)
    base = unit.systemd_name.removesuffix(".service")
    units: dict[str, str] = {}
    service_lines = [
        "[Unit]",
        f"Description=mpsctl: model-serving service ({base})",
        "",
        "[Service]",
        # --foreground execs the service: systemd's main PID is the service itself, its
        # SIGTERM reaches it directly and its exit status is the unit's
        "Type=exec",
        _exec(unit.argv),
        f"WorkingDirectory={_systemd_word(str(unit.workdir))}",
        *_systemd_env(unit.env),
        # the log file, not only the journal: `mpsctl logs` and the probe's OOM scan read it
        "StandardOutput=append:" + str(unit.log).replace("%", "%%"),
        "StandardError=inherit",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"TimeoutStopSec={max(1, round(unit.stop_timeout))}",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    units[unit.systemd_name] = "\n".join(service_lines) + "\n"
    for job in schedule.jobs:
        name = f"{base}-{job.name}"
        lines = [
            "[Unit]",
            f"Description=mpsctl {job.comment}",
            "",
            "[Service]",
            "Type=oneshot",
            _exec(schedule.mpsctl_argv(*job.argv)),
            *_systemd_env(schedule.env),
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
    """The shell lines that install ``units`` (the timers, and the service's own unit)."""
    enable = [n for n in units if n.endswith(".timer")]
    enable += [n for n in units if n.endswith(".service") and f"{n[:-8]}.timer" not in units]
    return [
        "mkdir -p ~/.config/systemd/user",
        "# save each unit below as ~/.config/systemd/user/NAME (NAME: its '# file:' line)",
        "systemctl --user daemon-reload && systemctl --user enable --now " + " ".join(enable),
        'loginctl enable-linger "$USER"  # keep them running after logout',
    ]
