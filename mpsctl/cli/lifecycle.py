"""``mpsctl start``, ``stop`` and ``restart``."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from typing import Any, NoReturn

import click

from mpsctl import __version__
from mpsctl.cli.app import App, json_option
from mpsctl.control import lifecycle
from mpsctl.control.lock import service_lock
from mpsctl.control.pidfile import write_pidfile
from mpsctl.errors import ServiceError
from mpsctl.observe import procs
from mpsctl.paths import ensure_home
from mpsctl.render import lifecycle as render
from mpsctl.render.console import write_json
from mpsctl.render.units import utc_now_iso
from mpsctl.settings import DEVICES


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


def start_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flags that override the memory settings (shared with restart and fix)."""
    options = [
        click.option("--timeout", type=POSITIVE_SECONDS, metavar="SECONDS",
                     help="Wait this long for a healthy answer (default service.start_timeout)."),
        click.option("--high", metavar="RATIO", help="PYTORCH_MPS_HIGH_WATERMARK_RATIO, 0.0-2.0."),
        click.option("--low", metavar="RATIO", help="PYTORCH_MPS_LOW_WATERMARK_RATIO (<= high)."),
        click.option("--fallback/--no-fallback", default=None,
                     help="PYTORCH_ENABLE_MPS_FALLBACK (unimplemented ops on CPU; not OOM)."),
        click.option("--device", type=click.Choice(DEVICES), help="Reference service only."),
        click.option("--model", metavar="PATH_OR_ID", help="Reference service only."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def start_settings(app: App, opts: dict[str, Any]) -> Any:
    """Settings with the flags applied: validated (watermarks included) before anything runs."""
    return app.settings(
        {
            "memory.high_watermark_ratio": (opts["high"], "--high"),
            "memory.low_watermark_ratio": (opts["low"], "--low"),
            "memory.mps_fallback": (opts["fallback"], "--fallback"),
            "memory.device": (opts["device"], "--device"),
        }
    )


def start_opts(opts: dict[str, Any], foreground: bool = False) -> lifecycle.StartOptions:
    return lifecycle.StartOptions(opts["timeout"], opts["device"], opts["model"], foreground)


def events(app: App) -> render.ConsoleEvents:
    return render.ConsoleEvents(app.err, app.warn, app.info)


def run_start(app: App, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except lifecycle.StartFailed as exc:
        render.render_start_failure(app.err, exc)
        raise


@click.command()
@start_options
@click.option("--foreground", is_flag=True, help="Become the service (for launchd/systemd).")
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
    settings = start_settings(app, opts)
    ev = events(app)
    options = start_opts(opts, foreground)
    if foreground:
        start_foreground(settings, options, ev, wait)
    result = run_start(app, lambda: lifecycle.start_service(settings, options, events=ev,
                                                            lock_wait=wait))  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        render.render_start(app.out, result)


def start_foreground(
    settings: Any, options: lifecycle.StartOptions, ev: render.ConsoleEvents, wait: float
) -> NoReturn:
    """``start --foreground``: become the service, for a unit that supervises it.

    The same checks as a detached start, then a pidfile naming this process and ``exec``:
    exec keeps the pid and the start time, so the pidfile then names the service itself
    (``status``, ``probe`` and the watchdog find it), systemd's or launchd's main process
    is the service (their SIGTERM reaches it directly) and its exit status is the unit's.
    The lock's descriptor is close-on-exec: exec releases it.
    """
    service = settings.service
    argv, warnings = lifecycle.service_argv(settings, device=options.device, model=options.model)
    limit = lifecycle.memory_limit(settings, query_torch=False)
    for warning in warnings + lifecycle.preflight_warnings(settings, argv, limit):
        ev.warn(warning)
    with service_lock(settings.home, wait=wait, purpose="start"):
        snapshot = procs.find_service(settings)
        if snapshot.running:
            raise ServiceError(
                f"{service.name} is already running (pid {snapshot.roots[0]}, found by "
                f"{snapshot.found_by}); a second copy would fight it for the port: stop it "
                "first (mpsctl stop), then let the unit start it"
            )
        lifecycle.check_port_free(settings)
        if not service.workdir.is_dir():
            raise ServiceError(f"service.workdir {service.workdir} is not a directory")
        env = lifecycle.service_env(settings)
        me = os.getpid()
        created = procs.create_time_of(me)
        if created is None:
            raise ServiceError("cannot read this process's start time for the pidfile")
        ensure_home({"MPSCTL_HOME": str(settings.home)})
        pidfile = snapshot.pidfile_path or procs.default_pidfile_path(settings)
        record = procs.PidRecord(me, created, argv, service.url, utc_now_iso(), __version__)
        try:
            write_pidfile(pidfile, record)
        except OSError as exc:
            raise ServiceError(f"cannot write the pidfile {pidfile}: {exc.strerror}") from None
        try:
            os.chdir(service.workdir)
            os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            with contextlib.suppress(OSError):
                pidfile.unlink()
            raise ServiceError(f"cannot run {argv[0]}: {exc.strerror}") from None


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
    result = lifecycle.stop_service(settings, timeout=timeout, use_match=use_match,
                                    dry_run=dry_run, lock_wait=wait)  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        render.render_stop(app.out, result)
    if not result.ok:
        raise ServiceError(result.message)


@click.command()
@start_options
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
    settings = start_settings(app, opts)
    ev = events(app)
    result = run_start(app, lambda: lifecycle.restart_service(
        settings, start_opts(opts), stop_timeout=stop_timeout, use_match=use_match, events=ev,
        lock_wait=wait))  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        render.render_stop(app.out, result.stop)
        render.render_start(app.out, result.start)
