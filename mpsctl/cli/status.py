"""``mpsctl status``: one line, LSB exit codes."""

from __future__ import annotations

import click

from mpsctl.cli.app import App, ConventionCommand, json_option
from mpsctl.cli.service import demo_notice
from mpsctl.cli.service_options import named, names_argument, several_document
from mpsctl.control.status import service_status
from mpsctl.control.supervisor import find_supervisor
from mpsctl.errors import MpsctlError, StatusExit
from mpsctl.render.console import write_json
from mpsctl.render.service_text import status_line, write_line


def left_behind(app: App) -> None:
    """Warn of a service still running from a one-service configuration: no pidfile of
    the several services names it, so status alone would call it unknown or stopped."""
    host = app.host_settings()
    if not host.members:
        return
    from mpsctl.control.left_pidfile import find_left_pidfile

    left = find_left_pidfile(host)
    if left is not None:
        app.warn(left.notice(host))


# LSB reserves 1-3 for states of the service: a bad config or option is "unknown" (4)
@click.command(cls=ConventionCommand, failure_exit_code=int(StatusExit.UNKNOWN))
@names_argument
@json_option
@click.pass_obj
def status(app: App, names: tuple[str, ...], as_json: bool) -> None:
    """Is the service running and healthy? One line; exit codes follow LSB.

    Exit 0 running (even when its health check fails: the line says UNHEALTHY),
    1 dead but the pidfile exists, 3 not running, 4 unknown (an invalid config too).
    Several services ([services.NAME]): one line each (all of them, or those named), and
    the exit code is the highest of theirs.

    \b
    Examples:
      mpsctl status
      mpsctl status --json | jq .health
      mpsctl status >/dev/null || mpsctl start
      mpsctl status chat embed
    """
    try:
        app.name_services(names)
        chosen = app.services(names)
    except MpsctlError as exc:
        if as_json:  # still exactly one document: the state is unknown, and why
            write_json({"schema": "mpsctl.status/1", "state": "unknown", "error": str(exc),
                        "exit_code": int(StatusExit.UNKNOWN)})  # fmt: skip
        raise
    left_behind(app)
    documents, codes = [], []
    for service in chosen:
        settings = service.settings
        demo_notice(app, settings)
        result = service_status(settings)
        managed = find_supervisor(settings)
        codes.append(int(result.exit_code))
        document = result.to_json()
        document["managed_by"] = None if managed is None else {
            "manager": managed.manager, "unit": managed.unit, "state": managed.state,
            "active": managed.active, "main_pid": managed.main_pid,
        }  # fmt: skip
        documents.append(named(document, service.name) if len(chosen) > 1 else document)
        if not as_json:
            write_line(status_line(result))
            if managed is not None:
                app.info(managed.advice("status"))
    code = max(codes)
    if as_json:
        write_json(documents[0] if len(documents) == 1
                   else several_document("status", documents, code))  # fmt: skip
    raise click.exceptions.Exit(code)
