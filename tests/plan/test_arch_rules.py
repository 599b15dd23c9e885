"""The planner's reading of a checkpoint, rule by rule and at each boundary, in process:
config.json's figures and refusals, the parameter formula, and the safetensors headers.

tests/plan/test_hostile_inputs.py proves the same refusals end to end (``mpsctl plan`` in a
subprocess, one line, exit 2); these pin each rule where a mutation test can see it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from mpsctl.errors import ConfigError
from mpsctl.plan import arch
from mpsctl.plan.arch import (
    MAX_DIMENSION,
    Architecture,
    architecture_from_config,
    count_safetensors,
    read_model_dir,
    read_safetensors_header,
)

WHERE = Path("/models/m/config.json")
#: Qwen2.5-0.5B's config.json (the published figures)
QWEN_05B = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "max_position_embeddings": 32768,
}  # fmt: skip
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 100}  # fmt: skip


def refused(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        architecture_from_config(config, WHERE, "m")
    return str(caught.value)


# --------------------------------------------------------------------------- config.json
def test_qwen25_05b_has_its_published_parameter_count() -> None:
    # 494,032,768: the count Qwen publishes for Qwen2.5-0.5B (tied embeddings, qkv biases)
    model = architecture_from_config(QWEN_05B, WHERE, "qwen2.5-0.5b")
    assert model.formula_parameters == 494_032_768
    assert model.parameters == 494_032_768
    assert (model.head_dim, model.num_key_value_heads, model.qkv_bias) == (64, 2, True)
    assert model.tie_word_embeddings is True
    assert model.checkpoint_dtype == "bfloat16"
    assert model.checkpoint_bytes == 2 * 494_032_768
    assert model.max_positions == 32768
    assert (model.name, model.source) == ("qwen2.5-0.5b", str(WHERE))


def test_the_formula_term_by_term() -> None:
    # h=32, 4 heads of 8, 2 kv heads: q 32x32, k and v 32x16 each, o 32x32; biases 32+2x16
    base = {**SMALL, "num_key_value_heads": 2}
    plain = architecture_from_config(base, WHERE, "m")
    attention = 32 * 32 + 2 * 32 * 16 + 32 * 32
    per_layer = attention + 3 * 32 * 64 + 2 * 32
    embed = 100 * 32
    assert plain.formula_parameters == embed + 2 * per_layer + 32 + embed  # lm_head of its own
    tied = architecture_from_config({**base, "tie_word_embeddings": True}, WHERE, "m")
    assert tied.formula_parameters == embed + 2 * per_layer + 32
    biased = architecture_from_config({**base, "attention_bias": True}, WHERE, "m")
    assert biased.formula_parameters == plain.formula_parameters + 2 * (32 + 2 * 16)
    qwen = architecture_from_config({**base, "model_type": "qwen2"}, WHERE, "m")
    assert qwen.formula_parameters == biased.formula_parameters
    llama = architecture_from_config({**base, "model_type": "llama"}, WHERE, "m")
    assert llama.qkv_bias is False


def test_header_figures_win_over_the_formula() -> None:
    model = architecture_from_config(SMALL, WHERE, "m")
    from dataclasses import replace

    exact = replace(model, header_parameters=123, header_bytes=456)
    assert (exact.parameters, exact.checkpoint_bytes) == (123, 456)
    assert replace(model, header_parameters=0).parameters == 0  # 0 is a figure, not "none"


@pytest.mark.parametrize(
    ("dtype", "size"), [("float16", 2), ("bfloat16", 2), ("float32", 4), ("int8", None)]
)
def test_checkpoint_bytes_by_dtype(dtype: str, size: int | None) -> None:
    model = architecture_from_config({**SMALL, "torch_dtype": dtype}, WHERE, "m")
    assert model.checkpoint_bytes == (None if size is None else size * model.parameters)


def test_dtype_is_read_from_dtype_first_then_torch_dtype() -> None:
    both = architecture_from_config({**SMALL, "dtype": "float32", "torch_dtype": "float16"},
                                    WHERE, "m")  # fmt: skip
    assert both.checkpoint_dtype == "float32"
    assert architecture_from_config(SMALL, WHERE, "m").checkpoint_dtype is None
    assert architecture_from_config({**SMALL, "dtype": 16}, WHERE, "m").checkpoint_dtype is None
    assert architecture_from_config({**SMALL, "dtype": ""}, WHERE, "m").checkpoint_dtype is None


def test_text_config_is_read_only_when_the_top_level_has_no_hidden_size() -> None:
    nested = architecture_from_config({"model_type": "x", "text_config": SMALL}, WHERE, "m")
    assert nested.hidden_size == 32
    top = {**SMALL, "text_config": {**SMALL, "hidden_size": 64}}
    assert architecture_from_config(top, WHERE, "m").hidden_size == 32
    assert "hidden_size must be a positive integer (missing)" in refused(
        {"text_config": "not a table"}
    )


@pytest.mark.parametrize("key", ["hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "vocab_size"])  # fmt: skip
def test_every_required_figure_is_required(key: str) -> None:
    config = {k: v for k, v in SMALL.items() if k != key}
    assert refused(config) == f"{WHERE}: {key} must be a positive integer (missing)"


@pytest.mark.parametrize(
    ("value", "shown"), [(0, "0"), (-1, "-1"), (True, "True"), (1.0, "1.0"), ("32", "'32'")]
)
def test_a_figure_must_be_a_positive_integer(value: object, shown: str) -> None:
    assert refused({**SMALL, "hidden_size": value}) == (
        f"{WHERE}: hidden_size must be a positive integer ({shown})"
    )


def test_the_largest_dimension_is_one_below_the_limit() -> None:
    big = {**SMALL, "num_attention_heads": 1, "vocab_size": MAX_DIMENSION - 1}
    assert architecture_from_config(big, WHERE, "m").vocab_size == MAX_DIMENSION - 1
    assert refused({**big, "vocab_size": MAX_DIMENSION}) == (
        f"{WHERE}: vocab_size = {MAX_DIMENSION} is out of range (not a real model)"
    )
    one = architecture_from_config({**SMALL, "num_hidden_layers": 1}, WHERE, "m")
    assert one.num_hidden_layers == 1


def test_key_value_heads_default_to_the_heads_and_must_divide_them() -> None:
    assert architecture_from_config(SMALL, WHERE, "m").num_key_value_heads == 4
    assert architecture_from_config({**SMALL, "num_key_value_heads": None}, WHERE,
                                    "m").num_key_value_heads == 4  # fmt: skip
    assert architecture_from_config({**SMALL, "num_key_value_heads": 1}, WHERE,
                                    "m").num_key_value_heads == 1  # fmt: skip
    assert refused({**SMALL, "num_key_value_heads": 3}) == (
        f"{WHERE}: num_key_value_heads (3) must divide num_attention_heads (4)"
    )
    assert refused({**SMALL, "num_key_value_heads": 0}) == (
        f"{WHERE}: num_key_value_heads must be a positive integer (0)"
    )


def test_head_dim_given_or_derived() -> None:
    assert architecture_from_config(SMALL, WHERE, "m").head_dim == 8
    assert architecture_from_config({**SMALL, "head_dim": 16}, WHERE, "m").head_dim == 16
    odd = architecture_from_config({**SMALL, "hidden_size": 35}, WHERE, "m")
    assert odd.head_dim == 8  # 35 // 4
    assert refused({**SMALL, "hidden_size": 3}) == (
        f"{WHERE}: hidden_size (3) is smaller than num_attention_heads (4) and no head_dim is given"
    )
    small_heads = architecture_from_config({**SMALL, "hidden_size": 3, "head_dim": 1}, WHERE, "m")
    assert small_heads.head_dim == 1
    assert refused({**SMALL, "head_dim": 0}) == f"{WHERE}: head_dim must be a positive integer (0)"


@pytest.mark.parametrize("key", ["tie_word_embeddings", "attention_bias"])
def test_flags_are_json_booleans(key: str) -> None:
    assert refused({**SMALL, key: "false"}) == f"{WHERE}: {key} must be true or false ('false')"
    assert refused({**SMALL, key: 0}) == f"{WHERE}: {key} must be true or false (0)"
    default = architecture_from_config({**SMALL, key: None}, WHERE, "m")
    assert (default.tie_word_embeddings, default.qkv_bias) == (False, False)


def test_max_position_embeddings_is_optional_and_checked() -> None:
    assert architecture_from_config(SMALL, WHERE, "m").max_positions is None
    assert architecture_from_config({**SMALL, "max_position_embeddings": 4096}, WHERE,
                                    "m").max_positions == 4096  # fmt: skip
    assert refused({**SMALL, "max_position_embeddings": -1}) == (
        f"{WHERE}: max_position_embeddings must be a positive integer (-1)"
    )


# --------------------------------------------------------------------------- safetensors
def safetensors(path: Path, entries: dict[str, Any] | str, data: bytes = b"") -> Path:
    raw = (entries if isinstance(entries, str) else json.dumps(entries)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def entry(shape: list[Any], start: int, dtype: str = "F32") -> dict[str, Any]:
    size = arch.SAFETENSORS_DTYPE_BYTES[dtype]
    count = 1
    for dim in shape:
        count *= dim
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, start + count * size]}


def test_a_header_and_its_data_section(tmp_path: Path) -> None:
    path = safetensors(tmp_path / "m.safetensors", {"w": entry([2, 3], 0)}, bytes(24 + 5))
    header, data_size = read_safetensors_header(path)
    assert header == {"w": entry([2, 3], 0)}
    assert data_size == 29


def test_a_short_or_lying_header_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ConfigError, match=r"truncated safetensors file \(3 bytes\)$"):
        read_safetensors_header(short)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(ConfigError, match=r"says 100 bytes, file has 10\)$"):
        read_safetensors_header(lying)
    exact = safetensors(tmp_path / "exact.safetensors", "{}")  # length == size - 8: fine
    assert read_safetensors_header(exact) == ({}, 0)
    listed = safetensors(tmp_path / "list.safetensors", "[1, 2]")
    with pytest.raises(ConfigError, match=r"corrupt safetensors header \(not a JSON object\)$"):
        read_safetensors_header(listed)


def test_a_header_above_the_librarys_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", arch.MAX_HEADER_BYTES + 1))
        f.truncate(arch.MAX_HEADER_BYTES + 64)  # sparse: the size is there, not the bytes
    with pytest.raises(ConfigError, match=f"says {arch.MAX_HEADER_BYTES + 1} bytes"):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("not an object", "not an object"),
        ({"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}, "dtype or shape"),
        ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, "dtype or shape"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}, "shape"),
        ({"dtype": "F32", "shape": [MAX_DIMENSION], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": "04"}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [False, 4]}, "data_offsets"),
        (
            {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]},
            "data_offsets do not match the shape",
        ),
        (
            {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]},
            "data_offsets do not match the shape",
        ),
        (
            {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]},
            "data_offsets do not match the shape",
        ),  # 8 bytes
        (
            {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            "data_offsets do not match the shape",
        ),  # past end
    ],
)
def test_a_tensor_entry_that_does_not_add_up_is_refused(bad: Any, why: str) -> None:
    with pytest.raises(ValueError, match=f"^{why}$"):
        arch._tensor(bad, 8)


def test_a_tensor_entry_that_adds_up() -> None:
    assert arch._tensor({"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}, 8) == (4, 8, 0)
    assert arch._tensor({"dtype": "F32", "shape": [], "data_offsets": [4, 8]}, 8) == (1, 4, 4)
    assert arch._tensor({"dtype": "U8", "shape": [0], "data_offsets": [8, 8]}, 8) == (0, 0, 8)
    last = MAX_DIMENSION - 1
    assert arch._tensor({"dtype": "BOOL", "shape": [last], "data_offsets": [0, last]},
                        last) == (last, last, 0)  # fmt: skip


def test_byte_ranges_must_tile_the_data_section(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    arch._check_tiling(path, [(4, 8), (0, 4)], 8)  # in any order
    arch._check_tiling(path, [], 0)
    with pytest.raises(ConfigError) as overlap:
        arch._check_tiling(path, [(0, 8), (4, 12)], 12)
    assert str(overlap.value) == (
        f"{path}: corrupt safetensors header (tensors' byte ranges overlap at offset 4)"
    )
    with pytest.raises(ConfigError) as gap:
        arch._check_tiling(path, [(0, 4), (6, 10)], 10)
    assert str(gap.value) == (
        f"{path}: corrupt safetensors header (tensors' byte ranges leave a gap at offset 4)"
    )
    with pytest.raises(ConfigError) as late:
        arch._check_tiling(path, [(2, 6)], 6)
    assert "leave a gap at offset 0" in str(late.value)
    with pytest.raises(ConfigError) as trailing:
        arch._check_tiling(path, [(0, 4)], 6)
    assert str(trailing.value) == (
        f"{path}: corrupt safetensors header (tensors end at byte 4 of a 6-byte data section)"
    )


def test_counting_headers_ties_lm_head_and_names_the_width(tmp_path: Path) -> None:
    entries = {
        "__metadata__": {"format": "pt"},
        "model.embed_tokens.weight": entry([4, 2], 0, "BF16"),
        "lm_head.weight": entry([4, 2], 16, "BF16"),
        "empty": entry([0], 32, "F32"),  # no elements: says nothing of the width
    }
    path = safetensors(tmp_path / "a.safetensors", entries, bytes(32))
    assert count_safetensors([path]) == (16, 32, 2)
    assert count_safetensors([path], tied=True) == (8, 16, 2)
    mixed = safetensors(tmp_path / "b.safetensors", {"x": entry([2], 0, "F32")}, bytes(8))
    assert count_safetensors([path, mixed]) == (18, 40, None)


def test_a_bad_tensor_is_named_and_a_long_name_shortened(tmp_path: Path) -> None:
    name = "n" * 81
    path = safetensors(tmp_path / "c.safetensors", {name: {"dtype": "F32"}})
    with pytest.raises(ConfigError) as caught:
        count_safetensors([path])
    assert str(caught.value) == f"{path}: corrupt safetensors header (tensor '{'n' * 77}...')"
    exact = "m" * 80
    path = safetensors(tmp_path / "d.safetensors", {exact: {"dtype": "F32"}})
    with pytest.raises(ConfigError) as caught:
        count_safetensors([path])
    assert str(caught.value) == f"{path}: corrupt safetensors header (tensor '{exact}')"


def test_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--model: no such directory: "):
        read_model_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^--model: .*file is not a directory$"):
        read_model_dir(tmp_path / "file")
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(
        ConfigError, match=r"config.json: no such file \(not a model directory\?\)$"
    ):
        read_model_dir(model)
    (model / "config.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"config.json: not a JSON object$"):
        read_model_dir(model)
    (model / "config.json").write_text(json.dumps({**SMALL, "tie_word_embeddings": True}))
    bare = read_model_dir(model)
    assert (bare.name, bare.header_parameters, bare.source) == (
        "model",
        None,
        str(model / "config.json"),
    )
    entries = {"embed": entry([100, 32], 0, "F16"), "lm_head.weight": entry([100, 32], 6400, "F16")}
    safetensors(model / "model.safetensors", entries, bytes(12800))
    counted = read_model_dir(model)
    assert (counted.header_parameters, counted.header_bytes, counted.stored_dtype_bytes) == (
        3200,
        6400,
        2,
    )  # lm_head tied: counted once
    assert counted.source == f"{model / 'config.json'} + 1 safetensors header(s)"
    assert isinstance(counted, Architecture)
