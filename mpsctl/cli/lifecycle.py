"""``mpsctl start`` and ``restart`` (``stop`` is in its own module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.service import (
    POSITIVE_SECONDS,
    SECONDS,
    WAIT,
    demo_notice,
    not_under_unit,
    remember_for_stop,
)
from mpsctl.cli.service_options import all_option, heading, names_argument
from mpsctl.cli.several import Failures, order_notice, take_over
from mpsctl.control.start import StartFailed, StartOptions, start_service
from mpsctl.control.stop import restart_service
from mpsctl.errors import MpsctlError, OverBudgetError, ServiceError
from mpsctl.render import lifecycle as render
from mpsctl.render.service_text import render_stop
from mpsctl.service import Service, select
from mpsctl.settings import Settings
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


def memory_overrides(opts: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    return {
        "memory.high_watermark_ratio": (opts["high"], "--high"),
        "memory.low_watermark_ratio": (opts["low"], "--low"),
        "memory.mps_fallback": (opts["fallback"], "--fallback"),
        "memory.device": (opts["device"], "--device"),
    }


def settings_from_flags(app: App, opts: dict[str, Any]) -> Any:
    """Settings with the flags applied: validated (watermarks included) before anything runs."""
    return app.settings(memory_overrides(opts))


def services_from_flags(
    app: App, opts: dict[str, Any], names: tuple[str, ...], all_: bool
) -> tuple[Settings, list[Service]]:
    """The host's settings and the services to act on, with the memory flags applied."""
    app.name_services(names, all_)
    host = app.host_settings(memory_overrides(opts))
    return host, select(host, names, all_=all_, changes=True)


def budget_gate(app: App, host: Settings, service: Service) -> None:
    """Refuse (or warn, ``host.over_budget``) to start ``service`` when the planned peaks
    of the services running now plus its own exceed the host's ceiling."""
    from mpsctl.observe import processes
    from mpsctl.plan.budget import check_start

    if not host.members or processes.find_service(service.settings).running:
        return
    others = [m for m in host.members if m.service.name != service.name]
    running = [m for m in others if processes.find_service(m).running]
    budget, problem = check_start(host, running, service.settings)
    unplanned = budget.unplanned()
    if unplanned and budget.ceiling_bytes is not None:
        # counted as 0, a service the plan cannot read would pass any budget unseen (with
        # no ceiling at all, nothing was planned and there is no budget to pass)
        app.warn(
            f"the host's memory budget counts as 0 what it cannot plan: {', '.join(unplanned)}"
        )
    if problem is None:
        return
    if host.host.over_budget == "warn":
        app.warn(problem)
        return
    raise OverBudgetError(problem)


@contextmanager
def budget_held(
    app: App, host: Settings, service: Service, wait: float, *, hold: bool = True
) -> Iterator[None]:
    """The budget gate, and the start it lets through, under the host's lock: two
    ``start`` runs at once must not both judge the budget before either service runs.
    ``--foreground`` becomes the service and never lets go, so it only judges."""
    if not host.members or not hold:
        budget_gate(app, host, service)
        yield
        return
    from mpsctl.control.lock import service_lock

    with service_lock(host.host_dir, wait=wait, purpose=f"start {service.name}"):
        budget_gate(app, host, service)
        yield


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
@names_argument
@all_option
@start_flags
@click.option(
    "--foreground",
    is_flag=True,
    help="Run the service as a child until it ends (for launchd/systemd).",
)
@WAIT
@json_option
@click.pass_obj
def start(app: App, names: tuple[str, ...], all_: bool, foreground: bool, wait: float,
          as_json: bool, **opts: Any) -> None:  # fmt: skip
    """Start the service detached, with validated memory limits; wait until healthy.

    Output is appended to service.log_file (rotated above service.log_max_bytes). With
    several services ([services.NAME]): name them or pass --all; they start in `after`
    order, and a start that would put the host's planned memory over its ceiling is
    refused with exit 78 (host.over_budget = "warn" only warns).

    \b
    Examples:
      mpsctl start
      mpsctl start --high 0.7 --low 0.5 --timeout 300
      mpsctl start --device cpu --model ./qwen2.5-0.5b   # the reference service
      mpsctl start --foreground                          # under launchd/systemd
      mpsctl start chat embed                            # two of several services
    """
    app.keep_settings_key()
    host, chosen = services_from_flags(app, opts, names, all_)
    if foreground and len(chosen) > 1:
        raise ServiceError("--foreground runs one service: name it")
    failures = Failures("start", chosen)
    order_notice(app, host, chosen, stopping=False)
    for service in chosen:
        settings = service.settings
        demo_notice(app, settings)
        try:
            failures.clear_to_go(service)
            take_over(app, host, service)
            if not foreground and not_under_unit(app, settings, "start"):
                continue  # --foreground is what the unit itself runs
            ev = events(app)
            options = start_options_from_flags(opts, foreground)
            with budget_held(app, host, service, wait, hold=not foreground):
                if not as_json:
                    heading(app, chosen, service)
                result = run_start(
                    app, partial(start_service, settings, options, events=ev, lock_wait=wait)
                )
        except MpsctlError as exc:
            failures.add(service, exc)
            continue
        failures.result(service, result.to_json())
        if not as_json:
            render.render_start(app.out, result)
    if not names and not all_ and not foreground:
        bare = app.host_settings()  # what a bare `mpsctl stop` loads: no flags
        if not bare.members:
            remember_for_stop(bare, app.settings_key)
    failures.finish(as_json)


@click.command()
@names_argument
@all_option
@start_flags
@click.option("--stop-timeout", type=SECONDS, metavar="SECONDS", help="SIGTERM-to-SIGKILL delay.")
@click.option("--match", "use_match", is_flag=True, help="Stop processes found by match too.")
@WAIT
@json_option
@click.pass_obj
def restart(app: App, names: tuple[str, ...], all_: bool, stop_timeout: float | None,
            use_match: bool, wait: float, as_json: bool, **opts: Any) -> None:  # fmt: skip
    """Stop, then start, under one lock (each service under its own).

    \b
    Examples:
      mpsctl restart
      mpsctl restart --high 0.6 --low 0.4
      mpsctl restart chat
    """
    host, chosen = services_from_flags(app, opts, names, all_)
    failures = Failures("restart", chosen)
    for service in chosen:
        settings = service.settings
        demo_notice(app, settings)
        try:
            failures.clear_to_go(service)
            take_over(app, host, service)
            not_under_unit(app, settings, "restart")
            ev = events(app)
            # a stopped service's restart is a start
            with budget_held(app, host, service, wait):
                result = run_start(app, partial(
                    restart_service, settings, start_options_from_flags(opts),
                    stop_timeout=stop_timeout, use_match=use_match, events=ev,
                    lock_wait=wait))  # fmt: skip
        except MpsctlError as exc:
            failures.add(service, exc)
            continue
        failures.result(service, result.to_json())
        if not as_json:
            heading(app, chosen, service)
            render_stop(result.stop, lambda: app.out)
            render.render_start(app.out, result.start)
    failures.finish(as_json)
