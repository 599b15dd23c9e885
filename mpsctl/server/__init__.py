"""The reference service and the pieces an operator's own service can import.

This module stays light (no torch, FastAPI or uvicorn): ``mpsctl serve`` resolves its token
and environment here before paying for the heavy imports. The client (``mpsctl ask``) reads the
token file the way the service does, through ``mpsctl.tokens.read_token_text``.

Importable pieces: ``mpsctl.server.limiter.ConcurrencyLimit`` (pure ASGI),
``mpsctl.server.memory.memory_report`` / ``release`` (torch imported lazily).
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from mpsctl.errors import ConfigError
from mpsctl.server.auth import token_problem
from mpsctl.settings import MemorySettings
from mpsctl.tokens import read_token_text
from mpsctl.torch_env import HIGH_ENV, LOW_ENV, NOT_A_VARIABLE, resolve_watermarks, watermark_ratios


@dataclass(frozen=True)
class TokenSource:
    #: None only when authentication is off (--no-auth)
    token: str | None
    #: where it came from, for messages: "env MPSCTL_TOKEN", "file /p", "--no-auth"
    source: str
    #: the file this run created (the reference service's default token file)
    created: Path | None = None
    warnings: tuple[str, ...] = ()


def read_token_file(path: Path) -> tuple[str, tuple[str, ...]]:
    """The token in ``path`` (stripped) and warnings about its permissions."""
    token, mode = read_token_text(path)
    if not token:
        raise ConfigError(f"token file {path} is empty")
    if not token.isprintable():
        raise ConfigError(f"token file {path} must hold the token on one line")
    problem = token_problem(token)
    if problem is not None:
        raise ConfigError(f"token file {path}: the token {problem}")
    warnings: tuple[str, ...] = ()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings = (
            f"token file {path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}",
        )
    return token, warnings


def create_token_file(path: Path) -> str:
    """Write a new random token to ``path`` (mode 0600) unless one appeared meanwhile.

    The file appears complete or not at all: written to a private temporary name, then
    hard-linked into place (link, not rename: two services starting at once must agree on
    one token, and a link never replaces a file another one made).
    """
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(token + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return read_token_file(path)[0]
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create token file {path}: {exc.strerror or exc}; "
            "set MPSCTL_TOKEN or pass --token-file FILE"
        ) from None
    return token


def resolve_token(
    *,
    token_env: str | None,
    token_file: Path | None,
    create_if_missing: bool,
    no_auth: bool,
    environ: MutableMapping[str, str] | None = None,
) -> TokenSource:
    """The service's bearer token: the variable, else the file, else (reference service)
    a new file; no token at all is a ``ConfigError`` unless ``no_auth``."""
    env = os.environ if environ is None else environ
    if no_auth:
        return TokenSource(None, "--no-auth")
    if token_env and env.get(token_env, "").strip():
        token = env[token_env].strip()
        problem = token_problem(token)
        if problem is not None:
            raise ConfigError(f"environment variable {token_env}: the token {problem}")
        return TokenSource(token, f"env {token_env}")
    if token_file is not None:
        if token_file.exists():
            token, warnings = read_token_file(token_file)
            return TokenSource(token, f"file {token_file}", warnings=warnings)
        if create_if_missing:
            token = create_token_file(token_file)
            return TokenSource(token, f"file {token_file}", created=token_file)
        raise ConfigError(f"token file {token_file} does not exist")
    where = f"set {token_env}" if token_env else "set [service] token_env"
    raise ConfigError(
        f"no token configured: {where}, or pass --token-file FILE, "
        "or --no-auth to serve without authentication"
    )


def environment_warnings(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Variables often set for PyTorch that PyTorch does not read."""
    env = os.environ if environ is None else environ
    warnings = []
    if NOT_A_VARIABLE in env:
        warnings.append(
            f"{NOT_A_VARIABLE} is set, but PyTorch has no such variable: it changes nothing; "
            "use --device cpu to run on the CPU"
        )
    return warnings


def apply_mps_environment(
    memory: MemorySettings, environ: MutableMapping[str, str] | None = None
) -> list[str]:
    """Put the configured MPS watermark ratios into this process's environment.

    PyTorch reads them once, at the first MPS allocation, so setting them here, before the
    model loads, still works. Ratios already in the environment win (that is what
    ``mpsctl start`` passes), but a pair PyTorch would reject is refused now rather than
    at the first allocation. Returns notes for stderr.
    """
    env = os.environ if environ is None else environ
    if HIGH_ENV in env or LOW_ENV in env:
        high, _, low, _ = watermark_ratios(env)
        if sys.platform == "darwin":
            try:
                resolve_watermarks(high, low)
            except ConfigError as exc:
                raise ConfigError(f"environment {HIGH_ENV}/{LOW_ENV}: {exc}") from None
        return []
    notes = []
    for name, value in memory.torch_env().items():
        if name not in env:
            env[name] = value
            notes.append(f"{name}={value}")
    return notes
