"""``mpsctl oom`` output: one panel per failure (summary line, places, then advice)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from mpsctl.deaths.allocator import OomEvent
from mpsctl.deaths.counting import Found
from mpsctl.render.console import printable

_TITLES = {
    "kernel_oom_kill": "KERNEL OOM KILL",
    "oomd_kill": "SYSTEMD-OOMD KILL",
    "jetsam_kill": "JETSAM KILL",
    "worker_killed": "WORKER KILLED",
    "cpu_alloc": "CPU OOM",
    "device_error": "CUDA DEVICE OOM",
    "ndarray_limit": "MPS ARRAY LIMIT",
    "mps_size_limit": "MPS SIZE LIMIT",
}


def _title(found: Found) -> str:
    event = found.event
    if isinstance(event, OomEvent):
        return "configuration error" if event.kind != "oom" else f"{event.backend.upper()} OOM"
    return _TITLES.get(event.kind, event.kind)


def print_events(
    console: Console, events: list[tuple[Found, list[str]]], files: int, since: str | None
) -> None:
    for found, advice in events:
        when = found.time_text()
        where = f"{found.file}:{found.line}" + (f"  {when}" if when else "")
        body = [Text(found.summary(), style="bold")]
        note = found.time_note()
        if note:
            body.append(Text(f"(time: {note})", style="dim"))
        if not getattr(found.event, "complete", True):
            body.append(Text("(the rest of the message was not found)", style="dim"))
        if len(found.places) > 1:
            seen = ", ".join(f"{file}:{line}" for file, line in found.places)
            body.append(Text(f"one failure, seen in {seen}", style="dim"))
        body += [Text("- " + line) for line in advice]
        console.print(
            Panel(
                Group(*body),
                # a Text, not a str: rich reads a str title as markup, and a file name may
                # hold brackets (or "[/x]", which rich refuses with an exception)
                title=Text(printable(f"{_title(found)}  {where}")),
                title_align="left",
                border_style="red",
            )
        )
    scope = f" since {since}" if since else ""
    noun = "file" if files == 1 else "files"
    if events:
        console.print(f"{len(events)} event(s) in {files} {noun}{scope}.")
    else:
        console.print(f"No out-of-memory events in {files} {noun}{scope}.")
