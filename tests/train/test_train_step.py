"""The jitted train step: gradient accumulation, the NaN guard, and reference log-probs."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from rlhf_jax.models import lora
from rlhf_jax.train import components, mesh as mesh_lib, reference
from rlhf_jax.train import step as step_lib
from rlhf_jax.train import config as config_lib

from train_testlib import load_datasets, numpy_sequence_logps, tiny_config


def _config(microbatches=1, **overrides):
  # No warmup, so the first step already moves the parameters.
  return tiny_config("dpo", train__batch_size=8, train__microbatches=microbatches, optim__warmup_steps=0,
                     data__toy__num_train=64, data__toy__num_eval=0, **overrides)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = _config()
  datasets = load_datasets(config, tmp_path_factory.mktemp("step"))
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  parts = components.build(config_lib.build_settings(config), mesh, datasets.info)
  init_key, train_key = jax.random.split(jax.random.key(0))
  state = parts.init_state(init_key, train_key)
  ref_params = jax.tree.map(np.asarray, jax.device_get(state.params))
  table_columns = reference.compute_reference_logps(
      parts.reference_cached, state.params, datasets.train, parts.reference_groups, batch_size=16, mesh=mesh)
  table = reference.ReferenceTable.from_rows(datasets.train["example_index"], table_columns)
  return dict(config=config, datasets=datasets, mesh=mesh, parts=parts, state=state, table=table,
              ref_params=ref_params, key=jax.random.key_data(train_key))


def _batch(setup, rows, **changes):
  host = {k: v[rows] for k, v in setup["datasets"].train.items()}
  host = setup["table"].lookup(host)
  host.update(changes)
  layout = components.device_batch_layout(config_lib.build_settings(setup["config"]), setup["datasets"].info)
  return mesh_lib.shard_batch({k: host[k] for k in layout}, setup["mesh"])


def _copy(state):
  return jax.tree.map(lambda x: x.copy(), state)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_two_microbatches_equal_one_full_batch(setup):
  # Unequal weights: exactness needs the global denominator in every microbatch.
  weight = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 1.5, 1.0, 3.0], np.float32)
  batch = _batch(setup, np.arange(8), weight=weight)
  full_state, full = setup["parts"].train_step(_copy(setup["state"]), batch, setup["key"])
  accumulating = components.build(config_lib.build_settings(_config(microbatches=2)), setup["mesh"],
                                  setup["datasets"].info)
  micro_state, micro = accumulating.train_step(_copy(setup["state"]), batch, setup["key"])
  # (Accuracy is left out: at initialisation every margin is 0 up to rounding, so its
  # sign is noise.)
  for name in ("loss", "grad_norm", "margin", "chosen_logps"):
    np.testing.assert_allclose(float(micro[name]), float(full[name]), rtol=1e-6, atol=1e-6, err_msg=name)
  # The gradients, read from Adam's first moment after one step: mu = (1 - b1) * clipped g
  # (the parameters themselves are a poor probe, since Adam's first update
  # g / (|g| + eps) magnifies rounding in near-zero gradients).
  b1 = setup["config"].optim.b1
  full_grads = _leaves(optax.tree_utils.tree_get(full_state.opt_state, "mu"))
  micro_grads = _leaves(optax.tree_utils.tree_get(micro_state.opt_state, "mu"))
  assert len(full_grads) == len(jax.tree.leaves(setup["state"].params))
  for a, b in zip(micro_grads, full_grads):
    np.testing.assert_allclose(a / (1 - b1), b / (1 - b1), rtol=0, atol=1e-6)
  for a, b in zip(_leaves(micro_state.params), _leaves(full_state.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
  assert not all(np.array_equal(a, b) for a, b in zip(_leaves(full_state.params), _leaves(setup["state"].params)))


LORA = dict(model__lora__rank=4, model__lora__targets="query,value,down", model__lora__dropout=0.0)


def test_lora_microbatches_accumulate_only_the_adapters(setup):
  """LoRA with two microbatches: the scan's accumulator (its carry) holds exactly the
  adapter leaves and the loss, not the frozen base, and the accumulated gradient equals
  the one-batch step's on the same data (read from Adam's first moment, as above)."""
  mesh, info = setup["mesh"], setup["datasets"].info
  single = components.build(config_lib.build_settings(_config(**LORA)), mesh, info)
  accumulating = components.build(config_lib.build_settings(_config(microbatches=2, **LORA)), mesh, info)
  init_key, _ = jax.random.split(jax.random.key(1))
  state = single.init_state(init_key, jax.random.key(2))
  # B starts at zero, where A's gradient is zero too: move B so both are exercised.
  rng = np.random.default_rng(0)
  state = state.replace(params=jax.tree_util.tree_map_with_path(
      lambda path, x: jax.device_put(x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), x.sharding)
      if path[-1].key.endswith("_lora_b") else x, state.params))
  weight = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 1.5, 1.0, 3.0], np.float32)
  batch = _batch(setup, np.arange(8), weight=weight)

  step = step_lib.train_step_fn(accumulating.objective, accumulating.model, accumulating.tx,
                                settings=accumulating.settings, layout=accumulating.layout, microbatches=2)
  with jax.set_mesh(mesh), nn.logical_axis_rules(accumulating.rules):
    jaxpr = jax.make_jaxpr(step)(state, batch, setup["key"]).jaxpr
  scans = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
  assert len(scans) == 1
  consts, carries = scans[0].params["num_consts"], scans[0].params["num_carry"]
  carry = sorted((v.aval.shape, str(v.aval.dtype)) for v in scans[0].invars[consts:consts + carries])
  adapters = jax.tree.leaves(lora.adapter_params(state.params))
  assert len(adapters) == 2 * 3 * accumulating.model.config.n_layers  # A and B of query, value, down
  assert carry == sorted([(x.shape, str(x.dtype)) for x in adapters] + [((), "float32")])

  full_state, full = single.train_step(_copy(state), batch, setup["key"])
  micro_state, micro = accumulating.train_step(_copy(state), batch, setup["key"])
  for name in ("loss", "grad_norm", "margin", "chosen_logps"):
    np.testing.assert_allclose(float(micro[name]), float(full[name]), rtol=1e-6, atol=1e-6, err_msg=name)
  b1 = setup["config"].optim.b1
  full_grads = _leaves(optax.tree_utils.tree_get(full_state.opt_state, "mu"))
  micro_grads = _leaves(optax.tree_utils.tree_get(micro_state.opt_state, "mu"))
  assert len(full_grads) == len(adapters)  # the optimizer too holds moments of the adapters only
  assert all(np.abs(g).max() > 0 for g in full_grads)
  for a, b in zip(micro_grads, full_grads):
    np.testing.assert_allclose(a / (1 - b1), b / (1 - b1), rtol=0, atol=1e-6)
  for a, b in zip(_leaves(micro_state.params), _leaves(full_state.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_nan_guard_skips_the_poisoned_step(setup):
  parts, key = setup["parts"], setup["key"]
  state, _ = parts.train_step(_copy(setup["state"]), _batch(setup, np.arange(8)), key)
  before = _leaves(state.params)
  poisoned = np.ones(8, np.float32)
  poisoned[3] = np.nan
  state, metrics = parts.train_step(state, _batch(setup, np.arange(8, 16), weight=poisoned), key)
  assert int(metrics["update_skipped"]) == 1 and int(metrics["skipped_updates"]) == 1
  assert int(state.step) == 2 and int(state.skipped_updates) == 1
  for a, b in zip(_leaves(state.params), before):
    np.testing.assert_array_equal(a, b)
  state, metrics = parts.train_step(state, _batch(setup, np.arange(16, 24)), key)
  assert int(metrics["update_skipped"]) == 0 and int(state.skipped_updates) == 1
  assert not all(np.array_equal(a, b) for a, b in zip(_leaves(state.params), before))


def test_cached_reference_equals_on_the_fly_and_numpy(setup):
  parts, datasets = setup["parts"], setup["datasets"]
  rows = np.array([5, 17, 2, 40, 33, 8, 61, 12])  # out of order: lookup is by example_index
  host = {k: v[rows] for k, v in datasets.train.items()}
  cached = setup["table"].lookup(host)
  layout = components.device_batch_layout(config_lib.build_settings(setup["config"]), datasets.info)
  device = mesh_lib.shard_batch({k: host[k] for k in layout if not k.startswith("ref_")}, setup["mesh"])
  on_the_fly = jax.device_get(parts.reference_on_the_fly(setup["state"].params, device))
  apply = jax.jit(lambda p, t, m: parts.model.apply({"params": p}, t, m))
  for part in ("chosen", "rejected"):
    column = f"ref_{part}_logps"
    np.testing.assert_allclose(cached[column], on_the_fly[column], rtol=1e-6, atol=1e-5)
    logits = np.asarray(apply(setup["ref_params"], host[f"{part}_tokens"], host[f"{part}_attention_mask"]))
    expected = numpy_sequence_logps(logits, host[f"{part}_tokens"], host[f"{part}_loss_mask"])
    np.testing.assert_allclose(cached[column], expected, rtol=1e-5, atol=1e-4)


def test_reference_cache_file_round_trip(setup, tmp_path):
  parts, datasets = setup["parts"], setup["datasets"]
  calls = []

  def compute(arrays):
    calls.append(1)
    return {k: v for k, v in setup["table"].columns.items()}

  kwargs = dict(cache_dir=tmp_path, name="train", arrays=datasets.train, groups=parts.reference_groups,
                params_fp=reference.params_fingerprint(setup["state"].params), model_description={"m": 1},
                compute=compute)
  first = reference.load_or_compute(**kwargs)
  second = reference.load_or_compute(**kwargs)
  assert (first.hit, second.hit, len(calls)) == (False, True, 1)
  for name in first.columns:
    np.testing.assert_array_equal(first.columns[name], second.columns[name])
  # Other parameters: another key, so the cache misses.
  third = reference.load_or_compute(**{**kwargs, "params_fp": "other"})
  assert not third.hit and len(calls) == 2
