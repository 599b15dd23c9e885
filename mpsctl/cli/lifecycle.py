"""``mpsctl start`` and ``restart`` (``stop`` is in its own module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.service import (
    POSITIVE_SECONDS,
    SECONDS,
    WAIT,
    demo_notice,
    not_under_unit,
)
from mpsctl.control.start import StartFailed, StartOptions, start_service
from mpsctl.control.stop import restart_service
from mpsctl.render import lifecycle as render
from mpsctl.render.console import write_json
from mpsctl.render.service_text import render_stop
from mpsctl.settings_schema import DEVICES
from mpsctl.torch_env import FALLBACK_ENV, HIGH_ENV, LOW_ENV, MAX_RATIO


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
@click.option("--foreground", is_flag=True, help="Become the service (for launchd/systemd).")
@WAIT
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
@start_flags
@click.option("--stop-timeout", type=SECONDS, metavar="SECONDS", help="SIGTERM-to-SIGKILL delay.")
@click.option("--match", "use_match", is_flag=True, help="Stop processes found by match too.")
@WAIT
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
        render_stop(result.stop, lambda: app.out)
        render.render_start(app.out, result.start)
