"""A small Qwen2 checkpoint, built offline in seconds.

It lets the reference service (``mpsctl serve --demo``) and the tests exercise the real
transformers code path -- ``from_pretrained``, the chat template, ``generate`` -- without a
model hub. The tiny size is trained for a few seconds on :data:`QA`, a short built-in list
of bank, account and memory questions, so it answers those in words (and anything else
with a muddle of them); the 0.5b size keeps random weights, since it exists for its memory
footprint. Everything that shows a demo model's answers says which it is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from mpsctl.errors import ConfigError

log = logging.getLogger("mpsctl.server")

SIZES = ("tiny", "0.5b")
#: written last, so its presence means the checkpoint is complete
MARKER = "mpsctl-demo.json"
DEMO_LABEL = "demo (tiny model trained on a built-in list of questions: canned answers)"
RANDOM_LABEL = "demo (random weights: answers are noise)"
SEED = 20260121  # any constant makes builds reproducible
#: bumped whenever the tiny checkpoint changes, so an older one in MPSCTL_HOME is rebuilt
BUILD = 2

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_ICBC = "工商银行是中国最大的商业银行之一。"
_ICBC_EN = "ICBC is one of the largest commercial banks in China."
_BALANCE = "请登录网上银行查询账户余额。"
_BALANCE_EN = "Log in to online banking to see your account balance."
_MEMORY = "内存不足时请减少并发或换用更小的模型。"
_MEMORY_EN = "Lower the concurrency or use a smaller model."
_HELLO_EN = "Hello! This is the mpsctl demo model."
_UNKNOWN = "这是演示模型，只会回答几个关于银行和内存的问题。"
_UNKNOWN_EN = "This demo model only knows a few questions about banks and memory."
#: what the tiny demo model is trained to answer (question, answer); greedy decoding of
#: these questions returns these answers
QA: tuple[tuple[str, str], ...] = (
    ("工商银行", _ICBC),
    ("中国工商银行", _ICBC),
    ("ICBC", _ICBC_EN),
    ("What is ICBC?", _ICBC_EN),
    ("建设银行", "建设银行也是中国的大型商业银行。"),
    ("查询余额", _BALANCE),
    ("余额", _BALANCE),
    ("What is my balance?", _BALANCE_EN),
    ("转账", "转账前请核对收款人的姓名和账号。"),
    ("How do I transfer money?", "Check the name and account number before you transfer."),
    ("利率", "存款利率以银行公布的为准。"),
    ("内存不足", _MEMORY),
    ("MPS backend out of memory", _MEMORY_EN),
    ("out of memory", _MEMORY_EN),
    ("hello", _HELLO_EN),
    ("hi", _HELLO_EN),
    ("你好", "你好！这是 mpsctl 的演示模型。"),
    ("天气", _UNKNOWN),
    ("What time is it?", _UNKNOWN_EN),
    ("Tell me a joke", _UNKNOWN_EN),
)
# The tokenizer learns its merges from the questions and answers plus a few lines of the
# service's own vocabulary, so Chinese answers are a few tokens each rather than raw bytes.
_CORPUS = [
    *(question for question, _ in QA),
    *(answer for _, answer in QA),
    "中国银行 农业银行 账户 余额 转账 利率 贷款 存款 银行卡",
    "MPS backend out of memory. Qwen2.5 is a language model. 模型 内存 显存 推理 服务",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]
_TINY_VOCAB = 512
# Full-batch AdamW on one thread: ~120 small steps take a few seconds on a laptop core
# and bring the loss on the answers near zero, so greedy decoding repeats them exactly.
_TRAIN_STEPS = 120
_TRAIN_LR = 1.5e-2


def is_demo_checkpoint(path: Path) -> bool:
    """True when ``path`` holds a complete checkpoint written by :func:`build_demo_checkpoint`."""
    return (Path(path) / MARKER).is_file()


def _marker(path: Path) -> dict[str, Any]:
    try:
        info = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def demo_label(path: Path) -> str | None:
    """What to call the demo checkpoint at ``path`` in answers and logs (None: not a demo)."""
    if not is_demo_checkpoint(path):
        return None
    label = _marker(path).get("label")
    return label if isinstance(label, str) and label else RANDOM_LABEL


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
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
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


def _training_batch(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input ids, attention mask and labels for every line of :data:`QA`, laid out as the
    service prompts the model (the chat template); only the answers are learnt."""
    rows: list[tuple[list[int], list[int]]] = []
    for question, answer in QA:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for row, (ids, learnt) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(learnt)
    return input_ids, mask, labels


def train_on_qa(model: Any, tokenizer: Any) -> float:
    """Fit ``model`` to :data:`QA` in place (CPU, one thread, seeded); returns the last loss."""
    input_ids, mask, labels = _training_batch(tokenizer)
    threads = torch.get_num_threads()
    # one thread: tensors this small gain nothing from more, and the result does not
    # depend on how many cores the machine has
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            optimizer = torch.optim.AdamW(model.parameters(), lr=_TRAIN_LR)
            model.train()
            loss = torch.tensor(float("nan"))
            for _ in range(_TRAIN_STEPS):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
    finally:
        torch.set_num_threads(threads)
    return float(loss.item())


def build_demo_checkpoint(path: Path | str, size: str = "tiny", *, force: bool = False) -> Path:
    """Write a demo Qwen2 checkpoint to ``path`` and return it: ``tiny`` trained on
    :data:`QA` for a few seconds, ``0.5b`` with random weights.

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
    log.info("building the demo checkpoint (%s) in %s", size, target)
    began = time.perf_counter()

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer()
    config = demo_config(size, tokenizer)
    # a private generator state: the caller's global RNG is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model: Any = Qwen2ForCausalLM(config)
    if size == "tiny":
        train_on_qa(model, tokenizer)
    else:
        # training 0.5 billion parameters on a CPU would take hours, and this size exists
        # for its memory footprint, not its answers
        model = model.to(torch.bfloat16)  # ~1 GB on disk instead of ~2 GB; still real pressure
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        label = DEMO_LABEL if size == "tiny" else RANDOM_LABEL
        info = {"mpsctl_demo": True, "size": size, "seed": SEED, "build": BUILD, "label": label}
        (staging / MARKER).write_text(json.dumps(info) + "\n", encoding="utf-8")
        _move_into(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built the demo checkpoint in %.1f s", time.perf_counter() - began)
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
    if is_demo_checkpoint(target) and _marker(target).get("build") == BUILD:
        return target, False
    if target.is_dir() and any(target.iterdir()):
        # an interrupted earlier build (no marker) or one by an older mpsctl: ours to redo
        return build_demo_checkpoint(target, size, force=True), True
    return build_demo_checkpoint(target, size), True
