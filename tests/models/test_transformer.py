"""Transformer forward against an independent NumPy implementation, causality, padding,
mixed precision, rematerialization, scanned layers and incremental decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_transformer as ref
from rlhf_jax import models

TINY = models.get_preset("tiny")
# Four sequences of length 10, right padded to lengths 10, 7, 3 and 1.
LENGTHS = np.array([10, 7, 3, 1])
TOKENS = np.random.default_rng(0).integers(1, TINY.vocab_size, size=(4, 10)).astype(np.int32)
MASK = np.arange(10)[None, :] < LENGTHS[:, None]
TOKENS = np.where(MASK, TOKENS, 0)


def init(config, seed=0):
  """The model and NumPy-drawn parameters of the right shapes (no `model.init` compile)."""
  model = models.Transformer(config)
  return model, ref.random_params(nn.unbox(models.abstract_params(model)), seed)


@pytest.fixture(scope="module")
def tiny():
  model, params = init(TINY)
  apply = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))
  return model, params, apply


@pytest.fixture(scope="module")
def tiny_grads(tiny):
  """(loss, gradients) of the plain unrolled model, shared by the remat and scan tests."""
  return _loss_and_grads(TINY, tiny[1])


def test_init_shapes_and_scales():
  config = TINY.replace(n_layers=1)
  model = models.Transformer(config)
  init = jax.jit(model.init)
  # An rbg key compiles about twice as fast as threefry on a CPU; init is key-agnostic.
  key = jax.random.key(0, impl="rbg")
  params = nn.unbox(init(key, TOKENS, MASK)["params"])
  d, h, k, dh, f, v = 64, 4, 2, 16, 128, 512
  expected = {
      "embed": {"embedding": (v, d)},
      "layer_0": {
          "attention": {"query": (d, h, dh), "key": (d, k, dh), "value": (d, k, dh),
                        "out": (h, dh, d)},
          "attention_norm": {"scale": (d,)},
          "mlp": {"gate": (d, f), "up": (d, f), "down": (f, d)},
          "mlp_norm": {"scale": (d,)},
      },
      "final_norm": {"scale": (d,)},
      "lm_head": (d, v),
  }
  assert jax.tree.map(lambda a: a.shape, params) == expected
  layer = params["layer_0"]
  np.testing.assert_array_equal(layer["attention_norm"]["scale"], np.ones(d))
  # Variance 1 / fan_in, fan_in = contracted dimensions.
  for array, fan_in in [(layer["attention"]["query"], d), (layer["attention"]["out"], h * dh),
                        (layer["mlp"]["down"], f), (params["lm_head"], d),
                        (params["embed"]["embedding"], 1)]:
    assert abs(np.std(array) * np.sqrt(fan_in) - 1.0) < 0.15
  again = nn.unbox(init(key, TOKENS, MASK)["params"])
  np.testing.assert_array_equal(again["lm_head"], params["lm_head"])


def test_logits_match_numpy_reference(tiny):
  _, params, apply = tiny
  logits = apply(params, TOKENS, MASK)
  assert logits.shape == (4, 10, TINY.vocab_size) and logits.dtype == jnp.float32
  expected, _ = ref.forward(params, TOKENS, MASK, TINY)
  # Every position, padding included: the reference defines pads the same way (they
  # attend to the earlier real tokens and take the position of the last one).
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
  # The hidden-state path (`return_hidden=True`) is checked through the reward and
  # value heads in test_heads.py.


def test_gqa_and_tied_embeddings_match_numpy_reference():
  # Multi-query attention (one key/value head) with tied input/output embeddings.
  config = TINY.replace(n_kv_heads=1, tie_embeddings=True, n_layers=1, rope_theta=500.0)
  model, params = init(config, seed=3)
  assert "lm_head" not in params
  logits = jax.jit(lambda p: model.apply({"params": p}, TOKENS, MASK))(params)
  expected, _ = ref.forward(params, TOKENS, MASK, config)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_apply_rope_rotates_pairs_by_position_angle():
  # Hand example: Dh = 4, frequencies (1, theta^-1/2) = (1, 0.1) with theta = 100.
  x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
  out = models.apply_rope(x, jnp.array([[2]]), 100.0)[0, 0, 0]
  a0, a1 = 2 * 1.0, 2 * 0.1
  expected = [1 * np.cos(a0) - 3 * np.sin(a0), 2 * np.cos(a1) - 4 * np.sin(a1),
              3 * np.cos(a0) + 1 * np.sin(a0), 4 * np.cos(a1) + 2 * np.sin(a1)]
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # Position 0 is the identity.
  np.testing.assert_allclose(models.apply_rope(x, jnp.array([[0]]), 100.0), x)


def test_causal_later_tokens_do_not_change_earlier_logits(tiny):
  _, params, apply = tiny
  full = np.ones((4, 10), bool)
  changed = TOKENS.copy()
  changed[:, 6] = (changed[:, 6] + 17) % TINY.vocab_size
  a, b = apply(params, TOKENS, full), apply(params, changed, full)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert np.all(np.abs(a[:, 6:] - b[:, 6:]).max(axis=-1) > 1e-4)


def test_right_padding_does_not_change_valid_logits(tiny):
  _, params, apply = tiny
  padded = apply(params, TOKENS, MASK)
  for row, length in enumerate(LENGTHS):
    # The unpadded sequence, through the reference: no padding involved at all.
    alone, _ = ref.forward(params, TOKENS[row:row + 1, :length], np.ones((1, length), bool), TINY)
    np.testing.assert_allclose(padded[row, :length], alone[0], atol=1e-4, rtol=1e-4)
  # Garbage in the padding slots is never attended to.
  noisy = np.where(MASK, TOKENS, 99)
  np.testing.assert_allclose(np.where(MASK[..., None], apply(params, noisy, MASK), 0),
                             np.where(MASK[..., None], padded, 0), atol=1e-6)


def test_left_padding_uses_token_count_positions(tiny):
  _, params, apply = tiny
  # Rows 0 and 1 carry the first 7 and 10 tokens of TOKENS[1] / TOKENS[0], left padded.
  left = TOKENS[:2].copy()
  left[0] = np.concatenate([np.full(3, 5), TOKENS[1, :7]])
  left_mask = np.ones((2, 10), bool)
  left_mask[0, :3] = False
  shifted = apply(params, np.concatenate([left, TOKENS[2:]]), np.concatenate([left_mask, MASK[2:]]))
  alone, _ = ref.forward(params, TOKENS[1:2, :7], np.ones((1, 7), bool), TINY)
  np.testing.assert_allclose(shifted[0, 3:], alone[0], atol=1e-4, rtol=1e-4)


def test_all_padding_row_is_finite(tiny):
  _, params, apply = tiny
  mask = MASK.copy()
  mask[0] = False
  logits = apply(params, TOKENS, mask)
  assert np.all(np.isfinite(logits))


def test_bfloat16_compute_is_close_to_float32(tiny):
  _, params, apply = tiny
  reference = apply(params, TOKENS, MASK)
  config = TINY.replace(dtype="bfloat16")
  model = models.Transformer(config)
  logits = jax.jit(lambda p: model.apply({"params": p}, TOKENS, MASK))(params)
  assert logits.dtype == jnp.float32
  scale = np.abs(reference).max()
  error = np.abs(np.asarray(logits) - reference)[MASK].max()
  assert 0 < error < 0.03 * scale, (error, scale)
  agree = (np.argmax(logits, -1) == np.argmax(reference, -1))[MASK].mean()
  assert agree > 0.9
  # bfloat16 storage too: parameters are created in bfloat16.
  bf16 = models.abstract_params(models.Transformer(TINY.replace(param_dtype="bfloat16")))
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(bf16))} == {jnp.dtype(jnp.bfloat16)}


def _loss_and_grads(config, params):
  """((next-token loss, logits), gradients) for one compiled forward and backward."""
  model = models.Transformer(config)

  def loss(p):
    logits = model.apply({"params": p}, TOKENS, MASK)
    logp = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logp[:, :-1], TOKENS[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(MASK[:, 1:], picked, 0.0)), logits

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def _stack_layers(params, n_layers):
  layers = [params[f"layer_{i}"] for i in range(n_layers)]
  stacked = {k: v for k, v in params.items() if not k.startswith("layer_")}
  stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return stacked


def test_remat_gives_identical_values_and_gradients(tiny, tiny_grads):
  _, params, _ = tiny
  value, grads = tiny_grads
  value_remat, grads_remat = _loss_and_grads(TINY.replace(remat=True), params)
  # Rematerialization recomputes the same operations: bitwise-equal results.
  jax.tree.map(np.testing.assert_array_equal, value_remat, value)
  jax.tree.map(np.testing.assert_array_equal, grads_remat, grads)
  # The gradient is not trivially zero.
  assert float(jnp.abs(grads["layer_0"]["attention"]["query"]).max()) > 0


def test_scanned_layers_equal_unrolled_layers(tiny, tiny_grads):
  _, params, apply = tiny
  config = TINY.replace(scan_layers=True, remat=True)
  stacked = _stack_layers(params, TINY.n_layers)
  abstract = nn.unbox(models.abstract_params(models.Transformer(config)))
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, stacked)
  value, grads = tiny_grads
  value_scan, grads_scan = _loss_and_grads(config, stacked)
  np.testing.assert_allclose(value_scan[1], value[1], atol=1e-5, rtol=1e-5)  # logits
  np.testing.assert_allclose(value_scan[0], value[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads_scan, _stack_layers(grads, TINY.n_layers))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_incremental_decoding_equals_full_forward(tiny, scan_layers):
  _, params, apply = tiny
  config = TINY.replace(scan_layers=scan_layers)
  if scan_layers:
    params = _stack_layers(params, TINY.n_layers)
  model = models.Transformer(config)
  # Row 0 right padded (pads in the middle of decoding), row 1 left padded (prompt
  # padding), rows 2-3 full.
  tokens = TOKENS.copy()
  mask = np.ones((4, 10), bool)
  mask[0, 7:] = False
  mask[1, :2] = False
  full = apply(tiny[1], tokens, mask)

  step = jax.jit(lambda p, c, t, m: model.apply(
      {"params": p, "cache": c}, t, m, decode=True, mutable=["cache"]))
  cache = models.init_cache(model, batch_size=4, max_length=12)
  pieces = []
  # A 4-token prefill, then one token at a time (two compiled shapes).
  for start, stop in [(0, 4)] + [(t, t + 1) for t in range(4, 10)]:
    logits, updates = step(params, cache, tokens[:, start:stop], mask[:, start:stop])
    cache = updates["cache"]
    pieces.append(logits)
  decoded = np.concatenate(pieces, axis=1)
  np.testing.assert_allclose(np.where(mask[..., None], decoded, 0),
                             np.where(mask[..., None], full, 0), atol=1e-5, rtol=1e-5)
  assert np.asarray(cache["num_tokens"]).tolist() == mask.sum(1).tolist()


# Unsorted, repeated, and one padding slot (slot 5 of the length-3 row).
SLOTS = np.array([[9, 0, 4], [6, 6, 2], [2, 5, 0], [0, 0, 0]], np.int32)


@pytest.mark.parametrize("variant", ["plain", "gqa_remat", "scan"])
def test_logit_slots_equal_the_full_forward_at_those_slots(tiny, variant):
  # With `logit_slots` the last block computes queries and feed-forward only at the
  # slots (unscanned layers); values and gradients must be those of the full forward.
  config, unscanned = TINY, tiny[1]
  if variant == "gqa_remat":
    config = TINY.replace(n_kv_heads=1, remat=True)
    _, unscanned = init(config, seed=5)
  params = unscanned
  if variant == "scan":
    config, params = TINY.replace(scan_layers=True), _stack_layers(unscanned, TINY.n_layers)
  model = models.Transformer(config)
  expected, _ = ref.forward(unscanned, TOKENS, MASK, config)
  at_slots = np.take_along_axis(expected, SLOTS[:, :, None], axis=1)
  logits = jax.jit(lambda p: model.apply({"params": p}, TOKENS, MASK, logit_slots=SLOTS))(params)
  assert logits.shape == (4, 3, TINY.vocab_size)
  np.testing.assert_allclose(logits, at_slots, atol=1e-4, rtol=1e-4)

  # Gradients: the same weighted read-out through the full forward, gathered afterwards.
  weights = np.random.default_rng(2).normal(size=(4, 3, TINY.vocab_size)).astype(np.float32)
  pruned = lambda p: jnp.sum(weights * model.apply({"params": p}, TOKENS, MASK, logit_slots=SLOTS))
  full = lambda p: jnp.sum(weights * jnp.take_along_axis(
      model.apply({"params": p}, TOKENS, MASK), SLOTS[:, :, None], axis=1))
  grads, grads_full = jax.jit(jax.grad(pruned))(params), jax.jit(jax.grad(full))(params)
  # float32 sums over the sequence: the rounding of an entry scales with the leaf's
  # largest entries, not with the entry itself (a small entry of a large leaf differs
  # by ~1e-5 between the two paths).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b).max())),
               grads, grads_full)
  # Every layer's weights get a gradient, the last block's keys and values included.
  last = grads["layers"] if variant == "scan" else grads[f"layer_{TINY.n_layers - 1}"]
  for name in ("query", "key", "value", "out"):
    assert float(jnp.abs(last["attention"][name]).max()) > 0


def test_logit_slots_out_of_range_are_refused(tiny):
  # The gathers would clamp them (reading another slot); known values are checked.
  model = models.Transformer(TINY)
  for bad in (TOKENS.shape[1], -1):
    slots = SLOTS.copy()
    slots[1, 2] = bad
    message = rf"`logit_slots` must lie in \[0, {TOKENS.shape[1]}\).*1 do not, the first at \[1, 2\]: {bad}\."
    with pytest.raises(ValueError, match=message):
      model.apply({"params": tiny[1]}, TOKENS, MASK, logit_slots=slots)


def test_input_checks_name_the_problem(tiny):
  model, params, _ = tiny
  with pytest.raises(ValueError, match="`tokens` must be an integer"):
    model.apply({"params": params}, TOKENS.astype(np.float32), MASK)
  with pytest.raises(ValueError, match=r"`attention_mask` must have the shape"):
    model.apply({"params": params}, TOKENS, MASK[:, :5])
  with pytest.raises(ValueError, match="longer than the model's max_len 128"):
    model.apply({"params": params}, np.zeros((1, 129), np.int32))
  with pytest.raises(ValueError, match=r"max_length must lie in \[1, 128\]"):
    models.init_cache(model, 1, 500)


def test_config_validation_and_presets():
  assert models.PRESETS == ("tiny", "125m", "1b", "7b")
  with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny, 125m, 1b, 7b"):
    models.get_preset("huge")
  with pytest.raises(ValueError, match="unknown TransformerConfig field.*'n_layer'"):
    models.get_preset("tiny", n_layer=3)
  with pytest.raises(ValueError, match=r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"):
    models.get_preset("tiny", n_kv_heads=3)
  with pytest.raises(ValueError, match=r"d_model \(64\) must be divisible by n_heads \(5\)"):
    models.get_preset("tiny", n_heads=5, n_kv_heads=5)
  with pytest.raises(ValueError, match="TransformerConfig.dtype must be one of"):
    models.get_preset("tiny", dtype="fp16")
  with pytest.raises(ValueError, match="TransformerConfig.d_ff must be a positive int"):
    models.get_preset("tiny", d_ff=0)
  assert models.get_preset("tiny", dtype="bfloat16").compute_dtype == jnp.bfloat16
