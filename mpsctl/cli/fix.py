"""``mpsctl fix``: probe, stop, clean caches, start with the configured limits, verify."""

from __future__ import annotations

from typing import Any

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.lifecycle import (
    events,
    services_from_flags,
    start_flags,
    start_options_from_flags,
    take_over,
)
from mpsctl.cli.params import DURATION
from mpsctl.cli.service import SECONDS, demo_notice
from mpsctl.cli.service_options import (
    all_option,
    error_document,
    heading,
    named,
    names_argument,
    several_document,
)
from mpsctl.control.fix import FixOptions, fix_service
from mpsctl.durations import Period
from mpsctl.errors import ExitCode, MpsctlError, ServiceError
from mpsctl.render.console import allow_raw, write_json
from mpsctl.render.lifecycle import render_fix


@click.command()
@names_argument
@all_option
@click.option("--if-unhealthy", is_flag=True, help="Do nothing when the probe verdict is OK.")
@click.option("--ask", "question", metavar="QUESTION", help="Send a test query after the start.")
@click.option(
    "--max-restarts",
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse after N restarts within --within (default fix.max_restarts).",
)
@click.option(
    "--within", type=DURATION, metavar="DURATION", help="Restart-loop window (default fix.within)."
)
@click.option("--match", "use_match", is_flag=True, help="Stop processes found by match too.")
@click.option(
    "--reset-budget",
    is_flag=True,
    help="Forget the watchdog's past restarts (re-arm it after it gave up).",
)
@start_flags
@click.option(
    "--wait",
    type=SECONDS,
    default=0.0,
    metavar="SECONDS",
    help="Wait for another run's lock (default 0: exit 75 at once).",
)
@click.option("--raw", is_flag=True, help="Show the test answer's control characters as they are.")
@json_option
@click.pass_obj
def fix(app: App, names: tuple[str, ...], all_: bool, if_unhealthy: bool,
        question: str | None, max_restarts: int | None, within: Period | None,
        use_match: bool, reset_budget: bool, wait: float, raw: bool, as_json: bool,
        **opts: Any) -> None:  # fmt: skip
    """Probe, stop, clean caches, start with the configured limits, verify, probe again.

    Exit 0 only when the service is healthy at the end. Every run appends one JSON line
    to MPSCTL_HOME/history/fix.jsonl.

    --if-unhealthy is the watchdog: it restarts only for the rules in fix.restart_on (not
    running, dead pidfile, service.health_retries failed health checks, memory CRITICAL);
    WARNING findings only alert (exit 0). When fix.max_restarts restarts within fix.within
    did not help and the service is down, it gives up: exit 69 and one alert. Re-arm with
    a `mpsctl fix` by hand or --reset-budget. Several services: name them or pass --all;
    each has its own budget, audit trail and alerts, and one giving up never stops
    another's fix (the exit code is then the worst: 69, else 1).

    \b
    Examples:
      mpsctl fix
      mpsctl fix --ask "工商银行"
      mpsctl cron    # prints the watchdog's crontab line: absolute paths, --config, MPSCTL_HOME
      */5 * * * * MPSCTL_HOME=/home/op/.local/state/mpsctl PATH=/home/op/venv/bin:/usr/bin:/bin
        /home/op/venv/bin/python -m mpsctl --error-log /home/op/.local/state/mpsctl/cron.log
        --config /home/op/mvp/mpsctl.toml fix --if-unhealthy >/dev/null
        || { rc=$?; [ $rc -eq 75 ] || exit $rc; }
    """
    window = within.seconds if within is not None else None
    host, chosen = services_from_flags(app, opts, names, all_)
    from mpsctl.monitor.alerts import WatchdogAlerts  # loaded when fix runs, not for --help

    documents, failures, gave_up = [], [], False
    for service in chosen:
        settings = service.settings
        demo_notice(app, settings)
        options = FixOptions(if_unhealthy, max_restarts, window, question, use_match,
                             None, start_options_from_flags(opts), reset_budget)  # fmt: skip
        try:
            take_over(app, host, service)
            result = fix_service(settings, options, events=events(app), lock_wait=wait,
                                 alerts=WatchdogAlerts(settings))  # fmt: skip
        except MpsctlError as exc:
            if len(chosen) == 1:
                raise
            failures.append(f"{service.name}: {exc}")  # one service's failure stops no other
            documents.append(error_document("fix", service.name, str(exc), exc.exit_code))
            continue
        document = result.to_json()
        documents.append(named(document, service.name) if len(chosen) > 1 else document)
        if not as_json:
            heading(app, chosen, service)
            if raw:
                allow_raw(app.out)
            render_fix(app.out, result, raw=raw)
        gave_up = gave_up or result.gave_up
        if result.gave_up or result.status == "skipped":
            if result.gave_up:
                failures.append(result.message)
            continue  # skipped: the watchdog chose not to restart (busy, or a WARNING)
        if not result.healthy or result.status in ("failed", "refused"):
            failures.append(result.message)
    code = ExitCode.GAVE_UP if gave_up else (ExitCode.FAILURE if failures else ExitCode.OK)
    if as_json and documents:
        write_json(documents[0] if len(chosen) == 1
                   else several_document("fix", documents, int(code)))  # fmt: skip
    if failures:
        raise ServiceError("; ".join(failures), exit_code=code)
