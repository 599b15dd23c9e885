"""A decoder's shape, from ``config.json`` and the safetensors headers, without torch.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes
of JSON: for every tensor its dtype, shape and byte range. Reading only that header gives
the exact parameter count and bytes of a checkpoint of any size in milliseconds.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mpsctl.errors import ConfigError
from mpsctl.plan.reading import MAX_CONFIG_BYTES, load_json, read_regular_file

#: bytes per element of the safetensors dtype names
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
#: torch dtype names a plan accepts, and their bytes per element
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
#: a header above this is not a checkpoint header (real ones are tens of KiB; the
#: safetensors library itself refuses headers over 100,000,000 bytes)
MAX_HEADER_BYTES = 100_000_000
#: no real dimension of a decoder comes near this; it keeps every product in range
MAX_DIMENSION = 2**31
#: the names transformers gives the output projection and the embedding it may share
LM_HEAD = "lm_head.weight"


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
    #: config.json's max_position_embeddings: the longest prompt + reply the model takes
    max_positions: int | None = None
    #: from the safetensors headers when a directory was read: exact, not a formula
    header_parameters: int | None = None
    header_bytes: int | None = None
    #: bytes per element the checkpoint is stored in (the headers', else the config's)
    stored_dtype_bytes: int | None = None

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

    @property
    def checkpoint_bytes(self) -> int | None:
        """The bytes of the stored tensors (each parameter once), when known."""
        if self.header_bytes is not None:
            return self.header_bytes
        size = DTYPE_BYTES.get(self.checkpoint_dtype or "")
        return None if size is None else self.parameters * size


_REQUIRED = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
)  # fmt: skip


def _positive_int(config: dict[str, Any], key: str, where: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        got = "missing" if value is None else repr(value)
        raise ConfigError(f"{where}: {key} must be a positive integer ({got})")
    if value >= MAX_DIMENSION:
        raise ConfigError(f"{where}: {key} = {value} is out of range (not a real model)")
    return value


def _optional_int(config: dict[str, Any], key: str, where: Path) -> int | None:
    return None if config.get(key) is None else _positive_int(config, key, where)


def _bool(config: dict[str, Any], key: str, where: Path, default: bool) -> bool:
    """A JSON true/false: the string "false" is not false, and Python's bool("false") is
    true, so anything else is refused rather than guessed."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false ({value!r})")
    return value


def architecture_from_config(config: dict[str, Any], where: Path, name: str) -> Architecture:
    # multimodal and some newer configs nest the decoder's figures under text_config
    text = config.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in config:
        config = {**config, **text}
    for key in _REQUIRED:
        _positive_int(config, key, where)
    heads = config["num_attention_heads"]
    kv_heads = _optional_int(config, "num_key_value_heads", where) or heads
    if heads % kv_heads:
        raise ConfigError(f"{where}: num_key_value_heads ({kv_heads}) must divide "
                          f"num_attention_heads ({heads})")  # fmt: skip
    head_dim = _optional_int(config, "head_dim", where) or config["hidden_size"] // heads
    if head_dim == 0:
        raise ConfigError(f"{where}: hidden_size ({config['hidden_size']}) is smaller than "
                          f"num_attention_heads ({heads}) and no head_dim is given")  # fmt: skip
    dtype = config.get("dtype") or config.get("torch_dtype")
    # Qwen2's attention always has q/k/v biases; Llama-style configs say so in attention_bias
    attention_bias = _bool(config, "attention_bias", where, False)
    qkv_bias = config.get("model_type") == "qwen2" or attention_bias
    return Architecture(
        name=name,
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=config["vocab_size"],
        tie_word_embeddings=_bool(config, "tie_word_embeddings", where, False),
        head_dim=head_dim,
        qkv_bias=qkv_bias,
        checkpoint_dtype=dtype if isinstance(dtype, str) else None,
        source=f"{where}",
        max_positions=_optional_int(config, "max_position_embeddings", where),
    )


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of one ``.safetensors`` file and the size of its data section (the
    tensors are not read)."""
    raw = read_regular_file(path, 8, "safetensors file", whole=False)
    if len(raw) < 8:
        raise ConfigError(f"{path}: truncated safetensors file ({len(raw)} bytes)")
    (length,) = struct.unpack("<Q", raw)
    size = path.stat().st_size
    if length > MAX_HEADER_BYTES or length > size - 8:
        raise ConfigError(
            f"{path}: truncated or corrupt safetensors header (says {length} bytes, "
            f"file has {size})"
        )
    header = load_json(read_regular_file(path, 8 + length, "safetensors file", whole=False)[8:],
                       f"{path}: corrupt safetensors header")  # fmt: skip
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, size - 8 - length


def _tensor(entry: Any, data_size: int) -> tuple[int, int]:
    """(elements, bytes) of one header entry; ValueError unless its dtype, shape and byte
    range agree with each other and with the file."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES or not isinstance(shape, list):
        raise ValueError("dtype or shape")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < MAX_DIMENSION:
            raise ValueError("shape")
    count = math.prod(shape)
    nbytes = count * SAFETENSORS_DTYPE_BYTES[dtype]
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(v) is int for v in offsets)):  # fmt: skip
        raise ValueError("data_offsets")
    start, end = offsets
    if not 0 <= start <= end <= data_size or end - start != nbytes:
        raise ValueError("data_offsets do not match the shape")
    return count, nbytes


def count_safetensors(paths: list[Path], *, tied: bool = False) -> tuple[int, int, int | None]:
    """(elements, bytes, bytes per element) of every tensor in ``paths``, from their
    headers; with ``tied``, a stored ``lm_head.weight`` is left out (transformers ties it
    to the embedding matrix: one tensor in memory, whatever the file holds)."""
    elements = nbytes = 0
    widths: set[int] = set()
    for path in paths:
        header, data_size = read_safetensors_header(path)
        for name, entry in header.items():
            if name == "__metadata__" or (tied and name == LM_HEAD):
                continue
            try:
                count, size = _tensor(entry, data_size)
            except ValueError:
                shown = name if len(name) <= 80 else name[:77] + "..."
                raise ConfigError(
                    f"{path}: corrupt safetensors header (tensor {shown!r})"
                ) from None
            elements += count
            nbytes += size
            if count:
                widths.add(size // count)
    return elements, nbytes, (widths.pop() if len(widths) == 1 else None)


def read_model_dir(directory: Path) -> Architecture:
    """The architecture in ``directory``'s config.json, with exact counts from its headers."""
    if not directory.exists():
        raise ConfigError(f"--model: no such directory: {directory}")
    if not directory.is_dir():
        raise ConfigError(f"--model: {directory} is not a directory")
    config_path = directory / "config.json"
    if not config_path.exists() and not config_path.is_symlink():
        raise ConfigError(f"{config_path}: no such file (not a model directory?)")
    raw = read_regular_file(config_path, MAX_CONFIG_BYTES, "config.json")
    config = load_json(raw, str(config_path))
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: not a JSON object")
    arch = architecture_from_config(config, config_path, directory.name)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return arch
    elements, nbytes, width = count_safetensors(files, tied=arch.tie_word_embeddings)
    return replace(
        arch, header_parameters=elements, header_bytes=nbytes, stored_dtype_bytes=width,
        source=f"{config_path} + {len(files)} safetensors header(s)",
    )  # fmt: skip
