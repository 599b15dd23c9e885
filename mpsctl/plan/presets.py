"""Published Qwen2.5 architectures, so a plan needs no download.

Each figure is the ``config.json`` of the Hugging Face repository
``Qwen/Qwen2.5-<size>-Instruct`` (https://huggingface.co/Qwen/Qwen2.5-<size>-Instruct,
file ``config.json``): ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``vocab_size``, ``tie_word_embeddings``,
``max_position_embeddings`` and ``torch_dtype``. The parameter counts in the comments are
the model cards' own
("Number of Parameters"); the formula in :mod:`mpsctl.plan.arch` reproduces them.
Qwen2 puts biases on the q/k/v projections (not on o_proj or the MLP).
"""

from __future__ import annotations

from mpsctl.plan.arch import Architecture


def _qwen(size: str, hidden: int, inter: int, layers: int, heads: int, kv: int,
          vocab: int, tied: bool) -> Architecture:  # fmt: skip
    return Architecture(
        name=f"qwen2.5-{size.lower()}",
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        head_dim=hidden // heads,
        qkv_bias=True,
        checkpoint_dtype="bfloat16",
        source=f"preset: config.json of Qwen/Qwen2.5-{size}-Instruct on Hugging Face",
        # the shipped configs say 32,768 (the cards' 131,072 needs YaRN rope scaling)
        max_positions=32768,
    )


#: name -> architecture, smallest first (the "next size down" search walks this order)
PRESETS: dict[str, Architecture] = {
    # Qwen/Qwen2.5-0.5B-Instruct config.json; card: 0.49B parameters
    "qwen2.5-0.5b": _qwen("0.5B", 896, 4864, 24, 14, 2, 151936, True),
    # Qwen/Qwen2.5-1.5B-Instruct config.json; card: 1.54B parameters
    "qwen2.5-1.5b": _qwen("1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    # Qwen/Qwen2.5-3B-Instruct config.json; card: 3.09B parameters
    "qwen2.5-3b": _qwen("3B", 2048, 11008, 36, 16, 2, 151936, True),
    # Qwen/Qwen2.5-7B-Instruct config.json; card: 7.61B parameters
    "qwen2.5-7b": _qwen("7B", 3584, 18944, 28, 28, 4, 152064, False),
    # Qwen/Qwen2.5-14B-Instruct config.json; card: 14.7B parameters
    "qwen2.5-14b": _qwen("14B", 5120, 13824, 48, 40, 8, 152064, False),
    # Qwen/Qwen2.5-32B-Instruct config.json; card: 32.5B parameters
    "qwen2.5-32b": _qwen("32B", 5120, 27648, 64, 40, 8, 152064, False),
    # Qwen/Qwen2.5-72B-Instruct config.json; card: 72.7B parameters
    "qwen2.5-72b": _qwen("72B", 8192, 29568, 80, 64, 8, 152064, False),
}
