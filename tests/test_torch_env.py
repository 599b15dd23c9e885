"""PyTorch's MPS memory variables, read exactly as PyTorch reads them (mpsctl.torch_env).

Boundary values and whole messages: each figure and word here is what an operator sees.
"""

from __future__ import annotations

import math

import pytest

from mpsctl.errors import ConfigError
from mpsctl.settings import MemorySettings
from mpsctl.torch_env import (
    FALLBACK_ENV,
    HIGH_ENV,
    LOW_ENV,
    Check,
    command_checks,
    env_checks,
    host_args,
    low_ceiling,
    pytorch_vars,
    resolve_watermarks,
    strtod,
    strtod_ratio,
    torch_env,
    watermark_ratios,
)

HINT = "in the start script"


# --------------------------------------------------------------------------- strtod
@pytest.mark.parametrize(
    ("text", "number", "rest"),
    [
        ("0.7", 0.7, ""),
        ("  1.5", 1.5, ""),
        ("+.5x", 0.5, "x"),
        ("-1", -1.0, ""),
        ("7.", 7.0, ""),
        ("1e-1 ", 0.1, " "),
        ("2E+0", 2.0, ""),
        ("0,7", 0.0, ",7"),
        ("abc", 0.0, "abc"),
        ("", 0.0, ""),
        ("INF", math.inf, ""),
        ("infinity!", math.inf, "!"),
    ],
)
def test_strtod_reads_the_leading_number_like_c(text: str, number: float, rest: str) -> None:
    assert strtod(text) == (number, rest)
    assert strtod_ratio(text) == number


def test_strtod_nan_is_nan() -> None:
    value, rest = strtod("nan")
    assert math.isnan(value)
    assert rest == ""


# --------------------------------------------------------------------------- what PyTorch reads
def test_watermark_ratios_defaults_depend_on_the_machine() -> None:
    assert watermark_ratios({}, "arm64") == (1.7, "default", 1.4, "default")
    assert watermark_ratios({}, "x86_64") == (1.7, "default", 1.0, "default")


def test_watermark_ratios_from_the_environment_use_strtod() -> None:
    env = {HIGH_ENV: "0.7abc", LOW_ENV: "junk"}
    assert watermark_ratios(env, "arm64") == (0.7, "env", 0.0, "env")
    assert watermark_ratios({HIGH_ENV: ""}, "arm64") == (0.0, "env", 1.4, "default")
    assert watermark_ratios({LOW_ENV: "0.5"}, "arm64") == (1.7, "default", 0.5, "env")


def test_watermark_ratios_without_a_machine_reads_this_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert watermark_ratios({}) == (1.7, "default", 1.4, "default")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert watermark_ratios({}) == (1.7, "default", 1.0, "default")


def test_low_ceiling() -> None:
    assert low_ceiling(None) == 1.7  # PyTorch's own high
    assert low_ceiling(0.0) == 2.0  # no hard limit: only the range
    assert low_ceiling(0.7) == 0.7
    assert low_ceiling(2.0) == 2.0


# --------------------------------------------------------------------------- the watermark rule
@pytest.mark.parametrize("value", [0.0, 1.0, 2.0])
def test_resolve_accepts_the_range_ends(value: float) -> None:
    assert resolve_watermarks(value, 0.0) == resolve_watermarks(value, 0.0)
    marks = resolve_watermarks(value, 0.0)
    assert (marks.high, marks.low) == (value, 0.0)
    low_only = resolve_watermarks(None, min(value, 1.7))
    assert (low_only.high, low_only.low, low_only.notes) == (None, min(value, 1.7), ())


@pytest.mark.parametrize(
    ("high", "low", "message"),
    [
        (2.0001, None, "high watermark ratio 2.0001 is outside 0.0-2"),
        (-0.1, None, "high watermark ratio -0.1 is outside 0.0-2"),
        (None, 2.5, "low watermark ratio 2.5 is outside 0.0-2"),
        (1.0, -0.01, "low watermark ratio -0.01 is outside 0.0-2"),
    ],
)
def test_resolve_refuses_just_outside_the_range(
    high: float | None, low: float | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_watermarks(high, low)
    assert str(info.value) == message


def test_high_alone_derives_low_as_min_of_high_and_1_4() -> None:
    marks = resolve_watermarks(0.7, None)
    assert (marks.high, marks.low) == (0.7, 0.7)
    assert marks.notes == (
        "low watermark ratio set to 0.70 = min(high 0.70, 1.40): PyTorch's default low ratio "
        "1.40 above high 0.70 would make it fail at the first allocation",
    )
    # at or above 1.4 the default low stays, and nothing needs saying
    assert resolve_watermarks(1.4, None) == resolve_watermarks(1.4, 1.4)
    assert resolve_watermarks(1.4, None).notes == ()
    assert (resolve_watermarks(2.0, None).low, resolve_watermarks(2.0, None).notes) == (1.4, ())
    assert resolve_watermarks(1.39, None).low == 1.39


def test_high_zero_means_no_limit_and_leaves_low_unset() -> None:
    marks = resolve_watermarks(0.0, None)
    assert (marks.high, marks.low) == (0.0, None)
    assert marks.notes == (
        "high watermark 0.0 disables the MPS limit: the service can take all memory "
        "and push macOS into swap instead of failing with an out-of-memory error",
    )
    # a small positive high is a limit: it gets a derived low, not the no-limit note
    tiny = resolve_watermarks(0.01, None)
    assert tiny.low == 0.01
    assert len(tiny.notes) == 1
    assert tiny.notes[0].startswith("low watermark ratio set to 0.01")


def test_nothing_set_is_pytorchs_defaults() -> None:
    marks = resolve_watermarks(None, None)
    assert (marks.high, marks.low, marks.notes) == (None, None, ())


def test_low_above_high_is_refused_with_pytorchs_words() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_watermarks(0.7, 0.8)
    assert str(info.value) == (
        "low watermark ratio 0.8 is above high 0.7: PyTorch fails with "
        "'invalid low watermark ratio 0.8' at the first allocation"
    )
    with pytest.raises(ConfigError, match=r"^low watermark ratio 1\.8 is above high 1\.7: "):
        resolve_watermarks(None, 1.8)
    assert resolve_watermarks(0.7, 0.7).low == 0.7  # equal is fine
    assert resolve_watermarks(None, 1.7).low == 1.7
    assert resolve_watermarks(0.0, 2.0).low == 2.0  # high 0.0: only the range applies


# --------------------------------------------------------------------------- settings -> env
def test_torch_env_formats_each_set_variable() -> None:
    assert torch_env(MemorySettings(0.7, 0.5, True, "mps")) == {
        HIGH_ENV: "0.7",
        LOW_ENV: "0.5",
        FALLBACK_ENV: "1",
    }
    assert torch_env(MemorySettings(0.0, None, False, "mps")) == {HIGH_ENV: "0"}
    assert torch_env(MemorySettings(None, 1.0, False, "mps")) == {LOW_ENV: "1"}
    assert torch_env(MemorySettings(None, None, False, "cpu")) == {}


def test_pytorch_vars_keeps_only_pytorch_prefixed_names() -> None:
    env = {"PYTORCH_X": "1", HIGH_ENV: "0.7", "PATH": "/bin", "XPYTORCH_Y": "2"}
    assert pytorch_vars(env) == {"PYTORCH_X": "1", HIGH_ENV: "0.7"}


# --------------------------------------------------------------------------- Check
def test_check_json_and_line() -> None:
    check = Check("a.b", "warning", "msg", "do this")
    assert check.to_json() == {"id": "a.b", "level": "warning", "message": "msg", "fix": "do this"}
    assert check.line() == "msg; do this"
    assert Check("a.b", "ok", "fine").line() == "fine"
    assert Check("a.b", "ok", "fine").to_json()["fix"] is None


# --------------------------------------------------------------------------- env_checks
def test_env_checks_nothing_set_is_one_ok_line() -> None:
    assert env_checks("svc", {"PATH": "/bin"}, "the service", HINT) == [
        Check("svc.pytorch_vars", "ok", "the service: no PYTORCH_MPS_* variables")
    ]
    env = {LOW_ENV: "0.5", HIGH_ENV: "0.7", FALLBACK_ENV: "0", "PYTORCH_OTHER": "1"}
    assert env_checks("svc", env, "the service", HINT) == [
        Check(
            "svc.pytorch_vars",
            "ok",
            f"the service: {FALLBACK_ENV}=0, {HIGH_ENV}=0.7, {LOW_ENV}=0.5",
        )
    ]


def test_env_checks_text_that_is_not_a_number() -> None:
    assert env_checks("svc", {HIGH_ENV: "abc", LOW_ENV: "0"}, "here", HINT) == [
        Check(
            "svc.ratio_not_a_number",
            "error",
            f"here: {HIGH_ENV}='abc' is not a number: PyTorch reads it with strtod as 0.0, "
            "which removes the high limit instead of setting one",
            f"set a number between 0.0 and 2 {HINT}",
        )
    ]
    empty = env_checks("svc", {LOW_ENV: ""}, "here", HINT)
    assert [c.id for c in empty] == ["svc.ratio_not_a_number"]
    assert "removes the low limit" in empty[0].message


def test_env_checks_trailing_text() -> None:
    assert env_checks("svc", {HIGH_ENV: "1.9x", LOW_ENV: "1.0 "}, "here", HINT) == [
        Check(
            "svc.ratio_trailing_text",
            "warning",
            f"here: {HIGH_ENV}='1.9x': PyTorch reads only 1.9 and ignores 'x'",
            f"write the bare number, e.g. {HIGH_ENV}=1.9 {HINT}",
        )
    ]


@pytest.mark.parametrize(("raw", "bad"), [("2", False), ("2.0", False), ("2.01", True),
                                          ("0", False), ("-0.01", True)])  # fmt: skip
def test_env_checks_range_ends(raw: str, bad: bool) -> None:
    found = env_checks("svc", {LOW_ENV: raw, HIGH_ENV: "0"}, "here", HINT)
    out_of_range = Check(
        "svc.ratio_out_of_range",
        "error",
        f"here: {LOW_ENV}={raw!r} is outside 0.0-2: the service fails with "
        "'RuntimeError: invalid low watermark ratio' at its first MPS allocation",
        f"use a ratio between 0.0 and 2 {HINT}",
    )
    assert (out_of_range in found) is bad


def test_env_checks_high_without_low() -> None:
    assert env_checks("svc", {HIGH_ENV: "0.7"}, "here", HINT) == [
        Check(
            "svc.high_without_low",
            "error",
            f"here: {HIGH_ENV}=0.7 without {LOW_ENV}: PyTorch's default low ratio 1.4 is above "
            "high 0.7, so the service fails with 'invalid low watermark ratio 1.4' at its first "
            "MPS allocation (a high ratio below 1.4 always needs a low one)",
            f"also set {LOW_ENV} to 0.7 or less (e.g. {LOW_ENV}=0.5) {HINT}",
        )
    ]
    low_high = env_checks("svc", {HIGH_ENV: "0.3"}, "here", HINT)
    assert low_high[0].fix == f"also set {LOW_ENV} to 0.3 or less (e.g. {LOW_ENV}=0.3) {HINT}"
    # 1.4 itself is fine: the default low equals it
    assert [c.id for c in env_checks("svc", {HIGH_ENV: "1.4"}, "here", HINT)] == [
        "svc.pytorch_vars"
    ]


def test_env_checks_low_above_high() -> None:
    assert env_checks("svc", {HIGH_ENV: "0.7", LOW_ENV: "0.8"}, "here", HINT) == [
        Check(
            "svc.low_above_high",
            "error",
            "here: low ratio 0.8 is above high 0.7: the service fails with "
            "'invalid low watermark ratio 0.8'",
            f"make {LOW_ENV} <= {HIGH_ENV} {HINT}",
        )
    ]
    assert env_checks("svc", {LOW_ENV: "1.8"}, "here", HINT)[0].message == (
        "here: low ratio 1.8 is above high 1.7 (PyTorch's default): the service fails with "
        "'invalid low watermark ratio 1.8'"
    )
    assert [c.id for c in env_checks("svc", {LOW_ENV: "1.7"}, "here", HINT)] == ["svc.pytorch_vars"]
    # 2.0 is in range, so it is compared with high (PyTorch's default 1.7 here)
    assert [c.id for c in env_checks("svc", {LOW_ENV: "2"}, "here", HINT)] == ["svc.low_above_high"]
    # an out-of-range low is reported once, as out of range, not also as above high
    ids = [c.id for c in env_checks("svc", {HIGH_ENV: "0.7", LOW_ENV: "2.5"}, "here", HINT)]
    assert ids == ["svc.ratio_out_of_range"]


def test_env_checks_high_zero_is_a_real_zero_only() -> None:
    assert env_checks("svc", {HIGH_ENV: "0.0", LOW_ENV: "1.9"}, "here", HINT) == [
        Check(
            "svc.high_zero",
            "warning",
            f"here: {HIGH_ENV} reads as 0.0, which disables the MPS limit: the service can take "
            "all memory and push macOS into swap instead of failing with an out-of-memory error",
            f"set a limit, e.g. {HIGH_ENV}=0.7 with {LOW_ENV}=0.5 {HINT}",
        )
    ]
    # text that strtod reads as 0.0 is reported as not a number, not as a deliberate 0.0
    ids = [c.id for c in env_checks("svc", {HIGH_ENV: "off", LOW_ENV: "1"}, "here", HINT)]
    assert ids == ["svc.ratio_not_a_number"]


def test_env_checks_enable_mps_and_fallback() -> None:
    env = {"PYTORCH_ENABLE_MPS": "0", FALLBACK_ENV: " 1 "}
    assert env_checks("svc", env, "here", HINT) == [
        Check(
            "svc.enable_mps",
            "warning",
            "here: PYTORCH_ENABLE_MPS=0 does nothing: PyTorch has no such variable, so it does "
            "not move the service to the CPU",
            "unset PYTORCH_ENABLE_MPS; to run on the CPU choose the device in the service "
            '(reference service: memory.device = "cpu" or `mpsctl serve --device cpu`)',
        ),
        Check(
            "svc.mps_fallback",
            "info",
            f"here: {FALLBACK_ENV}=1 runs operators that MPS does not implement on the CPU; it "
            "does NOT move work to the CPU after an out-of-memory error",
            "keep it only if the model needs an unimplemented operator; against OOM set the "
            "watermarks, limit concurrency or use a smaller model",
        ),
    ]


# --------------------------------------------------------------------------- command line
def test_host_args_reads_every_spelling() -> None:
    argv = ["uvicorn", "app:app", "--host", "0.0.0.0", "-h", "::", "--host=127.0.0.1", "--port"]
    assert host_args(argv) == ["0.0.0.0", "::", "127.0.0.1"]
    assert host_args(["uvicorn", "--host"]) == []  # a trailing flag has no value
    assert host_args(iter(["--host", "a"])) == ["a"]
    assert host_args(["--host=a=b"]) == ["a=b"]  # the value after the first "=", verbatim


def test_command_checks_reload_and_bind_all() -> None:
    reload = Check(
        "service.reload",
        "warning",
        "service.command has --reload: uvicorn runs a reloader and a worker and loads the model "
        "again on every reload (twice the memory during a reload)",
        "remove --reload from service.command (it is for development)",
    )

    def bind(where: str) -> Check:
        return Check(
            "service.bind_all",
            "warning",
            f"{where} uses 0.0.0.0: the service listens on every interface, so anyone on the "
            "network can reach it (and its admin endpoints)",
            "bind 127.0.0.1 (`--host 127.0.0.1`) and use http://127.0.0.1:PORT as service.url",
        )

    assert command_checks(["uvicorn", "--reload", "--host", "0.0.0.0"], "127.0.0.1") == [
        reload,
        bind("service.command"),
    ]
    assert command_checks(["uvicorn"], "0.0.0.0") == [bind("service.url")]
    assert command_checks(["uvicorn", "--host=::"], "::") == [bind("service.url")]
    assert command_checks(["uvicorn", "--host", "127.0.0.1"], None) == []
    assert command_checks(iter(["uvicorn", "--reload"]), "localhost") == [reload]
