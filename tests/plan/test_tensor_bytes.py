"""The plan's weights and KV-cache figures equal the real tensors' bytes.

Weights: the sum of parameter nbytes after ``from_pretrained``. KV cache: the sum of the
``past_key_values`` tensors' nbytes after a ``generate`` with a known prompt length and
``min_new_tokens = max_new_tokens`` (a random model would otherwise stop at any token).
The cache holds prompt + new - 1 positions (the last token is never fed back), so the
plan's prompt + new is within 2% for these lengths, and exact one position on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mpsctl.plan.arch import read_model_dir
from mpsctl.plan.memory import compute_figures


def real_bytes(model_dir: Path, dtype_name: str, prompt: int, new: int) -> tuple[int, int]:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval()
    weights = sum(p.nbytes for p in model.parameters())
    ids = torch.randint(
        3, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             return_dict_in_generate=True)  # fmt: skip
    assert out.sequences.shape[1] == prompt + new
    cache = out.past_key_values
    kv = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    return weights, kv


def check(model_dir: Path, dtype: str, prompt: int, new: int) -> None:
    arch = read_model_dir(model_dir)
    # the formula over config.json alone gives the checkpoint's own count
    assert arch.formula_parameters == arch.header_parameters
    figures = compute_figures(arch, dtype, prompt_tokens=prompt, max_new_tokens=new)
    weights, kv = real_bytes(model_dir, dtype, prompt, new)
    assert figures.weights_bytes == weights
    assert figures.kv_cache_per_query_bytes == pytest.approx(kv, rel=0.02)
    assert figures.kv_bytes_per_token * (prompt + new - 1) == kv


def test_tiny_checkpoint_float32(tiny_model: Path) -> None:
    check(tiny_model, "float32", prompt=40, new=30)


def test_tiny_checkpoint_cast_to_bfloat16(tiny_model: Path) -> None:
    check(tiny_model, "bfloat16", prompt=40, new=30)


def test_05b_demo_checkpoint_bfloat16(demo_05b: Path) -> None:
    check(demo_05b, "bfloat16", prompt=40, new=20)


def test_a_stored_lm_head_of_a_tied_model_is_counted_once(tiny_model: Path, tmp_path: Path) -> None:
    """Some checkpoints of tied models store ``lm_head.weight`` too; transformers ties it to
    the embedding matrix on load, so memory holds one tensor."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "tied-with-lm-head"
    shutil.copytree(tiny_model, model_dir)
    tensors = load_file(model_dir / "model.safetensors")
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    arch = read_model_dir(model_dir)
    assert arch.tie_word_embeddings
    loaded: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert arch.parameters == sum(p.numel() for p in loaded.parameters())
    assert arch.parameters == arch.formula_parameters
