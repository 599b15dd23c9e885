"""Token ids to text with no U+FFFD where a token boundary falls inside a character."""

from __future__ import annotations

from typing import Any

import pytest

from mpsctl.server.detokenize import TextDecoder, decode_text

# 鑫 and 🦀 are in none of the demo tokenizer's training lines: byte-level BPE spells each
# with one token per UTF-8 byte (3 and 4 of them)
TEXT = "工商银行 鑫 🦀 ok"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from mpsctl.server.demo import build_tokenizer

    return build_tokenizer()


def test_the_tokenizer_really_splits_a_character(tokenizer: Any) -> None:
    ids = tokenizer.encode("鑫", add_special_tokens=False)

    assert len(ids) == 3
    assert "\ufffd" in tokenizer.decode(ids[:2])  # what a plain decode shows mid-character


def test_pushing_one_id_at_a_time_gives_whole_characters_only(tokenizer: Any) -> None:
    decoder = TextDecoder(tokenizer)
    chunks = [decoder.push(i) for i in tokenizer.encode(TEXT, add_special_tokens=False)]
    chunks.append(decoder.finish())

    assert "".join(chunks) == TEXT
    assert not any("\ufffd" in chunk for chunk in chunks)
    assert "" in chunks  # something was held back until its character was complete


@pytest.mark.parametrize("cut", [1, 2])
def test_an_answer_cut_inside_a_character_drops_the_incomplete_character(
    tokenizer: Any, cut: int
) -> None:
    ids = tokenizer.encode("工商银行鑫", add_special_tokens=False)

    truncated = ids[: len(ids) - cut]

    assert tokenizer.decode(truncated).endswith("\ufffd")
    assert decode_text(tokenizer, truncated) == "工商银行"


def test_bytes_that_never_form_a_character_are_left_out(tokenizer: Any) -> None:
    crab = tokenizer.encode("🦀", add_special_tokens=False)
    # the first two bytes of the crab, then plain text: that character never completes
    ids = [*crab[:2], *tokenizer.encode(" ok", add_special_tokens=False)]

    assert "\ufffd" in tokenizer.decode(ids)
    assert decode_text(tokenizer, ids) == " ok"


def test_special_tokens_are_skipped(tokenizer: Any) -> None:
    ids = [*tokenizer.encode("ok", add_special_tokens=False), tokenizer.eos_token_id]

    assert decode_text(tokenizer, ids) == "ok"
