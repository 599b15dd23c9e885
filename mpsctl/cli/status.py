"""``mpsctl status``: one line, LSB exit codes."""

from __future__ import annotations

import click

from mpsctl.cli.app import App, json_option
from mpsctl.control.lifecycle import service_status
from mpsctl.errors import MpsctlError, StatusExit
from mpsctl.render.console import write_json
from mpsctl.render.lifecycle import status_line


@click.command()
@json_option
@click.pass_obj
def status(app: App, as_json: bool) -> None:
    """Is the service running and healthy? One line; exit codes follow LSB.

    Exit 0 running (even when its health check fails: the line says UNHEALTHY),
    1 dead but the pidfile exists, 3 not running, 4 unknown (an invalid config too).

    \b
    Examples:
      mpsctl status
      mpsctl status --json | jq .health
      mpsctl status >/dev/null || mpsctl start
    """
    try:
        settings = app.settings()
    except MpsctlError as exc:
        # LSB reserves 2 for "dead and lock file exists": a bad config is "unknown" (4)
        raise MpsctlError(str(exc), exit_code=StatusExit.UNKNOWN) from None
    result = service_status(settings)
    if as_json:
        write_json(result.to_json())
    else:
        app.out.print(status_line(result), soft_wrap=True)
    raise click.exceptions.Exit(int(result.exit_code))
