"""``mpsctl stop``: its own module, so that stopping loads nothing of the start path."""

from __future__ import annotations

import importlib
import threading

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.service import SECONDS, WAIT, demo_notice, not_under_unit, remember_for_stop
from mpsctl.cli.service_options import all_option, heading, names_argument
from mpsctl.cli.several import Failures, order_notice, take_over
from mpsctl.control import quick_stop
from mpsctl.control.stop import stop_service
from mpsctl.errors import MpsctlError, ServiceError
from mpsctl.observe.processes import default_pidfile_path
from mpsctl.render.service_text import render_stop
from mpsctl.service import Service, select


@click.command()
@names_argument
@all_option
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
@WAIT
@json_option
@click.pass_obj
def stop(app: App, names: tuple[str, ...], all_: bool, timeout: float | None, use_match: bool,
         dry_run: bool, wait: float, as_json: bool) -> None:  # fmt: skip
    """Stop the service's whole process tree: SIGTERM, then SIGKILL after --timeout.

    Safe by default: only the process the pidfile names (pid and start time must both
    match) and its children. Processes found by service.match are listed, and signalled
    only with --match. Never mpsctl itself, its parents or other users' processes.
    Several services: name them or pass --all; they stop in reverse `after` order.

    \b
    Examples:
      mpsctl stop
      mpsctl stop --dry-run
      mpsctl stop --match --timeout 30   # a service started by hand
      mpsctl stop --all                  # every configured service
    """
    begun = quick_stop.taken()  # a bare `mpsctl stop` may have signalled already
    app.keep_settings_key()
    try:
        app.name_services(names, all_)
        host = app.host_settings()
        chosen = select(host, names, all_=all_, changes=True)
    except MpsctlError:
        if begun is not None:  # the settings changed since they were recorded, just now
            app.warn(_unfinished(begun))
        raise
    failures = Failures("stop", chosen)
    if not dry_run:
        order_notice(app, host, chosen, stopping=True)
    if begun is not None and not _began_this(begun, chosen):
        app.warn(
            f"the stop began on the pidfile {begun.pidfile} before these settings were read, "
            "and they now name another service (did the settings change just now?); "
            "finishing that stop"
        )
    for service in reversed(chosen):
        settings = service.settings
        demo_notice(app, settings)
        try:
            if not dry_run and begun is None:
                take_over(app, host, service)
                not_under_unit(app, settings, "stop")
            result = stop_service(settings, timeout=timeout, use_match=use_match,
                                  dry_run=dry_run, lock_wait=wait,
                                  signalled=None if as_json else _load_table,
                                  begun=begun)  # fmt: skip
            if not dry_run and len(chosen) == 1 and not names and not all_:
                remember_for_stop(settings, app.settings_key)
        except MpsctlError as exc:
            failures.add(service, exc)  # a busy or hung service leaves the others to stop
            continue
        failures.result(service, result.to_json())
        if not as_json:
            heading(app, chosen, service)
            render_stop(result, lambda: app.out)
        if not result.ok:
            failures.add(service, ServiceError(result.message), now=False)
    failures.finish(as_json)


def _began_this(begun: quick_stop.Begun, chosen: list[Service]) -> bool:
    if len(chosen) != 1:
        return False
    settings = chosen[0].settings
    url = settings.service.url.rstrip("/")
    pidfile = str(default_pidfile_path(settings))
    return begun.pidfile == pidfile and begun.url.rstrip("/") == url


def _unfinished(begun: quick_stop.Begun) -> str:
    pids = ", ".join(str(pid) for pid in sorted(begun.sent))
    return (
        f"SIGTERM was sent to pid {pids} (the pidfile {begun.pidfile}) before the settings "
        "were read; without them the stop was not finished (no wait, no SIGKILL): "
        "`mpsctl status` shows what runs"
    )


def _load_table() -> None:
    """Import the table renderer in the background while the service shuts down (its
    exit takes hundreds of milliseconds; the import would otherwise come after it)."""

    def load() -> None:
        for name in ("rich.console", "rich.table"):
            importlib.import_module(name)

    threading.Thread(target=load, name="mpsctl-load-table", daemon=True).start()
