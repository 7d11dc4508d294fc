"""Reference log-probs: padded batches in row order, the table looked up by
`example_index`, fingerprints that change with the data and the parameters, the `.npz`
cache (hit, miss on another key), and the jitted reference function against a NumPy
log-softmax of the same model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import reference

from train_testlib import numpy_sequence_logps


def test_padded_batches_cover_every_row_once_in_order():
  arrays = {"a": np.arange(7) * 10, "b": np.arange(7)[:, None] + np.zeros((7, 2))}
  batches = list(reference.padded_batches(arrays, ["a", "b"], 3))
  assert [valid for _, valid in batches] == [3, 3, 1]
  rows = np.concatenate([batch["a"][:valid] for batch, valid in batches])
  np.testing.assert_array_equal(rows, np.arange(7) * 10)
  # The last batch is padded with row 0 to the full size.
  np.testing.assert_array_equal(batches[-1][0]["a"], [60, 0, 0])
  assert batches[-1][0]["b"].shape == (3, 2)


def test_table_lookup_by_example_index_in_any_order():
  table = reference.ReferenceTable.from_rows(np.array([5, 2, 9]), {"ref_logps": np.array([-5.0, -2.0, -9.0])})
  np.testing.assert_array_equal(table.example_index, [2, 5, 9])
  batch = {"example_index": np.array([9, 2, 2, 5]), "tokens": np.zeros((4, 3))}
  looked_up = table.lookup(batch)
  np.testing.assert_array_equal(looked_up["ref_logps"], [-9.0, -2.0, -2.0, -5.0])
  assert looked_up["tokens"] is batch["tokens"]
  with pytest.raises(KeyError, match=r"no entry for example_index \[7\]"):
    table.lookup({"example_index": np.array([2, 7])})
  with pytest.raises(ValueError, match="not unique"):
    reference.ReferenceTable.from_rows(np.array([1, 1]), {"ref_logps": np.zeros(2)})


def test_fingerprints_change_with_values_order_and_dtype():
  arrays = {"x": np.arange(6, dtype=np.int32), "y": np.ones(3, np.float32)}
  fp = reference.arrays_fingerprint(arrays, ["x", "y"])
  assert fp == reference.arrays_fingerprint({k: v.copy() for k, v in arrays.items()}, ["x", "y"])
  assert fp != reference.arrays_fingerprint(arrays, ["y", "x"])
  assert fp != reference.arrays_fingerprint({**arrays, "x": arrays["x"].astype(np.int64)}, ["x", "y"])
  assert fp != reference.arrays_fingerprint({**arrays, "x": arrays["x"][::-1].copy()}, ["x", "y"])
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}
  base = reference.params_fingerprint(params)
  assert base == reference.params_fingerprint(jax.tree.map(jnp.copy, params))
  assert base != reference.params_fingerprint({**params, "b": params["b"].at[1].set(1e-6)})
  assert base != reference.params_fingerprint({**params, "w": params["w"][:, ::-1]})


def test_reference_groups_follow_the_data_kind_and_the_arrays_present():
  assert [g[3] for g in reference.reference_groups("pairs", ["chosen_tokens", "rejected_tokens"])] == [
      "ref_chosen_logps", "ref_rejected_logps"]
  assert [g[3] for g in reference.reference_groups("unpaired", ["tokens"])] == ["ref_logps"]
  assert reference.reference_groups("sequences", ["tokens"]) == ()


def test_cache_is_hit_for_the_same_key_and_recomputed_for_another(tmp_path):
  arrays = {"example_index": np.arange(4), "tokens": np.arange(12).reshape(4, 3),
            "attention_mask": np.ones((4, 3), bool), "loss_mask": np.ones((4, 3), bool)}
  groups = reference.reference_groups("unpaired", list(arrays))
  calls = []

  def compute(rows):
    calls.append(1)
    return {"ref_logps": -np.asarray(rows["example_index"], np.float32) - len(calls)}

  kwargs = dict(cache_dir=tmp_path, name="train", arrays=arrays, groups=groups, params_fp="p1",
                model_description={"layers": 2}, compute=compute)
  first = reference.load_or_compute(**kwargs)
  second = reference.load_or_compute(**kwargs)
  assert len(calls) == 1 and not first.hit and second.hit and second.path == first.path
  np.testing.assert_array_equal(second.columns["ref_logps"], [-1.0, -2.0, -3.0, -4.0])
  other = reference.load_or_compute(**{**kwargs, "model_description": {"layers": 3}})
  assert len(calls) == 2 and not other.hit and other.path != first.path
  uncached = reference.load_or_compute(**{**kwargs, "cache_dir": None})
  assert uncached.path is None and len(calls) == 3


def test_reference_function_equals_numpy_log_softmax():
  vocab, length = 20, 6
  model = models.Transformer(models.get_preset("tiny", vocab_size=vocab, max_len=length))
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, size=(4, length)).astype(np.int32)
  attention = np.ones((4, length), bool)
  attention[1, 4:] = False
  loss_mask = attention.copy()
  loss_mask[:, :2] = False
  batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask,
           "kl_tokens": tokens[::-1].copy(), "kl_attention_mask": attention[::-1].copy(),
           "kl_loss_mask": loss_mask[::-1].copy()}
  params = model.init(jax.random.key(0), jnp.asarray(tokens))["params"]
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  groups = reference.reference_groups("unpaired", list(batch))
  shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), params)
  fn = reference.make_reference_fn(model, groups, mesh, shardings, replicate_outputs=True)
  with jax.set_mesh(mesh):
    out = jax.device_get(fn(params, mesh_lib.shard_batch(batch, mesh)))
  for prefix, column in (("", "ref_logps"), ("kl_", "ref_kl_logps")):
    logits = model.apply({"params": params}, batch[f"{prefix}tokens"], batch[f"{prefix}attention_mask"])
    expected = numpy_sequence_logps(logits, batch[f"{prefix}tokens"], batch[f"{prefix}loss_mask"])
    np.testing.assert_allclose(out[column], expected, rtol=1e-4, atol=1e-4)
