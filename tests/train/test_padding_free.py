"""Padding-free rows: packing by hand, attention per document, equality with the
two-row layout (log-probs, rewards, gradients), microbatches and shards, the trainer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.data import packing
from rlhf_jax.models import layers
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import components, inputs as inputs_lib, loop, networks, objectives, padding_free, step

from test_shared_prompt import _pairs, _random_pairs
from train_testlib import numpy_sequence_logps, tiny_config


def _resolve(config, datasets, data_kind):
  """`padding_free.resolve` with the config's data fields, as the trainer calls it."""
  data = config.data
  return padding_free.resolve(datasets, data_kind=data_kind, objective=config.objective,
                              share_prompt=data.share_prompt, buckets_per_octave=data.buckets_per_octave,
                              document_width=data.document_width)


def test_bucket_grid_is_a_power_of_two():
  with pytest.raises(ValueError, match="per_octave must be a power of two, got 6"):
    packing.bucket_size(100, 6)
  config = tiny_config("dpo", data__padding_free=True, data__buckets_per_octave=6)
  with pytest.raises(ValueError, match=r"data.buckets_per_octave must be a power of two .* got 6"):
    _resolve(config, {"train": _pairs([([1], [2], [2])], width=4)}, data_kind="pairs")


def test_pack_batch_rounds_to_the_configured_grid():
  batch = _random_pairs(np.random.default_rng(5), 8, 10, 30)
  real = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
  targets = int(batch["chosen_loss_mask"].sum() + batch["rejected_loss_mask"].sum())
  for per_octave in (1, 2, 16):
    config = tiny_config("dpo", data__padding_free=True, data__buckets_per_octave=per_octave)
    packed = padding_free.pack_batch(batch, config_lib.packing_settings(config), data_parallel=1)
    assert packed["packed_tokens"].shape == (1, packing.bucket_size(real, per_octave))
    assert packed["target_tokens"].shape == (1, packing.bucket_size(targets, per_octave))


def test_reward_model_batches_carry_no_completion_tokens():
  # The reward model reads rewards only: its step's shapes follow the row length alone.
  info = inputs_lib.DataInfo(kind="pairs", vocab_size=32, pad_id=0, max_length=16)
  for objective, has_targets in (("reward_model", False), ("dpo", True), ("simpo", True), ("orpo", True)):
    settings = config_lib.build_settings(tiny_config(objective, data__padding_free=True))
    layout = components.device_batch_layout(settings, info)
    assert "packed_tokens" in layout and "chosen_tokens" not in layout
    assert all((k in layout) == has_targets for k in packing.TARGET_KEYS), objective


def test_pack_pairs_matches_a_hand_written_layout():
  # Pair 0: prompt [1 5], chosen [7 2], rejected [9 8 2]; pair 1: prompt [1], chosen [4 2], rejected [2].
  batch = _pairs([([1, 5], [7, 2], [9, 8, 2]), ([1], [4, 2], [2])], width=6)
  two = packing.pack_pairs(batch, rows=1, share_prompt=False, width=8)
  # Documents [1 5 7 2] [1 5 9 8 2] [1 4 2] [1 2] end to end; 15 slots -> bucket 16.
  np.testing.assert_array_equal(two["packed_tokens"][0], [1, 5, 7, 2, 1, 5, 9, 8, 2, 1, 4, 2, 1, 2, 0, 0])
  np.testing.assert_array_equal(two["packed_positions"][0], [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 0, 0])
  np.testing.assert_array_equal(two["packed_attention_mask"][0], [1] * 14 + [0, 0])
  np.testing.assert_array_equal(two["packed_document_slots"][0, :, :5],
                                [[0, 1, 2, 3, -1], [4, 5, 6, 7, 8], [9, 10, 11, -1, -1], [12, 13, -1, -1, -1]])
  # Targets: completion tokens, each predicted from the slot before it in its document.
  np.testing.assert_array_equal(two["target_tokens"][0, :8], [7, 2, 9, 8, 2, 4, 2, 2])
  np.testing.assert_array_equal(two["target_slots"][0, :8], [1, 2, 5, 6, 7, 9, 10, 12])
  np.testing.assert_array_equal(two["target_owners"][0], [0, 0, 1, 1, 1, 2, 2, 3] + [-1] * 8)
  np.testing.assert_array_equal(two["reward_slots"][0], [3, 8, 11, 13])

  shared = packing.pack_pairs(batch, rows=2, share_prompt=True, width=8)
  # Row 0: [1 5 | 7 2 | 9 8 2]; row 1: [1 | 4 2 | 2]; the rejected part restarts after the prompt.
  np.testing.assert_array_equal(shared["packed_tokens"][:, :7], [[1, 5, 7, 2, 9, 8, 2], [1, 4, 2, 2, 0, 0, 0]])
  np.testing.assert_array_equal(shared["packed_positions"][0, :7], [0, 1, 2, 3, 2, 3, 4])
  np.testing.assert_array_equal(shared["packed_segments"][0, :7], [0, 0, 1, 1, 2, 2, 2])
  # The first rejected token (9) is predicted from the last prompt slot (1), not from slot 3.
  np.testing.assert_array_equal(shared["target_slots"][0, :5], [1, 2, 1, 4, 5])
  np.testing.assert_array_equal(shared["target_owners"][:, :5], [[0, 0, 1, 1, 1], [0, 0, 1, -1, -1]])
  np.testing.assert_array_equal(shared["reward_slots"], [[3, 6], [2, 3]])


def test_pack_pairs_names_what_does_not_fit():
  batch = _pairs([([1, 5], [7, 2], [9, 8, 2])], width=6)
  with pytest.raises(ValueError, match="a document of 7 tokens is longer than the document width 6"):
    packing.pack_pairs(batch, rows=1, share_prompt=True, width=6)
  # Documents [1 5 7 2] and [1 5 9 8 2], or one [1 5 7 2 9 8 2] with a shared prompt.
  assert packing.document_width({"train": batch, "eval": None}, False, multiple=1) == 5
  assert packing.document_width({"train": batch}, True, multiple=1) == 7
  assert packing.document_width({"train": batch}, True) == 8
  config = tiny_config("dpo", data__padding_free=True, data__share_prompt=True, data__document_width=4)
  with pytest.raises(ValueError, match=r"packed pairs that need data.document_width >= 8, got 4"):
    _resolve(config, {"train": batch}, data_kind="pairs")
  # The error names where the longest document is: the second pair of the eval data.
  narrow, wide = _pairs([([1], [2], [2])], width=4), _pairs([([1], [2], [2]), ([1, 5], [7, 2], [9, 8, 2])], width=6)
  assert packing.widest_document({"train": narrow, "eval": wide}, True) == (7, "eval row 1")
  with pytest.raises(ValueError, match=r"the longest, 7 tokens, is eval row 1\)"):
    _resolve(config, {"train": narrow, "eval": wide}, data_kind="pairs")
  with pytest.raises(ValueError, match=r"longer than the document width 6 \(batch row 1\)"):
    packing.pack_pairs(wide, rows=1, share_prompt=True, width=6)
  with pytest.raises(ValueError, match="3 pairs do not split into 2 rows"):
    packing.pack_pairs(_pairs([([1], [2], [2])] * 3, width=4), rows=2, share_prompt=False)


def _numpy_attention(q, k, v, allowed):
  """float64 loops: softmax over the allowed keys of each query."""
  out = np.zeros(q.shape, np.float64)
  groups = q.shape[2] // k.shape[2]
  for b in range(q.shape[0]):
    for t in range(q.shape[1]):
      keys = [s for s in range(q.shape[1]) if allowed(b, t, s)]
      if not keys:  # a padding slot: its output is not read
        continue
      for h in range(q.shape[2]):
        scores = np.array([q[b, t, h] @ k[b, s, h // groups] for s in keys]) / np.sqrt(q.shape[3])
        weights = np.exp(scores - scores.max())
        out[b, t, h] = (weights / weights.sum()) @ v[b, keys, h // groups]
  return out


def test_document_attention_matches_numpy():
  batch = _random_pairs(np.random.default_rng(0), 3, 10, 30)
  for share in (False, True):
    packed = packing.pack_pairs(batch, rows=1, share_prompt=share)
    slots = packed["packed_document_slots"]
    places = np.asarray(layers.document_places(jnp.asarray(slots), packed["packed_tokens"].shape[1]))
    length = packed["packed_tokens"].shape[1]
    document = np.full(length, -1)
    for d in range(slots.shape[1]):
      document[slots[0, d][slots[0, d] >= 0]] = d
    segments = packed.get("packed_segments", np.zeros((1, length), np.int64))[0]
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, length, 4, 8))
    k, v = rng.normal(size=(2, 1, length, 2, 8))

    # A key mask false at a few slots inside documents (the second token of each).
    key_mask = document >= 0
    key_mask[slots[0, :, 1]] = False
    for masked in (False, True):
      def allowed(b, t, s):
        same = document[s] == document[t] and document[t] >= 0
        return s <= t and same and (segments[s] in (0, segments[t])) and (key_mask[s] or not masked)

      out = layers.document_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(slots),
                                      jnp.asarray(places), jnp.asarray(segments)[None] if share else None,
                                      jnp.asarray(key_mask)[None] if masked else None)
      real = document >= 0
      np.testing.assert_allclose(np.asarray(out)[0, real], _numpy_attention(q, k, v, allowed)[0, real],
                                 rtol=1e-4, atol=1e-5)


def test_attention_mask_inside_documents_hides_keys_in_every_block():
  # A masked slot inside a document is hidden from the other queries by the per-document
  # blocks as by the pruned last block (which reads a mask over the whole row): both
  # paths give the same outputs, and they differ from the unmasked row.
  batch = _random_pairs(np.random.default_rng(6), 3, 10, 30)
  packed = packing.pack_pairs(batch, rows=1, share_prompt=False)
  model = models.Transformer(models.get_preset("tiny", vocab_size=30, max_len=16))
  params = model.init(jax.random.key(0), jnp.asarray(batch["chosen_tokens"]))["params"]
  slots = packed["packed_document_slots"]
  mask = packed["packed_attention_mask"].copy()
  mask[0, slots[0, :, 2]] = False
  ends = (slots[0] >= 0).sum(-1) - 1
  last = slots[0, np.arange(slots.shape[1]), ends][None]  # the last token of every document
  forward = lambda m, **kw: model.apply({"params": params}, packed["packed_tokens"], m, document_slots=slots,
                                        positions=packed["packed_positions"], **kw)
  full = np.asarray(forward(mask))[0, last[0]]
  np.testing.assert_allclose(np.asarray(forward(mask, logit_slots=last))[0], full, rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(full - np.asarray(forward(packed["packed_attention_mask"]))[0, last[0]])) > 1e-3


@pytest.mark.parametrize("share_prompt", [False, True])
def test_packed_log_probs_and_gradients_equal_the_two_row_layout(share_prompt):
  vocab, width = 40, 14
  batch = _random_pairs(np.random.default_rng(2), 6, width, vocab)
  config = models.get_preset("tiny", vocab_size=vocab, n_kv_heads=2, max_len=2 * width)
  model = models.Transformer(config)
  params = model.init(jax.random.key(0), jnp.asarray(batch["chosen_tokens"]))["params"]
  packed = {k: jnp.asarray(v) for k, v in packing.pack_pairs(batch, rows=2, share_prompt=share_prompt).items()}

  def loss(p, b):
    out = objectives.pair_logps(model, p, b)
    return jnp.sum(out["chosen_logps"] - 0.5 * out["rejected_logps"]), out

  (_, two_rows), grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
  (_, unpadded), packed_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, packed)
  for part in ("chosen", "rejected"):
    logits = model.apply({"params": params}, batch[f"{part}_tokens"], batch[f"{part}_attention_mask"])
    expected = numpy_sequence_logps(logits, batch[f"{part}_tokens"], batch[f"{part}_loss_mask"])
    np.testing.assert_allclose(unpadded[f"{part}_logps"], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(unpadded[f"{part}_lengths"], batch[f"{part}_loss_mask"].sum(-1))
    np.testing.assert_allclose(unpadded[f"{part}_logps"], two_rows[f"{part}_logps"], rtol=1e-5, atol=1e-4)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(packed_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("members,heads", [(1, 2), (2, 1)])
def test_packed_rewards_equal_the_two_row_rewards(members, heads):
  vocab, width = 40, 12
  batch = _random_pairs(np.random.default_rng(3), 4, width, vocab)
  config = tiny_config("reward_model", model__reward_heads=heads, model__ensemble_models=members)
  model = networks.build_model(config_lib.model_settings(config), vocab, "reward")
  params = model.init(jax.random.key(0), jnp.asarray(batch["chosen_tokens"]),
                      jnp.asarray(batch["chosen_attention_mask"]))["params"]
  for share in (False, True):
    packed = packing.pack_pairs(batch, rows=2, share_prompt=share)
    chosen, rejected = jax.jit(lambda p, b: padding_free.packed_pair_rewards(model, p, b))(params, packed)
    assert chosen.shape == (4, members * heads)
    for part, got in (("chosen", chosen), ("rejected", rejected)):
      expected = model.apply({"params": params}, batch[f"{part}_tokens"], batch[f"{part}_attention_mask"])
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_pack_batch_gives_each_microbatch_and_shard_its_own_pairs():
  batch = _random_pairs(np.random.default_rng(4), 8, 10, 30)
  batch["weight"] = np.arange(8, dtype=np.float32)
  config = tiny_config("dpo", data__padding_free=True)
  packed = padding_free.pack_batch(batch, config_lib.packing_settings(config), data_parallel=2, microbatches=2)
  assert "chosen_tokens" not in packed and packed["packed_tokens"].shape[0] == 4
  micro = step.split_microbatches(packed, 2)
  for m in range(2):
    # Microbatch m holds pairs m, m + 2, ...: the same pairs packed on their own.
    alone = packing.pack_pairs({k: v[m::2] for k, v in batch.items() if k in packing.PAIR_SEQUENCE_KEYS},
                               rows=2, share_prompt=False)
    np.testing.assert_array_equal(micro["weight"][m], batch["weight"][m::2])
    for key, value in alone.items():
      got = np.asarray(micro[key][m])
      np.testing.assert_array_equal(got[:, :value.shape[1]], value, err_msg=key)


@pytest.mark.parametrize("objective,reference,metrics", [
    ("dpo", "cached", ("train/loss", "eval/loss", "eval/margin", "eval/accuracy")),
    ("dpo", "on_the_fly", ("train/loss", "eval/loss", "eval/margin")),
    ("reward_model", "cached", ("train/loss", "eval/loss", "eval/accuracy", "eval/ece")),
    ("sft", "cached", ("train/loss", "eval/loss", "eval/token_nll")),
])
def test_trainer_padding_free_matches_the_two_row_run(tmp_path, objective, reference, metrics):
  # Two microbatches: each is packed on its own (pack_batch) and split back by the step.
  settings = dict(train__steps=6, train__log_every=3, optim__warmup_steps=0, eval__every=0,
                  checkpoint__every=0, data__toy__num_train=64, data__toy__num_eval=16, train__microbatches=2)
  if objective == "dpo":
    settings["reference__mode"] = reference
  plain = loop.train(tiny_config(objective, **settings), tmp_path / "plain")
  unpadded = loop.train(tiny_config(objective, data__padding_free=True, data__share_prompt=objective == "dpo",
                                    **settings), tmp_path / "unpadded")
  for name in metrics:
    np.testing.assert_allclose(unpadded[name], plain[name], rtol=1e-4, atol=1e-5, err_msg=name)
  plain_params = jax.tree_util.tree_flatten_with_path(jax.device_get(plain["state"].params))[0]
  for (path, a), b in zip(plain_params, jax.tree.leaves(jax.device_get(unpadded["state"].params))):
    if "reward_head" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
      continue  # Bradley-Terry cancels the bias (see test_shared_prompt)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  resolved = json.loads((tmp_path / "unpadded" / "config.json").read_text())["data"]
  assert resolved["padding_free"] and resolved["document_width"] > 0 and resolved["document_width"] % 8 == 0
  # Batch shapes met (each compiles the step): at least one, at most one per step.
  assert 1 <= unpadded["train/padding_free_shapes"] <= 6 and "train/padding_free_shapes" not in plain


def test_padding_free_is_refused_for_objectives_without_pairs_or_sequences(tmp_path):
  with pytest.raises(ValueError, match=r"data.padding_free applies to objectives on pairs .* or sequences "
                                       r"\(sft\); objective 'kto' trains on unpaired"):
    loop.train(tiny_config("kto", data__padding_free=True, train__steps=1, optim__warmup_steps=0), tmp_path)


def test_pack_sequences_by_hand():
  # Two sequences [bos a b c] (loss on b, c) and [bos d e] (loss on d, e), one row.
  batch = {"tokens": np.array([[1, 5, 6, 7, 0], [1, 8, 9, 0, 0]], np.int32),
           "attention_mask": np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool),
           "loss_mask": np.array([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], bool)}
  packed = packing.pack_sequences(batch, rows=1, width=8)
  assert set(packed) == set(packing.PACKED_SEQUENCE_KEYS)
  np.testing.assert_array_equal(packed["packed_tokens"][0, :7], [1, 5, 6, 7, 1, 8, 9])
  np.testing.assert_array_equal(packed["packed_positions"][0, :7], [0, 1, 2, 3, 0, 1, 2])
  assert packed["packed_tokens"].shape == (1, 16) and packed["packed_attention_mask"][0].sum() == 7
  np.testing.assert_array_equal(packed["packed_document_slots"][0, :, :4], [[0, 1, 2, 3], [4, 5, 6, -1]])
  # Targets b, c (predicted from slots 1, 2) of sequence 0 and d, e (slots 4, 5) of sequence 1.
  np.testing.assert_array_equal(packed["target_tokens"][0, :4], [6, 7, 8, 9])
  np.testing.assert_array_equal(packed["target_slots"][0, :4], [1, 2, 4, 5])
  np.testing.assert_array_equal(packed["target_owners"][0], [0, 0, 1, 1] + [-1] * 12)
  np.testing.assert_array_equal(packed["sequence_ends"], [[3, 6]])
  assert packing.widest_document({"train": batch}, False) == (4, "train row 0")
  config = tiny_config("sft", data__padding_free=True, data__document_width=2)
  with pytest.raises(ValueError, match=r"sequences that need data.document_width >= 8, got 2 \(the longest, 4 "
                                       r"tokens, is train row 0\)"):
    _resolve(config, {"train": batch, "eval": None}, data_kind="sequences")
  config.data.document_width = 0
  assert _resolve(config, {"train": batch, "eval": None}, data_kind="sequences") == 8
  with pytest.raises(ValueError, match="3 sequences do not split into 2 rows"):
    packing.pack_sequences({k: np.concatenate([v, v[:1]]) for k, v in batch.items()}, rows=2)


@pytest.mark.slow  # about 15 s on 2 quiet cores; CI runs it with make test-slow
def test_packed_sequence_log_probs_and_gradients_equal_the_padded_rows():
  vocab, width = 40, 14
  pairs = _random_pairs(np.random.default_rng(7), 6, width, vocab)
  batch = {k: pairs[f"chosen_{k}"] for k in packing.SEQUENCE_KEYS}
  model = models.Transformer(models.get_preset("tiny", vocab_size=vocab, n_kv_heads=2, max_len=2 * width))
  params = model.init(jax.random.key(0), jnp.asarray(batch["tokens"]))["params"]
  packed = {k: jnp.asarray(v) for k, v in packing.pack_sequences(batch, rows=2).items()}
  logits = model.apply({"params": params}, batch["tokens"], batch["attention_mask"])
  expected = numpy_sequence_logps(logits, batch["tokens"], batch["loss_mask"])
  logps, lengths = jax.jit(lambda p, b: padding_free.packed_sequence_logps(model, p, b))(params, packed)
  np.testing.assert_allclose(logps, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(lengths, batch["loss_mask"][:, 1:].sum(-1))

  def loss(p, packed_rows):
    if packed_rows:
      value, _ = padding_free.packed_sequence_logps(model, p, packed)
    else:
      value, _ = objectives.sequence_logps(model, p, batch["tokens"], batch["attention_mask"], batch["loss_mask"])
    return jnp.sum(value * jnp.arange(1.0, 7.0))  # a distinct weight per sequence: order matters

  grads, packed_grads = (jax.grad(loss)(params, flag) for flag in (False, True))
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(packed_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pack_batch_of_sequences_gives_each_microbatch_and_shard_its_own_sequences():
  pairs = _random_pairs(np.random.default_rng(8), 8, 10, 30)
  batch = {k: pairs[f"chosen_{k}"] for k in packing.SEQUENCE_KEYS}
  batch["example_index"] = np.arange(8)
  config = tiny_config("sft", data__padding_free=True)
  packed = padding_free.pack_batch(batch, config_lib.packing_settings(config), data_parallel=2, microbatches=2)
  assert "tokens" not in packed and packed["packed_tokens"].shape[0] == 4
  micro = step.split_microbatches(packed, 2)
  for m in range(2):
    alone = packing.pack_sequences({k: v[m::2] for k, v in batch.items() if k in packing.SEQUENCE_KEYS}, rows=2,
                                   width=packed["packed_document_slots"].shape[2])
    np.testing.assert_array_equal(micro["example_index"][m], batch["example_index"][m::2])
    for key, value in alone.items():
      np.testing.assert_array_equal(np.asarray(micro[key][m])[:, :value.shape[1]], value, err_msg=key)
  # Per-sequence outputs of the whole packed batch come row by row; batch_order undoes it.
  # Found by content: the batch index of each packed document, row by row.
  found = []
  for row, documents in zip(packed["packed_tokens"], packed["packed_document_slots"]):
    for slots in documents:
      tokens = row[slots[slots >= 0]]
      found += [i for i in range(8) if np.array_equal(batch["tokens"][i][batch["attention_mask"][i]], tokens)]
  assert sorted(found) == list(range(8))
  np.testing.assert_array_equal(padding_free.batch_order(jnp.asarray(found), packed, 2), np.arange(8))


def test_default_positions_count_from_each_document_start():
  batch = _random_pairs(np.random.default_rng(5), 3, 10, 30)
  packed = packing.pack_pairs(batch, rows=1, share_prompt=False)
  model = models.Transformer(models.get_preset("tiny", vocab_size=30, max_len=16))
  params = model.init(jax.random.key(0), jnp.asarray(batch["chosen_tokens"]))["params"]
  forward = lambda **kw: model.apply({"params": params}, packed["packed_tokens"], packed["packed_attention_mask"],
                                     document_slots=packed["packed_document_slots"], **kw)
  real = packed["packed_attention_mask"]
  # The default (index within the document, from the inverse of document_slots) is the
  # position the packer writes for unshared pairs.
  slots = jnp.asarray(packed["packed_document_slots"])
  places = np.asarray(layers.document_places(slots, real.shape[1]))
  np.testing.assert_array_equal((places % slots.shape[2])[real], packed["packed_positions"][real])
  # RoPE only sees position differences, so the logits agree with any per-document offset
  # too; this checks that the default path matches the explicit one...
  default = np.asarray(forward())[real]
  np.testing.assert_allclose(default, np.asarray(forward(positions=packed["packed_positions"]))[real],
                             rtol=1e-5, atol=1e-5)
  # ... and that the comparison has power: positions whose differences are wrong (twice
  # the packer's) change the logits.
  assert not np.allclose(default, np.asarray(forward(positions=2 * packed["packed_positions"]))[real], atol=1e-3)
