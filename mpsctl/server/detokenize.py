"""Token ids to text, one complete character at a time.

A byte-level tokenizer (Qwen, GPT-2, Llama 3) often splits one UTF-8 character over
several tokens: 鑫 can be three tokens of one byte each. Decoding a list of ids that ends
inside such a character -- an answer cut off at ``max_new_tokens``, a cancelled query, a
chunk of a stream -- shows U+FFFD where the character should be. :class:`TextDecoder`
holds those bytes back until the character is complete.

The window technique (decode the last emitted chunk together with the new ids and keep
what was added) is the one text-generation-inference and vLLM use; it keeps the context
that tokenizers with leading-space markers need to place spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REPLACEMENT = "\ufffd"


class TextDecoder:
    """Feed generated ids with :meth:`push`; each call returns the text they completed.

    Bytes that do not form a character yet are held back; bytes that can never form one
    (a character abandoned half-way, a stray continuation byte) are left out rather than
    shown as U+FFFD.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that gives the new ids their context
        self._read = 0  # ids before this are already out as text

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens))

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""  # nothing new, or a character still incomplete
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text) :].replace(REPLACEMENT, "")

    def finish(self) -> str:
        """The text of what is still held back; an incomplete last character is dropped."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :].replace(REPLACEMENT, "")


def decode_text(tokenizer: Any, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
    """All of ``ids`` as text, with no U+FFFD from a character split between tokens."""
    decoder = TextDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    parts = [decoder.push(token_id) for token_id in ids]
    parts.append(decoder.finish())
    return "".join(parts)
