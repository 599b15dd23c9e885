"""A small random-weight Qwen2 checkpoint, built offline in seconds.

It lets the reference service (``mpsctl serve --demo``) and the tests exercise the real
transformers code path -- ``from_pretrained``, the chat template, ``generate`` -- without a
model hub. The weights are random, so the answers are noise; everything that shows them
says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from mpsctl.errors import ConfigError

SIZES = ("tiny", "0.5b")
#: written last, so its presence means the checkpoint is complete
MARKER = "mpsctl-demo.json"
DEMO_LABEL = "demo (random weights: answers are noise)"
SEED = 20260121  # the day of the seed's crash; any constant makes builds reproducible

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Enough text for a few hundred merges; the Chinese lines make the sample query
# (工商银行) tokenize into real merges rather than only raw bytes.
_CORPUS = [
    "工商银行 中国工商银行 建设银行 农业银行 中国银行",
    "查询 账户 余额 转账 利率 贷款 存款 银行卡",
    "What is the balance of my account?",
    "The service answers questions about banks and accounts.",
    "MPS backend out of memory. Use a smaller model or fewer tokens.",
    "Qwen2.5 is a language model. 模型 内存 显存 推理 服务",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]
_TINY_VOCAB = 384


def is_demo_checkpoint(path: Path) -> bool:
    """True when ``path`` holds a complete checkpoint written by :func:`build_demo_checkpoint`."""
    return (Path(path) / MARKER).is_file()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text round-trips) with a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHAT_TEMPLATE,
        model_max_length=4096,
    )


def demo_config(size: str, tokenizer: Any) -> Qwen2Config:
    """The model config for ``size``; ``0.5b`` has Qwen2.5-0.5B's layer shapes (smaller vocab)."""
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
    }
    if size == "tiny":
        shape: dict[str, Any] = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # wider than a real init so greedy decoding wanders instead of repeating one token
            "initializer_range": 0.3,
        }
    elif size == "0.5b":
        shape = {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
        }
    else:
        raise ConfigError(f"unknown demo model size {size!r} (expected one of {', '.join(SIZES)})")
    return Qwen2Config(**common, **shape)


def build_demo_checkpoint(path: Path | str, size: str = "tiny", *, force: bool = False) -> Path:
    """Write a random-weight Qwen2 checkpoint to ``path`` and return it.

    Deterministic (seeded). Refuses a non-empty directory unless ``force``; the files are
    written to a temporary sibling first, so an interrupted build never looks complete.
    """
    target = Path(path).expanduser()
    if size not in SIZES:
        raise ConfigError(f"unknown demo model size {size!r} (expected one of {', '.join(SIZES)})")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ConfigError(f"{target} is not empty (use --force to overwrite its files)")
    target.parent.mkdir(parents=True, exist_ok=True)

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer()
    config = demo_config(size, tokenizer)
    # a private generator state: the caller's global RNG is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model: Any = Qwen2ForCausalLM(config)
    if size == "0.5b":
        model = model.to(torch.bfloat16)  # ~1 GB on disk instead of ~2 GB; still real pressure
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {"mpsctl_demo": True, "size": size, "seed": SEED, "label": DEMO_LABEL}
        (staging / MARKER).write_text(json.dumps(info) + "\n", encoding="utf-8")
        _move_into(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into(staging: Path, target: Path) -> None:
    if not target.exists() or not any(target.iterdir()):
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
        return
    # --force on a non-empty directory: replace our files one by one, marker last, and
    # leave the operator's other files alone rather than deleting a directory we didn't make.
    (target / MARKER).unlink(missing_ok=True)
    for item in sorted(staging.iterdir(), key=lambda p: p.name == MARKER):
        os.replace(item, target / item.name)


def ensure_demo_checkpoint(path: Path | str, size: str = "tiny") -> tuple[Path, bool]:
    """Reuse a complete demo checkpoint at ``path`` or build one; returns (path, built)."""
    target = Path(path).expanduser()
    if is_demo_checkpoint(target):
        return target, False
    if target.is_dir() and any(target.iterdir()):
        # an interrupted earlier build (no marker): it is ours to redo
        return build_demo_checkpoint(target, size, force=True), True
    return build_demo_checkpoint(target, size), True
