"""Prompt-prefix sharing: packing by hand, equality with the two-row layout, the trainer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses, models
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import loop, networks, objectives, shared_prompt
from rlhf_jax.train.shared_prompt import SharedPromptLayout

from train_testlib import numpy_sequence_logps, tiny_config


def _pairs(rows, width):
  """Right-padded pair arrays from (prompt, chosen, rejected) token lists; the prompt
  segment is not in the loss mask, the completions are."""
  arrays = {}
  for k, part in ((1, "chosen"), (2, "rejected")):
    tokens = np.zeros((len(rows), width), np.int32)
    attention = np.zeros((len(rows), width), bool)
    loss = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
      prompt, completion = row[0], row[k]
      sequence = list(prompt) + list(completion)
      tokens[i, :len(sequence)] = sequence
      attention[i, :len(sequence)] = True
      loss[i, len(prompt):len(sequence)] = True
    arrays.update({f"{part}_tokens": tokens, f"{part}_attention_mask": attention, f"{part}_loss_mask": loss})
  return arrays


def test_pack_pairs_matches_a_hand_written_layout():
  batch = _pairs([([1, 5, 6], [7, 8, 2], [9, 2])], width=6)
  packed = jax.device_get(shared_prompt.pack_pairs(batch, SharedPromptLayout(length=10, num_targets=6)))
  np.testing.assert_array_equal(packed["tokens"][0], [1, 5, 6, 7, 8, 2, 9, 2, 0, 0])
  np.testing.assert_array_equal(packed["attention_mask"][0], [1] * 8 + [0, 0])
  np.testing.assert_array_equal(packed["segment_ids"][0], [0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
  # Rejected positions restart after the prompt, as in its own row [1 5 6 9 2].
  np.testing.assert_array_equal(packed["positions"][0], [0, 1, 2, 3, 4, 5, 3, 4, 0, 0])
  # Completion tokens 7 8 2 | 9 2 | none; 9 (first rejected) is predicted from the last
  # prompt slot 2, not from the chosen eos at slot 5.
  np.testing.assert_array_equal(packed["target_tokens"][0, :5], [7, 8, 2, 9, 2])
  np.testing.assert_array_equal(packed["target_slots"][0, :5], [2, 3, 4, 2, 6])
  np.testing.assert_array_equal(packed["target_segment"][0], [1, 1, 1, 2, 2, 0])


def _random_pairs(rng, count, width, vocab):
  rows = []
  for _ in range(count):
    p = int(rng.integers(1, width // 2))
    c = int(rng.integers(1, width - p + 1))
    r = int(rng.integers(1, width - p + 1))
    prompt = [1] + list(rng.integers(3, vocab, p - 1))
    rows.append((prompt, list(rng.integers(3, vocab, c)), list(rng.integers(3, vocab, r))))
  return _pairs(rows, width)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_shared_log_probs_and_gradients_equal_the_two_row_layout(scan_layers):
  vocab, width = 40, 12
  batch = _random_pairs(np.random.default_rng(0), 6, width, vocab)
  model = models.Transformer(models.get_preset("tiny", vocab_size=vocab, scan_layers=scan_layers))
  params = model.init(jax.random.key(0), jnp.asarray(batch["chosen_tokens"]))["params"]
  layout = shared_prompt.layout_for({"train": batch})
  # Measured sizes: longest p + c + r and c + r, rounded up to a multiple of 8.
  prompt, chosen, rejected = shared_prompt.pair_extents(batch)
  assert layout.num_targets == -(-int(np.max(chosen + rejected)) // 8) * 8
  assert layout.length >= int(np.max(prompt + chosen + rejected))
  assert layout.length < 2 * width  # fewer slots than the two rows

  shared = jax.jit(lambda p: objectives.pair_logps(model, p, batch, layout))(params)
  # Independent reference: each row's own logits, scored in float64 NumPy.
  for part in ("chosen", "rejected"):
    logits = np.asarray(model.apply({"params": params}, batch[f"{part}_tokens"], batch[f"{part}_attention_mask"]))
    expected = numpy_sequence_logps(logits, batch[f"{part}_tokens"], batch[f"{part}_loss_mask"])
    np.testing.assert_allclose(shared[f"{part}_logps"], expected, rtol=2e-5, atol=2e-4)
    np.testing.assert_array_equal(shared[f"{part}_lengths"], batch[f"{part}_loss_mask"].sum(1))

  def dpo_loss(p, use_layout):
    logps = objectives.pair_logps(model, p, batch, layout if use_layout else None)
    per_example, _, _ = losses.dpo(logps["chosen_logps"], logps["rejected_logps"],
                                   jnp.zeros(6) - 30.0, jnp.zeros(6) - 31.0)
    return jnp.mean(per_example)

  grads = [jax.jit(jax.grad(lambda p: dpo_loss(p, s)))(params) for s in (True, False)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_rejected_token_never_sees_the_chosen_completion():
  vocab = 30
  batch = _pairs([([1, 5, 6], [7, 8, 2], [9, 10, 2])], width=8)
  changed = {k: v.copy() for k, v in batch.items()}
  changed["chosen_tokens"][0, 3:6] = [20, 21, 22]  # another chosen completion, same prompt
  model = models.Transformer(models.get_preset("tiny", vocab_size=vocab))
  params = model.init(jax.random.key(1), jnp.asarray(batch["chosen_tokens"]))["params"]
  layout = SharedPromptLayout(length=16, num_targets=8)
  a = objectives.pair_logps(model, params, batch, layout)
  b = objectives.pair_logps(model, params, changed, layout)
  np.testing.assert_array_equal(a["rejected_logps"], b["rejected_logps"])
  assert abs(float(a["chosen_logps"][0] - b["chosen_logps"][0])) > 1e-3


def test_pairs_that_cannot_share_or_do_not_fit_are_named():
  batch = _pairs([([1, 5, 6], [7, 2], [9, 2]), ([1, 5], [7, 2], [9, 2])], width=6)
  different = {k: v.copy() for k, v in batch.items()}
  different["rejected_tokens"][1, 1] = 4  # row 1's prompts differ
  with pytest.raises(ValueError, match=r"train row 1: the chosen and rejected rows do not start"):
    shared_prompt.layout_for({"train": different})
  gap = {k: v.copy() for k, v in batch.items()}
  gap["chosen_loss_mask"][0, 4] = False  # a hole in the completion
  with pytest.raises(ValueError, match=r"eval row 0 \(chosen\) is not \[prompt\]\[completion\]\[pad\]"):
    shared_prompt.layout_for({"eval": gap})
  with pytest.raises(ValueError, match=r"train row 0 needs packed length p \+ c \+ r = 7 .*data.shared_length = 6"):
    shared_prompt.check_layout(SharedPromptLayout(length=6, num_targets=4), {"train": batch})


@pytest.mark.parametrize("objective,metrics", [
    ("dpo", ("train/loss", "eval/loss", "eval/margin", "eval/accuracy")),
    ("reward_model", ("train/loss", "eval/loss", "eval/accuracy", "eval/ece")),
])
def test_trainer_with_shared_prompt_matches_the_two_row_run(tmp_path, objective, metrics):
  settings = dict(train__steps=6, train__log_every=3, optim__warmup_steps=0, eval__every=0,
                  checkpoint__every=0, data__toy__num_train=64, data__toy__num_eval=16)
  plain = loop.train(tiny_config(objective, **settings), tmp_path / "plain")
  shared = loop.train(tiny_config(objective, data__share_prompt=True, **settings), tmp_path / "shared")
  for name in metrics:
    np.testing.assert_allclose(shared[name], plain[name], rtol=1e-4, atol=1e-5, err_msg=name)
  plain_params = jax.tree_util.tree_flatten_with_path(jax.device_get(plain["state"].params))[0]
  shared_params = jax.tree.leaves(jax.device_get(shared["state"].params))
  for (path, a), b in zip(plain_params, shared_params):
    if "reward_head" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
      # Bradley-Terry cancels the bias: its gradient is 0 up to rounding, which differs
      # between layouts, and Adam turns any rounding-size gradient into an lr-size step.
      continue
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  resolved = json.loads((tmp_path / "shared" / "config.json").read_text())["data"]
  assert resolved["share_prompt"] and resolved["shared_length"] > 0 and resolved["shared_targets"] > 0
  assert resolved["shared_length"] % 8 == 0 and resolved["shared_length"] < 2 * 16


def test_shared_prompt_is_refused_for_objectives_without_pairs(tmp_path):
  with pytest.raises(ValueError, match="data.share_prompt applies to objectives on pairs"):
    loop.train(tiny_config("kto", data__share_prompt=True, train__steps=1, optim__warmup_steps=0), tmp_path)


@pytest.mark.parametrize("members,heads", [(1, 2), (2, 1)])
def test_shared_rewards_equal_the_two_row_rewards(members, heads):
  vocab, width = 40, 12
  batch = _random_pairs(np.random.default_rng(3), 5, width, vocab)
  config = tiny_config("reward_model", model__reward_heads=heads, model__ensemble_models=members)
  model = networks.build_model(config_lib.model_settings(config), vocab, "reward")
  params = model.init(jax.random.key(0), jnp.asarray(batch["chosen_tokens"]),
                      jnp.asarray(batch["chosen_attention_mask"]))["params"]
  layout = shared_prompt.layout_for({"train": batch})
  chosen, rejected = jax.jit(lambda p: shared_prompt.shared_pair_rewards(model, p, batch, layout))(params)
  assert chosen.shape == (5, members * heads)
  # Reference: each row on its own, read at its last real token by the model itself.
  for part, shared in (("chosen", chosen), ("rejected", rejected)):
    expected = model.apply({"params": params}, batch[f"{part}_tokens"], batch[f"{part}_attention_mask"])
    np.testing.assert_allclose(shared, expected, rtol=1e-5, atol=1e-5)
