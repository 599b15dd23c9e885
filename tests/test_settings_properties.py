"""Property-based: any settings file or value, from a typo to a hostile document, is either
accepted or refused with one line and the documented exit code; never a traceback."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsctl.cli import main
from mpsctl.errors import ConfigError
from mpsctl.settings import load_settings
from mpsctl.settings_schema import SCHEMA

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def toml_value(value: Any) -> str:
    """``value`` written as TOML (enough of the format for these documents)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["auto", "", " 1.5 ", "1e-320", "0x10", "99999999999999999999", "cpu",
                     "http://127.0.0.1:8000", "/health", "~/x", "a\nb"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = [(section, key) for section, keys in SCHEMA.items() for key in keys]
pairs = st.lists(
    st.one_of(
        st.sampled_from(KEYS),
        st.tuples(st.sampled_from([*SCHEMA, "nope"]), st.text(min_size=1, max_size=8)),
    ).flatmap(lambda k: st.tuples(st.just(k), values)),
    max_size=6,
)


def document(entries: list[tuple[tuple[str, str], Any]]) -> str:
    sections: dict[str, dict[str, Any]] = {}
    for (section, key), value in entries:
        sections.setdefault(section, {})[key] = value
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def refusal(load: Callable[[], object]) -> str | None:
    """The ConfigError message ``load`` raises, None when it succeeds; anything else fails."""
    try:
        load()
    except ConfigError as exc:
        return str(exc)
    return None


def check_cli(path: Path) -> None:
    """`config show`, `status` and `probe` on the file: their documented codes, one line."""
    for args, codes in ((["config", "show"], {0, 2}), (["status"], {0, 1, 2, 3, 4}),
                        (["probe", "--nagios"], {0, 1, 2, 3})):  # fmt: skip
        result = CliRunner().invoke(main, ["--config", str(path), *args])
        assert isinstance(result.exception, SystemExit | None), result.exception
        assert result.exit_code in codes, (args, result.exit_code, result.stderr)
        if result.exit_code == (2 if args[0] == "config" else 4 if args[0] == "status" else 3):
            assert "Traceback" not in result.stderr


@PROPERTY
@given(entries=pairs)
def test_any_settings_document_is_accepted_or_refused_in_one_line(
    entries: list[tuple[tuple[str, str], Any]], tmp_path: Path
) -> None:
    """#13 (settings loader): a random document of known and unknown keys with random values:
    load_settings returns Settings or raises ConfigError with one line; never anything else."""
    path = tmp_path / "mpsctl.toml"
    path.write_text(document(entries), encoding="utf-8")
    message = refusal(lambda: load_settings(config=str(path)))
    if message is not None:
        assert "\n" not in message
        assert str(path) in message or "MPSCTL_" in message


@PROPERTY
@given(
    text=st.one_of(
        st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    )
)
def test_any_bytes_as_a_settings_file_never_crash_a_command(text: str, tmp_path: Path) -> None:
    """#13 (settings loader): arbitrary text (mostly invalid TOML) as the settings file:
    config show exits 0 or 2, status 0-4, probe 0-3, no traceback."""
    path = tmp_path / "mpsctl.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_cli(path)


@PROPERTY
@given(key=st.sampled_from(KEYS), value=st.text(max_size=30))
def test_any_environment_value_is_accepted_or_refused_in_one_line(
    key: tuple[str, str], value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 (settings loader): every MPSCTL_<SECTION>_<KEY> with any text."""
    section, name = key
    variable = f"MPSCTL_{section}_{name}".upper()
    if "\x00" in value:
        value = value.replace("\x00", "")  # the OS cannot carry a NUL in a variable
    monkeypatch.setenv(variable, value)
    message = refusal(load_settings)
    assert message is None or "\n" not in message
