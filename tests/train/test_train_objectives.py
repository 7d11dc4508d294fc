"""Objectives against NumPy references computed from the model's raw outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import inputs, networks, objectives
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS

from train_testlib import log_sigmoid, numpy_sequence_logps, tiny_config


def _pairs(n=4, seed=0):
  return data.toy_preference_data(n, seed=seed, vocab_size=32, max_length=16).arrays


def _jit(fn):
  # Eager dispatch of every layer op is slow; XLA's backend optimisations are not needed.
  return jax.jit(fn, compiler_options=FAST_COMPILE_OPTIONS)


class _Model:
  """A model, its parameters and a jitted raw forward (the NumPy references' input)."""

  def __init__(self, config, kind, key):
    self.model = networks.build_model(config_lib.model_settings(config), 32, kind)
    tokens = jnp.zeros((2, 8), jnp.int32)
    self.params = _jit(lambda k: nn.unbox(self.model.init(k, tokens, jnp.ones_like(tokens, bool))["params"]))(
        jax.random.key(key))
    self._apply = _jit(lambda p, t, m: self.model.apply({"params": p}, t, m))

  def outputs(self, tokens, mask):
    return np.asarray(self._apply(self.params, tokens, mask), np.float64)


@pytest.fixture(scope="module")
def policy():
  return _Model(tiny_config("dpo"), "policy", key=0)


@pytest.fixture(scope="module")
def reward_model():
  return _Model(tiny_config("reward_model", model__reward_heads=2), "reward", key=3)


def _objective(name, model, config, params, batch):
  objective = objectives.get(name)
  settings = objectives.settings_from(objective, config.loss)
  return _jit(lambda p, b: objective.fn(p, b, jax.random.key(0), model=model, settings=settings,
                                        layout=objectives.Layout()))(params, batch)


def test_dpo_objective_matches_numpy_with_weights(policy):
  config = tiny_config("dpo")
  arrays = _pairs()
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  rng = np.random.default_rng(0)
  ref_chosen, ref_rejected = rng.normal(-20, 2, 4), rng.normal(-20, 2, 4)
  weight = np.array([1.0, 2.0, 0.5, 0.0], np.float32)
  batch.update(ref_chosen_logps=jnp.asarray(ref_chosen, jnp.float32),
               ref_rejected_logps=jnp.asarray(ref_rejected, jnp.float32),
               weight=jnp.asarray(weight), loss_denominator=jnp.asarray(weight.sum()))
  loss, outputs = _objective("dpo", policy.model, config, policy.params, batch)

  def logps(part):
    logits = policy.outputs(arrays[f"{part}_tokens"], arrays[f"{part}_attention_mask"])
    return numpy_sequence_logps(logits, arrays[f"{part}_tokens"], arrays[f"{part}_loss_mask"])

  chosen, rejected = logps("chosen"), logps("rejected")
  z = 0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))
  expected = np.sum(weight * -log_sigmoid(z)) / weight.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["chosen_reward"]), 0.1 * (chosen - ref_chosen),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["accuracy"]), (z > 0).astype(float))


def _rewards(reward_model, arrays):
  chosen = reward_model.outputs(arrays["chosen_tokens"], arrays["chosen_attention_mask"])
  rejected = reward_model.outputs(arrays["rejected_tokens"], arrays["rejected_attention_mask"])
  assert chosen.shape == (len(arrays["chosen_tokens"]), 2)
  return chosen, rejected


def test_reward_model_crowd_bt_with_heads_matches_numpy(reward_model):
  config = tiny_config("reward_model", model__reward_heads=2, loss__name="crowd_bt",
                       loss__reliabilities="file.json", loss__unknown_reliability=0.9)
  arrays = _pairs()
  reliability = np.array([0.8, 0.6, 1.0, 0.3], np.float32)
  annotator = np.array([0, 1, -1, 2], np.int32)  # pair 2: unknown annotator
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  batch.update(reliability=jnp.asarray(reliability), annotator=jnp.asarray(annotator),
               loss_denominator=jnp.asarray(4.0, jnp.float32))
  loss, outputs = _objective("reward_model", reward_model.model, config, reward_model.params, batch)
  chosen, rejected = _rewards(reward_model, arrays)
  d = chosen - rejected
  eta = np.where(annotator >= 0, reliability, 0.9)[:, None]
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  per_example = np.mean(-np.log(eta * sigmoid(d) + (1 - eta) * sigmoid(-d)), axis=1)
  np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["margin"]), d.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_reward_model_bradley_terry_margin_smoothing_and_centering(reward_model):
  config = tiny_config("reward_model", model__reward_heads=2, loss__margin=0.5, loss__label_smoothing=0.1,
                       loss__centering=0.01)
  arrays = _pairs(seed=1)
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  batch["loss_denominator"] = jnp.asarray(4.0, jnp.float32)
  loss, _ = _objective("reward_model", reward_model.model, config, reward_model.params, batch)
  rc, rr = _rewards(reward_model, arrays)
  x = rc - rr - 0.5
  per_head = -0.9 * log_sigmoid(x) - 0.1 * log_sigmoid(-x) + 0.01 * (rc + rr) ** 2
  np.testing.assert_allclose(float(loss), per_head.mean(), rtol=1e-5)


def test_mismatched_pairs_hand_example():
  # Row layout: [bos, prompt..., completion..., eos, pad...]; loss mask on completion + eos.
  tokens = np.array([[1, 10, 11, 20, 21, 2, 0, 0],
                     [1, 12, 30, 2, 0, 0, 0, 0],
                     [1, 13, 14, 15, 40, 41, 42, 2]])
  attention = tokens != 0
  loss_mask = np.zeros_like(attention)
  loss_mask[0, 3:6] = loss_mask[1, 2:4] = loss_mask[2, 4:8] = True
  kl = inputs.mismatched_pairs({"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}, pad_id=0)
  np.testing.assert_array_equal(kl["kl_tokens"], [[1, 10, 11, 30, 2, 0, 0, 0],
                                                  [1, 12, 40, 41, 42, 2, 0, 0],
                                                  [1, 13, 14, 15, 20, 21, 2, 0]])
  np.testing.assert_array_equal(kl["kl_loss_mask"], [[0, 0, 0, 1, 1, 0, 0, 0],
                                                     [0, 0, 1, 1, 1, 1, 0, 0],
                                                     [0, 0, 0, 0, 1, 1, 1, 0]])
  np.testing.assert_array_equal(kl["kl_attention_mask"], kl["kl_tokens"] != 0)


def test_registry_names_and_errors():
  assert set(objectives.names()) >= {"sft", "reward_model", "dpo", "simpo", "orpo", "kto"}
  with pytest.raises(ValueError, match="unknown objective 'dpoo'; did you mean 'dpo'.*Valid objective names: .*dpo"):
    objectives.get("dpoo")
  settings = objectives.DPOSettings
  with pytest.raises(ValueError, match="already registered"):
    objectives.register("dpo", settings=settings, data="pairs", model="policy")(lambda *a, **k: None)
  with pytest.raises(ValueError, match="data must be one of"):
    objectives.register("x", settings=settings, data="triples", model="policy")
  with pytest.raises(ValueError, match="settings must be a dataclass type"):
    objectives.register("x", settings=dict, data="pairs", model="policy")
  with pytest.raises(ValueError, match="online objective needs `prepare`"):
    objectives.register("x", settings=settings, data="rollouts", model="policy")


@pytest.mark.parametrize("name", ["sft", "reward_model", "dpo", "simpo", "orpo", "kto"])
def test_loss_section_is_the_settings_dataclass(name):
  """The config's `loss` section has exactly the settings' fields and defaults, and the
  defaults a loss function of `rlhf_jax.losses` has come from its signature."""
  import dataclasses
  import inspect
  from rlhf_jax import losses
  objective = objectives.get(name)
  config = tiny_config(name)
  assert config.loss.to_dict() == dataclasses.asdict(objective.settings())
  assert objectives.settings_from(objective, config.loss) == objective.settings()
  sources = {"dpo": losses.dpo, "simpo": losses.simpo, "orpo": losses.orpo, "kto": losses.kto}
  if name in sources:
    parameters = inspect.signature(sources[name]).parameters
    for field, value in dataclasses.asdict(objective.settings()).items():
      if field in parameters and field != "exo_epsilon":
        assert value == parameters[field].default, field


def test_bad_settings_fail_with_the_field():
  with pytest.raises(ValueError, match="config loss.variant: unknown DPO variant 'ipoo'; did you mean 'ipo'"):
    objectives.DPOSettings(variant="ipoo")
  with pytest.raises(ValueError, match="unknown loss field.*gama.*valid fields: beta, gamma"):
    objectives.settings_from(objectives.get("simpo"), {"gama": 1.0})
  with pytest.raises(ValueError, match="loss.initial_reliability must lie in"):
    objectives.RewardModelSettings(name="crowd_bt", initial_reliability=1.5)
