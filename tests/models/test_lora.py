"""LoRA adapters (`rlhf_jax.models.lora`): the adapted forward against an independent
NumPy merge + the NumPy decoder, zero B = the base model, merged weights = the adapter
forward (unrolled, scanned, KV-cache decoding, reward model), dropout only with a key
and a mask per layer, and the parameter-tree helpers. The PEFT layout is tested in
tests/models/hf/test_peft.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_transformer as ref
from rlhf_jax import hf, models
from rlhf_jax.models import lora

TARGETS = ("query", "key", "value", "out", "gate", "up", "down")
CONFIG = models.get_preset("tiny", lora_rank=4, lora_alpha=8.0, lora_targets=TARGETS)
LENGTHS = np.array([9, 5])
TOKENS = np.random.default_rng(0).integers(1, CONFIG.vocab_size, size=(2, 9)).astype(np.int32)
MASK = np.arange(9)[None, :] < LENGTHS[:, None]


def init(config=CONFIG, model_cls=models.Transformer, seed=0, zero_b=False, **kwargs):
  model = model_cls(config, **kwargs)
  params = ref.random_params(nn.unbox(models.abstract_params(model)), seed)
  if zero_b:
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros_like(x) if path[-1].key.endswith("_lora_b") else x, params)
  return model, params


def forward(model, params, **kwargs):
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, TOKENS, MASK, **kwargs))(params))


def numpy_merge(params, config):
  """W + (alpha / r) A B with NumPy einsums over the named head axes (independent of
  `lora.merge`, which flattens and matmuls)."""
  s = config.lora_alpha / config.lora_rank
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out[key] = numpy_merge(value, config)
    elif key.endswith(lora.ADAPTER_SUFFIXES):
      continue
    elif f"{key}_lora_a" in params:
      a, b = np.asarray(params[f"{key}_lora_a"], np.float64), np.asarray(params[f"{key}_lora_b"], np.float64)
      if key == "out":      # A [H, Dh, r], B [r, D]
        delta = np.einsum("hdr,re->hde", a, b)
      elif b.ndim == 3:     # A [D, r], B [r, N, Dh]
        delta = np.einsum("er,rnd->end", a, b)
      else:                 # A [I, r], B [r, O]
        delta = a @ b
      out[key] = np.asarray(value, np.float64) + s * delta
    else:
      out[key] = value
  return out


def test_adapter_forward_matches_numpy_merged_decoder():
  """y = x W + (alpha / r) x A B on all seven projections: the model's logits equal the
  float64 NumPy decoder run on W + (alpha / r) A B merged by NumPy."""
  model, params = init()
  logits = forward(model, params)
  expected, _ = ref.forward(numpy_merge(params, CONFIG), TOKENS, MASK, CONFIG)
  np.testing.assert_allclose(logits[MASK], expected[MASK], atol=2e-4, rtol=0)
  base_logits, _ = ref.forward(params, TOKENS, MASK, CONFIG)
  assert np.abs(logits[MASK] - base_logits[MASK]).max() > 1e-2  # the adapters do change the model


def test_zero_b_equals_base_model():
  """B = 0 (its initialisation): the adapted model is exactly its base."""
  model, params = init(zero_b=True)
  base = lora.base_model(model)
  assert base.config.lora_rank == 0
  np.testing.assert_array_equal(forward(model, params), forward(base, lora.base_params(params)))


def test_init_b_is_zero_and_a_is_not():
  model = models.Transformer(CONFIG.replace(n_layers=1))
  params = nn.unbox(jax.jit(lambda key: model.init(key, TOKENS[:, :4]))(jax.random.key(0))["params"])
  attention = params["layer_0"]["attention"]
  assert not np.any(np.asarray(attention["query_lora_b"]))
  a = np.asarray(attention["query_lora_a"])
  assert a.shape == (CONFIG.d_model, CONFIG.lora_rank)
  # LeCun normal over the input axis: variance 1 / D.
  assert 0.5 / CONFIG.d_model < a.var() < 2.0 / CONFIG.d_model


@pytest.mark.parametrize("scan", [False, True])
def test_merged_weights_give_the_adapter_forward(scan):
  """merge(params) = W + (alpha / r) B A in the base model gives the adapted logits
  (scanned layers: a leading layer axis on W, A and B)."""
  model, params = init()
  if scan:
    config = CONFIG.replace(scan_layers=True)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *[params[f"layer_{i}"] for i in range(CONFIG.n_layers)])
    params = {k: v for k, v in params.items() if not k.startswith("layer_")} | {"layers": stacked}
    model = models.Transformer(config)
  merged = lora.merge(params, model.config)
  assert not lora.adapter_params(merged)
  np.testing.assert_allclose(forward(lora.base_model(model), merged), forward(model, params), atol=2e-5, rtol=0)


def test_merge_against_numpy():
  _, params = init()
  merged = lora.merge(params, CONFIG)
  expected = numpy_merge(params, CONFIG)
  for path, value in jax.tree_util.tree_flatten_with_path(merged)[0]:
    node = expected
    for key in path:
      node = node[key.key]
    np.testing.assert_allclose(np.asarray(value), node, atol=1e-5, rtol=1e-5)


def test_reward_model_adapters_merge_and_zero_b():
  model, params = init(model_cls=models.RewardModel, num_heads=2)
  assert "query_lora_a" in params["backbone"]["layer_0"]["attention"]
  merged = lora.merge(params, model.config)
  np.testing.assert_allclose(forward(lora.base_model(model), merged), forward(model, params), atol=2e-5, rtol=0)
  model, params = init(model_cls=models.RewardModel, zero_b=True)
  np.testing.assert_array_equal(forward(model, params), forward(lora.base_model(model), params))


def test_kv_cache_decoding_runs_the_adapters():
  """Prefill then one token at a time through the cache = the full adapted forward."""
  config = CONFIG.replace(max_len=16, n_layers=1)
  model, params = init(config)
  tokens = TOKENS[:1, :6]
  full = np.asarray(jax.jit(lambda p: model.apply({"params": p}, tokens))(params))
  step = jax.jit(lambda p, c, t: model.apply({"params": p, "cache": c}, t, decode=True, mutable=["cache"]))
  cache = models.init_cache(model, 1, 8)
  logits, updates = step(params, cache, tokens[:, :4])
  steps = [np.asarray(logits)]
  cache = updates["cache"]
  for t in (4, 5):
    logits, updates = step(params, cache, tokens[:, t:t + 1])
    cache = updates["cache"]
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5, rtol=0)


def test_dropout_only_with_a_key():
  """Without a "dropout" key the adapters are deterministic (evaluation, sampling); with
  one, dropout changes the adapted logits but not a model whose B is zero."""
  config = CONFIG.replace(lora_dropout=0.5, n_layers=1, lora_targets=("query", "down"))
  model, params = init(config)
  _, zero = init(config, zero_b=True)
  run = jax.jit(lambda p, key: (model.apply({"params": p}, TOKENS, MASK),
                                model.apply({"params": p}, TOKENS, MASK, rngs={"dropout": key})))
  plain, dropped = map(np.asarray, run(params, jax.random.key(1)))
  assert np.abs(dropped - plain).max() > 1e-3
  expected, _ = ref.forward(numpy_merge(params, config), TOKENS, MASK, config)
  np.testing.assert_allclose(plain[MASK], expected[MASK], atol=2e-4)
  zero_plain, zero_dropped = map(np.asarray, run(zero, jax.random.key(1)))
  np.testing.assert_allclose(zero_dropped, zero_plain, atol=1e-6)


@pytest.mark.parametrize("source", ["rngs", "dropout_key"])
def test_scanned_layers_draw_their_own_dropout_masks(monkeypatch, source):
  """Under nn.scan every block has one module path: the dropout key must still be split
  over the layers (an explicit "dropout" rng, and the train step's `dropout_key`), so
  the layers' masks differ, while the same key draws the same masks again."""
  config = CONFIG.replace(lora_dropout=0.5, lora_targets=("query",), scan_layers=True)
  model = models.Transformer(config)
  params = ref.random_params(nn.unbox(models.abstract_params(model)))
  masks = []
  bernoulli = jax.random.bernoulli

  def recording_bernoulli(key, p, shape):
    mask = bernoulli(key, p, shape)
    jax.debug.callback(lambda m: masks.append(np.asarray(m)), mask, ordered=True)
    return mask

  monkeypatch.setattr(jax.random, "bernoulli", recording_bernoulli)

  def apply(p, key):
    if source == "rngs":
      return model.apply({"params": p}, TOKENS, MASK, rngs={"dropout": key})
    with lora.dropout_key(key):
      return model.apply({"params": p}, TOKENS, MASK)

  run = jax.jit(apply)

  def masks_of(key):
    masks.clear()
    jax.block_until_ready(run(params, key))
    jax.effects_barrier()
    return list(masks)

  first = masks_of(jax.random.key(3))
  assert len(first) == config.n_layers == 2 and first[0].shape == (*TOKENS.shape, config.d_model)
  assert 0.3 < first[0].mean() < 0.7 and (first[0] != first[1]).mean() > 0.3  # independent masks
  again = masks_of(jax.random.key(3))
  for drawn, redrawn in zip(first, again):
    np.testing.assert_array_equal(drawn, redrawn)
  other = masks_of(jax.random.key(4))
  assert (first[0] != other[0]).mean() > 0.3


def test_tree_helpers_and_counts():
  config = models.get_preset("tiny", lora_rank=4)  # default targets: query, value
  model, params = init(config, model_cls=models.RewardModel)
  adapters, base = lora.adapter_params(params), lora.base_params(params)
  assert sorted(adapters["backbone"]["layer_1"]["attention"]) == [
      "query_lora_a", "query_lora_b", "value_lora_a", "value_lora_b"]
  assert "query" in base["backbone"]["layer_1"]["attention"] and not lora.adapter_params(base)
  assert jax.tree.structure(lora.combine(base, adapters)) == jax.tree.structure(params)
  trainable = lora.trainable_params(params)
  assert set(trainable) == {"backbone", "reward_head"}
  d, r, h, k, dh = config.d_model, 4, config.n_heads, config.n_kv_heads, config.head_dim
  per_layer = d * r + r * h * dh + d * r + r * k * dh
  counts = lora.param_counts(params)
  assert counts["trainable"] == config.n_layers * per_layer + d + 1  # + the reward head
  assert counts["total"] == sum(np.size(x) for x in jax.tree.leaves(params))
  mask = lora.trainable_mask(params)
  assert mask["reward_head"]["kernel"] and not mask["backbone"]["embed"]["embedding"]


def test_an_objectives_own_parameters_train_in_full_and_are_not_the_networks():
  """The `OBJECTIVE_KEY` subtree (an objective's own parameters, e.g. learned annotator
  reliabilities) is trained by a LoRA run and kept apart from the network's tree."""
  config = models.get_preset("tiny", lora_rank=2)
  _, params = init(config, model_cls=models.RewardModel)
  reliabilities = np.zeros(5, np.float32)
  with_objective = dict(params, objective={"reliability_logits": reliabilities})
  assert lora.objective_params(with_objective) == {"objective": {"reliability_logits": reliabilities}}
  assert lora.network_params(with_objective).keys() == params.keys()
  assert lora.trainable_mask(with_objective)["objective"]["reliability_logits"]
  assert set(lora.trainable_params(with_objective)) == {"backbone", "reward_head", "objective"}
  assert lora.param_counts(with_objective)["trainable"] == lora.param_counts(params)["trainable"] + 5


@pytest.mark.parametrize("fields, message", [
    (dict(lora_rank=-1), "lora_rank"), (dict(lora_rank=2, lora_alpha=0), "lora_alpha"),
    (dict(lora_dropout=1.0), "lora_dropout"), (dict(lora_targets=("q_proj",)), "unknown projection"),
    (dict(lora_rank=2, lora_targets=()), "empty")])
def test_config_errors(fields, message):
  with pytest.raises(ValueError, match=message):
    models.get_preset("tiny", **fields)


def test_targets_from_a_comma_separated_string():
  config = models.get_preset("tiny", lora_rank=2, lora_targets="query, down")
  assert config.lora_targets == ("query", "down")
  hash(config)


def test_hf_save_refuses_unmerged_adapters(tmp_path):
  model, params = init()
  with pytest.raises(ValueError, match="LoRA adapters"):
    hf.save(tmp_path, model, params)
