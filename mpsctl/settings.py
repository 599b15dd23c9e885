"""Settings: built-in defaults < TOML file < ``MPSCTL_*`` environment < command-line flags.

Every value remembers where it came from, so ``mpsctl config show`` can explain it.
Validation is strict: an unknown key, a wrong type or a ratio PyTorch would misread is a
``ConfigError`` naming the file (or variable) and the key, never a silent default.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mpsctl.errors import ConfigError
from mpsctl.masking import mask_argv, mask_text
from mpsctl.paths import CONFIG_NAME, home_dir, home_problem, user_config_file
from mpsctl.settings_schema import (
    ENV_KEYS,
    NO_DEFAULT,
    PASSED_ENV_PREFIXES,
    RESERVED_ENV,
    RESTART_RULES,
    SCHEMA,
)
from mpsctl.settings_services import (
    SERVICES_DIR,
    Entry,
    check_services,
    did_you_mean,
    pick,
    service_tables,
    table_entries,
)
from mpsctl.storage import file_kind, read_regular
from mpsctl.torch_env import masked, resolve_watermarks, torch_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


# --------------------------------------------------------------------------- result types
@dataclass(frozen=True)
class ServiceSettings:
    name: str
    workdir: Path
    command: tuple[str, ...]
    venv: Path | None
    url: str
    health_path: str
    query_path: str
    release_path: str
    token_env: str | None
    token_file: Path | None
    log_file: Path
    log_globs: tuple[str, ...]
    log_max_bytes: int
    log_backups: int
    match: str | None
    stop_timeout: float
    start_timeout: float
    request_timeout: float
    health_timeout: float = 5.0
    health_retries: int = 3
    drain_timeout: float = 30.0
    health_interval: float = 2.0
    env: dict[str, str] = field(default_factory=dict)
    env_file: Path | None = None
    after: tuple[str, ...] = ()

    @property
    def health_url(self) -> str:
        return self.url + self.health_path

    @property
    def query_url(self) -> str:
        return self.url + self.query_path

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class MemorySettings:
    high_watermark_ratio: float | None
    low_watermark_ratio: float | None
    mps_fallback: bool
    device: str

    def torch_env(self) -> dict[str, str]:
        """The ``PYTORCH_*`` variables a service must be started with."""
        return torch_env(self)


@dataclass(frozen=True)
class Thresholds:
    host_used_percent: tuple[float, float]
    service_memory_gib: tuple[float, float]
    accelerator_limit_percent: tuple[float, float]
    swap_used_percent: tuple[float, float]
    #: the pressure level that enters the verdict: "warn" (WARNING at warn, CRITICAL at
    #: critical), "critical" (only critical), "off" (shown, never judged)
    memory_pressure: str = "warn"


@dataclass(frozen=True)
class ServeSettings:
    model: str | None
    dtype: str
    max_new_tokens: int
    max_new_tokens_limit: int
    max_concurrent: int
    max_queue: int
    queue_timeout: float
    cleanup_interval: float
    max_question_bytes: int
    memory_limit: int | None
    threads: int


@dataclass(frozen=True)
class FixSettings:
    max_restarts: int
    within: float
    restart_on: tuple[str, ...] = RESTART_RULES


@dataclass(frozen=True)
class HistorySettings:
    retention_days: int


@dataclass(frozen=True)
class AlertSettings:
    url: str | None
    command: str | None


@dataclass(frozen=True)
class OomSettings:
    system_logs: bool


@dataclass(frozen=True)
class HostSettings:
    budget: int | None
    over_budget: str


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    memory: MemorySettings
    thresholds: Thresholds
    serve: ServeSettings
    fix: FixSettings
    history: HistorySettings
    alerts: AlertSettings
    oom: OomSettings
    home: Path
    config_file: Path | None
    #: dotted key -> where the value came from ("default", "file PATH", "env NAME", "flag --x")
    sources: dict[str, str] = field(default_factory=dict)
    #: notes produced while resolving (e.g. low ratio derived from high), for stderr
    notes: tuple[str, ...] = ()
    #: True when no file was found: mpsctl manages its own reference service
    reference_service: bool = True
    host: HostSettings = HostSettings(None, "refuse")
    #: MPSCTL_HOME; ``home`` is this service's state directory (the same for one service)
    host_home: Path | None = None
    #: with [services.NAME] tables: each service's settings (this object holds the defaults)
    members: tuple[Settings, ...] = ()

    @property
    def host_dir(self) -> Path:
        """MPSCTL_HOME: what every service of this host shares (the demo checkpoint)."""
        return self.host_home or self.home

    def value(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every value, for display, under the one masking rule (``mpsctl.masking``): URLs'
        userinfo, paths and queries, credential-like ``service.env`` values, ``name=secret``
        and ``Bearer`` words in commands."""
        values = {
            s: {k: _shown(_jsonable(self.value(f"{s}.{k}"))) for k in keys}
            for s, keys in SCHEMA.items()
        }
        values["service"]["env"] = masked(self.service.env)
        return values


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return mask_argv(value)  # a command's argv: an option's value is the next word
        return [_shown(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- loading
def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """``--config`` > ``MPSCTL_CONFIG`` > ``./mpsctl.toml`` > the user config dir."""
    chosen = explicit or environ.get("MPSCTL_CONFIG")
    if chosen:
        path = Path(chosen).expanduser()
        origin = "--config" if explicit else "MPSCTL_CONFIG"
        if not path.exists():
            raise ConfigError(f"{origin}: no such file: {path}")
        if not path.is_file():
            raise ConfigError(f"{origin}: {path} is {_not_a_file(path)}, not a settings file")
        return path
    for candidate in (Path.cwd() / CONFIG_NAME, user_config_file(dict(environ))):
        if candidate.is_file():
            return candidate
        if candidate.exists():  # a directory named mpsctl.toml: not silently the defaults
            raise ConfigError(f"{candidate}: is {_not_a_file(candidate)}, not a settings file")
    return None


def _not_a_file(path: Path) -> str:
    try:
        return file_kind(stat.S_IFMT(path.stat().st_mode))
    except OSError:
        return "not a regular file"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_regular(path).decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself, before parsing
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files must be UTF-8"
        ) from None
    except OSError as exc:
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, not a settings file") from None
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(
            f"{path}: invalid TOML: arrays or tables nested too deep for a settings file"
        ) from None


def _set(
    values: dict[str, Any], sources: dict[str, str], dotted: str, raw: Any, where: str,
    source: str,
) -> None:  # fmt: skip
    """Parse ``raw`` for the key ``dotted``; a bad value is a ConfigError that starts with
    ``where`` (the file and key, the variable or the flag)."""
    section, key = dotted.split(".", 1)
    try:
        values[dotted] = SCHEMA[section][key].parse(raw)
    except ValueError as exc:
        # the refused value may be a URL with a secret in it: the one masking rule applies
        raise ConfigError(f"{where}: {mask_text(str(exc))}") from None
    sources[dotted] = source


def load_settings(
    *,
    config: str | None = None,
    overrides: Mapping[str, tuple[Any, str]] | None = None,
    environ: Mapping[str, str] | None = None,
    service: str | None = None,
) -> Settings:
    """Resolve settings. ``overrides`` maps dotted keys to ``(value, "--flag")``.

    A file with ``[services.NAME]`` tables gives one ``Settings`` per service in
    ``members`` (each with its own state directory); ``service`` (default: the
    ``MPSCTL_SERVICE`` variable) returns that one service's settings instead, and ``""``
    every service even when MPSCTL_SERVICE is set.
    """
    env = dict(os.environ if environ is None else environ)
    file_entries: list[Entry] = []
    tables: dict[str, list[Entry]] = {}
    path = find_config_file(config, env)
    if path is not None:
        path = path.resolve()
        data = _read_toml(path)
        if "services" in data:
            tables = service_tables(path, data.pop("services"))
        file_entries = table_entries(path, data, "", f"file {path}")

    env_entries: list[Entry] = []
    unknown_env: list[str] = []
    for name, raw in sorted(env.items()):
        if not name.startswith("MPSCTL_") or name in RESERVED_ENV:
            continue
        dotted = ENV_KEYS.get(name)
        if dotted is None:
            if not name.startswith(PASSED_ENV_PREFIXES):
                unknown_env.append(name)
            continue
        env_entries.append((dotted, raw, f"environment: {name}", f"env {name}"))
    flag_entries = [
        (dotted, raw, flag, f"flag {flag}")
        for dotted, (raw, flag) in (overrides or {}).items()
        if raw is not None
    ]

    def resolve(own: list[Entry]) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for section, keys in SCHEMA.items():
            for key, spec in keys.items():
                values[f"{section}.{key}"] = spec.default
                sources[f"{section}.{key}"] = "default"
        for dotted, raw, where, source in [*file_entries, *own, *env_entries, *flag_entries]:
            _set(values, sources, dotted, raw, where, source)
        return values, sources

    values, sources = resolve([])
    # a typo (MPSCTL_SERVCE_URL) must not silently leave the default in place; the token
    # variable is read by the client, under whatever name service.token_env gives it
    for name in unknown_env:
        if name != values["service.token_env"]:
            hint = did_you_mean(name, list(ENV_KEYS))
            raise ConfigError(f"environment: unknown variable {name}{hint}")

    home = home_dir(env)
    # "" (service names on the command line): every service, whatever MPSCTL_SERVICE says
    chosen = (service or None) if service is not None else env.get("MPSCTL_SERVICE") or None
    if not tables:
        if values["service.after"]:
            where = _where(sources["service.after"], "service.after")
            raise ConfigError(f"{where}: after names services of [services.NAME] tables only")
        settings = _finish(values, sources, path, env, home)
        if chosen is not None and chosen != settings.service.name:
            raise ConfigError(
                f"no service named {chosen!r}: the one configured is {settings.service.name!r}"
            )
        return settings

    if sources["service.name"] != "default":
        where = _where(sources["service.name"], "service.name")
        raise ConfigError(
            f"{where}: with [services.NAME] tables each service is named by its table"
        )
    members = []
    for name, own in tables.items():
        values, sources = resolve(own)
        values["service.name"] = name
        sources["service.name"] = f"file {path} [services.{name}]"
        members.append(_finish(values, sources, path, env, home / SERVICES_DIR / name, home))
    check_services(members)
    if chosen is not None:
        return pick(members, chosen)
    return replace(_finish(*resolve([]), path, env, home), members=tuple(members))


def _finish(
    values: dict[str, Any],
    sources: dict[str, str],
    path: Path | None,
    env: dict[str, str],
    home: Path,
    host_home: Path | None = None,
) -> Settings:
    """One service's settings; ``home`` is its state directory (MPSCTL_HOME itself for the
    one service of a [service] file), ``host_home`` MPSCTL_HOME."""
    for directory in dict.fromkeys((host_home or home, home)):
        problem = home_problem(directory)
        if problem is not None:
            raise ConfigError(problem)
    base = path.parent if path is not None else Path.cwd()
    reference = path is None or sources["service.command"] == "default"

    workdir_raw = values["service.workdir"]
    if path is None and sources["service.workdir"] == "default":
        workdir = home
    else:
        # in the file: relative to the file; from MPSCTL_SERVICE_WORKDIR or a flag: to the
        # cwd, like any path typed in a shell
        typed = sources["service.workdir"].startswith(("env ", "flag "))
        workdir = ((Path.cwd() if typed else base) / Path(workdir_raw).expanduser()).resolve()

    def under_workdir(raw: str | None) -> Path | None:
        return None if raw is None else (workdir / Path(raw).expanduser())

    url = values["service.url"]
    if values["service.command"] is NO_DEFAULT:
        parts = urlsplit(url)
        values["service.command"] = (
            sys.executable, "-m", "mpsctl", "serve", "--demo",
            "--host", parts.hostname or "127.0.0.1", "--port", str(parts.port or 80),
        )  # fmt: skip
        sources["service.command"] = "default (the reference service, derived from service.url)"
    if values["service.log_file"] is NO_DEFAULT:
        values["service.log_file"] = str(home / "service.log") if reference else "backend.log"
    if values["service.token_file"] is NO_DEFAULT:
        # The reference service needs a token; start creates this file (mode 0600) on demand.
        values["service.token_file"] = str(home / "token") if reference else None

    if path is not None:
        for dotted in ("service.workdir",):
            if sources[dotted].startswith("file"):
                sources[dotted] += " (relative to the file)"

    try:
        marks = resolve_watermarks(
            values["memory.high_watermark_ratio"], values["memory.low_watermark_ratio"]
        )
    except ConfigError as exc:
        low_at = _where(sources["memory.low_watermark_ratio"], "memory.low_watermark_ratio")
        high_at = _where(sources["memory.high_watermark_ratio"], "memory.high_watermark_ratio")
        raise ConfigError(f"{low_at}: {exc} (high from {high_at})") from None
    if values["memory.low_watermark_ratio"] is None and marks.low is not None:
        sources["memory.low_watermark_ratio"] = "derived from memory.high_watermark_ratio"

    service = ServiceSettings(
        name=values["service.name"],
        workdir=workdir,
        command=values["service.command"],
        venv=under_workdir(values["service.venv"]),
        url=url,
        health_path=values["service.health_path"],
        query_path=values["service.query_path"],
        release_path=values["service.release_path"],
        token_env=values["service.token_env"],
        token_file=under_workdir(values["service.token_file"]),
        log_file=workdir / Path(values["service.log_file"]).expanduser(),
        log_globs=values["service.log_globs"],
        log_max_bytes=values["service.log_max_bytes"],
        log_backups=values["service.log_backups"],
        match=values["service.match"],
        stop_timeout=values["service.stop_timeout"],
        start_timeout=values["service.start_timeout"],
        request_timeout=values["service.request_timeout"],
        health_timeout=values["service.health_timeout"],
        drain_timeout=values["service.drain_timeout"],
        health_retries=values["service.health_retries"],
        health_interval=values["service.health_interval"],
        env=dict(values["service.env"]),
        env_file=under_workdir(values["service.env_file"]),
        after=tuple(values["service.after"]),
    )
    memory = MemorySettings(
        high_watermark_ratio=marks.high,
        low_watermark_ratio=marks.low,
        mps_fallback=values["memory.mps_fallback"],
        device=values["memory.device"],
    )

    def section(name: str, cls: type[Any]) -> Any:
        return cls(**{k: values[f"{name}.{k}"] for k in SCHEMA[name]})

    return Settings(
        service=service,
        memory=memory,
        thresholds=section("thresholds", Thresholds),
        serve=section("serve", ServeSettings),
        fix=section("fix", FixSettings),
        history=section("history", HistorySettings),
        alerts=section("alerts", AlertSettings),
        oom=section("oom", OomSettings),
        host=section("host", HostSettings),
        home=home,
        host_home=host_home or home,
        config_file=path,
        sources=sources,
        notes=marks.notes,
        reference_service=reference,
    )


def _where(source: str, dotted: str) -> str:
    """Where a value was set, as an error names it: ``PATH: key``, a variable, a flag."""
    if source.startswith("file "):
        return f"{source[5:]}: {dotted}"
    if source.startswith(("env ", "flag ")):
        return source.split(" ", 1)[1]
    return f"{dotted} ({source})"


TEMPLATE = """\
# mpsctl configuration. Precedence: flags > MPSCTL_* environment > this file > defaults.
# `mpsctl config show` prints the effective value of every key and where it came from.

[service]
name = "mvp"                   # shown in output
workdir = "."                  # cwd of the service; relative to this file
command = ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "8000"]
venv = "venv"                  # its bin/ goes first on PATH (relative to workdir)
url = "http://127.0.0.1:8000"
health_path = "/health"
query_path = "/api/v1/query"
token_env = "MPSCTL_TOKEN"     # or: token_file = "secrets/token" (mode 0600)
log_file = "backend.log"       # mpsctl start appends the service's output here, never truncates
log_globs = ["logs/error_*.log", "logs/app_*.log"]
# regex over command lines, only to find a service started by hand (not by mpsctl start)
match = "mvp/venv/bin/uvicorn app.main:app"
stop_timeout = 10              # seconds between SIGTERM and SIGKILL
drain_timeout = 30             # a planned stop first waits this long for queries in flight
start_timeout = 120            # seconds to wait for a healthy answer

[memory]
# Ratios multiply the Metal device's recommendedMaxWorkingSetSize (about 2/3 of RAM on
# Apple Silicon), not RAM: 0.7 on a 16 GB Mac is about 7.5 GiB. Low must be <= high.
high_watermark_ratio = 0.7
low_watermark_ratio = 0.5
mps_fallback = false           # runs *unimplemented operators* on the CPU; does not catch OOM
device = "auto"                # auto | mps | cuda | cpu (for the reference service)

[thresholds]                   # [warning, critical]
host_used_percent = [85, 95]
service_memory_gib = [12, 14]
accelerator_limit_percent = [80, 95]
"""
