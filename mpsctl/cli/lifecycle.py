"""``mpsctl start``, ``stop`` and ``restart``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.service_options import (
    all_option,
    error_document,
    heading,
    named,
    names_argument,
    several_document,
)
from mpsctl.control.start import StartFailed, StartOptions, start_service
from mpsctl.control.stop import restart_service, stop_service
from mpsctl.control.supervisor import Action, find_supervisor
from mpsctl.errors import MpsctlError, OverBudgetError, ServiceError
from mpsctl.paths import CONFIG_NAME, user_config_file
from mpsctl.render import lifecycle as render
from mpsctl.render.console import write_json
from mpsctl.service import Service, select
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


def order_notice(app: App, host: Settings, chosen: list[Service], *, stopping: bool) -> None:
    """Warn when a start leaves out a service it starts ``after`` that is not running, or
    a stop leaves running a service that starts after one it stops: the order the file
    gives is then not the order the services run in."""
    if not host.members:
        return
    from mpsctl.observe import processes

    named = {s.name for s in chosen}
    by_name = {m.service.name: m for m in host.members}

    def running(name: str) -> bool:
        return processes.find_service(by_name[name]).running

    for service in chosen:
        if stopping:
            left = [n for n, m in by_name.items() if service.name in m.service.after
                    and n not in named and running(n)]  # fmt: skip
            if left:
                app.warn(f"{', '.join(left)} (running) starts after {service.name}, stopped now")
        else:
            missing = [n for n in service.settings.service.after
                       if n not in named and not running(n)]  # fmt: skip
            if missing:
                app.warn(f"{service.name} starts after {', '.join(missing)}, not running now")


def take_over(app: App, host: Settings, service: Service) -> None:
    """The pidfile a one-service configuration left in MPSCTL_HOME becomes the service's
    whose URL it recorded, before a command acts on that service."""
    if not host.members:
        return
    from mpsctl.control.left_pidfile import adopt_left_pidfile

    note = adopt_left_pidfile(host, service.name)
    if note is not None:
        app.info(note)


class Failures:
    """What went wrong for each of several services: one service's failure stops no other
    (a start skips only the services that start ``after`` it). With one service the error
    is raised as it always was."""

    def __init__(self, command: str, chosen: list[Service]) -> None:
        self.command, self.several = command, len(chosen) > 1
        self.messages: list[str] = []
        #: each service's document in the command's order: its result's, or its error's
        self.documents: list[dict[str, Any]] = []
        self.names: set[str] = set()
        self.code = 0

    def add(self, service: Service, exc: MpsctlError, *, now: bool = True) -> None:
        """Record ``exc``; with one service raise it ``now`` (else at :meth:`finish`,
        after the service's own document)."""
        if not self.several and now:
            raise exc
        self.names.add(service.name)
        self.messages.append(f"{service.name}: {exc}" if self.several else str(exc))
        if self.several:
            self.documents.append(error_document(self.command, service.name, str(exc),
                                                 exc.exit_code))  # fmt: skip
        self.code = self.code or exc.exit_code

    def result(self, service: Service, document: dict[str, Any]) -> None:
        self.documents.append(named(document, service.name) if self.several else document)

    def blocked(self, service: Service) -> MpsctlError | None:
        """The error for a service that starts after one that failed (or was skipped)."""
        failed = [n for n in service.settings.service.after if n in self.names]
        if not failed:
            return None
        did = self.command
        return ServiceError(f"not {did}ed: it starts after {failed[0]}, which did not {did}")

    def finish(self, as_json: bool) -> None:
        """The JSON document (every service's, in order, failures included), then the one
        error line."""
        if as_json and self.several:
            write_json(several_document(self.command, self.documents, self.code))
        elif as_json and self.documents:
            write_json(self.documents[0])
        if self.messages:
            raise MpsctlError("; ".join(self.messages), exit_code=self.code)


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
@names_argument
@all_option
@start_flags
@click.option("--foreground", is_flag=True, help="Become the service (for launchd/systemd).")
@_WAIT
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
    host, chosen = services_from_flags(app, opts, names, all_)
    if foreground and len(chosen) > 1:
        raise ServiceError("--foreground runs one service: name it")
    failures = Failures("start", chosen)
    order_notice(app, host, chosen, stopping=False)
    for service in chosen:
        settings = service.settings
        demo_notice(app, settings)
        try:
            blocked = failures.blocked(service)
            if blocked is not None:
                raise blocked
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
    failures.finish(as_json)


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
@_WAIT
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
    app.name_services(names, all_)
    host = app.host_settings()
    chosen = select(host, names, all_=all_, changes=True)
    failures = Failures("stop", chosen)
    if not dry_run:
        order_notice(app, host, chosen, stopping=True)
    for service in reversed(chosen):
        settings = service.settings
        demo_notice(app, settings)
        try:
            if not dry_run:
                take_over(app, host, service)
                not_under_unit(app, settings, "stop")
            result = stop_service(settings, timeout=timeout, use_match=use_match,
                                  dry_run=dry_run, lock_wait=wait)  # fmt: skip
        except MpsctlError as exc:
            failures.add(service, exc)  # a busy or hung service leaves the others to stop
            continue
        failures.result(service, result.to_json())
        if not as_json:
            heading(app, chosen, service)
            render.render_stop(app.out, result)
        if not result.ok:
            failures.add(service, ServiceError(result.message), now=False)
    failures.finish(as_json)


@click.command()
@names_argument
@all_option
@start_flags
@click.option("--stop-timeout", type=SECONDS, metavar="SECONDS", help="SIGTERM-to-SIGKILL delay.")
@click.option("--match", "use_match", is_flag=True, help="Stop processes found by match too.")
@_WAIT
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
            blocked = failures.blocked(service)
            if blocked is not None:
                raise blocked
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
            render.render_stop(app.out, result.stop)
            render.render_start(app.out, result.start)
    failures.finish(as_json)
