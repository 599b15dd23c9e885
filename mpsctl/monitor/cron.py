"""``mpsctl cron``: the schedule that runs mpsctl, and its crontab block.

Printed, never installed: the operator reads it, then pastes it into ``crontab -e`` (or saves
the units of ``systemd_units`` / the plists of ``launchd_plists``). Everything is absolute
(cron starts in ``$HOME`` with a bare PATH): this interpreter with ``-m mpsctl``, the
settings file, ``MPSCTL_HOME``, and the ``MPSCTL_*`` settings of this shell, which cron would
not see otherwise. No secret is ever written into a generated file: not the token, not a
variable whose name looks like a secret, not the env_file's values (units point at the file
with ``EnvironmentFile=``; ``start --foreground`` reads it itself). Values are written by
each format's own rules (``unit_text``); a control character is refused.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mpsctl.control.supervisor import launchd_label, systemd_unit_name
from mpsctl.errors import ConfigError
from mpsctl.monitor.unit_text import cron_word, refuse_control
from mpsctl.paths import ensure_home, home_dir
from mpsctl.settings import Settings
from mpsctl.settings_schema import ENV_KEYS, env_name
from mpsctl.settings_services import start_order

#: seconds before the service manager starts a crashed service again
RESTART_SEC = 5
#: settings carried from this shell; secrets (the token) never are
_SECRET_ENV = {"MPSCTL_TOKEN"}
#: the port the exporter's unit and plist serve /metrics on (``mpsctl exporter``'s default)
EXPORTER_PORT = 9808


@dataclass(frozen=True)
class Job:
    name: str  # "probe" | "fix"
    minutes: int  # 0: not scheduled, runs until stopped (the exporter)
    argv: tuple[str, ...]  # mpsctl's own argv, after the interpreter
    comment: str
    ok_codes: tuple[int, ...] = ()  # exit codes the scheduler should treat as success


@dataclass(frozen=True)
class ServiceUnit:
    """How a service manager runs the service itself: ``mpsctl start --foreground``."""

    argv: tuple[str, ...]  # absolute mpsctl (or this python -m mpsctl), then its own argv
    env: dict[str, str]  # the jobs' env (start --foreground builds the service's own)
    workdir: Path
    log: Path
    stop_timeout: float
    start_timeout: float
    systemd_name: str
    launchd_label: str
    #: the operator's env_file (a unit's EnvironmentFile=), checked private (0600)
    env_file: Path | None = None
    #: [serve] memory_limit in bytes: the unit's MemoryMax= (None: no limit)
    memory_limit: int | None = None


@dataclass(frozen=True)
class Schedule:
    python: str
    env: dict[str, str]
    jobs: tuple[Job, ...]
    log: Path
    notes: tuple[str, ...]
    service: ServiceUnit | None = None
    mpsctl: tuple[str, ...] = ()  # how a unit runs mpsctl: its script, or python -m mpsctl
    exporter: Job | None = None  # ``mpsctl exporter``, for a unit or an agent of its own

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
    for name in sorted(environ):
        # only the settings' own variables: a name is written into the files as it is
        if name in ENV_KEYS and name not in secret:
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
            "lock (success); 69 = gave up (restart budget spent, alert sent), kept as 69",
            ok_codes=(75,),
        ),
    )
    log = home_dir(env) / "cron.log"
    mpsctl = mpsctl_command()
    if settings.members:
        return Schedule(sys.executable, env, _per_service(jobs, base, settings), log,
                        tuple(notes), None, mpsctl)  # fmt: skip
    # Only what mpsctl itself needs: `start --foreground` builds the service's environment
    # from the settings and the env_file at every start, so nothing copied here goes stale
    # and no secret of the env_file is written into a unit or a plist.
    service = ServiceUnit(
        argv=(*mpsctl, *base, "start", "--foreground"),
        env=env,
        workdir=settings.service.workdir,
        log=settings.service.log_file,
        stop_timeout=settings.service.stop_timeout,
        start_timeout=settings.service.start_timeout,
        systemd_name=systemd_unit_name(settings),
        launchd_label=launchd_label(settings),
        env_file=private_env_file(settings.service.env_file),
        # [serve] is the reference service's: an operator's own service has no such limit
        memory_limit=settings.serve.memory_limit if settings.reference_service else None,
    )
    exporter = Job(
        "exporter",
        0,
        (*base, "exporter", "--host", "127.0.0.1", "--port", str(EXPORTER_PORT)),
        "exporter: the probe's figures on /metrics",
    )
    return Schedule(sys.executable, env, jobs, log, tuple(notes), service, mpsctl, exporter)


def private_env_file(path: Path | None) -> Path | None:
    """``path`` when only its owner can read it: it holds the service's secrets, and a unit
    names it (``EnvironmentFile=``) instead of copying them."""
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"service.env_file {path}: cannot read: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(
            f"service.env_file {path} is readable by others (mode {mode & 0o777:04o}): "
            f"it holds secrets; run chmod 600 {path}"
        )
    return path.resolve()


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


def checked(schedule: Schedule, where: str) -> Schedule:
    """``schedule`` when every value it writes fits in a file; ConfigError naming the first
    that does not (a line break in a value would start a line of its own)."""
    for key, value in schedule.env.items():
        refuse_control(key, value, where)
    refuse_control("the Python interpreter's path", schedule.python, where)
    refuse_control("MPSCTL_HOME", str(schedule.log), where)
    for job in (*schedule.jobs, *([schedule.exporter] if schedule.exporter else [])):
        option = "the command line"
        for word in job.argv:
            if word.startswith("--"):
                option = word
            refuse_control(option, word, where)
    for note in schedule.notes:
        refuse_control("a note", note, where)
    unit = schedule.service
    if unit is not None:
        refuse_control("service.workdir", str(unit.workdir), where)
        refuse_control("service.log_file", str(unit.log), where)
        refuse_control("service.name", unit.launchd_label, where)
        if unit.env_file is not None:
            refuse_control("service.env_file", str(unit.env_file), where)
    return schedule


def prepare_home(schedule: Schedule) -> None:
    """Create MPSCTL_HOME now, so that the first run's ``--error-log`` finds its directory."""
    ensure_home(schedule.env)


def crontab_text(schedule: Schedule) -> str:
    checked(schedule, "a crontab line")
    env = " ".join(f"{k}={cron_word(v)}" for k, v in schedule.env.items())
    lines = [
        "# mpsctl: generated by `mpsctl cron`; install with `crontab -e` (printed, not installed).",
        "# stdout is discarded (history and alerts carry the results); errors go to the log",
        "# (or to cron's mail and syslog when it cannot be opened).",
    ]
    lines += [f"# note: {note}" for note in schedule.notes]
    for job in schedule.jobs:
        argv = (schedule.python, "-m", "mpsctl", "--error-log", str(schedule.log), *job.argv)
        words = " ".join(cron_word(w) for w in argv)
        command = f"{env} {words} >/dev/null"
        if job.ok_codes:
            # those codes become 0; every other status (69: gave up) stays what mpsctl said
            codes = " ] || [ $rc -eq ".join(str(c) for c in job.ok_codes)
            command += f" || {{ rc=$?; [ $rc -eq {codes} ] || exit $rc; }}"
        lines += [f"# {job.comment}", f"{_minutes(job.minutes)} * * * * {command}"]
    return "\n".join(lines) + "\n"
