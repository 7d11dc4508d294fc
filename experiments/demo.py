"""A short demonstration that every objective imports, compiles and evaluates.

`python scripts/run.py --demo_losses` prints this table.
Each objective is evaluated under `jax.jit` on a small batch drawn from an explicit PRNG
key; the table shows the mean loss and the norm of its gradient with respect to the
model-side inputs, both finite by construction even at extreme inputs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses


def _pairwise_inputs(key: jax.Array, batch: int) -> dict[str, jax.Array]:
  keys = jax.random.split(key, 6)
  return {
      "chosen": jax.random.normal(keys[0], (batch,)) + 0.5,
      "rejected": jax.random.normal(keys[1], (batch,)),
      "policy_chosen": -40.0 + 5.0 * jax.random.normal(keys[2], (batch,)),
      "policy_rejected": -45.0 + 5.0 * jax.random.normal(keys[3], (batch,)),
      "ref_chosen": -42.0 + 5.0 * jax.random.normal(keys[4], (batch,)),
      "ref_rejected": -44.0 + 5.0 * jax.random.normal(keys[5], (batch,)),
  }


def _objectives(batch: int) -> dict[str, tuple[Callable[[jax.Array], jax.Array], str]]:
  """Objective name -> (scalar function of one model-side array, what that array is)."""
  key = jax.random.key(0)
  x = _pairwise_inputs(key, batch)
  reliability = jnp.linspace(0.6, 0.95, batch)
  is_tie = jnp.arange(batch) % 5 == 0
  target = jnp.linspace(0.55, 1.0, batch)
  table = {
      "bradley_terry": (lambda c: losses.bradley_terry(c, x["rejected"], margin=0.1).mean(), "rewards"),
      "bradley_terry_soft": (lambda c: losses.bradley_terry_soft(c, x["rejected"], target).mean(), "rewards"),
      "bradley_terry_ties": (
          lambda c: losses.bradley_terry_ties(c, x["rejected"], is_tie, tie_param=0.5).mean(), "rewards"),
      "crowd_bt": (lambda c: losses.crowd_bt(c, x["rejected"], reliability).mean(), "rewards"),
      "reward_centering": (lambda c: losses.reward_centering(c, x["rejected"]).mean(), "rewards"),
      "simpo": (lambda c: losses.simpo(c / 20.0, x["policy_rejected"] / 20.0)[0].mean(), "avg log-probs"),
      "orpo": (
          lambda c: losses.orpo(c / 40.0, x["policy_rejected"] / 40.0, -c / 40.0)[0].mean(), "avg log-probs"),
      "kto": (
          lambda c: losses.kto(c, x["ref_chosen"], is_tie, 0.1)[0].mean(), "log-probs"),
  }
  for variant in losses.DPO_VARIANTS:
    needs_lengths = variant in ("sigmoid_norm",)
    lengths = jnp.full((batch,), 20.0) if needs_lengths else None
    table[f"dpo/{variant}"] = (
        lambda c, variant=variant, lengths=lengths: losses.dpo(
            c, x["policy_rejected"], x["ref_chosen"], x["ref_rejected"], beta=0.1,
            variant=variant, label_smoothing=0.1 if variant in ("robust", "cdpo") else 0.0,
            chosen_lengths=lengths, rejected_lengths=lengths)[0].mean(),
        "log-probs")
  return table


def main() -> None:
  batch = 16
  x = _pairwise_inputs(jax.random.key(0), batch)
  print(f"rlhf_jax objectives on a batch of {batch} pairs (jax {jax.__version__}, {jax.devices()[0].platform})")
  print(f"{'objective':<24}{'mean loss':>12}{'|grad|':>12}  grad w.r.t.")
  for name, (fn, wrt) in _objectives(batch).items():
    arg = x["policy_chosen"] if "log-probs" in wrt else x["chosen"]
    if wrt == "avg log-probs":
      arg = x["policy_chosen"]
    value, grad = jax.jit(jax.value_and_grad(fn))(arg)
    print(f"{name:<24}{float(value):>12.5f}{float(jnp.linalg.norm(grad)):>12.5f}  {wrt}")

  # Online pieces: per-token log-probs, GAE and the clipped PPO objective on a padded batch.
  keys = jax.random.split(jax.random.key(1), 4)
  logits = jax.random.normal(keys[0], (4, 12, 50))
  targets = jax.random.randint(keys[1], (4, 12), 0, 50)
  mask = jnp.arange(12)[None, :] < jnp.array([[12], [9], [5], [1]])
  logprobs = losses.sequence_logprobs(logits, targets, mask)
  values = jax.random.normal(keys[2], (4, 12))
  rewards = jnp.zeros((4, 12)).at[jnp.arange(4), jnp.array([11, 8, 4, 0])].set(1.0)
  advantages, returns = losses.gae(rewards, values, mask, gamma=1.0, lam=0.95)
  advantages = losses.whiten(advantages, mask)
  old = logprobs + 0.05 * jax.random.normal(keys[3], logprobs.shape)
  loss, metrics = losses.ppo_policy_loss(logprobs, old, advantages, mask, aggregation="token_mean")
  value_loss = losses.ppo_value_loss(values, values + 0.1, returns, mask)
  print(f"{'ppo_policy_loss':<24}{float(loss):>12.5f}  clip_fraction={float(metrics['clip_fraction']):.3f}")
  print(f"{'ppo_value_loss':<24}{float(value_loss):>12.5f}")
  grpo = losses.grpo_advantages(jnp.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.9]), group_size=4)
  print(f"{'grpo_advantages':<24}{np.array2string(np.asarray(grpo), precision=3)}")
  print(f"registered objectives: {', '.join(losses.names())}")


if __name__ == "__main__":
  main()
