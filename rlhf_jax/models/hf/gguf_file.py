"""GGUF files (llama.cpp's format) read as if they were Hugging Face checkpoints.

The `gguf` library (llama.cpp's own reader) parses the file; this module turns its
metadata into a config.json dict and its tensor names into Hugging Face names, and
dequantizes each tensor to float32 when it is read (Q4_0, Q4_1, Q8_0, K-quants, F16, ...:
whatever `gguf.quants.dequantize` knows). The Llama architecture only: llama.cpp's
converter permutes the rows of the query and key projections to its interleaved RoPE
layout (pairs (2i, 2i + 1) of a head rotate together, where Hugging Face and we rotate
(i, i + Dh/2)); reading undoes that permutation.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_jax.models.hf.families import CheckpointError

__all__ = ["GGUFCheckpoint", "read_gguf", "unpermute_rope_rows"]

# GGUF tensor names of the Llama architecture -> Hugging Face names ({} = layer index).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's RoPE row permutation of a q or k projection [heads * Dh, D].

  In a head, llama.cpp's row 2i + r (r = 0, 1) is Hugging Face's row r * Dh/2 + i.
  """
  rows, columns = weight.shape
  head_dim = rows // heads
  return weight.reshape(heads, head_dim // 2, 2, columns).swapaxes(1, 2).reshape(rows, columns)


def read_gguf(path: str | os.PathLike[str]) -> Any:
  """The `gguf.GGUFReader` of a GGUF file (metadata parsed, tensors memory-mapped), one
  parse per (path, modification time, size, inode): parsing the metadata (tens of
  thousands of vocabulary strings and merges) takes seconds, and a run reads the file
  several times (architecture, weights, score head, tokenizer); a rewritten file is
  parsed again. Raises what the reader raises (OSError, ValueError, ...)."""
  stat = os.stat(path)
  return _parse_gguf(os.fspath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=4)
def _parse_gguf(path: str, mtime_ns: int, size: int, inode: int) -> Any:
  import gguf  # pylint: disable=g-import-not-at-top

  del mtime_ns, size, inode  # only the cache key
  return gguf.GGUFReader(path)


def _field(reader, key: str, default: Any = ...) -> Any:
  field = reader.fields.get(key)
  if field is None:
    if default is ...:
      raise CheckpointError(f"GGUF metadata {key!r} is missing.")
    return default
  return field.contents()


class GGUFCheckpoint:
  """A GGUF file with the interface of `SafetensorsCheckpoint` (Hugging Face names)."""

  def __init__(self, path: str | os.PathLike[str]):
    import gguf  # pylint: disable=g-import-not-at-top

    self.path = Path(path)
    self.location = str(self.path)
    if not self.path.is_file():
      raise CheckpointError(f"{self.path}: no such GGUF file.")
    try:
      self._reader = read_gguf(self.path)
    except (ValueError, OSError, IndexError, KeyError) as e:
      raise CheckpointError(f"{self.path}: not a readable GGUF file (truncated or corrupt?): {e}") from e
    self._gguf = gguf
    try:
      self.config = self._config()
    except CheckpointError as e:
      raise CheckpointError(f"{self.path}: {e}") from None
    self._tensors: dict[str, Any] = {}
    self._hf_shape: dict[str, tuple[int, ...]] = {}
    for tensor in self._reader.tensors:
      name = self._hf_name(tensor.name)
      self._tensors[name] = tensor
      # GGUF lists dimensions innermost first; NumPy (and Hugging Face) outermost first.
      self._hf_shape[name] = tuple(int(n) for n in reversed(tensor.shape.tolist()))
      expected_bytes = self._expected_bytes(tensor)
      if expected_bytes is not None and tensor.data.nbytes != expected_bytes:
        raise CheckpointError(f"{self.path}: tensor {tensor.name!r} holds {tensor.data.nbytes} bytes, "
                              f"its type and shape need {expected_bytes} (truncated file?).")
    if "lm_head.weight" not in self._tensors:
      self.config["tie_word_embeddings"] = True

  def _expected_bytes(self, tensor) -> int | None:
    sizes = self._gguf.GGML_QUANT_SIZES.get(tensor.tensor_type)
    if sizes is None:
      return None
    block_size, type_size = sizes
    return int(tensor.n_elements) // block_size * type_size

  def _config(self) -> dict[str, Any]:
    reader = self._reader
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
      raise CheckpointError(f"GGUF architecture {architecture!r} is not supported; supported: 'llama'.")
    arch = "llama."
    heads = int(_field(reader, arch + "attention.head_count"))
    d_model = int(_field(reader, arch + "embedding_length"))
    rope_dims = _field(reader, arch + "rope.dimension_count", d_model // heads)
    if rope_dims != d_model // heads:
      raise CheckpointError(f"GGUF {arch}rope.dimension_count {rope_dims} differs from the head "
                            f"dimension {d_model // heads}; partial rotary embeddings are not supported.")
    scaling = _field(reader, arch + "rope.scaling.type", "none")
    config: dict[str, Any] = {
        "model_type": "llama",
        "vocab_size": int(_field(reader, arch + "vocab_size",
                                 len(reader.fields["tokenizer.ggml.tokens"].data)
                                 if "tokenizer.ggml.tokens" in reader.fields else ...)),
        "hidden_size": d_model,
        "num_hidden_layers": int(_field(reader, arch + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, arch + "attention.head_count_kv", heads)),
        "intermediate_size": int(_field(reader, arch + "feed_forward_length")),
        "max_position_embeddings": int(_field(reader, arch + "context_length")),
        "rms_norm_eps": float(_field(reader, arch + "attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, arch + "rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if scaling == "linear":
      config["rope_scaling"] = {"rope_type": "linear", "factor": float(_field(reader, arch + "rope.scaling.factor"))}
    elif scaling not in ("none", ""):
      raise CheckpointError(f"GGUF rope scaling {scaling!r} is not supported; supported: 'none', 'linear'.")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
      raise CheckpointError("GGUF tensor 'rope_freqs.weight' (per-frequency RoPE factors, as in "
                            "Llama 3.1 files) is not supported.")
    return config

  def _hf_name(self, name: str) -> str:
    if name in _GLOBAL_NAMES:
      return _GLOBAL_NAMES[name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if match and match.group(2) in _LAYER_NAMES:
      return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return name  # left as is: reported as unmapped by the loader

  def names(self) -> list[str]:
    return list(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._hf_shape[name]

  def dtype(self, name: str) -> np.dtype:
    return np.dtype(np.float32)

  def where(self, name: str) -> str:
    return f"{self.path} (GGUF tensor {self._tensors[name].name!r})"

  def read(self, name: str, columns: tuple[int, int] | None = None) -> np.ndarray:
    tensor = self._tensors[name]
    try:
      weight = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, ValueError) as e:
      raise CheckpointError(f"{self.where(name)}: cannot dequantize type "
                            f"{tensor.tensor_type.name}: {e}") from e
    weight = np.asarray(weight, np.float32).reshape(self._hf_shape[name])
    if name.endswith("self_attn.q_proj.weight"):
      weight = unpermute_rope_rows(weight, self.config["num_attention_heads"])
    elif name.endswith("self_attn.k_proj.weight"):
      weight = unpermute_rope_rows(weight, self.config["num_key_value_heads"])
    if columns is not None:
      weight = weight[..., columns[0]:columns[1]]
    return weight
