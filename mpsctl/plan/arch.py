"""A decoder's shape, from ``config.json`` and the safetensors headers, without torch.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes
of JSON: for every tensor its dtype, shape and byte range. Reading only that header gives
the exact parameter count and bytes of a checkpoint of any size in milliseconds.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsctl.errors import ConfigError

#: bytes per element of the safetensors dtype names
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
#: torch dtype names a plan accepts, and their bytes per element
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
#: a header above this is not a checkpoint header (real ones are tens of KiB)
MAX_HEADER_BYTES = 100 * 1024**2


@dataclass(frozen=True)
class Architecture:
    """What the memory model needs of a Qwen2/Llama-style decoder."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int
    qkv_bias: bool
    checkpoint_dtype: str | None
    source: str
    #: from the safetensors headers when a directory was read: exact, not a formula
    header_parameters: int | None = None
    header_bytes: int | None = None

    @property
    def formula_parameters(self) -> int:
        """Embeddings, per layer q/k/v (+bias) o_proj, MLP gate/up/down and two RMSNorms,
        the final norm, and lm_head unless it shares the embedding matrix."""
        h, kv_dim = self.hidden_size, self.num_key_value_heads * self.head_dim
        q_dim = self.num_attention_heads * self.head_dim
        attention = h * q_dim + 2 * h * kv_dim + q_dim * h
        if self.qkv_bias:
            attention += q_dim + 2 * kv_dim
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        embed = self.vocab_size * h
        lm_head = 0 if self.tie_word_embeddings else embed
        return embed + self.num_hidden_layers * per_layer + h + lm_head

    @property
    def parameters(self) -> int:
        return (
            self.header_parameters
            if self.header_parameters is not None
            else self.formula_parameters
        )


_REQUIRED = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
)  # fmt: skip


def _positive_int(config: dict[str, Any], key: str, where: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        got = "missing" if value is None else repr(value)
        raise ConfigError(f"{where}: {key} must be a positive integer ({got})")
    return value


def architecture_from_config(config: dict[str, Any], where: Path, name: str) -> Architecture:
    # multimodal and some newer configs nest the decoder's figures under text_config
    text = config.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in config:
        config = {**config, **text}
    for key in _REQUIRED:
        _positive_int(config, key, where)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    for key, value in (("num_key_value_heads", kv_heads), ("head_dim", head_dim)):
        _positive_int({key: value}, key, where)
    dtype = config.get("dtype") or config.get("torch_dtype")
    # Qwen2's attention always has q/k/v biases; Llama-style configs say so in attention_bias
    qkv_bias = config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False))
    return Architecture(
        name=name,
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=config["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=head_dim,
        qkv_bias=qkv_bias,
        checkpoint_dtype=dtype if isinstance(dtype, str) else None,
        source=f"{where}",
    )


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one ``.safetensors`` file (the tensors are not read)."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            head = handle.read(8)
            if len(head) < 8:
                raise ConfigError(f"{path}: truncated safetensors file ({len(head)} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise ConfigError(
                    f"{path}: truncated or corrupt safetensors header (says {length} bytes, "
                    f"file has {size})"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header


def count_safetensors(paths: list[Path]) -> tuple[int, int]:
    """(elements, bytes) of every tensor in ``paths``, from their headers."""
    elements = nbytes = 0
    for path in paths:
        for name, entry in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = entry["dtype"], entry["shape"]
                count = math.prod(int(d) for d in shape)
                nbytes += count * SAFETENSORS_DTYPE_BYTES[dtype]
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path}: corrupt safetensors header (tensor {name!r})") from None
            elements += count
    return elements, nbytes


def read_model_dir(directory: Path) -> Architecture:
    """The architecture in ``directory``'s config.json, with exact counts from its headers."""
    if not directory.exists():
        raise ConfigError(f"--model: no such directory: {directory}")
    if not directory.is_dir():
        raise ConfigError(f"--model: {directory} is not a directory")
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: no such file (not a model directory?)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{config_path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: not a JSON object")
    arch = architecture_from_config(config, config_path, directory.name)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return arch
    elements, nbytes = count_safetensors(files)
    return Architecture(
        **{**arch.__dict__, "header_parameters": elements, "header_bytes": nbytes,
           "source": f"{config_path} + {len(files)} safetensors header(s)"},
    )  # fmt: skip
