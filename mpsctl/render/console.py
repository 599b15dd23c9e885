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
    # markup/highlight/emoji off: command lines and model answers contain brackets and
    # colons that rich would otherwise reinterpret. rich itself honours NO_COLOR and
    # turns colour and live displays off when the stream is not a terminal.
    console = _escaping_console_class()(
        stderr=stderr, markup=False, highlight=False, emoji=False, soft_wrap=False
    )
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


def allow_raw(console: Console) -> None:
    """``--raw``: this console writes control characters as they are, even to a terminal."""
    console.escape_controls = False  # type: ignore[attr-defined]


_ESCAPING: type[Console] | None = None


def _escaping_console_class() -> type[Console]:
    """rich's Console, escaping every control character of the text it writes to a terminal.

    The one place where outside strings (process command lines, a service's answers and
    ``device``, log lines, file names in titles) are made harmless: rich passes ESC through
    (it strips only BEL, BS, VT, FF and CR), so ``ESC[2J`` or an OSC 52 clipboard write in a
    neighbour's command line would reach the operator's terminal. Strings are escaped before
    layout (``render_str``, so tables keep their widths); the text of every segment is
    escaped again on the way out, which catches ``Text`` objects and panel titles built
    elsewhere. rich's own colours and cursor moves are styles and control segments, which
    are kept. Not a terminal: the text goes out as it is (grep, files), like ``--raw``.
    """
    global _ESCAPING  # noqa: PLW0603 - rich is imported lazily, so is this class
    if _ESCAPING is not None:
        return _ESCAPING
    from rich.console import Console
    from rich.segment import Segment

    class EscapingConsole(Console):
        escape_controls = True

        def _escaping(self) -> bool:
            return self.escape_controls and self.is_terminal

        def render_str(self, text: str, **options: Any) -> Any:
            return super().render_str(printable(text) if self._escaping() else text, **options)

        def _render_buffer(self, buffer: Any) -> str:
            if self._escaping():
                buffer = [
                    segment if segment.control else Segment(printable(segment.text), segment.style)
                    for segment in buffer
                ]
            return super()._render_buffer(buffer)

    _ESCAPING = EscapingConsole
    return _ESCAPING
