"""Several services in one settings file: ``[services.NAME]`` tables, their checks and order.

``mpsctl.settings`` merges each service's table over the top-level sections; this module
reads the tables, checks what only makes sense across services (``after`` names, no circle,
one address each) and gives their start order.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mpsctl.errors import ConfigError
from mpsctl.settings_schema import HOST_SECTIONS, SCHEMA


class _OneService(Protocol):
    """What these checks read of a service's settings (``mpsctl.settings.Settings``; named
    by shape, because settings imports this module)."""

    @property
    def service(self) -> Any: ...

    @property
    def sources(self) -> dict[str, str]: ...


Member = TypeVar("Member", bound=_OneService)


def did_you_mean(word: str, choices: list[str]) -> str:
    import difflib  # only on the error path: it costs start-up time

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: a service's name is a directory under MPSCTL_HOME and a Prometheus label value
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: where each of several services keeps its state, under MPSCTL_HOME
SERVICES_DIR = "services"

#: one value from a layer: (dotted key, raw value, where an error names it, its source)
Entry = tuple[str, Any, str, str]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """``key`` as TOML writes it: bare, or quoted with escapes (a key holding a newline
    would otherwise break the one error line)."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def table_entries(
    path: Path, table: dict[str, Any], prefix: str, source: str, *, flat: bool = False
) -> list[Entry]:
    """The entries of one file's sections (``prefix`` is "" for the top level, or
    ``services.NAME.`` for a service's table, whose own keys are ``flat``: written without
    ``service.``); unknown sections and keys are errors."""
    entries: list[Entry] = []
    for section, body in table.items():
        if section not in SCHEMA:
            hint = did_you_mean(section, list(SCHEMA))
            raise ConfigError(f"{path}: unknown section [{prefix}{toml_key(section)}]{hint}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {prefix}{section} must be a table: [{prefix}{section}]")
        for key, raw in body.items():
            shown = f"{prefix}{toml_key(key)}" if flat else f"{prefix}{section}.{toml_key(key)}"
            if key not in SCHEMA[section]:
                hint = did_you_mean(key, list(SCHEMA[section]))
                raise ConfigError(f"{path}: unknown key {shown}{hint}")
            entries.append((f"{section}.{key}", raw, f"{path}: {shown}", source))
    return entries


def service_tables(path: Path, raw: Any) -> dict[str, list[Entry]]:
    """``[services.NAME]``: the service's own keys at the table's top (those of [service]),
    the other sections as sub-tables (``[services.NAME.memory]``)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: services must hold one table per service: [services.NAME]")
    tables: dict[str, list[Entry]] = {}
    folded: dict[str, str] = {}
    for name, body in raw.items():
        where = f"[services.{toml_key(name)}]"
        if not _SERVICE_NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: {where}: a service name is 1 to 64 letters, digits, '_', '.', '-', "
                "starting with a letter or digit (it names a directory and a metric label)"
            )
        if name.casefold() in folded:
            # on a case-insensitive file system (macOS's default) both would be one state
            # directory: one pidfile, one lock, one audit trail for two services
            raise ConfigError(
                f"{path}: {where}: the name differs only in case from "
                f"[services.{toml_key(folded[name.casefold()])}]; give each service its own name"
            )
        folded[name.casefold()] = name
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: services.{name} must be a table: {where}")
        own = {k: v for k, v in body.items() if not isinstance(v, dict) or k == "env"}
        sections = {k: v for k, v in body.items() if k not in own}
        if "name" in own:
            raise ConfigError(f"{path}: services.{name}.name: the table's name is the service's")
        for shared in HOST_SECTIONS:
            if shared in sections:
                raise ConfigError(
                    f"{path}: [services.{name}.{shared}]: [{shared}] holds one value for the "
                    "whole host; set it at the top level"
                )
        if "service" in sections:
            raise ConfigError(
                f"{path}: [services.{name}.service]: put the service's keys in {where} itself"
            )
        source = f"file {path} {where}"
        entries = table_entries(path, {"service": own}, f"services.{name}.", source, flat=True)
        entries += table_entries(path, sections, f"services.{name}.", source)
        tables[name] = entries
    return tables


def _bound(host: str) -> frozenset[str] | None:
    """The addresses a URL's host stands for when a local service binds it; None for every
    address (``0.0.0.0``, ``::``), which shares its port with any other service's."""
    name = host.strip("[]").rstrip(".").lower()
    if name in ("", "0.0.0.0", "::", "*"):
        return None
    if name in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return frozenset({"127.0.0.1", "::1"})
    try:
        return frozenset({str(ipaddress.ip_address(name))})
    except ValueError:
        return frozenset({name})


def check_services(members: Sequence[_OneService]) -> None:
    """Every ``after`` names a configured service, without a circle; no two services share
    an address (the second could never start), however each URL spells it."""
    names = {m.service.name for m in members}
    for member in members:
        for other in member.service.after:
            if other not in names:
                raise ConfigError(
                    f"services.{member.service.name}.after: no service named {other!r}; "
                    f"configured: {', '.join(sorted(names))}"
                )
    start_order(members)
    seen: list[tuple[int, frozenset[str] | None, Any]] = []
    for member in members:
        port, bound = member.service.port, _bound(member.service.host)
        for other_port, other_bound, other in seen:
            if port == other_port and (bound is None or other_bound is None or bound & other_bound):
                # host:port only: a URL may carry credentials, never echoed
                host = member.service.host
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise ConfigError(
                    f"services.{member.service.name} and services.{other.service.name} "
                    f"both listen on {shown}"
                    f"{_origin(member.sources.get('service.url', 'default'))}; give each "
                    "service its own url in its [services.NAME] table"
                )
        seen.append((port, bound, member))
    logs: dict[Any, str] = {}
    for member in members:
        # one log for two services: `logs -s` shows the other's lines and the OOM reader
        # blames one service for the other's deaths
        log = member.service.log_file.resolve()
        if log in logs:
            raise ConfigError(
                f"services.{member.service.name} and services.{logs[log]} both write their "
                f"output to {log}{_log_origin(member.sources.get('service.log_file', 'default'))}"
                "; give each service its own log_file in its [services.NAME] table"
            )
        logs[log] = member.service.name


def _log_origin(source: str) -> str:
    if source == "default":
        return " (no log_file set: the default, in the service's workdir)"
    if not source.endswith("]"):
        return " (a log_file outside [services.NAME] is every service's)"
    return ""


def _origin(source: str) -> str:
    """Why a service has the URL it has, when not from its own table."""
    if source == "default":
        return " (no url set: the default)"
    if source.startswith(("env ", "flag ")):
        return f" ({source.split(' ', 1)[1]} sets every service's url)"
    if not source.endswith("]"):
        return " ([service] url is a default for every service)"
    return ""


def start_order(members: Sequence[Member]) -> list[Member]:
    """The services in start order: each after those its ``after`` names, otherwise in the
    file's order (stop runs this order backwards). A circle is a ConfigError.

    Depth-first without recursion: a chain of ``after`` as long as the file is must not
    exhaust Python's stack."""
    by_name = {m.service.name: m for m in members}
    ordered: list[Member] = []
    done: set[str] = set()
    for first, member in by_name.items():
        if first in done:
            continue
        chain: list[str] = [first]
        on_chain = {first}
        pending: list[list[str]] = [list(reversed(member.service.after))]
        while chain:
            if not pending[-1]:
                name = chain.pop()
                on_chain.discard(name)
                pending.pop()
                if name not in done:
                    done.add(name)
                    ordered.append(by_name[name])
                continue
            other = pending[-1].pop()
            if other in done:
                continue
            if other in on_chain:
                circle = " -> ".join((*chain[chain.index(other) :], other))
                raise ConfigError(f"services: after makes a circle: {circle}")
            chain.append(other)
            on_chain.add(other)
            pending.append(list(reversed(by_name[other].service.after)))
    return ordered


def pick(members: Sequence[Member], name: str) -> Member:
    """The service ``name`` (``-s NAME``, ``MPSCTL_SERVICE``); unknown: a ConfigError."""
    for member in members:
        if member.service.name == name:
            return member
    names = ", ".join(m.service.name for m in members)
    raise ConfigError(f"no service named {name!r}; configured: {names}")
