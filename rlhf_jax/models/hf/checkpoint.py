"""Reading and writing the tensors of a Hugging Face checkpoint directory (safetensors).

A directory holds `config.json` and either `model.safetensors` or several shards listed
by `model.safetensors.index.json` ({"weight_map": {tensor name: file name}}). Reading
goes through the `safetensors` library with NumPy arrays (bfloat16 through `ml_dtypes`),
one tensor at a time: each read opens the file, copies that tensor (or only the columns
asked for) out of the memory map and closes it, so the mapped pages of the whole file
never count in the process's memory at once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, which safetensors needs)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from rlhf_jax.models.hf.families import CheckpointError

__all__ = ["INDEX_NAME", "SINGLE_NAME", "SafetensorsCheckpoint", "write_safetensors"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
           "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype(np.float64)}


def read_json(path: Path) -> dict[str, Any]:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise CheckpointError(f"{path}: no such file.") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}).") from e
  if not isinstance(value, dict):
    raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}.")
  return value


class SafetensorsCheckpoint:
  """The tensors of a checkpoint directory: names, shapes, dtypes, and reads by name.

  Opening reads every file's header (not its data), so a missing shard, a tensor the
  index lists but its file lacks, or a file cut short fails here, naming the file.
  """

  def __init__(self, directory: str | os.PathLike[str]):
    self.directory = Path(directory)
    self.location = str(self.directory)
    self.config = read_json(self.directory / "config.json")
    index_path = self.directory / INDEX_NAME
    if index_path.is_file():
      weight_map = read_json(index_path).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no 'weight_map' object of tensor name -> file.")
      files = sorted(set(weight_map.values()))
    elif (self.directory / SINGLE_NAME).is_file():
      weight_map, files = None, [SINGLE_NAME]
    else:
      found = sorted(p.name for p in self.directory.glob("*.safetensors"))
      raise CheckpointError(
          f"{self.directory}: no {SINGLE_NAME} and no {INDEX_NAME}"
          + (f" (found {', '.join(found)}; a sharded checkpoint needs its index)." if found else "."))
    self._file_of: dict[str, Path] = {}
    self._info: dict[str, tuple[tuple[int, ...], str]] = {}
    for file_name in files:
      path = self.directory / file_name
      if not path.is_file():
        raise CheckpointError(f"{index_path}: lists {file_name}, which does not exist.")
      with self._open(path) as f:
        for name in f.keys():
          view = f.get_slice(name)
          self._file_of[name] = path
          self._info[name] = (tuple(view.get_shape()), view.get_dtype())
    if weight_map is not None:
      for name, file_name in weight_map.items():
        if self._file_of.get(name) != self.directory / file_name:
          raise CheckpointError(f"{index_path}: tensor {name!r} is listed in {file_name}, which "
                                "does not hold it.")
      unlisted = sorted(set(self._file_of) - set(weight_map))
      if unlisted:
        raise CheckpointError(f"{index_path}: tensors {unlisted[:5]} are in shard files but not "
                              f"in the index ({len(unlisted)} in all).")
    for name, (_, dtype) in self._info.items():
      if dtype not in _DTYPES:
        raise CheckpointError(f"{self._file_of[name]}: tensor {name!r} has dtype {dtype}; "
                              f"supported: {', '.join(_DTYPES)}.")

  @staticmethod
  def _open(path: Path):
    try:
      return safe_open(os.fspath(path), framework="numpy")
    except (SafetensorError, OSError) as e:
      raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e

  def names(self) -> list[str]:
    return list(self._info)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._info[name][0]

  def dtype(self, name: str) -> np.dtype:
    return _DTYPES[self._info[name][1]]

  def where(self, name: str) -> str:
    return str(self._file_of[name])

  def read(self, name: str, columns: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor `name`, or only `columns` [start, stop) of its last axis."""
    path = self._file_of[name]
    try:
      with self._open(path) as f:
        if columns is None:
          return f.get_tensor(name)
        index = (slice(None),) * (len(self.shape(name)) - 1) + (slice(*columns),)
        return f.get_slice(name)[index]
    except SafetensorError as e:
      raise CheckpointError(f"{path}: cannot read tensor {name!r}: {e}") from e


def write_safetensors(directory: Path, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, Any]],
                      max_shard_bytes: int) -> list[str]:
  """Writes tensors as `model.safetensors`, or as shards with an index when they exceed
  `max_shard_bytes`; returns the file names written.

  `tensors` yields (name, shape, dtype, make) with `make()` giving the array; shards are
  planned from the shapes first, then each shard's arrays are made, written and freed,
  so at most one shard is in memory.
  """
  tensors = list(tensors)
  shards: list[list[tuple[str, tuple[int, ...], np.dtype, Any]]] = [[]]
  size = 0
  for tensor in tensors:
    nbytes = math.prod(tensor[1]) * np.dtype(tensor[2]).itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(tensor)
    size += nbytes
  names = ([SINGLE_NAME] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  weight_map, total = {}, 0
  for file_name, shard in zip(names, shards):
    arrays = {}
    for name, shape, dtype, make in shard:
      array = np.ascontiguousarray(make(), dtype=dtype)
      if array.shape != tuple(shape):
        raise AssertionError(f"{name}: made shape {array.shape}, planned {shape}")
      arrays[name] = array
      weight_map[name] = file_name
      total += array.nbytes
    save_file(arrays, os.fspath(directory / file_name), metadata={"format": "pt"})
    del arrays
  if len(shards) > 1:
    (directory / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
  return names
