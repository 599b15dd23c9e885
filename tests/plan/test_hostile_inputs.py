"""``plan`` on hostile model directories and sizes: one line, exit 2, one JSON document.

Each case once ended in a traceback (RecursionError, ValueError, OverflowError,
ZeroDivisionError), a hang (a FIFO), or a wrong answer given as right (a negative shape
that "fits", ``num_key_value_heads: 0`` silently replaced, the string "false" read as true).
Every run is a real ``python -m mpsctl`` process with a timeout, so a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": 384}  # fmt: skip


def mpsctl_plan(*args: str, cwd: Path) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "mpsctl", "plan", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, env=dict(os.environ))  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def assert_refused(tmp_path: Path, args: list[str], expected: str) -> None:
    """Exit 2 with one ``mpsctl: error:`` line, and under --json one mpsctl.error/1."""
    code, out, err = mpsctl_plan(*args, "--ram", "16GiB", cwd=tmp_path)
    assert (code, out) == (2, ""), err
    assert err.startswith("mpsctl: error: ")
    assert err.count("\n") == 1, err
    assert expected in err
    code, out, err = mpsctl_plan(*args, "--ram", "16GiB", "--json", cwd=tmp_path)
    assert code == 2, err
    assert "Traceback" not in err
    doc = json.loads(out)  # exactly one document: a second one would not parse
    assert (doc["schema"], doc["exit_code"], doc["command"]) == ("mpsctl.error/1", 2, "plan")
    assert expected in doc["error"]


def header(entries: dict[str, object] | str) -> bytes:
    raw = (entries if isinstance(entries, str) else json.dumps(entries)).encode()
    return struct.pack("<Q", len(raw)) + raw


def model_dir(tmp_path: Path, config: dict[str, object] | str = CONFIG,
              safetensors: bytes | None = None) -> Path:  # fmt: skip
    model = tmp_path / "model"
    model.mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (model / "config.json").write_text(text, encoding="utf-8")
    if safetensors is not None:
        (model / "model.safetensors").write_bytes(safetensors)
    return model


DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 4001


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"text_config": ' + DEEP + "}", "nested more than 32 levels"),
        ('{"hidden_size": ' + HUGE + "}", "a number of 4001 characters"),
        ({**CONFIG, "hidden_size": 1e300}, "hidden_size must be a positive integer"),
        ({**CONFIG, "hidden_size": -32}, "hidden_size must be a positive integer"),
        ('{"hidden_size": NaN}', "NaN is not a number"),
        ({**CONFIG, "num_key_value_heads": 0}, "num_key_value_heads must be a positive integer"),
        ({**CONFIG, "num_key_value_heads": 3}, "num_key_value_heads (3) must divide"),
        ({**CONFIG, "tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
        ({**CONFIG, "attention_bias": "no"}, "attention_bias must be true or false"),
        ({**CONFIG, "hidden_size": 2}, "no head_dim is given"),
        ({**CONFIG, "vocab_size": 2**40}, "out of range"),
    ],
)  # fmt: skip
def test_hostile_config_json_is_refused(
    tmp_path: Path, config: dict[str, object] | str, expected: str
) -> None:
    assert_refused(tmp_path, ["--model", str(model_dir(tmp_path, config))], expected)


def tensor(shape: list[object], offsets: list[object], dtype: str = "F32") -> dict[str, object]:
    return {"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (header('{"w": ' + DEEP + "}"), "nested more than 32 levels"),
        (header('{"w": {"dtype": "F32", "shape": [' + HUGE + "]}}"), "a number of 4001"),
        (header(tensor([1e300], [0, 4])), "corrupt safetensors header (tensor 'w')"),
        (header(tensor([-4], [0, 0])) , "corrupt safetensors header (tensor 'w')"),
        (header(tensor([True], [0, 4])), "corrupt safetensors header (tensor 'w')"),
        # a shape that claims more bytes than the file holds
        (header(tensor([2**30], [0, 2**32])), "corrupt safetensors header (tensor 'w')"),
        (header(tensor([4], [0, 8])) + bytes(16), "corrupt safetensors header (tensor 'w')"),
    ],
)  # fmt: skip
def test_hostile_safetensors_header_is_refused(tmp_path: Path, data: bytes, expected: str) -> None:
    assert_refused(tmp_path, ["--model", str(model_dir(tmp_path, CONFIG, data))], expected)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_fifo_in_place_of_a_model_file_is_refused_not_waited_on(
    tmp_path: Path, name: str
) -> None:
    model = model_dir(tmp_path)
    (model / name).unlink(missing_ok=True)
    os.mkfifo(model / name)
    assert_refused(tmp_path, ["--model", str(model)], "not a regular file")


def test_absurd_token_counts_are_refused(tmp_path: Path) -> None:
    # a config without max_position_embeddings: only the absolute bound applies
    model = model_dir(tmp_path)
    assert_refused(tmp_path, ["--model", str(model), "--prompt-tokens", "1" + "0" * 30],
                   "which no model has")  # fmt: skip


@pytest.mark.parametrize(
    ("ram", "expected"),
    [
        ("0.5B", "--ram: 0.5B is less than"),
        ("16", "--ram: 16 has no unit: did you mean 16GiB?"),
        ("1e300GiB", "--ram: 1e300GiB is more than"),
        ("infGiB", "--ram: expected a size"),
    ],
)  # fmt: skip
def test_hostile_ram_sizes_are_refused(tmp_path: Path, ram: str, expected: str) -> None:
    code, out, err = mpsctl_plan("--preset", "qwen2.5-0.5b", "--ram", ram, "--json", cwd=tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert expected in err
    assert json.loads(out)["schema"] == "mpsctl.error/1"
