"""Tests for BatchIterator: deterministic epochs, exact resume, multi-process slices."""

import json

import numpy as np
import pytest

from rlhf_jax import data


def toy(n=10):
  return data.toy_preference_data(n, seed=1)


def take(iterator, k):
  return [iterator.next() for _ in range(k)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_same_batches_and_different_seed_different_order():
  dataset = toy()
  a = take(data.BatchIterator(dataset, batch_size=3, seed=7), 12)
  b = take(data.BatchIterator(dataset, batch_size=3, seed=7), 12)
  assert_same_batches(a, b)
  c = take(data.BatchIterator(dataset, batch_size=3, seed=8), 12)
  assert any(not np.array_equal(x["example_index"], y["example_index"]) for x, y in zip(a, c))


def test_each_epoch_is_a_fresh_permutation_from_seed_and_epoch():
  dataset = toy(12)
  iterator = data.BatchIterator(dataset, batch_size=4, seed=5)
  assert iterator.steps_per_epoch == 3
  orders = []
  for epoch in range(3):
    rows = np.concatenate([iterator.next()["example_index"] for _ in range(3)])
    # Every example exactly once per epoch.
    assert sorted(rows.tolist()) == list(range(12))
    # The documented generator: PCG64 seeded with SeedSequence([seed, epoch]).
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([5, epoch])))
    np.testing.assert_array_equal(rows, rng.permutation(12))
    orders.append(rows)
  assert not np.array_equal(orders[0], orders[1])


def test_batches_gather_the_rows_of_every_array():
  dataset = toy()
  batch = data.BatchIterator(dataset, batch_size=4, seed=0).next()
  rows = batch["example_index"]
  for key in data.PAIR_KEYS:
    np.testing.assert_array_equal(batch[key], dataset[key][rows], err_msg=key)
    assert batch[key].shape[0] == 4


@pytest.mark.parametrize("consumed", [0, 1, 2, 3, 4, 7, 10])
def test_restore_mid_stream_continues_exactly(consumed):
  dataset = toy(10)  # 3 batches of 3 per epoch, one example dropped per epoch
  uninterrupted = take(data.BatchIterator(dataset, batch_size=3, seed=11), 14)
  first = data.BatchIterator(dataset, batch_size=3, seed=11)
  take(first, consumed)
  state = json.loads(json.dumps(first.state()))  # as stored next to a checkpoint
  resumed = data.BatchIterator(dataset, batch_size=3, seed=11)
  resumed.restore(state)
  assert_same_batches(take(resumed, 14 - consumed), uninterrupted[consumed:])


def test_state_records_epoch_and_position():
  iterator = data.BatchIterator(toy(10), batch_size=3, seed=0)
  take(iterator, 4)
  state = iterator.state()
  assert (state["epoch"], state["position"]) == (1, 3)
  assert (state["seed"], state["batch_size"], state["num_examples"]) == (0, 3, 10)


def test_restore_rejects_a_state_of_another_stream():
  state = data.BatchIterator(toy(10), batch_size=3, seed=0).state()
  with pytest.raises(ValueError, match="seed saved 0 vs now 1"):
    data.BatchIterator(toy(10), batch_size=3, seed=1).restore(state)
  with pytest.raises(ValueError, match="num_examples saved 10 vs now 12"):
    data.BatchIterator(toy(12), batch_size=3, seed=0).restore(state)
  with pytest.raises(ValueError, match="lacks"):
    data.BatchIterator(toy(10), batch_size=3, seed=0).restore({"epoch": 0})


def test_process_slices_concatenate_to_the_global_batch():
  dataset = toy(16)
  single = take(data.BatchIterator(dataset, batch_size=8, seed=2), 5)
  per_process = [take(data.BatchIterator(dataset, batch_size=8, seed=2, process_index=p, process_count=2), 5)
                 for p in range(2)]
  for step in range(5):
    for key in data.PAIR_KEYS:
      joined = np.concatenate([per_process[p][step][key] for p in range(2)])
      np.testing.assert_array_equal(joined, single[step][key], err_msg=key)
    assert per_process[0][step]["example_index"].shape == (4,)
  with pytest.raises(ValueError, match="divisible"):
    data.BatchIterator(dataset, batch_size=7, seed=0, process_count=2)


def test_keep_remainder_unshuffled_single_epoch():
  dataset = toy(10)
  iterator = data.BatchIterator(dataset, batch_size=4, seed=0, drop_remainder=False, shuffle=False, num_epochs=1)
  sizes, rows = [], []
  for batch in iterator:
    sizes.append(len(batch["example_index"]))
    rows.extend(batch["example_index"].tolist())
  assert sizes == [4, 4, 2]
  assert rows == list(range(10))


def test_num_epochs_stops_and_bad_arguments_are_errors():
  iterator = data.BatchIterator(toy(6), batch_size=3, seed=0, num_epochs=2)
  assert len(list(iterator)) == 4
  with pytest.raises(ValueError, match="exceeds"):
    data.BatchIterator(toy(6), batch_size=7, seed=0)
  with pytest.raises(ValueError, match="differ in length"):
    data.BatchIterator({"a": np.zeros(3), "b": np.zeros(4)}, batch_size=1, seed=0)
