"""``mpsctl doctor``: settings, environment and the running service against what PyTorch does.

Every check says what is wrong *and* how to fix it, from what PyTorch does with its MPS
variables (``mpsctl.torch_env``: the ratios multiply ``recommendedMaxWorkingSetSize`` and are
read with ``strtod`` once, at the first MPS allocation).

Three places are looked at: this shell's environment (what a script or a hand-run
``uvicorn`` started from here would get), the settings (what ``mpsctl start`` applies) and
the running service's own environment (what PyTorch really read). Read-only; torch is never
imported: its version comes from the service's memory report or from the venv's METADATA.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mpsctl.errors import ConfigError
from mpsctl.monitor.torch_version import torch_checks
from mpsctl.probe import ProbeResult
from mpsctl.settings import Settings
from mpsctl.torch_env import (
    DEFAULT_HIGH_RATIO,
    FALLBACK_ENV,
    HIGH_ENV,
    LOW_ENV,
    MAX_RATIO,
    Check,
    Level,
    command_checks,
    env_checks,
    pytorch_vars,
    strtod,
    torch_env,
)
from mpsctl.units import fmt_bytes, utc_now_iso

SCHEMA = "mpsctl.doctor/1"
LEVELS: tuple[Level, ...] = ("ok", "info", "warning", "error")


@dataclass(frozen=True)
class DoctorReport:
    time: str
    checks: tuple[Check, ...]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.level in ("warning", "error")]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def counts(self) -> dict[str, int]:
        return {level: sum(c.level == level for c in self.checks) for level in LEVELS}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "time": self.time,
            "ok": not self.problems,
            "counts": self.counts(),
            "checks": [c.to_json() for c in self.checks],
        }


# --------------------------------------------------------------------------- settings
def settings_checks(settings: Settings) -> list[Check]:
    found: list[Check] = []
    origin = (
        f"file {settings.config_file}" if settings.config_file else "no file (reference service)"
    )
    found.append(Check("config.load", "ok", f"settings load: {origin}"))
    explicit = not settings.sources["memory.high_watermark_ratio"].startswith("default")
    for note in settings.notes if explicit else ():  # built-in defaults need no remark
        found.append(Check("config.note", "info", note))
    if settings.memory.mps_fallback:
        found.append(
            Check(
                "config.mps_fallback",
                "info",
                f"memory.mps_fallback = true sets {FALLBACK_ENV}=1: it covers "
                "operators MPS does not implement, not out-of-memory errors",
                "set memory.mps_fallback = false unless the model needs it",
            )
        )
    argv = settings.service.command
    found += command_checks(argv, urlsplit(settings.service.url).hostname)
    found.append(token_check(settings.service.token_file))
    found += alert_checks(settings)
    return found


def alert_checks(settings: Settings) -> list[Check]:
    """The default alert targets: a URL urllib can POST to, a command that exists."""
    found: list[Check] = []
    url, command = settings.alerts.url, settings.alerts.command
    if url and urlsplit(url).scheme not in ("http", "https"):
        found.append(
            Check(
                "alerts.url",
                "warning",
                f"alerts.url {url!r} is not an http(s) URL: alerts will not be sent",
                "set an http:// or https:// webhook URL",
            )
        )
    if command:
        from mpsctl.monitor.alerts import command_argv

        try:
            argv = command_argv(command)
        except ValueError as exc:
            argv = []
            found.append(
                Check(
                    "alerts.command",
                    "warning",
                    f"alerts.command cannot be parsed: {exc}",
                    "fix the quoting",
                )
            )
        if argv and shutil.which(argv[0]) is None:
            found.append(
                Check(
                    "alerts.command",
                    "warning",
                    f"alerts.command: {argv[0]!r} is not found on PATH: alerts will not be sent",
                    "use an absolute path (cron's PATH is short)",
                )
            )
    if not found:
        shown = ", ".join(x for x in (url and "url", command and "command") if x) or "none"
        found.append(Check("alerts.targets", "ok", f"default alert targets: {shown}"))
    return found


def token_check(path: Path | None) -> Check:
    if path is None or not path.exists():
        return Check("token.permissions", "ok", "no token file to check")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        return Check(
            "token.permissions",
            "warning",
            f"token file {path}: {exc.strerror}",
            "check the path in service.token_file",
        )
    if mode & 0o077:
        return Check(
            "token.permissions",
            "warning",
            f"token file {path} has mode {mode:04o}: other users can read the bearer token",
            f"chmod 600 {path}",
        )
    return Check("token.permissions", "ok", f"token file {path} is private ({mode:04o})")


# --------------------------------------------------------------------------- the running service
def root_env(result: ProbeResult) -> tuple[int | None, dict[str, str] | None]:
    snap = result.service
    if snap is None or not snap.running:
        return None, {}
    roots = set(snap.roots)
    for proc in snap.processes:
        if proc.pid in roots:
            return proc.pid, proc.pytorch_env
    first = snap.processes[0]
    return first.pid, first.pytorch_env


def _same_ratio(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return strtod(a)[0] == strtod(b)[0] and not strtod(a)[1].strip() and not strtod(b)[1].strip()


def service_checks(settings: Settings, result: ProbeResult) -> list[Check]:
    snap = result.service
    if snap is None:
        return [
            Check(
                "service.running",
                "info",
                "the service's processes could not be "
                "inspected: checks of the running process skipped",
            )
        ]
    if not snap.running:
        return [
            Check(
                "service.running",
                "info",
                f"service {settings.service.name} is not "
                "running: checks of the running process skipped",
            )
        ]
    pid, env = root_env(result)
    where = f"the running service (pid {pid})"
    found = [Check("service.running", "ok", f"{where} found by {snap.found_by}")]
    if env is None:
        found.append(
            Check(
                "service_env.unreadable",
                "info",
                f"{where}: its environment is not readable (another user, or macOS protection)",
                "run doctor as the user who runs the service",
            )
        )
        return found
    found += env_checks("service_env", env, where, "in the service's start script")
    wanted = torch_env(settings.memory)
    stale = [
        k for k in (HIGH_ENV, LOW_ENV) if k in wanted and not _same_ratio(env.get(k), wanted[k])
    ]
    if stale:
        have = ", ".join(f"{k}={env.get(k, 'unset')}" for k in stale)
        want = ", ".join(f"{k}={wanted[k]}" for k in stale)
        off_mps = result.accelerator.device in ("cpu", "cuda")
        found.append(
            Check(
                "service.watermarks_stale",
                "info" if off_mps else "warning",
                f"{where} runs with {have}, but the settings say {want}: it was started before the "
                "change or without mpsctl, and PyTorch reads these only at start"
                + (
                    f" (it runs on {result.accelerator.device}: MPS limits do not apply)"
                    if off_mps
                    else ""
                ),
                "mpsctl restart",
            )
        )
    return found


def limit_checks(settings: Settings, result: ProbeResult) -> list[Check]:
    acc = result.accelerator
    ram = result.host.total_bytes if result.host is not None else None
    if acc.device in ("cpu", "cuda"):
        return [
            Check("limit.above_ram", "ok", f"MPS limit: n/a (the service runs on {acc.device})")
        ]
    configured = settings.memory.high_watermark_ratio
    high = DEFAULT_HIGH_RATIO if configured is None else configured
    if acc.device != "mps" or acc.recommended_max_bytes is None:
        why = (
            "the service is not running or does not report its memory"
            if acc.device != "mps"
            else "the service's torch does not report it (torch < 2.5)"
        )
        hint = ""
        if high > 1.5:
            hint = (
                f"; on Apple Silicon it is about 2/3 of RAM, so a high ratio of {high:g} "
                "would put the limit above physical memory"
            )
        return [
            Check(
                "limit.above_ram",
                "info",
                f"MPS limit unknown: it is high ratio x recommendedMaxWorkingSetSize, which only "
                f"the running service can report ({why}){hint}",
                "start the service (torch >= 2.5 on MPS) and run mpsctl doctor again",
            )
        ]
    found = []
    candidates = [("the running service's", acc.limit_bytes, acc.high_watermark_ratio)]
    if high > 0:
        candidates.append(("the configured", int(high * acc.recommended_max_bytes), high))
    for label, limit, ratio in candidates:
        if limit is None or ram is None:
            continue
        shown = (
            (
                f"{label} MPS limit {fmt_bytes(limit)} (high {ratio:g} x recommended max "
                f"{fmt_bytes(acc.recommended_max_bytes)})"
            )
            if ratio is not None
            else (f"{label} MPS limit {fmt_bytes(limit)}")
        )
        if limit > ram:
            safe = 0.9 * ram / acc.recommended_max_bytes
            found.append(
                Check(
                    "limit.above_ram",
                    "warning",
                    f"{shown} is above physical memory {fmt_bytes(ram)}: macOS swaps instead of "
                    "PyTorch raising an out-of-memory error",
                    f"lower memory.high_watermark_ratio to {min(safe, MAX_RATIO):.2f} or less, "
                    "then mpsctl restart",
                )
            )
        else:
            found.append(Check("limit.above_ram", "ok", f"{shown} fits in {fmt_bytes(ram)} RAM"))
    if not found:
        found.append(Check("limit.above_ram", "info", "MPS limit or RAM unknown"))
    return found


def log_checks(settings: Settings, running: bool) -> list[Check]:
    from mpsctl.observe.logfiles import resolve_logs

    found: list[Check] = []
    for source in resolve_logs(settings):
        if source.path is None:
            pattern = source.pattern or ""
            if Path(pattern).parent.is_dir():
                # a dated error log (logs/error_*.log) appears with the first error: its
                # directory being there is all that can be checked before then
                found.append(
                    Check(
                        "logs.missing",
                        "info",
                        f"service.log_globs: {pattern} matches no file yet (normal until the "
                        "service writes that log, e.g. before its first error)",
                    )
                )
                continue
            found.append(
                Check(
                    "logs.missing",
                    "warning",
                    f"service.log_globs: {pattern} matches no file and its directory does not "
                    "exist: `mpsctl oom` and the probe's OOM scan cannot see that log",
                    f"fix the pattern (relative to service.workdir {settings.service.workdir})",
                )
            )
        elif not source.path.is_file():
            level: Level = "warning" if running else "info"
            found.append(
                Check(
                    "logs.missing",
                    level,
                    f"log file {source.path} does not exist"
                    + (
                        " although the service runs (started without mpsctl?)"
                        if running
                        else " yet (mpsctl start creates it)"
                    ),
                    "set service.log_file to where the service writes, or start it with "
                    "mpsctl start",
                )
            )
        else:
            found.append(Check("logs.present", "ok", f"log {source.label}: {source.path}"))
    return found


# --------------------------------------------------------------------------- the plan
def plan_checks(settings: Settings, result: ProbeResult) -> list[Check]:
    """Does the served model fit at serve.max_concurrent, by ``mpsctl plan``'s figures."""
    from mpsctl.plan.configured import configured_plan
    from mpsctl.plan.lines import advice_line, figures_line

    try:
        found = configured_plan(settings, result.health.memory_report)
    except Exception as exc:  # a finding, never a crash of the whole report
        return [Check("plan.fits", "info", f"no memory plan: {type(exc).__name__}: {exc}")]
    plan = found.plan
    if plan is None:
        return [
            Check(
                "plan.fits",
                "info",
                f"no memory plan: {found.reason}",
                None if found.expected else "mpsctl plan --preset NAME plans a published size",
            )
        ]
    if plan.fits:
        return [Check("plan.fits", "ok", figures_line(plan))]
    return [Check("plan.fits", "warning", f"does not fit: {figures_line(plan)}", advice_line(plan))]


# --------------------------------------------------------------------------- all together
def _probe(settings: Settings) -> ProbeResult:
    from mpsctl.probe import take_probe

    return take_probe(settings, health_timeout=2.0)


def run_doctor(
    load: Callable[[], Settings],
    environ: Mapping[str, str] | None = None,
    *,
    probe: Callable[[Settings], ProbeResult] = _probe,
) -> DoctorReport:
    env = dict(os.environ if environ is None else environ)
    checks = env_checks(
        "env",
        pytorch_vars(env),
        "this shell's environment",
        "where you export it (mpsctl start uses [memory] settings instead, but a script or a "
        "hand-run uvicorn started from this shell reads these)",
    )
    try:
        settings = load()
    except ConfigError as exc:
        checks.append(
            Check(
                "config.load",
                "error",
                f"settings do not load: {exc}",
                "fix the file or variable named; mpsctl config show",
            )
        )
        return DoctorReport(utc_now_iso(), tuple(checks))
    checks += settings_checks(settings)
    result = probe(settings)
    checks += service_checks(settings, result)
    checks += limit_checks(settings, result)
    snap = result.service
    checks += log_checks(settings, bool(snap and snap.running))
    checks += torch_checks(settings, result)
    checks += plan_checks(settings, result)
    return DoctorReport(utc_now_iso(), tuple(checks))
