"""``mpsctl doctor``: what is wrong with the settings, environment and service, and the fix."""

from __future__ import annotations

import click

from mpsctl.cli.app import App, json_option
from mpsctl.monitor.doctor import run_doctor
from mpsctl.render.console import write_json


@click.command()
@json_option
@click.pass_obj
def doctor(app: App, as_json: bool) -> None:
    """Check settings, environment and the running service against what PyTorch really does.

    Looks at this shell's PYTORCH_* variables, the settings, and the running service's own
    environment and memory report: a high watermark without a low one (fails at the first
    MPS allocation), ratios PyTorch would read as 0 (no limit), an "enable MPS" variable
    (PyTorch has none), the MPS fallback (not an OOM fallback), --reload, 0.0.0.0, a
    readable token file, a service started with other limits than configured, a limit above
    physical memory, missing logs, a torch without recommended_max_memory. Exit 1 when a
    warning or an error is found, else 0. Reads only; never imports torch.

    \b
    Examples:
      mpsctl doctor
      mpsctl doctor --json | jq '.checks[] | select(.level != "ok")'
    """
    result = run_doctor(app.settings)
    if as_json:
        write_json(result.to_json())
    else:
        from mpsctl.render.monitor import print_doctor

        print_doctor(app.out, result)
    raise click.exceptions.Exit(result.exit_code)
