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


# --- every figure of the memory model, by hand from the published 0.5b config -------------
# Qwen2.5-0.5B: hidden 896, intermediate 4864, 24 layers, 14 heads (head_dim 64), 2 KV heads,
# vocab 151936, tied embeddings, 494,032,768 parameters; stored in bfloat16.


def test_the_05b_preset_in_float16_figure_by_figure() -> None:
    from mpsctl.plan.memory import OVERHEAD_ESTIMATE_BYTES
    from mpsctl.plan.presets import PRESETS

    f = compute_figures(PRESETS["qwen2.5-0.5b"], "float16", prompt_tokens=64, max_new_tokens=64)
    assert (f.dtype, f.dtype_bytes, f.prompt_tokens, f.max_new_tokens) == ("float16", 2, 64, 64)
    assert f.weights_bytes == 494_032_768 * 2
    assert f.kv_bytes_per_token == 2 * 24 * 2 * 64 * 2 == 12_288
    assert f.kv_cache_per_query_bytes == 12_288 * (64 + 64)
    assert f.logits_bytes == 151_936 * 2 + 151_936 * 4
    # prefill: 2 x (2 p h + max(mlp 3 p i = 933,888, attention p(2q + 2kv) + heads p^2 = 188,416))
    assert f.activation_bytes == 2 * (2 * 64 * 896 + 933_888) == 2_097_152
    assert f.peak_per_query_bytes == 911_616 + 2_097_152
    assert f.per_query_bytes == 1_572_864 + 911_616 + 2_097_152 == 4_581_632
    assert (f.query_growth, f.growth_percent, f.growth_source) == (1.0, 100, None)
    assert f.per_query_counted_bytes == 4_581_632
    assert f.overhead_bytes == OVERHEAD_ESTIMATE_BYTES == 397_541_376
    assert f.overhead_source == (
        "estimate: RSS of python + torch + transformers + fastapi before a model loads "
        "(measured on Linux, torch 2.13)"
    )
    assert f.fixed_bytes == 988_065_536 + 397_541_376
    assert f.total_bytes(0) == 1_385_606_912
    assert f.total_bytes(3) == 1_385_606_912 + 3 * 4_581_632
    # bfloat16 on disk, float16 asked: same width, still a conversion (both copies resident)
    assert (f.checkpoint_bytes, f.converts) == (988_065_536, True)
    assert f.load_spike_bytes == 988_065_536
    assert f.load_peak_bytes == 1_385_606_912 + 988_065_536


def test_a_long_prompt_makes_attention_the_larger_prefill_tensor() -> None:
    from mpsctl.plan.presets import PRESETS

    f = compute_figures(PRESETS["qwen2.5-0.5b"], "float32", prompt_tokens=1024, max_new_tokens=1)
    # attention 1024 x (2 x 896 + 2 x 128) + 14 x 1024^2 = 16,777,216 > mlp 14,942,208
    assert f.activation_bytes == 4 * (2 * 1024 * 896 + 16_777_216) == 74_448_896
    assert f.kv_cache_per_query_bytes == 2 * 24 * 2 * 64 * 4 * 1025
    assert f.logits_bytes == 151_936 * 8
    assert (f.converts, f.load_spike_bytes) == (True, 988_065_536)


def test_an_unknown_stored_dtype_is_no_conversion() -> None:
    from dataclasses import replace

    from mpsctl.plan.presets import PRESETS

    arch = replace(PRESETS["qwen2.5-0.5b"], checkpoint_dtype=None)
    f = compute_figures(arch, "float32", prompt_tokens=8, max_new_tokens=8)
    assert (f.checkpoint_bytes, f.converts, f.load_spike_bytes) == (None, False, 0)
    # the headers' width alone: 2 bytes stored, 4 asked, a conversion of the stored bytes
    headers = replace(arch, stored_dtype_bytes=2, header_bytes=1_000)
    g = compute_figures(headers, "float32", prompt_tokens=8, max_new_tokens=8)
    assert (g.checkpoint_bytes, g.converts, g.load_spike_bytes) == (1_000, True, 1_000)
    same = compute_figures(headers, "float16", prompt_tokens=8, max_new_tokens=8)
    assert (same.converts, same.load_spike_bytes) == (False, 0)


def test_the_stored_dtype_loads_without_a_spike_and_the_cpu_counts_three_times() -> None:
    from mpsctl.plan.memory import CPU_GROWTH_SOURCE
    from mpsctl.plan.presets import PRESETS

    f = compute_figures(
        PRESETS["qwen2.5-0.5b"], "bfloat16", prompt_tokens=64, max_new_tokens=64,
        overhead_bytes=500_000_000, overhead_source="the service's memory report", device="cpu",
    )  # fmt: skip
    assert (f.converts, f.load_spike_bytes) == (False, 0)
    assert f.load_peak_bytes == 988_065_536 + 500_000_000
    assert (f.overhead_bytes, f.overhead_source) == (500_000_000, "the service's memory report")
    assert (f.query_growth, f.growth_percent, f.growth_source) == (3.0, 300, CPU_GROWTH_SOURCE)
    assert f.per_query_counted_bytes == 3 * 4_581_632
    assert f.total_bytes(2) == 1_488_065_536 + 6 * 4_581_632
    unnamed = compute_figures(
        PRESETS["qwen2.5-0.5b"], "bfloat16", prompt_tokens=1, max_new_tokens=1,
        overhead_bytes=1, device="cuda",
    )  # fmt: skip
    assert (unnamed.overhead_source, unnamed.query_growth) == ("the service's memory report", 1.0)


def test_a_counted_figure_rounds_up_to_a_whole_byte() -> None:
    from dataclasses import replace

    from mpsctl.plan.presets import PRESETS

    f = compute_figures(PRESETS["qwen2.5-0.5b"], "float16", prompt_tokens=1, max_new_tokens=0)
    odd = replace(f, kv_cache_per_query_bytes=1, logits_bytes=0, activation_bytes=0,
                  query_growth=1.01)  # fmt: skip
    assert (odd.per_query_bytes, odd.growth_percent, odd.per_query_counted_bytes) == (1, 101, 2)
