"""The train state: parameters made from the init key's first half (plus the objective's
extra parameters), optimizer moments sharded like their parameters, a jitted init whose
state equals an eager one, and abstract shapes equal to the real ones."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import models
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import optim
from rlhf_jax.train import state as state_lib

VOCAB = 24


def _model():
  return models.Transformer(models.get_preset("tiny", vocab_size=VOCAB, max_len=8))


def _tx():
  return optax.adamw(1e-3)


def test_init_params_uses_the_first_half_of_the_key_and_adds_extra_params():
  model = _model()
  extra = lambda key: {"extra": jax.random.normal(key, (3,))}
  init = state_lib.init_params_fn(model, batch_size=2, length=8, extra_params=extra)
  key = jax.random.key(4)
  params = nn.unbox(init(key))
  model_key, extra_key = jax.random.split(key)
  expected = nn.unbox(model.init(model_key, jnp.zeros((1, 8), jnp.int32))["params"])
  assert set(params) == set(expected) | {"objective"}  # the objective's own, under one key
  for got, want in zip(jax.tree.leaves({k: params[k] for k in expected}), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(params["objective"]["extra"], jax.random.normal(extra_key, (3,)))
  # No extra parameters: no `objective` key at all.
  bare = nn.unbox(state_lib.init_params_fn(model, batch_size=2, length=8, extra_params=lambda key: {})(key))
  assert set(bare) == set(expected)


def test_optimizer_moments_are_sharded_like_their_parameters():
  mesh = jax.sharding.AbstractMesh((1, 2, 2), ("data", "fsdp", "tensor"))
  init = state_lib.init_params_fn(_model(), batch_size=2, length=8)
  boxed = jax.eval_shape(init, jax.random.key(0))
  shardings = state_lib.state_shardings(boxed, _tx(), mesh, models.logical_axis_rules(mesh.axis_names))
  param_specs = jax.tree.map(lambda s: s.spec, shardings.params)
  adam = shardings.opt_state[0]  # ScaleByAdamState(count, mu, nu)
  assert jax.tree.map(lambda s: s.spec, adam.mu) == param_specs
  assert jax.tree.map(lambda s: s.spec, adam.nu) == param_specs
  assert adam.count.spec == jax.sharding.PartitionSpec()
  assert shardings.step.spec == shardings.rng.spec == jax.sharding.PartitionSpec()
  assert any(spec != jax.sharding.PartitionSpec() for spec in jax.tree.leaves(
      param_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))


def test_jitted_init_equals_an_eager_one_and_the_abstract_state():
  model = _model()
  tx = optim.make_optimizer(optim.OptimizerSettings(
      learning_rate=1e-3, warmup_steps=0, end_learning_rate_factor=0.0, b1=0.9, b2=0.99, eps=1e-8,
      weight_decay=0.0, clip_norm=1.0, max_consecutive_skips=1), total_steps=10)
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = models.logical_axis_rules(mesh.axis_names)
  init = state_lib.init_params_fn(model, batch_size=1, length=8)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = state_lib.state_shardings(boxed, tx, mesh, rules)
    abstract = state_lib.abstract_state(init, tx, shardings)
    state = state_lib.make_init_state(init, tx, shardings)(jax.random.key(1), jax.random.key(2))
  assert int(state.step) == 0 and int(state.skipped_updates) == 0
  np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(2)))
  params = nn.unbox(init(jax.random.key(1)))
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for got, want in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(tx.init(params))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype), state)
