"""Deterministic, resumable batches over tokenized data.

The order of epoch `e` is a permutation drawn from NumPy's PCG64 generator seeded with
`SeedSequence([seed, e])`, so it depends on (seed, epoch) only, not on how many batches
were drawn before: a run restored from `state()` sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlhf_jax.data.tokenization import TokenizedData

__all__ = ["BatchIterator", "epoch_permutation"]


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a permutation of [0, num_examples) from (seed, epoch)."""
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
  return rng.permutation(num_examples)


class BatchIterator:
  """Batches of a tokenized data set, epoch after epoch, with an exact resume point.

  Each epoch visits the examples in `epoch_permutation(N, seed, epoch)` order (or in
  file order when `shuffle=False`), `batch_size` at a time. With `drop_remainder` the
  last `N % batch_size` examples of each epoch's order are skipped (they differ from
  epoch to epoch), so every batch has the same shape, as `jax.jit` wants.

  Multi-host: `batch_size` is the global batch; process `process_index` of
  `process_count` receives rows `[p * b, (p + 1) * b)` of each global batch, with
  `b = batch_size / process_count`, so the processes together see exactly the global
  batch a single process would (contiguous per-process slices along the batch axis).

  `state()` returns a JSON-serialisable dict (epoch, position, and the settings it is
  valid for) to store with a checkpoint; `restore(state)` continues from it.
  """

  def __init__(
      self,
      data: TokenizedData | Mapping[str, np.ndarray],
      *,
      batch_size: int,
      seed: int,
      drop_remainder: bool = True,
      shuffle: bool = True,
      num_epochs: int | None = None,
      process_index: int = 0,
      process_count: int = 1,
  ):
    """Args:
      data: `TokenizedPairs`/`TokenizedSequences`/`TokenizedUnpaired`, or a dict of
        arrays sharing their first dimension N.
      batch_size: global number of examples per batch.
      seed: the shuffling seed.
      drop_remainder: skip each epoch's last partial batch (default), or yield it short.
      shuffle: False keeps the data order (e.g. to compute reference log-probs once).
      num_epochs: stop after this many epochs; None iterates forever.
      process_index, process_count: this process's slice of each global batch.
    """
    arrays = data.arrays if isinstance(data, TokenizedData) else data
    if not arrays:
      raise ValueError("BatchIterator: `data` holds no arrays.")
    sizes = {k: np.shape(v)[0] for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"BatchIterator: arrays differ in length: {sizes}.")
    self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self.num_examples = int(next(iter(sizes.values())))
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if drop_remainder and batch_size > self.num_examples:
      raise ValueError(
          f"`batch_size` {batch_size} exceeds the {self.num_examples} examples; with "
          "drop_remainder=True no batch could be formed.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"`process_index` must lie in [0, {process_count}), got {process_index}.")
    if batch_size % process_count:
      raise ValueError(
          f"`batch_size` {batch_size} must be divisible by `process_count` {process_count}.")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"`num_epochs` must be positive or None, got {num_epochs}.")
    self.batch_size = batch_size
    self.seed = int(seed)
    self.drop_remainder = drop_remainder
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    self.process_index = process_index
    self.process_count = process_count
    self._epoch = 0
    self._position = 0
    self._order: np.ndarray | None = None
    self._order_epoch = -1

  @property
  def steps_per_epoch(self) -> int:
    """Global batches per epoch."""
    if self.drop_remainder:
      return self.num_examples // self.batch_size
    return -(-self.num_examples // self.batch_size)

  @property
  def epoch(self) -> int:
    return self._epoch

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if self._order_epoch != epoch:
      if self.shuffle:
        self._order = epoch_permutation(self.num_examples, self.seed, epoch)
      else:
        self._order = np.arange(self.num_examples)
      self._order_epoch = epoch
    return self._order

  def _epoch_end(self) -> int:
    return self.steps_per_epoch * self.batch_size if self.drop_remainder else self.num_examples

  def next_indices(self) -> np.ndarray:
    """Rows of the next batch (this process's slice); advances the iterator."""
    if self._position >= self._epoch_end():
      self._epoch += 1
      self._position = 0
    if self.num_epochs is not None and self._epoch >= self.num_epochs:
      raise StopIteration
    order = self._epoch_order(self._epoch)
    global_rows = order[self._position:self._position + self.batch_size]
    self._position += len(global_rows)
    local = len(global_rows) // self.process_count
    if len(global_rows) % self.process_count:
      # A short last batch (drop_remainder=False) that does not split evenly: the
      # earlier processes take one extra row each.
      bounds = np.array_split(np.arange(len(global_rows)), self.process_count)[self.process_index]
      return global_rows[bounds]
    return global_rows[self.process_index * local:(self.process_index + 1) * local]

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self.next_indices()
    return {k: v[rows] for k, v in self._arrays.items()}

  def next(self) -> dict[str, np.ndarray]:
    """The next batch: a dict of arrays with leading dimension batch_size / process_count."""
    return self.__next__()

  def __iter__(self) -> BatchIterator:
    return self

  def state(self) -> dict[str, Any]:
    """The resume point (JSON-serialisable): restoring it continues exactly from here."""
    return {
        "epoch": self._epoch, "position": self._position, "seed": self.seed,
        "batch_size": self.batch_size, "num_examples": self.num_examples,
        "drop_remainder": self.drop_remainder, "shuffle": self.shuffle,
    }

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a `state()`; raises when it was saved for other data or settings."""
    expected = {
        "seed": self.seed, "batch_size": self.batch_size, "num_examples": self.num_examples,
        "drop_remainder": self.drop_remainder, "shuffle": self.shuffle,
    }
    missing = [k for k in ("epoch", "position", *expected) if k not in state]
    if missing:
      raise ValueError(f"BatchIterator.restore: the state lacks {missing}.")
    different = {k: (state[k], v) for k, v in expected.items() if _plain(state[k]) != v}
    if different:
      listed = ", ".join(f"{k} saved {a!r} vs now {b!r}" for k, (a, b) in different.items())
      raise ValueError(
          f"BatchIterator.restore: the state belongs to another data stream ({listed}).")
    epoch, position = int(_plain(state["epoch"])), int(_plain(state["position"]))
    if epoch < 0 or not 0 <= position <= self._epoch_end():
      raise ValueError(f"BatchIterator.restore: invalid epoch {epoch} / position {position}.")
    self._epoch, self._position = epoch, position


def _plain(value: Any) -> Any:
  """NumPy scalars (e.g. from a checkpoint) as Python values."""
  return value.item() if hasattr(value, "item") else value
