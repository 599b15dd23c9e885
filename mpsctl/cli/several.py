"""Commands over several services: one service's failure stops no other, the `after` order
is warned about when a command breaks it, and a pidfile a one-service configuration left
behind is taken over. Light on purpose: `stop` imports it, and stopping loads nothing of
the start path."""

from __future__ import annotations

from typing import Any

from mpsctl.cli.app import App
from mpsctl.cli.service_options import error_document, named, several_document
from mpsctl.errors import MpsctlError, ServiceError
from mpsctl.render.console import write_json
from mpsctl.service import Service
from mpsctl.settings import Settings


def order_notice(app: App, host: Settings, chosen: list[Service], *, stopping: bool) -> None:
    """Warn when a start leaves out a service it starts ``after`` that is not running, or
    a stop leaves running a service that starts after one it stops: the order the file
    gives is then not the order the services run in."""
    if not host.members:
        return
    from mpsctl.observe import processes

    named = {s.name for s in chosen}
    by_name = {m.service.name: m for m in host.members}

    def running(name: str) -> bool:
        return processes.find_service(by_name[name]).running

    for service in chosen:
        if stopping:
            left = [n for n, m in by_name.items() if service.name in m.service.after
                    and n not in named and running(n)]  # fmt: skip
            if left:
                app.warn(f"{', '.join(left)} (running) starts after {service.name}, stopped now")
        else:
            missing = [n for n in service.settings.service.after
                       if n not in named and not running(n)]  # fmt: skip
            if missing:
                app.warn(f"{service.name} starts after {', '.join(missing)}, not running now")


def take_over(app: App, host: Settings, service: Service) -> None:
    """The pidfile a one-service configuration left in MPSCTL_HOME becomes the service's
    whose URL it recorded, before a command acts on that service."""
    if not host.members:
        return
    from mpsctl.control.left_pidfile import adopt_left_pidfile

    note = adopt_left_pidfile(host, service.name)
    if note is not None:
        app.info(note)


class Failures:
    """What went wrong for each of several services: one service's failure stops no other
    (a start skips only the services that start ``after`` it). With one service the error
    is raised as it always was."""

    def __init__(self, command: str, chosen: list[Service]) -> None:
        self.command, self.several = command, len(chosen) > 1
        self.messages: list[str] = []
        #: each service's document in the command's order: its result's, or its error's
        self.documents: list[dict[str, Any]] = []
        self.names: set[str] = set()
        self.code = 0

    def add(self, service: Service, exc: MpsctlError, *, now: bool = True) -> None:
        """Record ``exc``; with one service raise it ``now`` (else at :meth:`finish`,
        after the service's own document)."""
        if not self.several and now:
            raise exc
        self.names.add(service.name)
        self.messages.append(f"{service.name}: {exc}" if self.several else str(exc))
        if self.several:
            self.documents.append(error_document(self.command, service.name, str(exc),
                                                 exc.exit_code))  # fmt: skip
        self.code = self.code or exc.exit_code

    def result(self, service: Service, document: dict[str, Any]) -> None:
        self.documents.append(named(document, service.name) if self.several else document)

    def blocked(self, service: Service) -> MpsctlError | None:
        """The error for a service that starts after one that failed (or was skipped)."""
        failed = [n for n in service.settings.service.after if n in self.names]
        if not failed:
            return None
        did = self.command
        return ServiceError(f"not {did}ed: it starts after {failed[0]}, which did not {did}")

    def clear_to_go(self, service: Service) -> None:
        """Raise :meth:`blocked`'s error, if any, so the caller records it like any other."""
        blocked = self.blocked(service)
        if blocked is not None:
            raise blocked

    def finish(self, as_json: bool) -> None:
        """The JSON document (every service's, in order, failures included), then the one
        error line."""
        if as_json and self.several:
            write_json(several_document(self.command, self.documents, self.code))
        elif as_json and self.documents:
            write_json(self.documents[0])
        if self.messages:
            raise MpsctlError("; ".join(self.messages), exit_code=self.code)
