"""The settings schema: every key, how its value is read, its default, one line of help.

``mpsctl.settings`` loads and merges values against this table; ``config template``, the
docs' key table and the shell completions are generated from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mpsctl.setting_values import (
    kind,
    parse_bool,
    parse_choice,
    parse_command,
    parse_http_path,
    parse_int_min,
    parse_opt_ratio,
    parse_opt_size,
    parse_opt_str,
    parse_opt_url,
    parse_pair,
    parse_path_str,
    parse_seconds,
    parse_str,
    parse_str_list,
    parse_url,
)
from mpsctl.torch_env import DEFAULT_LOW_RATIO, FALLBACK_ENV, HIGH_ENV, LOW_ENV, MPS_ENV_PREFIX

DEVICES = ("auto", "mps", "cuda", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")
OVER_BUDGET = ("refuse", "warn")
#: sections that hold one value for the whole host, never a [services.NAME.x] sub-table
HOST_SECTIONS = ("host", "history")


class Key:
    """One settings key: how to read it, its default, one line of help.

    A plain class, not a dataclass: settings are imported by every command (every cron
    probe), and each dataclass costs its code generation at import.
    """

    __slots__ = ("default", "help", "parse")

    def __init__(self, parse: Callable[[Any], Any], default: Any, help: str) -> None:
        self.parse = parse
        self.default = default
        self.help = help

    def __repr__(self) -> str:
        return f"Key(default={self.default!r}, help={self.help!r})"


NO_DEFAULT = object()  # computed from other settings in _finish()

#: the reasons ``fix --if-unhealthy`` may restart for (``[fix] restart_on``); WARNING
#: findings (an old OOM line, host memory, swap) are never among them: they alert
RESTART_RULES = ("not-running", "dead-pidfile", "unhealthy", "memory-critical")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _parse_restart_on(value: Any) -> tuple[str, ...]:
    rules = parse_str_list(value)
    for rule in rules:
        if rule not in RESTART_RULES:
            raise ValueError(f"unknown rule {rule!r}; expected some of {', '.join(RESTART_RULES)}")
    return tuple(dict.fromkeys(rules))


def _parse_env_table(value: Any) -> dict[str, str]:
    """``{ NAME = "value" }``: names as the shell spells them, string values; the
    watermark ratio variables come from [memory] only."""
    if not isinstance(value, dict):
        raise ValueError(f'expected a table of NAME = "value", got {kind(value)}')
    env: dict[str, str] = {}
    for name, raw in value.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a variable name")
        reserved_env_reason(name)
        if not isinstance(raw, str):
            raise ValueError(f"{name}: expected a string, got {kind(raw)} (quote it)")
        env[name] = raw
    return env


def reserved_env_reason(name: str) -> None:
    """ValueError when ``name`` is one of the variables [memory] sets."""
    if name.startswith(MPS_ENV_PREFIX) or name == FALLBACK_ENV:
        raise ValueError(
            f"{name} is set from [memory] (validated the way PyTorch reads it); "
            "set the [memory] key instead"
        )


SCHEMA: dict[str, dict[str, Key]] = {
    "service": {
        "name": Key(parse_str, "mpsctl-serve", "shown in output"),
        "workdir": Key(parse_path_str, ".", "cwd of the service; relative to the config file"),
        "command": Key(parse_command, NO_DEFAULT, "argv of the service (list or shell words)"),
        "venv": Key(parse_opt_str, None, "virtualenv whose bin/ goes first on PATH"),
        "url": Key(parse_url, "http://127.0.0.1:8000", "base URL of the service"),
        "health_path": Key(parse_http_path, "/health", "GET, no auth, 200 when healthy"),
        "query_path": Key(parse_http_path, "/api/v1/query", "POST {question}"),
        "release_path": Key(parse_http_path, "/admin/release", "POST: free cached memory"),
        "token_env": Key(parse_opt_str, "MPSCTL_TOKEN", "variable holding the bearer token"),
        "token_file": Key(parse_opt_str, NO_DEFAULT, "file holding the bearer token"),
        "log_file": Key(parse_path_str, NO_DEFAULT, "where start appends the service output"),
        "log_globs": Key(parse_str_list, (), "the service's own logs (dated names allowed)"),
        "log_max_bytes": Key(
            parse_int_min(0, 2**50), 50 * 1024**2, "rotate log_file above this (0: never)"
        ),
        "log_backups": Key(parse_int_min(0, 1000), 3, "rotated copies kept"),
        "match": Key(parse_opt_str, None, "regex over cmdlines, for a service started by hand"),
        "stop_timeout": Key(parse_seconds(), 10.0, "seconds between SIGTERM and SIGKILL"),
        "drain_timeout": Key(
            parse_seconds(zero=True),
            30.0,
            "seconds a planned stop waits for queries in flight (0: none)",
        ),
        "start_timeout": Key(parse_seconds(), 120.0, "seconds to wait for a healthy answer"),
        "request_timeout": Key(parse_seconds(), 60.0, "seconds for one query"),
        "health_timeout": Key(parse_seconds(), 5.0, "seconds one health check may take (fix)"),
        "health_retries": Key(
            parse_int_min(1, 1000), 3, "consecutive failed checks before fix calls it unhealthy"
        ),
        "health_interval": Key(parse_seconds(zero=True), 2.0, "seconds between those checks"),
        "env": Key(
            _parse_env_table,
            {},
            'variables the service gets, e.g. { HF_HOME = "/data/hf" } (over env_file)',
        ),
        "env_file": Key(
            parse_opt_str, None, "dotenv file (KEY=value) read at each start; relative to workdir"
        ),
        "after": Key(parse_str_list, (), "[services.NAME] only: services started before this one"),
    },
    "memory": {
        "high_watermark_ratio": Key(parse_opt_ratio, 1.0, f"{HIGH_ENV} (x recommended max)"),
        "low_watermark_ratio": Key(
            parse_opt_ratio, None, f"{LOW_ENV} (auto: min(high, {DEFAULT_LOW_RATIO:g}))"
        ),
        "mps_fallback": Key(parse_bool, False, f"{FALLBACK_ENV} (missing ops only)"),
        "device": Key(parse_choice(DEVICES), "auto", "auto | mps | cuda | cpu"),
    },
    "thresholds": {
        "host_used_percent": Key(parse_pair, (85.0, 95.0), "host memory used, %"),
        "service_memory_gib": Key(parse_pair, (12.0, 14.0), "service tree footprint, GiB"),
        "accelerator_limit_percent": Key(
            parse_pair, (80.0, 95.0), "accelerator allocated, % of the limit"
        ),
        "swap_used_percent": Key(parse_pair, (50.0, 80.0), "swap used, %"),
        "memory_pressure": Key(
            parse_choice(("warn", "critical", "off")),
            "warn",
            "pressure level judged: warn (WARNING, and CRITICAL at critical) | critical | off",
        ),
    },
    "serve": {
        "model": Key(parse_opt_str, None, "local directory or hub id (--demo builds one)"),
        "dtype": Key(parse_choice(DTYPES), "auto", "auto | float16 | bfloat16 | float32"),
        "max_new_tokens": Key(parse_int_min(1, 10**9), 128, "default tokens generated per query"),
        "max_new_tokens_limit": Key(
            parse_int_min(1, 10**9), 1024, "largest max_new_tokens accepted"
        ),
        "max_concurrent": Key(parse_int_min(1, 1024), 3, "queries in flight"),
        "max_queue": Key(parse_int_min(0, 100_000), 16, "queries waiting for a slot"),
        "queue_timeout": Key(parse_seconds(zero=True), 30.0, "seconds a query may wait"),
        "cleanup_interval": Key(
            parse_seconds(zero=True), 1800.0, "seconds between releases (0: off)"
        ),
        "max_question_bytes": Key(
            parse_int_min(1, 64 * 1024**2), 4096, "largest question accepted"
        ),
        "memory_limit": Key(
            parse_opt_size, None, "address space (RLIMIT_AS) once the model is loaded, e.g. 8GiB"
        ),
        "threads": Key(
            parse_int_min(0, 4096), 1, "CPU threads torch may use per query (0: torch's default)"
        ),
    },
    "fix": {
        "max_restarts": Key(parse_int_min(1, 1000), 3, "restarts allowed within `within`"),
        "within": Key(parse_seconds(), 3600.0, "seconds of the restart-loop window"),
        "restart_on": Key(
            _parse_restart_on,
            RESTART_RULES,
            "what fix --if-unhealthy restarts for: " + " | ".join(RESTART_RULES),
        ),
    },
    "history": {
        "retention_days": Key(parse_int_min(1, 36500), 30, "days of probe history kept"),
    },
    "alerts": {
        "url": Key(parse_opt_url, None, "POST a JSON alert here on verdict change"),
        "command": Key(parse_opt_str, None, "or run this command (alert JSON on stdin)"),
    },
    "host": {
        "budget": Key(
            parse_opt_size,
            None,
            "most memory all services may plan together, e.g. 20GiB (default: the host ceiling)",
        ),
        "over_budget": Key(
            parse_choice(OVER_BUDGET), "refuse", "start NAME over the budget: refuse | warn"
        ),
    },
    "oom": {
        "system_logs": Key(
            parse_bool, True, "read the kernel log / jetsam reports for kills (when readable)"
        ),
    },
}

#: variables that look like settings but are not (they are read elsewhere)
RESERVED_ENV = {
    "MPSCTL_HOME", "MPSCTL_CONFIG", "MPSCTL_TOKEN",
    "MPSCTL_GREP", "MPSCTL_OOM_WORKERS",  # the log scanner's first pass (deaths/grep_pass.py)
    "MPSCTL_SERVICE",  # which of several [services.NAME] a command (or a started service) is
}  # fmt: skip
#: set by mpsctl for the commands it runs (an alert command may itself run mpsctl)
PASSED_ENV_PREFIXES = ("MPSCTL_ALERT_",)


def env_name(dotted: str) -> str:
    return "MPSCTL_" + dotted.replace(".", "_").upper()


ENV_KEYS = {env_name(f"{s}.{k}"): f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
