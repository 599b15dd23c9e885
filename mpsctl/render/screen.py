"""A block of lines redrawn in place on a terminal, rewriting only the lines that changed.

``watch`` redraws its dashboard every few seconds; between two probes most lines (table
borders, labels, settings, often every figure) are the same. rich's ``Live`` rewrites the
whole block each time; this writes the changed lines and skips the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

#: (key, make): ``make()`` builds the section; the key is the data it shows
Section = tuple[Any, Callable[[], "RenderableType"]]

HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
CLEAR_TO_END = "\x1b[J"
CLEAR_LINE_END = "\x1b[K"


def up(lines: int) -> str:
    """Cursor up ``lines`` rows, to column 0."""
    return f"\x1b[{lines}F" if lines else "\r"


class LineScreen:
    """``with LineScreen(console) as screen: screen.update(renderable)``.

    The block is cut to the terminal's height less one row (a block taller than the screen
    cannot be reached again by moving up); a change of width redraws everything.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.shown: list[str] = []
        self._width: int | None = None
        self.lines_written = 0  # how many lines the last update wrote (the rest were kept)
        self._sections: list[tuple[Any, list[str]]] = []  # key, rendered lines
        self.sections_rendered = 0  # how many sections the last update_sections rendered

    def __enter__(self) -> LineScreen:
        self._write(HIDE_CURSOR)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._write(SHOW_CURSOR)

    def render(self, renderable: RenderableType, *, cut: bool = True) -> list[str]:
        """The renderable as terminal lines (styles as escape codes), cut to the height."""
        with self.console.capture() as capture:
            self.console.print(renderable)
        lines = capture.get().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines[: max(1, self.console.height - 1)] if cut else lines

    def update_sections(self, sections: Sequence[Section]) -> None:
        """Draw sections one blank line apart, rendering only those whose key changed
        since the last frame (rendering rich tables is most of a dashboard's CPU)."""
        if self._width != self.console.width:
            self._sections = []
        cached, fresh, lines = self._sections, [], []
        self.sections_rendered = 0
        for index, (key, make) in enumerate(sections):
            if index < len(cached) and cached[index][0] == key:
                rendered = cached[index][1]
            else:
                rendered = self.render(make(), cut=False)
                self.sections_rendered += 1
            fresh.append((key, rendered))
            lines += ([""] if index else []) + rendered
        self._sections = fresh
        self._draw(lines)

    def update(self, renderable: RenderableType) -> None:
        self._draw(self.render(renderable))

    def _draw(self, lines: list[str]) -> None:
        lines = lines[: max(1, self.console.height - 1)]
        width = self.console.width
        old = self.shown if width == self._width else []
        parts = [up(len(self.shown)) if self.shown else ""]
        if not old and self.shown:
            parts.append(CLEAR_TO_END)
        written = 0
        for index, line in enumerate(lines):
            if index < len(old) and old[index] == line:
                parts.append("\n")  # unchanged: step over it
            else:
                parts.append(line + CLEAR_LINE_END + "\n")
                written += 1
        if len(lines) < len(old):
            parts.append(CLEAR_TO_END)  # the block got shorter
        self._write("".join(parts))
        self.shown, self._width, self.lines_written = lines, width, written

    def _write(self, text: str) -> None:
        stream = self.console.file
        stream.write(text)
        stream.flush()
