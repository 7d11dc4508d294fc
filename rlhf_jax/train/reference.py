"""Reference-model log-probs for DPO and KTO: cached once per data set, or on the fly.

The reference model is frozen, so its summed completion log-probs are a fixed column of
the data set. In "cached" mode (`config.reference.mode`) one pass over each data set
computes them, stores them as `.npz` under a key made of the data's fingerprint (the
token arrays), the reference parameters' fingerprint and the model config, and the
trainer adds them to every batch by `example_index`: no reference forward per step
(TRL's `precompute_ref_log_probs`). "on_the_fly" mode runs the reference forward on
each batch instead (same numbers, more compute, no cache).

Columns: pairs get `ref_chosen_logps`, `ref_rejected_logps`; unpaired (KTO) data gets
`ref_logps` and, for its mismatched pairs, `ref_kl_logps`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import objectives

__all__ = [
    "REFERENCE_GROUPS",
    "ReferenceTable",
    "arrays_fingerprint",
    "compute_reference_logps",
    "load_or_compute",
    "make_reference_fn",
    "padded_batches",
    "params_fingerprint",
    "reference_groups",
]

_log = logging.getLogger(__name__)
_CACHE_VERSION = 1

# (tokens, attention mask, loss mask, output column) per data layout.
REFERENCE_GROUPS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "pairs": (
        ("chosen_tokens", "chosen_attention_mask", "chosen_loss_mask", "ref_chosen_logps"),
        ("rejected_tokens", "rejected_attention_mask", "rejected_loss_mask", "ref_rejected_logps"),
    ),
    "unpaired": (
        ("tokens", "attention_mask", "loss_mask", "ref_logps"),
        ("kl_tokens", "kl_attention_mask", "kl_loss_mask", "ref_kl_logps"),
    ),
    "sequences": (),
}


def reference_groups(data_kind: str, keys: Sequence[str]) -> tuple[tuple[str, str, str, str], ...]:
  """The sequence groups of `data_kind` whose arrays are present in `keys`."""
  return tuple(g for g in REFERENCE_GROUPS[data_kind] if g[0] in keys)


def make_reference_fn(model: Any, groups: Sequence[tuple[str, str, str, str]], mesh: Mesh,
                      param_shardings: Any, *, replicate_outputs: bool,
                      compiler_options: Mapping[str, Any] | None = None,
                      shared_layout: Any = None):
  """A jitted `(ref_params, batch) -> {column: [B] log-probs}`.

  All groups go through one forward pass (concatenated along the batch), or for pairs
  with a `shared_layout` (`shared_prompt.SharedPromptLayout`) one packed row per pair.
  Outputs are replicated (for the host-side cache) or split like the batch (on the fly).
  """
  groups = tuple(groups)
  if shared_layout is not None and groups != REFERENCE_GROUPS["pairs"]:
    raise ValueError("make_reference_fn: shared_layout needs the chosen and rejected groups of pairs.")

  def reference_fn(ref_params, batch):
    if "packed_tokens" in batch:  # padding-free rows (data.padding_free, on the fly)
      logps = objectives.pair_logps(model, ref_params, batch)
      return {"ref_chosen_logps": logps["chosen_logps"], "ref_rejected_logps": logps["rejected_logps"]}
    if shared_layout is not None:
      logps = objectives.pair_logps(model, ref_params, batch, shared_layout)
      return {"ref_chosen_logps": logps["chosen_logps"], "ref_rejected_logps": logps["rejected_logps"]}
    tokens = jnp.concatenate([batch[g[0]] for g in groups], axis=0)
    attention = jnp.concatenate([batch[g[1]] for g in groups], axis=0)
    loss_mask = jnp.concatenate([batch[g[2]] for g in groups], axis=0)
    logps, _ = objectives.sequence_logps(model, ref_params, tokens, attention, loss_mask)
    size = batch[groups[0][0]].shape[0]
    return {g[3]: logps[i * size:(i + 1) * size] for i, g in enumerate(groups)}

  out = mesh_lib.replicated(mesh) if replicate_outputs else mesh_lib.batch_sharding(mesh)
  return jax.jit(reference_fn, in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=out, compiler_options=compiler_options)


def arrays_fingerprint(arrays: Mapping[str, np.ndarray], keys: Sequence[str]) -> str:
  """sha256 of the named arrays (dtype, shape and bytes), in the given order."""
  digest = hashlib.sha256()
  for key in keys:
    value = np.ascontiguousarray(arrays[key])
    digest.update(f"{key}:{value.dtype}:{value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


# Parameters up to this many elements are hashed exactly (their bytes); larger models
# (or multi-process runs) hash per-leaf statistics computed on device instead.
_EXACT_HASH_LIMIT = 1 << 26


@jax.jit
def _leaf_statistics(params):
  def stats(x):
    x = jnp.asarray(x, jnp.float32).reshape(-1)
    # A fixed pseudo-random weighting catches permutations that plain sums miss.
    weights = jnp.sin(jnp.arange(x.shape[0], dtype=jnp.float32) * 0.7071 + 0.1)
    return jnp.stack([jnp.sum(x), jnp.sum(jnp.abs(x)), jnp.sum(x * weights)])
  return jax.tree.map(stats, params)


def params_fingerprint(params: Any) -> str:
  """A sha256 fingerprint of a parameter tree (structure, shapes, dtypes and values)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  digest = hashlib.sha256()
  total = sum(math.prod(leaf.shape) for _, leaf in leaves)
  exact = jax.process_count() == 1 and total <= _EXACT_HASH_LIMIT
  digest.update(b"exact" if exact else b"stats")
  values = None if exact else jax.device_get(_leaf_statistics(params))
  flat_values = jax.tree.leaves(values) if values is not None else None
  for i, (path, leaf) in enumerate(leaves):
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
    if exact:
      digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    else:
      digest.update(np.asarray(flat_values[i], np.float32).tobytes())
  return digest.hexdigest()


def padded_batches(arrays: Mapping[str, np.ndarray], keys: Sequence[str], batch_size: int):
  """Batches of the arrays in row order; the last one padded by repeating row 0.

  Yields (batch dict, number of real rows)."""
  size = len(arrays[keys[0]])
  for start in range(0, size, batch_size):
    rows = np.arange(start, min(start + batch_size, size))
    valid = len(rows)
    if valid < batch_size:
      rows = np.concatenate([rows, np.zeros(batch_size - valid, rows.dtype)])
    yield {k: np.asarray(arrays[k])[rows] for k in keys}, valid


def compute_reference_logps(
    reference_fn: Any,
    ref_params: Any,
    arrays: Mapping[str, np.ndarray],
    groups: Sequence[tuple[str, str, str, str]],
    *,
    batch_size: int,
    mesh: Mesh,
) -> dict[str, np.ndarray]:
  """One pass of the reference over every row: {column: float32 [N]} in row order."""
  keys = [k for g in groups for k in g[:3]]
  columns: dict[str, list[np.ndarray]] = {g[3]: [] for g in groups}
  for batch, valid in padded_batches(arrays, keys, batch_size):
    outputs = reference_fn(ref_params, mesh_lib.shard_batch(batch, mesh))
    for name, value in jax.device_get(outputs).items():
      columns[name].append(np.asarray(value, np.float32)[:valid])
  return {name: np.concatenate(parts) for name, parts in columns.items()}


@dataclasses.dataclass(frozen=True)
class ReferenceTable:
  """Reference log-prob columns looked up by `example_index`.

  Attributes:
    example_index: int64 [N], sorted.
    columns: {name: float32 [N]} aligned with `example_index`.
    path: the cache file, or None when not cached.
    hit: True when the columns were read from an existing cache file.
  """

  example_index: np.ndarray
  columns: Mapping[str, np.ndarray]
  path: str | None = None
  hit: bool = False

  @classmethod
  def from_rows(cls, example_index: np.ndarray, columns: Mapping[str, np.ndarray], **kwargs) -> "ReferenceTable":
    example_index = np.asarray(example_index, np.int64)
    order = np.argsort(example_index, kind="stable")
    if len(np.unique(example_index)) != len(example_index):
      raise ValueError("reference table: `example_index` values are not unique.")
    return cls(example_index[order], {k: np.asarray(v, np.float32)[order] for k, v in columns.items()}, **kwargs)

  def lookup(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with its reference columns added (rows found by `example_index`)."""
    wanted = np.asarray(batch["example_index"], np.int64)
    position = np.searchsorted(self.example_index, wanted)
    position = np.minimum(position, len(self.example_index) - 1)
    missing = self.example_index[position] != wanted
    if np.any(missing):
      raise KeyError(f"reference table has no entry for example_index {wanted[missing][:5].tolist()}.")
    result = dict(batch)
    for name, column in self.columns.items():
      result[name] = column[position]
    return result


def load_or_compute(
    *,
    cache_dir: str | os.PathLike[str] | None,
    name: str,
    arrays: Mapping[str, np.ndarray],
    groups: Sequence[tuple[str, str, str, str]],
    params_fp: str,
    model_description: Mapping[str, Any],
    compute: Any,
) -> ReferenceTable:
  """The reference table of one data set, from the `.npz` cache or computed and stored.

  Args:
    cache_dir: folder of the cache; None computes without caching.
    name: a label for the file name and messages ("train", "eval").
    arrays: the data set's arrays (`example_index` and the groups' token arrays).
    groups: `reference_groups(...)`.
    params_fp: `params_fingerprint` of the reference parameters.
    model_description: JSON-able description of the reference model (its config).
    compute: `arrays -> {column: [N]}` (e.g. a partial of `compute_reference_logps`).
  """
  keys = [k for g in groups for k in g[:3]]
  key_payload = json.dumps({
      "version": _CACHE_VERSION,
      "data": arrays_fingerprint(arrays, keys + ["example_index"]),
      "params": params_fp,
      "model": model_description,
      "columns": [g[3] for g in groups],
  }, sort_keys=True)
  key = hashlib.sha256(key_payload.encode()).hexdigest()
  path = None
  if cache_dir is not None:
    path = Path(cache_dir) / f"reference_{name}_{key[:20]}.npz"
    if path.is_file():
      with np.load(path, allow_pickle=False) as stored:
        if str(stored["key"]) == key:
          columns = {g[3]: stored[g[3]] for g in groups}
          _log.info("reference log-probs for %s: cache hit %s", name, path)
          return ReferenceTable.from_rows(stored["example_index"], columns, path=str(path), hit=True)
      _log.warning("reference cache %s has another key; recomputing.", path)
  columns = compute(arrays)
  table = ReferenceTable.from_rows(arrays["example_index"], columns, path=str(path) if path else None)
  if path is not None and jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(temporary, key=np.asarray(key), example_index=np.asarray(arrays["example_index"], np.int64),
             **{k: np.asarray(v, np.float32) for k, v in columns.items()})
    os.replace(temporary, path)  # atomic: readers see the old file or the whole new one
    _log.info("reference log-probs for %s: computed and cached in %s", name, path)
  return table
