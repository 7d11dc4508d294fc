"""The PyTorch twin used by `benchmarks/train_step.py` against independent references:
the float64 NumPy decoder of `tests/models/numpy_transformer.py` (same parameter tree),
log-softmax in NumPy, and the DPO / Bradley-Terry formulas written out. Skipped when
torch is not installed (it is only in the `bench` extra)."""

import sys
from pathlib import Path

import flax.linen as nn
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "models"))

import numpy_transformer as numpy_ref  # noqa: E402
import torch_reference  # noqa: E402
from rlhf_jax import models  # noqa: E402

# Grouped-query attention exercised (4 query heads share 2 key/value heads).
CONFIG = models.get_preset("tiny", n_layers=2)
LENGTHS = np.array([10, 7, 3, 1])
TOKENS = np.random.default_rng(0).integers(3, CONFIG.vocab_size, size=(4, 10))
MASK = np.arange(10)[None, :] < LENGTHS[:, None]
TOKENS = np.where(MASK, TOKENS, 0)


@pytest.fixture(scope="module", autouse=True)
def threads():
  previous = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(previous)


def draw_params(model, seed=0):
  return numpy_ref.random_params(nn.unbox(models.abstract_params(model)), seed)


@pytest.mark.parametrize("right_padded", [True, False])
def test_logits_match_numpy_decoder(right_padded):
  params = draw_params(models.Transformer(CONFIG))
  model = torch_reference.Transformer(CONFIG, right_padded=right_padded)
  torch_reference.load_jax_params(model, params)
  with torch.no_grad():
    logits = model(torch.from_numpy(TOKENS), torch.from_numpy(MASK)).numpy()
  expected, _ = numpy_ref.forward(params, TOKENS, MASK, CONFIG)
  # Real tokens only: with plain causal attention (right_padded=True) pad positions
  # attend to earlier pads, which the NumPy decoder excludes; nothing reads them.
  np.testing.assert_allclose(logits[MASK], expected[MASK], atol=1e-4, rtol=1e-4)
  if not right_padded:  # the explicit mask defines pad positions as the NumPy decoder does
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_reward_model_reads_last_real_token():
  params = draw_params(models.RewardModel(CONFIG), seed=1)
  model = torch_reference.RewardModel(CONFIG)
  torch_reference.load_jax_params(model, params)
  with torch.no_grad():
    rewards = model(torch.from_numpy(TOKENS), torch.from_numpy(MASK)).numpy()
  _, hidden = numpy_ref.forward(params["backbone"], TOKENS, MASK, CONFIG)
  head = params["reward_head"]
  last_hidden = hidden[np.arange(4), LENGTHS - 1]
  expected = last_hidden @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
  assert rewards.shape == (4, 1)
  np.testing.assert_allclose(rewards, expected, atol=1e-4, rtol=1e-4)


def test_sequence_logprobs_is_masked_log_softmax():
  rng = np.random.default_rng(2)
  logits = rng.normal(scale=3.0, size=(3, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(3, 5))
  mask = rng.random((3, 5)) < 0.6
  targets = np.where(mask, targets, -100)  # pad ids are never read
  shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = np.where(mask, np.take_along_axis(log_softmax, np.maximum(targets, 0)[..., None], -1)[..., 0], 0.0)
  got = torch_reference.sequence_logprobs(torch.from_numpy(logits), torch.from_numpy(targets),
                                          torch.from_numpy(mask)).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_dpo_and_bradley_terry_worked_example():
  # chosen log-ratio -10 - (-12) = 2, rejected -11 - (-10) = -1; beta 0.5: z = 1.5.
  losses, chosen_rewards, rejected_rewards = torch_reference.dpo_loss(
      torch.tensor([-10.0]), torch.tensor([-11.0]), torch.tensor([-12.0]), torch.tensor([-10.0]), 0.5)
  np.testing.assert_allclose(chosen_rewards.numpy(), [1.0])
  np.testing.assert_allclose(rejected_rewards.numpy(), [-0.5])
  np.testing.assert_allclose(losses.numpy(), [np.log1p(np.exp(-1.5))], rtol=1e-6)
  bt = torch_reference.bradley_terry_loss(torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0]))
  np.testing.assert_allclose(bt.numpy(), np.log1p(np.exp(-np.array([2.0, -2.0]))), rtol=1e-6)


def test_load_rejects_wrong_shapes():
  params = draw_params(models.Transformer(CONFIG))
  model = torch_reference.Transformer(CONFIG.replace(d_ff=64))
  with pytest.raises(ValueError, match=r"layer_0/mlp/gate\|up has shape"):
    torch_reference.load_jax_params(model, params)


def test_dpo_step_first_update_is_adamw():
  """The first AdamW step moves every parameter by lr * (g / (|g| + eps) + wd * p)."""
  params = draw_params(models.Transformer(CONFIG), seed=3)
  policy = torch_reference.Transformer(CONFIG)
  reference = torch_reference.Transformer(CONFIG)
  torch_reference.load_jax_params(policy, params)
  torch_reference.load_jax_params(reference, draw_params(models.Transformer(CONFIG), seed=4))
  rng = np.random.default_rng(5)
  batch = {}
  for side in ("chosen", "rejected"):
    batch[f"{side}_tokens"] = torch.from_numpy(np.where(MASK, rng.integers(3, CONFIG.vocab_size, (4, 10)), 0))
    batch[f"{side}_attention_mask"] = torch.from_numpy(MASK)
    batch[f"{side}_loss_mask"] = torch.from_numpy(MASK & (np.arange(10) >= 1))
  lr, wd = 1e-3, 0.1
  before = {name: p.detach().clone() for name, p in policy.named_parameters()}
  # The gradient by autograd on a copy, to predict the update.
  probe = torch_reference.Transformer(CONFIG)
  probe.load_state_dict(policy.state_dict())
  tokens, attention_mask, loss_mask = torch_reference._pairs(batch)
  ref_chosen, ref_rejected = torch_reference.reference_logps(reference, batch)
  logps = torch_reference.completion_logps(probe, tokens, attention_mask, loss_mask)
  expected_loss = -np.log(1 / (1 + np.exp(-0.1 * ((logps[:4] - ref_chosen) - (logps[4:] - ref_rejected))
                                            .detach().numpy().astype(np.float64)))).mean()
  torch_reference.dpo_loss(logps[:4], logps[4:], ref_chosen, ref_rejected, 0.1)[0].mean().backward()
  grads = {name: p.grad for name, p in probe.named_parameters()}

  optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=wd, eps=1e-8)
  out = torch_reference.make_dpo_step(policy, reference, optimizer, beta=0.1)(batch)
  np.testing.assert_allclose(float(out["loss"]), expected_loss, rtol=1e-5)
  for name, p in policy.named_parameters():
    g, p0 = grads[name].numpy(), before[name].numpy()
    expected = p0 * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(p.detach().numpy(), expected, atol=1e-6, err_msg=name)
