"""The one argument check of the annotator models: flat annotation arrays and static sizes.

Every class-level model (`voting`, `dawid_skene`, `spammer_models`, `kos`, `mmsr`) takes
the flat arrays of `rlhf_jax.feedback.types` (`items[n]`, `annotators[n]`, `labels[n]`,
one entry per annotation) and static sizes. `annotation_arrays` checks them once, the
same way for all: integer dtype, flat, equal lengths, at least one annotation, every
index in range (values checked only when the arrays are concrete: under `jax.jit` the
sizes must be given and the ranges are the caller's promise). Each message names the
argument, the expected value and the first offending position.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rlhf_jax._checks import check_scalar_range

__all__ = ["annotation_arrays", "as_index_array", "check_size", "check_tol", "infer_or_check_size",
           "is_traced"]


def is_traced(x: Any) -> bool:
  """Whether `x` is a tracer (inside `jax.jit`): its values cannot be checked."""
  return isinstance(x, jax.core.Tracer)


def as_index_array(x: ArrayLike, name: str) -> jax.Array:
  """A flat integer array as int32; raises naming `name` on an empty, float or 2-D one."""
  x = jnp.asarray(x)
  if x.shape == (0,):
    raise ValueError(f"there are no annotations to aggregate (`{name}` is empty).")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"`{name}` must be an integer array, got dtype {x.dtype} with shape {x.shape}.")
  if x.ndim != 1:
    raise ValueError(f"`{name}` must be a flat [N] array (one entry per annotation), got shape {x.shape}.")
  return x.astype(jnp.int32)


def check_size(value: Any, name: str, minimum: int = 1) -> int:
  """A static size: a Python (or NumPy) integer >= `minimum`, returned as int."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"`{name}` must be a Python int (a static size), got {value!r}.")
  if value < minimum:
    raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
  return int(value)


def check_tol(tol: float | None) -> float | None:
  """A stopping tolerance: None (run every iteration) or a number >= 0."""
  if tol is None:
    return None
  check_scalar_range(tol, "tol", low=0.0)
  return float(tol)


def infer_or_check_size(indices: jax.Array, size: int | None, name: str, size_name: str) -> int:
  """Returns `size`, inferred as max(indices) + 1 when None; checks the index range."""
  if is_traced(indices):
    if size is None:
      raise ValueError(
          f"`{size_name}` must be given when `{name}` is traced (inside jax.jit): array sizes are static.")
    return check_size(size, size_name)
  values = np.asarray(indices)
  low, high = int(values.min()), int(values.max())
  if low < 0:
    position = int(np.argmin(values))
    raise ValueError(f"`{name}` must be >= 0, got {low} at position {position}.")
  if size is None:
    return high + 1
  size = check_size(size, size_name)
  if high >= size:
    position = int(np.argmax(values))
    raise ValueError(f"`{name}` must be < `{size_name}` = {size}, got {high} at position {position}.")
  return size


def annotation_arrays(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_items: int | None,
    num_annotators: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array, int, int]:
  """Checks the flat annotation arrays; returns them as int32 with the static sizes.

  Returns:
    (items, annotators, labels, num_items, num_annotators); a size given as None is
    inferred as the largest index + 1 (outside `jit` only).
  """
  items = as_index_array(items, "items")
  annotators = as_index_array(annotators, "annotators")
  labels = as_index_array(labels, "labels")
  if not items.shape == annotators.shape == labels.shape:
    raise ValueError(
        "`items`, `annotators` and `labels` must have one entry per annotation, got shapes "
        f"{items.shape}, {annotators.shape} and {labels.shape}.")
  num_classes = check_size(num_classes, "num_classes", minimum=2)
  infer_or_check_size(labels, num_classes, "labels", "num_classes")
  num_items = infer_or_check_size(items, num_items, "items", "num_items")
  num_annotators = infer_or_check_size(annotators, num_annotators, "annotators", "num_annotators")
  return items, annotators, labels, num_items, num_annotators
