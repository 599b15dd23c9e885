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
    parse_opt_str,
    parse_pair,
    parse_path_str,
    parse_positive,
    parse_ratio,
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
