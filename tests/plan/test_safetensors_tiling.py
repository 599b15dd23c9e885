"""A safetensors header whose byte ranges overlap, leave a gap or stop short of the file:
the safetensors library refuses to load such a file, and ``plan`` refuses it too instead of
counting the same bytes several times (or bytes no tensor holds) as weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plan.test_hostile_inputs import assert_refused, header, model_dir, mpsctl_plan

F32 = {"dtype": "F32", "shape": [1000, 1000]}
MB4 = 4_000_000


@pytest.mark.parametrize(
    ("entries", "data", "expected"),
    [
        # fifty tensors all on the same 4 MB: once read as 200 MB of weights
        ({f"t{i}": {**F32, "data_offsets": [0, MB4]} for i in range(50)}, MB4, "overlap"),
        (
            {
                "a": {**F32, "data_offsets": [0, MB4]},
                "b": {"dtype": "F32", "shape": [10], "data_offsets": [MB4 - 20, MB4 + 20]},
            },
            MB4 + 40,
            "overlap",
        ),
        ({"a": {"dtype": "F32", "shape": [10], "data_offsets": [100, 140]}}, 140, "gap"),
        ({"a": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]}}, MB4, "end at byte 40"),
    ],
    ids=["all-on-one-range", "partial-overlap", "gap-at-start", "bytes-after-the-last"],
)
def test_safetensors_byte_ranges_that_do_not_tile_the_file_are_refused(
    tmp_path: Path, entries: dict[str, object], data: int, expected: str
) -> None:
    model = model_dir(tmp_path, safetensors=header(entries) + b"\0" * data)

    assert_refused(tmp_path, ["--model", str(model)], expected)


def test_a_tied_lm_head_still_takes_its_place_in_the_file(tmp_path: Path) -> None:
    """The stored copy of a tied ``lm_head.weight`` is not counted, but its bytes are part
    of the file: the ranges around it still tile it."""
    config = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 384, "tie_word_embeddings": True}  # fmt: skip
    entries = {
        "lm_head.weight": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]},
        "model.embed_tokens.weight": {"dtype": "F32", "shape": [10], "data_offsets": [40, 80]},
    }
    model = model_dir(tmp_path, config, safetensors=header(entries) + b"\0" * 80)

    code, out, err = mpsctl_plan("--model", str(model), "--ram", "16GiB", "--json", cwd=tmp_path)

    assert code == 0, err
    assert "1 safetensors header" in out
