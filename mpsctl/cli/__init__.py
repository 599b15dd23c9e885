"""The ``mpsctl`` command group.

Commands live one per module and are imported only when invoked (or listed), so
``mpsctl probe`` never pays for what ``mpsctl serve`` needs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from mpsctl import __version__
from mpsctl.cli.app import App
from mpsctl.errors import ExitCode, MpsctlError

#: command name -> "module:attribute" under mpsctl.cli
COMMANDS: dict[str, str] = {
    "probe": "probe:probe",
    "config": "config:config",
    "serve": "serve:serve",
    "demo-model": "serve:demo_model",
    "start": "lifecycle:start",
    "stop": "lifecycle:stop",
    "restart": "lifecycle:restart",
    "status": "status:status",
    "clean-cache": "cleancache:clean_cache",
    "fix": "fix:fix",
    "ask": "ask:ask",
    "logs": "logs:logs",
    "oom": "oom:oom",
    "doctor": "doctor:doctor",
    "watch": "watch:watch",
    "report": "report:report",
    "exporter": "exporter:exporter",
    "cron": "cron:cron",
}


def _module_name(spec: str) -> str:
    return "mpsctl.cli." + spec.split(":", 1)[0]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, spec in COMMANDS.items() if importlib.util.find_spec(_module_name(spec))]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None or importlib.util.find_spec(_module_name(spec)) is None:
            return None
        module = importlib.import_module(_module_name(spec))
        command = getattr(module, spec.split(":", 1)[1])
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MpsctlError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("mpsctl: interrupted", err=True)
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
        except BrokenPipeError:
            # `mpsctl probe --json | head -1`: the reader left; say nothing more.
            sys.stderr.close()
            raise click.exceptions.Exit(ExitCode.FAILURE) from None


def _fail(message: str, code: int) -> None:
    click.echo(f"mpsctl: error: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpsctl")
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Settings file (default: ./mpsctl.toml, then the user config dir).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Operate a local model-serving service on MPS, CUDA or CPU, safely.

    \b
    Examples:
      mpsctl probe                 # host memory, service, accelerator, verdict
      mpsctl start && mpsctl ask "工商银行"
      mpsctl fix --if-unhealthy    # the cron watchdog
    """
    ctx.obj = App(config_path=config_path)
