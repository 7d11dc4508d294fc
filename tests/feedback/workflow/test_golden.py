"""Tests for rlhf_jax.feedback.workflow.golden: golden-set injection (counts, positions,
no repeats before every golden item is used, argument errors)."""

import math

import jax
import numpy as np
import pytest

from rlhf_jax.feedback.workflow import golden as annotators


def test_golden_plan_counts_positions_and_no_repeats():
  golden_ids = np.arange(1000, 1030)
  plan = jax.tree.map(np.asarray, annotators.plan_golden_injection(jax.random.key(0), 50, 200, golden_ids, rate=0.07))
  per_queue = round(0.07 * 200)  # 14
  assert plan.positions.shape == (50, per_queue)
  np.testing.assert_array_equal(plan.is_golden_slot.sum(1), per_queue)
  # One golden item per block [floor(b L / g), floor((b + 1) L / g)).
  bounds = np.arange(per_queue + 1) * 200 // per_queue
  block = np.searchsorted(bounds, plan.positions, side="right") - 1
  np.testing.assert_array_equal(block, np.broadcast_to(np.arange(per_queue), block.shape))
  # The slot table agrees with positions/items, and holds only golden ids.
  rows = np.arange(50)[:, None]
  np.testing.assert_array_equal(plan.slot_item[rows, plan.positions], plan.golden_items)
  assert np.all(plan.slot_item[~plan.is_golden_slot] == -1)
  assert set(np.unique(plan.golden_items)) <= set(golden_ids)
  # No golden item twice in one queue (14 <= 30 golden items).
  assert all(len(set(row)) == per_queue for row in plan.golden_items.tolist())
  # Queues differ (random positions and items), and golden items are used evenly overall.
  assert len({tuple(row) for row in plan.golden_items.tolist()}) == 50
  assert len({tuple(row) for row in plan.positions.tolist()}) > 40
  usage = np.bincount(plan.golden_items.ravel() - 1000, minlength=30)
  expected = 50 * per_queue / 30
  assert np.all(np.abs(usage - expected) < 5 * math.sqrt(expected))


@pytest.mark.parametrize("table_limit", [None, 0])
def test_golden_plan_repeats_only_after_using_every_item(table_limit, monkeypatch):
  # table_limit 0 forces the affine-permutation path (a different queue count, so that
  # jit traces again rather than reusing the other path's compilation).
  num_annotators = 20
  if table_limit is not None:
    monkeypatch.setattr(annotators, "_MAX_PERMUTATION_TABLE", table_limit)
    num_annotators = 21
  plan = annotators.plan_golden_injection(
      jax.random.key(1), num_annotators, 100, np.array([7, 8, 9, 10, 11]), rate=0.14
  )
  items = np.asarray(plan.golden_items)
  assert items.shape == (num_annotators, 14)
  for row in items:
    assert len(set(row[:5])) == 5
    counts = np.bincount(row - 7, minlength=5)
    assert counts.max() - counts.min() <= 1


def test_golden_plan_default_rate_and_errors():
  plan = annotators.plan_golden_injection(jax.random.key(2), 3, 100, np.arange(10))
  np.testing.assert_array_equal(np.asarray(plan.is_golden_slot).sum(1), 7)
  with pytest.raises(ValueError, match="rate"):
    annotators.plan_golden_injection(jax.random.key(2), 3, 100, np.arange(10), rate=1.0)
  with pytest.raises(ValueError, match="golden_item_ids"):
    annotators.plan_golden_injection(jax.random.key(2), 3, 100, np.array([], np.int32))
  with pytest.raises(ValueError, match="integer"):
    annotators.plan_golden_injection(jax.random.key(2), 3, 100, np.array([0.5, 1.5]))
