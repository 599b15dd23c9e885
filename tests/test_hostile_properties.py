"""Property-based: hostile files where mpsctl reads, and hostile settings values, are each
accepted or refused with one line, quickly; an accepted value keeps every later computation
made with it in range; a refusal never echoes a secret."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsctl.errors import ConfigError
from mpsctl.settings import load_settings
from mpsctl.settings_schema import SCHEMA, env_name
from mpsctl.storage import append_line, read_regular
from mpsctl.tokens import read_token_text
from tests.hostile import FileMaker, hostile_files, hostile_setting_values, hostile_urls

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: seconds one read may take: a hang on a FIFO or a device fails at once
QUICK = 5.0


@contextlib.contextmanager
def built(make: FileMaker) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "target"
        make(path)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.chmod(0o600)


def quickly(call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` in a thread; the exception it raised (None: it returned). Fails the test
    when it takes more than QUICK seconds (a FIFO read that never returns)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(QUICK)
    assert outcome, f"{call} hung for {QUICK} s"
    return outcome[0]


def one_line(exc: BaseException | None, *allowed: type[BaseException]) -> None:
    if exc is None:
        return
    assert isinstance(exc, allowed), repr(exc)
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    assert "\n" not in text


@PROPERTY
@given(make=hostile_files)
def test_any_file_as_a_small_state_file_is_read_or_refused_quickly(make: FileMaker) -> None:
    with built(make) as path:
        exc = quickly(lambda: read_regular(path))
    one_line(exc, OSError)
    if isinstance(exc, OSError) and exc.filename:
        assert exc.strerror


@PROPERTY
@given(make=hostile_files)
def test_any_file_as_the_token_file_is_read_or_refused_quickly(make: FileMaker) -> None:
    with built(make) as path:
        exc = quickly(lambda: read_token_text(path))
    one_line(exc, ConfigError)


@PROPERTY
@given(make=hostile_files)
def test_any_file_as_the_settings_or_env_file_is_read_or_refused_in_one_line(
    make: FileMaker,
) -> None:
    from mpsctl.service_env import env_file_values

    with built(make) as path, pytest.MonkeyPatch.context() as env:
        exc = quickly(lambda: load_settings(config=str(path)))
        one_line(exc, ConfigError)
        env.setenv("MPSCTL_SERVICE_ENV_FILE", str(path))
        loaded = load_settings()
        exc = quickly(lambda: env_file_values(loaded))
        one_line(exc, ConfigError)


@PROPERTY
@given(make=hostile_files)
def test_appending_to_any_file_never_writes_through_a_link_or_hangs(make: FileMaker) -> None:
    with built(make) as path:
        before = os.lstat(path) if os.path.lexists(path) else None
        exc = quickly(lambda: append_line(path, "{}"))
        one_line(exc, OSError)
        if exc is not None and before is not None:
            assert os.lstat(path).st_size == before.st_size  # a refusal changes nothing


KEYS = [(s, k) for s, keys in SCHEMA.items() for k in keys if k not in ("env", "command")]


def refusal(variable: str, text: str) -> tuple[Any, str | None]:
    """Settings loaded with ``variable=text``, or the one-line ConfigError refusing them."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(variable, text.replace("\x00", ""))  # no NUL in an environment
        try:
            return load_settings(), None
        except ConfigError as exc:
            return None, str(exc)


@PROPERTY
@given(key=st.sampled_from(KEYS), value=hostile_setting_values)
def test_any_hostile_value_is_refused_in_one_line_or_stays_in_range(
    key: tuple[str, str], value: Any
) -> None:
    section, name = key
    text = str(value)
    loaded, message = refusal(env_name(f"{section}.{name}"), text)
    if message is not None:
        assert "\n" not in message
        if "://" in text:  # recognisably a URL: its path, userinfo and query are masked
            assert "hunter2" not in message
            assert "s3cret" not in message
        return
    got = loaded.value(f"{section}.{name}")
    if isinstance(got, float) and not isinstance(got, bool):
        # a duration: a deadline, a sleep and a thread wait must all accept it
        assert time.monotonic() + got < sys.float_info.max
        assert got <= threading.TIMEOUT_MAX
    if isinstance(got, int) and not isinstance(got, bool) and name == "retention_days":
        assert date.today() - timedelta(days=got) > date.min


@PROPERTY
@given(url=hostile_urls)
def test_an_alert_url_is_valid_http_or_refused_without_its_secret(url: str) -> None:
    from urllib.parse import urlsplit

    loaded, message = refusal("MPSCTL_ALERTS_URL", url)
    if message is not None:
        assert "hunter2" not in message
        assert "s3cret" not in message
        assert "\n" not in message
        return
    accepted = loaded.alerts.url
    if accepted is not None:
        parts = urlsplit(accepted)
        assert parts.scheme.lower() in ("http", "https")
        assert parts.hostname
        assert parts.port is None or 1 <= parts.port <= 65535


@PROPERTY
@given(make=hostile_files)
def test_any_file_as_the_pidfile_reads_as_a_record_none_or_invalid_quickly(
    make: FileMaker,
) -> None:
    from mpsctl.observe.processes import PidRecord, read_pidfile

    with built(make) as path:
        got: list[Any] = []
        exc = quickly(lambda: got.append(read_pidfile(path)))
    assert exc is None
    assert got[0] in (None, "invalid") or isinstance(got[0], PidRecord)


@PROPERTY
@given(make=hostile_files, log=hostile_files)
def test_any_cursor_state_and_any_log_leave_the_probe_counting(
    make: FileMaker, log: FileMaker
) -> None:
    from datetime import datetime, timezone

    from mpsctl.deaths.cursor import new_events, read_state, state_path

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        make(state_path(home))
        log_path = Path(tmp) / "service.log"
        log(log_path)
        exc = quickly(lambda: new_events(home, [log_path], 3600.0, now=datetime.now(timezone.utc)))
        assert exc is None
        assert quickly(lambda: read_state(home)) is None
        with contextlib.suppress(OSError):
            log_path.chmod(0o600)
