"""The settings' value parsers (mpsctl.setting_values): exact values, boundaries, whole messages."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from mpsctl.setting_values import (
    kind,
    parse_bool,
    parse_choice,
    parse_command,
    parse_http_path,
    parse_int_min,
    parse_non_negative,
    parse_number,
    parse_opt_ratio,
    parse_opt_size,
    parse_opt_str,
    parse_pair,
    parse_path_str,
    parse_positive,
    parse_ratio,
    parse_seconds,
    parse_str,
    parse_str_list,
    parse_url,
)


def refused(parse: Any, value: Any, message: str) -> None:
    """``parse(value)`` raises ValueError with exactly ``message``."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse(value)


@pytest.mark.parametrize(
    ("value", "name"),
    [(True, "a boolean"), ({}, "a table"), ([], "an array"), ("x", "a string"),
     (1, "an integer"), (1.5, "a float"), (None, "NoneType"),
     (datetime.date(2026, 1, 21), "date"), (datetime.time(10, 0), "time")],
)  # fmt: skip
def test_kind_names_tomls_types(value: Any, name: str) -> None:
    assert kind(value) == name


def test_strings() -> None:
    assert parse_str("a b") == "a b"
    refused(parse_str, 3, "expected a string, got an integer")
    assert parse_opt_str("") is None
    assert parse_opt_str("x") == "x"
    refused(parse_opt_str, [], "expected a string, got an array")
    assert parse_path_str("~/x") == "~/x"
    refused(parse_path_str, "", "must not be empty")
    refused(parse_path_str, 1.0, "expected a string, got a float")


@pytest.mark.parametrize("text", ["1", "true", " YES ", "On"])
def test_bool_true_words(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", " No", "OFF "])
def test_bool_false_words(text: str) -> None:
    assert parse_bool(text) is False


def test_bool_refusals() -> None:
    assert parse_bool(True) is True
    assert parse_bool(False) is False
    refused(parse_bool, "maybe", "expected true or false, got 'maybe'")
    refused(parse_bool, 1, "expected true or false, got an integer")


def test_numbers() -> None:
    assert parse_number(3) == 3.0
    assert isinstance(parse_number(3), float)
    assert parse_number(" 0.5 ") == 0.5
    assert parse_number(-2.5) == -2.5
    refused(parse_number, True, "expected a number, got a boolean")
    refused(parse_number, "0,7", "expected a number, got '0,7'")
    refused(parse_number, [1], "expected a number, got an array")
    refused(parse_number, "inf", "expected a finite number, got 'inf'")
    refused(parse_number, float("nan"), "expected a finite number, got nan")


def test_positive_and_non_negative_boundaries() -> None:
    assert parse_positive(0.001) == 0.001
    refused(parse_positive, 0, "must be greater than 0, got 0")
    refused(parse_positive, "-1.5", "must be greater than 0, got -1.5")
    assert parse_non_negative(0) == 0.0
    refused(parse_non_negative, -0.5, "must be 0 or more, got -0.5")
    refused(parse_non_negative, "x", "expected a number, got 'x'")


def test_int_min_boundaries() -> None:
    parse = parse_int_min(1)
    assert parse(1) == 1
    assert isinstance(parse("2"), int)
    assert parse(3.0) == 3
    refused(parse, 0, "must be 1 or more, got 0")
    refused(parse, "2.5", "expected a whole number, got '2.5'")
    assert parse_int_min(0)(0) == 0
    refused(parse_int_min(0), -1, "must be 0 or more, got -1")


@pytest.mark.parametrize("value", [0.0, 0, "0", 1.4, 2.0, "2.0", 2])
def test_ratio_accepts_0_to_2_inclusive(value: Any) -> None:
    # 0.0 is PyTorch's documented "no limit", 2.0 the top of its range
    assert parse_ratio(value) == float(value)
    assert parse_opt_ratio(value) == float(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.0001, "must be between 0.0 and 2.0, got 2.0001"),
        ("2.01", "must be between 0.0 and 2.0, got 2.01"),
        (-0.001, "must be between 0.0 and 2.0, got -0.001"),
        ("abc", "expected a number, got 'abc'"),
        (True, "expected a number, got a boolean"),
    ],
)
def test_ratio_refuses_just_outside(value: Any, message: str) -> None:
    refused(parse_ratio, value, message)
    refused(parse_opt_ratio, value, message)


@pytest.mark.parametrize("text", ["", "auto", " AUTO ", "  "])
def test_opt_ratio_auto_or_empty_is_unset(text: str) -> None:
    assert parse_opt_ratio(text) is None


def test_opt_ratio_other_words_are_refused() -> None:
    refused(parse_opt_ratio, "automatic", "expected a number, got 'automatic'")
    refused(parse_ratio, "auto", "expected a number, got 'auto'")


def test_choice() -> None:
    parse = parse_choice(("auto", "mps", "cpu"))
    assert parse(" MPS ") == "mps"
    refused(parse, "gpu", "expected one of auto, mps, cpu, got 'gpu'")
    refused(parse, 1, "expected a string, got an integer")


def test_command() -> None:
    assert parse_command("uvicorn app:app --host '127.0.0.1'") == (
        "uvicorn",
        "app:app",
        "--host",
        "127.0.0.1",
    )
    assert parse_command(["a", "b c"]) == ("a", "b c")
    refused(parse_command, "", "must not be empty")
    refused(parse_command, [], "must not be empty")
    refused(parse_command, ["a", 1], "expected a list of strings, got an array")
    refused(parse_command, 5, "expected a list of strings, got an integer")


def test_str_list() -> None:
    assert parse_str_list(" a.log, ,b*.log ,") == ("a.log", "b*.log")
    assert parse_str_list(["x", " y"]) == ("x", " y")
    refused(parse_str_list, ["x", 2], "expected a list of strings")
    refused(parse_str_list, 2, "expected a list of strings")


def test_pair() -> None:
    assert parse_pair("70,90") == (70.0, 90.0)
    assert parse_pair([80, 80]) == (80.0, 80.0)  # equal is allowed
    assert parse_pair((1, 2)) == (1.0, 2.0)
    refused(parse_pair, [90, 70], "warning 90 is above critical 70")
    refused(parse_pair, "1,2,3", "expected [warning, critical]")
    refused(parse_pair, [1], "expected [warning, critical]")
    refused(parse_pair, 5, "expected [warning, critical]")
    refused(parse_pair, [-1, 2], "must be 0 or more, got -1")


def test_url() -> None:
    assert parse_url(" http://127.0.0.1:8000/ ") == "http://127.0.0.1:8000"
    assert parse_url("https://example.org") == "https://example.org"
    assert parse_url("http://BOX//") == "http://BOX"  # only slashes are trimmed
    refused(parse_url, "ftp://x", "expected an http:// or https:// URL, got 'ftp://x'")
    refused(parse_url, "http://", "expected an http:// or https:// URL, got 'http://'")
    refused(parse_url, "http://h:99999", "bad port in 'http://h:99999': it must be 1-65535")
    refused(parse_url, "http://h:0", "bad port in 'http://h:0': it must be 1-65535")
    refused(parse_url, 8000, "expected a string, got an integer")


def test_http_path() -> None:
    assert parse_http_path(" /health ") == "/health"
    refused(parse_http_path, "health", "must start with '/', got 'health'")


def test_int_min_maximum_and_the_digits_it_quotes() -> None:
    parse = parse_int_min(0, 10)
    assert parse(10) == 10
    refused(parse, 11, "must be at most 10, got 11")
    refused(parse, 10**23, f"must be at most 10, got {10**23}")  # 24 digits: quoted
    refused(parse, 10**24, "must be at most 10, got a 25-digit number")
    refused(parse_int_min(0, 10**6), 10**6 + 1, "must be at most 1,000,000, got 1000001")


def test_a_whole_number_from_a_float_only_while_floats_are_exact() -> None:
    parse = parse_int_min(0)
    assert parse(2.0**53) == 2**53
    assert parse(107.0) == 107
    refused(parse, 2.0**54, "expected a whole number, got 1.8014398509481984e+16")
    refused(parse, True, "expected a whole number, got a boolean")
    assert parse(" 12 ") == 12


def test_seconds_positive_or_zero_and_at_most_the_maximum() -> None:
    refused(parse_seconds(), 0, "must be greater than 0, got 0")
    assert parse_seconds(zero=True)(0) == 0.0
    refused(parse_seconds(zero=True), -1, "must be 0 or more, got -1")
    assert parse_seconds(maximum=10)(10) == 10.0
    refused(parse_seconds(maximum=10), 10.5, "must be at most 10 seconds, got 10.5")
    assert parse_seconds()(365 * 86400) == 365 * 86400.0
    refused(parse_seconds(), 365 * 86400 + 1, "must be at most 3.1536e+07 seconds, got 3.1536e+07")


def test_url_characters_and_port_bounds() -> None:
    assert parse_url("http://h/a!b") == "http://h/a!b"  # "!" (33) is the first allowed
    no = "a URL has no spaces or control characters, got "
    refused(parse_url, "http://h a", no + "'http://h a'")
    refused(parse_url, "http://h\x7f", no + "'http://h\\x7f'")
    assert parse_url("http://h:1") == "http://h:1"
    assert parse_url("http://h:65535") == "http://h:65535"
    refused(parse_url, "http://h:65536", "bad port in 'http://h:65536': it must be 1-65535")
    refused(parse_url, "http://h:x", "bad port in 'http://h:x': it must be 1-65535")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (None, None), ("", None), (" none ", None), ("NONE", None), (0, None), ("0", None),
        (8, 8), ("100b", 100), ("1.5K", 1536), ("0.5K", 512), ("3kib", 3072),
        ("512 MiB", 512 * 2**20), ("8G", 8 * 2**30), ("8g", 8 * 2**30), ("8GiB", 8 * 2**30),
        ("2 TiB", 2 * 2**40), ("4194304 TiB", 2**62),
    ],
)  # fmt: skip
def test_sizes_in_bytes_1024_based(value: Any, size: int | None) -> None:
    assert parse_opt_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected a size such as 8GiB, got a boolean"),
        (8.5, "expected a size such as 8GiB, got a float"),
        ("abc", "expected a size such as 8GiB, got 'abc'"),
        ("8GB", "unknown unit 'GB' in '8GB' (use KiB, MiB, GiB or TiB)"),
        ("8 mb", "unknown unit 'MB' in '8 mb' (use KiB, MiB, GiB or TiB)"),
        ("-1G", "expected a size from 0 to 4 EiB, got '-1G'"),
        ("4194305 TiB", "expected a size from 0 to 4 EiB, got '4194305 TiB'"),
    ],
)
def test_sizes_refused(value: Any, message: str) -> None:
    refused(parse_opt_size, value, message)
