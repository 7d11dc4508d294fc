"""Golden-set injection: which known-answer items enter each annotator's queue, and where.

`plan_golden_injection` places golden ("known-answer") items in every annotator's queue
at a configurable rate (5-10% is usual; default 7%), at stratified random positions and
in a per-annotator random order, so that golden checks cover the whole session (what
drift detection needs) and cannot be learned from their position or order. The affine
draws of distinct indices here are also used by `rlhf_jax.feedback.simulate`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax._checks import check_scalar_range
from rlhf_jax.feedback.metrics.calibration import _as_int_array

__all__ = ["GoldenPlan", "plan_golden_injection"]

# Largest [num_annotators, num_golden] table of random keys drawn for per-annotator
# permutations of the golden set (64 MB of float32).
_MAX_PERMUTATION_TABLE = 1 << 24


# ----------------------------------------------------------------------------------------
# Distinct draws (also used by `simulate.py`).



def _coprimes(n: int) -> np.ndarray:
  """The integers s in [1, n) with gcd(s, n) = 1 (or [1] when n == 1)."""
  if n <= 1:
    return np.ones((1,), np.int32)
  candidates = np.arange(1, n, dtype=np.int64)
  return candidates[np.gcd(candidates, n) == 1].astype(np.int32)


def _affine_distinct(key: jax.Array, num_rows: int, num_cols: int, population: int) -> jax.Array:
  """[num_rows, num_cols] int32 draws from range(population), distinct within each row.

  Row r takes `(offset_r + j * stride_r) mod population` for j < num_cols, with a
  random offset and a random stride coprime with `population`: an affine map that is a
  bijection of Z_population, so the first `population` entries of a row never repeat
  and longer rows cycle through the whole population before repeating. Costs
  O(num_rows * num_cols) memory, not O(num_rows * population) as a per-row random
  permutation would; the price is that a row is an arithmetic progression, which is
  why callers compose it with one global random permutation of the population. The
  entries are accumulated column by column (`cur + stride < 2 * population`) because
  `j * stride` would overflow int32 (JAX without x64) for populations above ~46,000.
  """
  uniforms = jax.random.uniform(key, (2, num_rows))
  return _affine_distinct_from_uniforms(uniforms[0], uniforms[1], num_cols, population)


def _uniform_index(u: jax.Array, size: int) -> jax.Array:
  """floor(u * size) for u in [0, 1), clipped into [0, size)."""
  return jnp.clip((u * size).astype(jnp.int32), 0, size - 1)


def _affine_distinct_from_uniforms(
    offset_uniform: jax.Array, stride_uniform: jax.Array, num_cols: int, population: int
) -> jax.Array:
  """`_affine_distinct` driven by two given uniform [num_rows] arrays (no PRNG call)."""
  strides = jnp.asarray(_coprimes(population))
  offsets = _uniform_index(offset_uniform, population)
  stride = strides[_uniform_index(stride_uniform, strides.shape[0])]

  def step(current, _):
    return (current + stride) % population, current

  _, columns = jax.lax.scan(step, offsets, None, length=num_cols)
  return columns.T


# ----------------------------------------------------------------------------------------
# Golden-set injection.


class GoldenPlan(NamedTuple):
  """Where golden items go in each annotator's queue.

  Attributes:
    positions: [num_annotators, golden_per_queue] int32 queue positions (sorted).
    golden_items: [num_annotators, golden_per_queue] the golden item id placed at each
      position (values taken from `golden_item_ids`).
    is_golden_slot: [num_annotators, queue_length] bool, true at golden positions.
    slot_item: [num_annotators, queue_length] the golden item id at golden positions
      and -1 at the positions left for regular items.
  """

  positions: jax.Array
  golden_items: jax.Array
  is_golden_slot: jax.Array
  slot_item: jax.Array


def plan_golden_injection(
    key: jax.Array,
    num_annotators: int,
    queue_length: int,
    golden_item_ids: Any,
    *,
    rate: float = 0.07,
) -> GoldenPlan:
  """Plans which known-answer items enter each annotator's queue, and where.

  Every annotator gets exactly `g = round(rate * queue_length)` golden slots (at least
  one when `rate > 0` and the queue is not empty). The positions are stratified: the
  queue is cut into `g` equal blocks and each block holds one golden item at a uniformly
  random offset, so golden checks are spread over the whole session (what drift
  detection needs) yet cannot be predicted from the position. Each annotator sees its
  own uniformly random permutation of the golden set (when num_annotators * G exceeds
  2^24, an affine permutation composed with a global random permutation instead, which
  saves memory but offers fewer distinct sequences); an item repeats within a queue
  only when `g` exceeds the number of golden items G, and then only after every golden
  item has been used once.

  Args:
    key: a JAX PRNG key.
    num_annotators: number of queues M.
    queue_length: length L of each queue (golden plus regular items).
    golden_item_ids: 1-D integer array of the G known-answer item ids (G >= 1).
    rate: share of each queue that is golden, in [0, 1).

  Returns:
    A `GoldenPlan`.
  """
  check_scalar_range(rate, "rate", low=0.0, high=1.0)
  if num_annotators < 1 or queue_length < 0:
    raise ValueError(
        f"`num_annotators` must be >= 1 and `queue_length` >= 0, got {num_annotators} and {queue_length}."
    )
  golden_item_ids = jnp.asarray(_as_int_array(golden_item_ids, "golden_item_ids"))
  num_golden = int(golden_item_ids.shape[0])
  per_queue = int(round(rate * queue_length))
  if rate > 0 and queue_length > 0:
    per_queue = max(per_queue, 1)
  if per_queue > 0 and num_golden == 0:
    raise ValueError("`golden_item_ids` is empty but `rate` asks for golden items in every queue.")

  if per_queue == 0:
    empty = jnp.zeros((num_annotators, 0), jnp.int32)
    return GoldenPlan(
        empty, empty.astype(golden_item_ids.dtype), jnp.zeros((num_annotators, queue_length), bool),
        jnp.full((num_annotators, queue_length), -1, golden_item_ids.dtype),
    )
  return _plan_core(key, golden_item_ids, num_annotators=num_annotators, queue_length=queue_length,
                    per_queue=per_queue)


@functools.partial(jax.jit, static_argnames=("num_annotators", "queue_length", "per_queue"))
def _plan_core(key, golden_item_ids, *, num_annotators: int, queue_length: int, per_queue: int) -> GoldenPlan:
  num_golden = golden_item_ids.shape[0]
  position_key, order_key, perm_key = jax.random.split(key, 3)
  # Block b covers [floor(b L / g), floor((b + 1) L / g)): blocks are non-empty because g <= L.
  blocks = np.arange(per_queue + 1, dtype=np.int64) * queue_length // per_queue
  block_start = jnp.asarray(blocks[:-1], jnp.int32)
  block_size = jnp.asarray(np.diff(blocks), jnp.int32)
  uniform = jax.random.uniform(position_key, (num_annotators, per_queue))
  offsets = jnp.minimum((uniform * block_size).astype(jnp.int32), block_size - 1)
  positions = block_start[None, :] + offsets

  if num_annotators * num_golden <= _MAX_PERMUTATION_TABLE:
    # An independent uniform random permutation of the golden set per annotator.
    row_perm = jnp.argsort(jax.random.uniform(order_key, (num_annotators, num_golden)), axis=1)
    order = row_perm[:, jnp.arange(per_queue) % num_golden]
    golden_items = golden_item_ids[order]
  else:
    # Too large for a table: affine permutations (fewer distinct sequences, same guarantees).
    global_perm = jax.random.permutation(perm_key, num_golden)
    order = _affine_distinct(order_key, num_annotators, per_queue, num_golden)
    golden_items = golden_item_ids[global_perm[order]]

  rows = jnp.broadcast_to(jnp.arange(num_annotators)[:, None], positions.shape)
  is_golden_slot = jnp.zeros((num_annotators, queue_length), bool).at[rows, positions].set(True)
  slot_item = jnp.full((num_annotators, queue_length), -1, golden_items.dtype).at[rows, positions].set(
      golden_items
  )
  return GoldenPlan(positions, golden_items, is_golden_slot, slot_item)
