"""The ``mpsctl`` command group.

Commands live one per module and are imported only when invoked (or listed), so
``mpsctl probe`` never pays for what ``mpsctl serve`` needs.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import sys
from typing import Any

import click

from mpsctl import __version__
from mpsctl.cli.app import App
from mpsctl.errors import ExitCode, MpsctlError
from mpsctl.masking import mask_text
from mpsctl.render import console

#: command name -> "module:attribute" under mpsctl.cli
COMMANDS: dict[str, str] = {
    "probe": "probe:probe",
    "config": "config:config",
    "serve": "serve:serve",
    "demo-model": "serve:demo_model",
    "start": "lifecycle:start",
    "stop": "stop:stop",
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
    "plan": "plan:plan",
}

#: ``mpsctl --help``'s command list: groups and order as a newcomer meets them (README's
#: command table follows it). The short texts live here so that printing the list imports
#: no command module; a test keeps every command of COMMANDS in exactly one group.
COMMAND_GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Service",
        (
            ("start", "Start the service detached, with validated memory limits."),
            ("ask", "Ask the service a question, or stress-test it."),
            ("status", "Is the service running and healthy? (LSB exit codes)"),
            ("stop", "Stop the service's process tree: SIGTERM, then SIGKILL."),
            ("restart", "Stop, then start, under one lock."),
            ("fix", "Stop, clean, start with safe limits, verify: the watchdog."),
            ("logs", "The service's logs in one place; -f follows them."),
            ("serve", "Run the reference service in the foreground."),
        ),
    ),
    (
        "Memory",
        (
            ("probe", "Host memory, the service, its accelerator: a verdict."),
            ("oom", "Out-of-memory events in the logs, explained."),
            ("plan", "Will the model fit at this concurrency? Before it crashes."),
            ("clean-cache", "Remove bytecode caches; ask the service to free memory."),
        ),
    ),
    (
        "Monitoring",
        (
            ("watch", "A live dashboard of probes (JSON lines when piped)."),
            ("report", "The recorded history: min/avg/p95/max, OOMs, restarts."),
            ("exporter", "The probe's figures as Prometheus gauges over HTTP."),
            ("cron", "Crontab lines, systemd units or launchd plists: the watchdog."),
        ),
    ),
    (
        "Setup",
        (
            ("config", "Show or create the settings file."),
            ("doctor", "Check the setup against what PyTorch really does."),
            ("demo-model", "Write a demo checkpoint (offline)."),
        ),
    ),
)


def error_exit_code(command: click.Command | None, default: int) -> int:
    """The exit code of a failed run: ``default``, unless the command follows a status
    convention where every failure has one code (``probe``: 3 UNKNOWN for monitoring
    plugins; ``status``: 4 unknown for LSB), a ``ConventionCommand`` (cli/app.py).
    A bad config or option must never read as CRITICAL or "dead"."""
    code = getattr(command, "failure_exit_code", None)
    return code if isinstance(code, int) else default


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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands by group (:data:`COMMAND_GROUPS`), without importing any of them."""
        available = set(self.list_commands(ctx))
        width = max(len(name) for _, entries in COMMAND_GROUPS for name, _ in entries)
        for title, entries in COMMAND_GROUPS:
            # names padded to one width so the texts line up from one section to the next
            rows = [(name.ljust(width), text) for name, text in entries if name in available]
            if rows:
                with formatter.section(f"{title} commands"):
                    formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        _INVOKED[:] = [name or ""]
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MpsctlError as exc:
            name = ctx.invoked_subcommand
            command = self.get_command(ctx, name) if name else None
            _fail(str(exc), error_exit_code(command, exc.exit_code), command)
        except KeyboardInterrupt:
            click.echo("mpsctl: interrupted", err=True)
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
        except BrokenPipeError:
            _reader_left()
        except OSError as exc:
            # the machine said no (a full disk, a read-only directory): one line, not a
            # traceback; commands name the file themselves where they can
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", ExitCode.FAILURE)

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Click's main, with every error as one ``mpsctl: error: ...`` line on stderr.

        Click's own usage errors print three lines (usage, a hint, the error) and Ctrl-C
        outside a command prints ``Aborted!`` with status 1; cron mail and scripts read
        one line and 130 better.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        _ARGV[:] = list(args) if args is not None else sys.argv[1:]
        console.documents_written = 0  # one run per process, except under click's CliRunner
        try:
            try:
                code = super().main(args, prog_name, complete_var, False, **extra)
            except click.UsageError as exc:
                hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
                command = exc.ctx.command if exc.ctx is not None else None
                code = error_exit_code(command, exc.exit_code)
                _fail(exc.format_message() + hint, code, command)
            except click.ClickException as exc:
                _fail(exc.format_message(), exc.exit_code)
            except click.Abort:  # KeyboardInterrupt / EOF outside a command's own handler
                click.echo("mpsctl: interrupted", err=True)
                sys.exit(ExitCode.INTERRUPTED)
            except BrokenPipeError:
                _reader_left()
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        # without standalone mode click returns an Exit's code, or the command's value
        sys.exit(code if isinstance(code, int) else ExitCode.OK)


def _reader_left() -> None:
    """``mpsctl probe --json | head -c 10``: the reader left; say nothing more.

    stdout is pointed at /dev/null so the interpreter's final flush of what is still
    buffered cannot raise again ("Exception ignored ... BrokenPipeError") at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass
    raise click.exceptions.Exit(ExitCode.FAILURE)


#: the command line of this run, for the failure path (``--json``, ``--nagios``)
_ARGV: list[str] = []
#: the command this run invoked ("" before click chose one)
_INVOKED: list[str] = [""]

#: commands whose process ends without the interpreter's teardown (freeing every module and
#: object, tens of milliseconds, up to 100 ms on a loaded machine), which comes after the
#: work: after ``start``'s healthy answer, after the service's exit under ``stop``. They
#: write files only through closed handles (atomic writes), so nothing is left unflushed.
QUICK_EXIT = frozenset({"start", "stop", "restart", "status", "probe"})


def run() -> None:
    """The ``mpsctl`` program (console script and ``python -m mpsctl``): :func:`main`, then,
    for the :data:`QUICK_EXIT` commands, stdout and stderr flushed, the ``atexit``
    handlers run, and the process ended at once with the command's exit status."""
    try:
        main(prog_name="mpsctl")
        code: str | int | None = 0
    except SystemExit as exc:
        code = exc.code
    if _INVOKED[0] not in QUICK_EXIT:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("text") prints the text and exits 1
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left, or the stream is closed
            status = status or 1
    atexit._run_exitfuncs()
    os._exit(status)


def _fail(message: str, code: int, command: click.Command | None = None) -> None:
    """One ``mpsctl: error:`` line on stderr, and on stdout what the caller's parser expects:
    under ``--json`` one JSON document (``mpsctl.error/1``) unless the command printed its
    own, under ``probe --nagios`` one ``MPSCTL UNKNOWN`` status line (plugin guidelines)."""
    # the message may quote a service's answer or a file name: never a control sequence
    message = mask_text(message, paths=False)
    click.echo(f"mpsctl: error: {console.printable(message)}", err=True)
    args = _ARGV[: _ARGV.index("--")] if "--" in _ARGV else _ARGV
    name = command.name if command is not None else None
    if "--json" in args and console.documents_written == 0:
        if name == "probe":  # a monitoring system parses probe's own schema
            from mpsctl.cli.probe import unknown_document

            console.write_json(unknown_document(message))
        else:
            console.write_json_error(message, code, name)
    elif name == "probe" and "--nagios" in args and console.documents_written == 0:
        click.echo(f"MPSCTL UNKNOWN - {console.printable(message).replace('|', '/')}")
    raise click.exceptions.Exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpsctl")
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Settings file (default: ./mpsctl.toml, then the user config dir).",
)
@click.option(
    "--error-log",
    metavar="FILE",
    help="Append stderr to FILE (cron jobs); if it cannot be opened: stderr and syslog.",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None, error_log: str | None) -> None:
    """Operate a local model-serving service on MPS, CUDA or CPU, safely.

    \b
    Examples:
      mpsctl probe                 # host memory, service, accelerator, verdict
      mpsctl start && mpsctl ask "工商银行"
      mpsctl fix --if-unhealthy    # the cron watchdog
    """
    if error_log:
        from mpsctl.cli.errorlog import open_error_log

        problem = open_error_log(error_log)
        if problem is not None:
            click.echo(f"mpsctl: warning: {problem}", err=True)
    ctx.obj = App(config_path=config_path)
