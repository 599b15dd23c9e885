"""``mpsctl start``, ``stop`` and ``restart``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mpsctl.cli.app import App, json_option
from mpsctl.control.start import StartFailed, StartOptions, start_service
from mpsctl.control.stop import restart_service, stop_service
from mpsctl.control.supervisor import Action, find_supervisor
from mpsctl.errors import ServiceError
from mpsctl.paths import CONFIG_NAME, user_config_file
from mpsctl.render import lifecycle as render
from mpsctl.render.console import write_json
from mpsctl.settings import Settings
from mpsctl.settings_schema import DEVICES
from mpsctl.torch_env import FALLBACK_ENV, HIGH_ENV, LOW_ENV, MAX_RATIO


class Seconds(click.ParamType):
    """A number of seconds: finite, not negative, and > 0 unless ``allow_zero``."""

    name = "seconds"

    def __init__(self, *, allow_zero: bool) -> None:
        self.allow_zero = allow_zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number of seconds, got {value!r}", param, ctx)
        if not math.isfinite(number) or number < 0 or (number == 0 and not self.allow_zero):
            bound = ">= 0" if self.allow_zero else "> 0"
            self.fail(f"expected a finite number of seconds {bound}, got {value!r}", param, ctx)
        return number


SECONDS = Seconds(allow_zero=True)
POSITIVE_SECONDS = Seconds(allow_zero=False)

_WAIT = click.option(
    "--wait", type=SECONDS, default=0.0, metavar="SECONDS",
    help="Wait this long for another mpsctl run's lock (default 0: exit 75 at once).",
)  # fmt: skip


def start_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flags that override the memory settings (shared with restart and fix)."""
    options = [
        click.option("--timeout", type=POSITIVE_SECONDS, metavar="SECONDS",
                     help="Wait this long for a healthy answer (default service.start_timeout)."),
        click.option("--high", metavar="RATIO", help=f"{HIGH_ENV}, 0.0-{MAX_RATIO:.1f}."),
        click.option("--low", metavar="RATIO", help=f"{LOW_ENV} (<= high)."),
        click.option("--fallback/--no-fallback", default=None,
                     help=f"{FALLBACK_ENV} (unimplemented ops on CPU; not OOM)."),
        click.option("--device", type=click.Choice(DEVICES), help="Reference service only."),
        click.option("--model", metavar="PATH_OR_ID", help="Reference service only."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_flags(app: App, opts: dict[str, Any]) -> Any:
    """Settings with the flags applied: validated (watermarks included) before anything runs."""
    return app.settings(
        {
            "memory.high_watermark_ratio": (opts["high"], "--high"),
            "memory.low_watermark_ratio": (opts["low"], "--low"),
            "memory.mps_fallback": (opts["fallback"], "--fallback"),
            "memory.device": (opts["device"], "--device"),
        }
    )


def start_options_from_flags(opts: dict[str, Any], foreground: bool = False) -> StartOptions:
    return StartOptions(opts["timeout"], opts["device"], opts["model"], foreground)


def demo_notice(app: App, settings: Settings) -> None:
    """One stderr line when no settings file was found: from cron's cwd a missing
    ``--config`` silently means "the built-in demo service", not the operator's."""
    if settings.config_file is not None:
        return
    looked = f"{Path.cwd() / CONFIG_NAME}, {user_config_file()}"
    app.info(
        f"no settings file (no --config or MPSCTL_CONFIG; looked for {looked}): managing "
        f"the built-in demo service at {settings.service.url}"
    )


def not_under_unit(app: App, settings: Settings, action: Action) -> bool:
    """Refuse to act around a systemd unit / launchd agent that runs the service; say what
    to run instead. True when ``start`` has nothing to do: the unit runs the service."""
    managed = find_supervisor(settings)
    if managed is None:
        return False
    if action == "start" and managed.active:
        app.info(managed.advice(action))
        return True
    raise ServiceError(managed.advice(action))


def events(app: App) -> render.ConsoleEvents:
    return render.ConsoleEvents(app.err, app.warn, app.info)


def run_start(app: App, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except StartFailed as exc:
        render.render_start_failure(app.err, exc)
        raise


@click.command()
@start_flags
@click.option(
    "--foreground",
    is_flag=True,
    help="Run the service as a child until it ends (for launchd/systemd).",
)
@_WAIT
@json_option
@click.pass_obj
def start(app: App, foreground: bool, wait: float, as_json: bool, **opts: Any) -> None:
    """Start the service detached, with validated memory limits; wait until healthy.

    Output is appended to service.log_file (rotated above service.log_max_bytes).

    \b
    Examples:
      mpsctl start
      mpsctl start --high 0.7 --low 0.5 --timeout 300
      mpsctl start --device cpu --model ./qwen2.5-0.5b   # the reference service
      mpsctl start --foreground                          # under launchd/systemd
    """
    settings = settings_from_flags(app, opts)
    demo_notice(app, settings)
    if not foreground and not_under_unit(app, settings, "start"):
        return  # --foreground is what the unit itself runs
    ev = events(app)
    options = start_options_from_flags(opts, foreground)
    result = run_start(app, lambda: start_service(settings, options, events=ev,
                                                            lock_wait=wait))  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        render.render_start(app.out, result)


@click.command()
@click.option(
    "--timeout",
    type=SECONDS,
    metavar="SECONDS",
    help="Seconds between SIGTERM and SIGKILL (default service.stop_timeout; 0: SIGKILL at once).",
)
@click.option(
    "--match",
    "use_match",
    is_flag=True,
    help="Also stop processes found only by service.match (no pidfile).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be signalled; signal nothing.")
@_WAIT
@json_option
@click.pass_obj
def stop(app: App, timeout: float | None, use_match: bool, dry_run: bool, wait: float,
         as_json: bool) -> None:  # fmt: skip
    """Stop the service's whole process tree: SIGTERM, then SIGKILL after --timeout.

    Safe by default: only the process the pidfile names (pid and start time must both
    match) and its children. Processes found by service.match are listed, and signalled
    only with --match. Never mpsctl itself, its parents or other users' processes.

    \b
    Examples:
      mpsctl stop
      mpsctl stop --dry-run
      mpsctl stop --match --timeout 30   # a service started by hand
    """
    settings = app.settings()
    demo_notice(app, settings)
    if not dry_run:
        not_under_unit(app, settings, "stop")
    result = stop_service(settings, timeout=timeout, use_match=use_match,
                                    dry_run=dry_run, lock_wait=wait)  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        render.render_stop(app.out, result)
    if not result.ok:
        raise ServiceError(result.message)


@click.command()
@start_flags
@click.option("--stop-timeout", type=SECONDS, metavar="SECONDS", help="SIGTERM-to-SIGKILL delay.")
@click.option("--match", "use_match", is_flag=True, help="Stop processes found by match too.")
@_WAIT
@json_option
@click.pass_obj
def restart(app: App, stop_timeout: float | None, use_match: bool, wait: float, as_json: bool,
            **opts: Any) -> None:  # fmt: skip
    """Stop, then start, under one lock.

    \b
    Examples:
      mpsctl restart
      mpsctl restart --high 0.6 --low 0.4
    """
    settings = settings_from_flags(app, opts)
    demo_notice(app, settings)
    not_under_unit(app, settings, "restart")
    ev = events(app)
    result = run_start(app, lambda: restart_service(
        settings, start_options_from_flags(opts), stop_timeout=stop_timeout,
        use_match=use_match, events=ev, lock_wait=wait))  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        render.render_stop(app.out, result.stop)
        render.render_start(app.out, result.start)
