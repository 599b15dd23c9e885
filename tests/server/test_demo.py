"""The offline demo checkpoint: small, deterministic, loadable, answering its questions in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpsctl.errors import ConfigError
from mpsctl.server.demo import (
    BUILD,
    DEMO_LABEL,
    MARKER,
    QA,
    build_demo_checkpoint,
    build_tokenizer,
    demo_config,
    ensure_demo_checkpoint,
    is_demo_checkpoint,
)


def test_tiny_checkpoint_is_small_complete_and_loads(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    size = sum(p.stat().st_size for p in tiny_model.iterdir())
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    assert size < 1_000_000
    assert is_demo_checkpoint(tiny_model)
    assert model.config.model_type == "qwen2"
    assert model.config.num_hidden_layers == 2
    assert tokenizer.decode(tokenizer.encode("工商银行 ok")) == "工商银行 ok"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "工商银行"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\n工商银行<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def holder(tiny_model: Path) -> Any:
    from mpsctl.server.model import ModelHolder

    loaded = ModelHolder(device="cpu", max_new_tokens=64)
    loaded.load(str(tiny_model))
    return loaded


def test_the_demo_answers_icbc_in_words(holder: Any) -> None:
    answer = holder.generate("工商银行")

    assert "\ufffd" not in answer.text
    assert "工商银行是中国最大的商业银行之一" in answer.text
    assert holder.label == DEMO_LABEL


@pytest.mark.parametrize("question", ["ICBC", "What is my balance?", "转账", "内存不足", "hello"])
def test_the_demo_answers_its_questions_from_its_list(holder: Any, question: str) -> None:
    expected = dict(QA)[question]

    answer = holder.generate(question)

    assert answer.text == expected
    assert answer.tokens < 64  # it stopped by itself, at the end of the answer


def test_a_demo_built_by_an_older_mpsctl_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    marker = target / MARKER  # as the random-weight demo of an earlier version left it
    marker.write_text(json.dumps({"mpsctl_demo": True, "size": "tiny"}), encoding="utf-8")

    assert ensure_demo_checkpoint(target) == (target, True)
    assert json.loads(marker.read_text(encoding="utf-8"))["build"] == BUILD


def test_build_is_deterministic(tiny_model: Path, tmp_path: Path) -> None:
    again = build_demo_checkpoint(tmp_path / "again")

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes()


def test_refuses_a_non_empty_directory_without_force(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")

    with pytest.raises(ConfigError, match="not empty"):
        build_demo_checkpoint(target)

    build_demo_checkpoint(target, force=True)
    assert is_demo_checkpoint(target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_ensure_reuses_a_complete_checkpoint_and_redoes_a_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    _, built = ensure_demo_checkpoint(target)
    assert built
    assert ensure_demo_checkpoint(target) == (target, False)

    (target / MARKER).unlink()  # as if interrupted before the marker was written

    assert ensure_demo_checkpoint(target) == (target, True)
    assert is_demo_checkpoint(target)


def test_half_billion_config_has_qwen25_05b_shapes() -> None:
    config = demo_config("0.5b", build_tokenizer())

    assert (config.hidden_size, config.num_hidden_layers) == (896, 24)
    assert (config.num_attention_heads, config.num_key_value_heads) == (14, 2)
    assert config.intermediate_size == 4864


def test_unknown_size_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown demo model size"):
        build_demo_checkpoint(tmp_path / "x", "7b")
