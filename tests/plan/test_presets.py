"""Presets equal the published Qwen2.5 config.json values; the formula gives the cards' counts."""

from __future__ import annotations

import re

import pytest

from mpsctl.plan.presets import PRESETS
from tests.conftest import read_fixture


def published() -> dict[str, dict[str, str]]:
    lines = read_fixture("planning-qwen2.5-configs.tsv").splitlines()
    header = lines[0].split("\t")
    return {
        row["model"]: row
        for row in (dict(zip(header, ln.split("\t"), strict=True)) for ln in lines[1:])
    }


ROWS = published()


def test_every_published_model_has_a_preset() -> None:
    names = {f"qwen2.5-{m.split('-')[1].lower()}" for m in ROWS}
    assert names == set(PRESETS)


@pytest.mark.parametrize("model", sorted(ROWS))
def test_preset_equals_published_config(model: str) -> None:
    row = ROWS[model]
    arch = PRESETS[f"qwen2.5-{model.split('-')[1].lower()}"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):  # fmt: skip
        assert getattr(arch, key) == int(row[key]), key
    assert arch.tie_word_embeddings == (row["tie_word_embeddings"] == "true")
    assert arch.checkpoint_dtype == row["torch_dtype"]
    assert arch.max_positions == int(row["max_position_embeddings"])
    assert f"Qwen/{model}" in arch.source


@pytest.mark.parametrize("model", sorted(ROWS))
def test_parameter_count_matches_the_model_card(model: str) -> None:
    arch = PRESETS[f"qwen2.5-{model.split('-')[1].lower()}"]
    stated = re.search(r"Number of Parameters: ([\d.]+)B", ROWS[model]["params_stated"])
    assert stated is not None
    # the cards round (14.7B for 14.77e9, 32.5B for 32.76e9): within 1%
    assert arch.parameters / 1e9 == pytest.approx(float(stated.group(1)), rel=0.01)
    non_embedding = re.search(r"\(Non-Embedding\): ([\d.]+)B", ROWS[model]["params_stated"])
    assert non_embedding is not None
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    assert (arch.parameters - embeddings) / 1e9 == pytest.approx(
        float(non_embedding.group(1)), rel=0.01
    )
