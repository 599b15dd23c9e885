"""``mpsctl oom`` output: one panel per event (summary line, then advice)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from mpsctl.observe.oom import OomEvent, summary


def print_events(
    console: Console, events: list[tuple[OomEvent, list[str]]], files: int, since: str | None
) -> None:
    for event, advice in events:
        where = f"{event.file}:{event.line}" + (f"  {event.time}" if event.time else "")
        title = "configuration error" if event.kind != "oom" else f"{event.backend.upper()} OOM"
        body = [Text(summary(event), style="bold")]
        if not event.complete:
            body.append(Text("(the rest of the message was not found)", style="dim"))
        body += [Text("- " + line) for line in advice]
        console.print(
            Panel(Group(*body), title=f"{title}  {where}", title_align="left", border_style="red")
        )
    scope = f" since {since}" if since else ""
    noun = "file" if files == 1 else "files"
    if events:
        console.print(f"{len(events)} event(s) in {files} {noun}{scope}.")
    else:
        console.print(f"No out-of-memory events in {files} {noun}{scope}.")
