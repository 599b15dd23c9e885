"""Consoles and the few output helpers every command shares."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

#: width when the stream is not a terminal and COLUMNS is unset: wide enough that piped
#: output (`mpsctl config show | grep ...`, cron mail) keeps paths and values on one line
PIPE_WIDTH = 160


def make_console(*, stderr: bool) -> Console:
    # imported here: `probe --json` and `--nagios` print no table and need no console
    from rich.console import Console

    # markup/highlight/emoji off: command lines and model answers contain brackets and
    # colons that rich would otherwise reinterpret. rich itself honours NO_COLOR and
    # turns colour and live displays off when the stream is not a terminal.
    console = Console(stderr=stderr, markup=False, highlight=False, emoji=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH  # rich would fold at 80, mid-token
    return console


#: JSON documents this process wrote to stdout: a failing ``--json`` run prints an error
#: document only when the command has not printed its own
documents_written = 0


def write_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    global documents_written  # noqa: PLW0603 - one counter per process, reset by the CLI
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()
    documents_written += 1


ERROR_SCHEMA = "mpsctl.error/1"


def write_json_error(message: str, exit_code: int, command: str | None) -> None:
    """The one document a ``--json`` run that failed before printing its own writes:
    ``{"schema": "mpsctl.error/1", "command": ..., "error": ..., "exit_code": ...}``."""
    write_json(
        {"schema": ERROR_SCHEMA, "command": command, "error": message, "exit_code": exit_code}
    )


def write_json_line(document: Any) -> None:
    """One JSON line on stdout (streaming commands), flushed so a pipe sees it now."""
    global documents_written  # noqa: PLW0603 - one counter per process, reset by the CLI
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
    documents_written += 1


# C0 and C1 control characters except newline and tab, shown as \xNN: text that came from
# a service (a model's answer) must not move the cursor, recolour or retitle the terminal.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (9, 10)}


def printable(text: str) -> str:
    """``text`` with terminal control characters made visible (``\\x1b``), safe to print."""
    return text.translate(_CONTROLS)


def for_terminal(text: str, console: Console, *, raw: bool = False) -> str:
    """``text`` escaped with :func:`printable` when ``console`` is a terminal and ``raw`` is
    off: a log line or an answer written by anyone must not drive the operator's terminal
    (a pipe or a file gets the text as it is, for grep and the like)."""
    return text if raw or not console.is_terminal else printable(text)
