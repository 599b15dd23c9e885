"""The memory model: what one loaded model and each query in flight hold, in bytes.

Every figure is explained in :func:`explain` and in docs/plan.md. The model assumes the
way the reference service generates: one ``model.generate`` per query (batch of one),
greedy, with transformers' dynamic KV cache, queries running side by side in threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsctl.plan.arch import DTYPE_BYTES, Architecture

#: RSS of the reference service's process before any model is loaded (python 3.11 with
#: torch 2.13, transformers 5.24, fastapi and uvicorn imported), measured on Linux: the
#: framework's own memory when no running service reports a better figure.
OVERHEAD_ESTIMATE_BYTES = 397_541_376
#: bytes of the float32 copy generate() makes of the last position's logits
#: (``outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`` in transformers 5.x)
FLOAT32_BYTES = 4
#: On the CPU a query grows the process's RSS by more than its tensors: glibc's per-thread
#: arenas and the allocator's cached blocks (each worker thread keeps its own). Measured
#: with tests/benchmarks/bench_plan_sweep.py (the 0.5b demo, float32, the reference service
#: on Linux; RSS growth over idle / the plan's per-query tensors, per concurrency level);
#: docs/plan.md has the runs. The plan multiplies the per-query figure by the largest
#: ratio measured, so the concurrency it allows on the CPU is one the runs showed.
CPU_QUERY_GROWTH = 3.0
CPU_GROWTH_SOURCE = (
    "measured: RSS growth per query on the CPU is up to 3x its tensors (glibc arenas, "
    "cached blocks; tests/benchmarks/bench_plan_sweep.py, docs/plan.md)"
)


@dataclass(frozen=True)
class Figures:
    dtype: str
    dtype_bytes: int
    prompt_tokens: int
    max_new_tokens: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_per_query_bytes: int
    logits_bytes: int
    activation_bytes: int
    overhead_bytes: int
    overhead_source: str
    #: the stored tensors' bytes, and whether loading converts them to ``dtype``
    checkpoint_bytes: int | None = None
    converts: bool = False
    #: how much one query grows the process beyond its tensors (1.0 off the CPU)
    query_growth: float = 1.0
    growth_source: str | None = None

    @property
    def peak_per_query_bytes(self) -> int:
        """The transient part of one query: prefill activations and the logits."""
        return self.logits_bytes + self.activation_bytes

    @property
    def per_query_bytes(self) -> int:
        """One query's tensors: its KV cache and its peak."""
        return self.kv_cache_per_query_bytes + self.peak_per_query_bytes

    @property
    def per_query_counted_bytes(self) -> int:
        """What the plan counts per query: the tensors x the measured growth."""
        # in hundredths, with integers: a float would overflow on absurd token counts
        return -(-self.per_query_bytes * self.growth_percent // 100)

    @property
    def growth_percent(self) -> int:
        return round(self.query_growth * 100)

    @property
    def fixed_bytes(self) -> int:
        return self.weights_bytes + self.overhead_bytes

    @property
    def load_spike_bytes(self) -> int:
        """What loading holds beyond the loaded model: ``from_pretrained`` on the CPU maps
        the checkpoint and, when it converts the dtype, builds the converted copy while the
        source pages are resident, so both are in RAM at once (measured within 7 %: the
        0.5b demo's bf16 checkpoint loaded as float32 and as float16, tests/plan/
        test_load_spike.py). Loading in the stored dtype maps the file and copies nothing."""
        return (self.checkpoint_bytes or 0) if self.converts else 0

    @property
    def load_peak_bytes(self) -> int:
        """The host's memory at the end of ``from_pretrained``, before the move to MPS or
        CUDA and before any query: overhead + the model in ``dtype`` + the spike."""
        return self.fixed_bytes + self.load_spike_bytes

    def total_bytes(self, concurrent: int) -> int:
        return self.fixed_bytes + concurrent * self.per_query_counted_bytes


def kv_bytes_per_token(arch: Architecture, dtype_bytes: int) -> int:
    """Keys and values (2) of every layer, for every KV head, per position."""
    return 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * dtype_bytes


def logits_bytes(arch: Architecture, dtype_bytes: int) -> int:
    """transformers' generate() passes ``logits_to_keep=1`` to models that accept it (Qwen2,
    Llama, ...): every forward pass, the prefill included, computes the logits of the last
    position only, then copies them to float32 for the logits processors."""
    return arch.vocab_size * dtype_bytes + arch.vocab_size * FLOAT32_BYTES


def activation_bytes(arch: Architecture, dtype_bytes: int, prompt_tokens: int) -> int:
    """The largest set of intermediate tensors alive at once, during the prefill of the
    prompt (every later step computes one position): the residual stream and its normed
    copy, plus the larger of the MLP's three intermediate-size tensors (act(gate), up and
    their product) and attention's q/k/v/output with the heads x positions x positions
    score matrix (materialised when attention runs in plain math, as on MPS and CPU)."""
    h, p = arch.hidden_size, prompt_tokens
    q_dim = arch.num_attention_heads * arch.head_dim
    kv_dim = arch.num_key_value_heads * arch.head_dim
    mlp = 3 * p * arch.intermediate_size
    attention = p * (2 * q_dim + 2 * kv_dim) + arch.num_attention_heads * p * p
    return dtype_bytes * (2 * p * h + max(mlp, attention))


def weights_bytes(arch: Architecture, dtype_bytes: int) -> int:
    """Every parameter once (a tied lm_head shares the embedding matrix), in the dtype
    ``from_pretrained(dtype=...)`` casts it to."""
    return arch.parameters * dtype_bytes


def compute_figures(
    arch: Architecture,
    dtype: str,
    *,
    prompt_tokens: int,
    max_new_tokens: int,
    overhead_bytes: int | None = None,
    overhead_source: str | None = None,
    device: str = "mps",
) -> Figures:
    size = DTYPE_BYTES[dtype]
    # presets and configs name the stored dtype; headers give its width exactly
    stored = arch.stored_dtype_bytes or DTYPE_BYTES.get(arch.checkpoint_dtype or "")
    converts = stored is not None and (stored != size or (
        arch.checkpoint_dtype in DTYPE_BYTES and arch.checkpoint_dtype != dtype))  # fmt: skip
    per_token = kv_bytes_per_token(arch, size)
    if overhead_bytes is None:
        overhead_bytes = OVERHEAD_ESTIMATE_BYTES
        overhead_source = (
            "estimate: RSS of python + torch + transformers + fastapi before a model loads "
            "(measured on Linux, torch 2.13)"
        )
    return Figures(
        dtype=dtype,
        dtype_bytes=size,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        weights_bytes=weights_bytes(arch, size),
        kv_bytes_per_token=per_token,
        kv_cache_per_query_bytes=per_token * (prompt_tokens + max_new_tokens),
        logits_bytes=logits_bytes(arch, size),
        activation_bytes=activation_bytes(arch, size, prompt_tokens),
        overhead_bytes=overhead_bytes,
        overhead_source=overhead_source or "the service's memory report",
        checkpoint_bytes=arch.checkpoint_bytes,
        converts=converts,
        query_growth=CPU_QUERY_GROWTH if device == "cpu" else 1.0,
        growth_source=CPU_GROWTH_SOURCE if device == "cpu" else None,
    )
