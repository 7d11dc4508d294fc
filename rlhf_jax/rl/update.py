"""The update of one online iteration: prepare the batch, then epochs of shuffled minibatches.

    state, metrics = update_fn(state, rollout, key)

One pure function (purejaxrl style, Lu et al. 2022), jitted by the loop with the state
donated:

  batch = objective.prepare(Rollout(...), settings)         advantages, returns, pairs
  for epoch in range(epochs):                               lax.scan
    order = permutation(fold_in(key, epoch))                  a new shuffle each epoch
    for minibatch in batch[order] cut into `minibatches`:   lax.scan
      state = train_step(state, minibatch)                    the offline train step

`train_step` is `train.step.train_step_fn`, the same pure step offline training compiles
(gradient accumulation over `train.microbatches`, the optimizer with its NaN/Inf guard,
per-step keys `fold_in(key, step)`). After the update the adaptive KL controller
(Ziegler et al. 2019, `losses.adaptive_kl_update`) moves the KL coefficient towards
`loss.adaptive_kl_target`, by the KL of this rollout.

Metrics: the means over the update's steps of the step metrics (loss, grad_norm, the
objective's outputs: policy and value loss, clip fraction, approximate KL, entropy, ...;
the skip counters at the end), and the rollout's own: reward mean and std, the KL of the
policy to the reference (mean over completions of the summed per-token log-ratio),
completion length, share of completions that ended with the end token, and for a critic
the explained variance of the returns by the values.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding

from rlhf_jax import losses
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import step as step_lib
from rlhf_jax.train.state import TrainState

__all__ = ["OnlineState", "explained_variance", "make_update_fn", "rollout_metrics"]

# Step metrics that are counters: their value after the last step is reported.
_LAST = ("skipped_updates", "consecutive_skips", "learning_rate")
_SUM = ("update_skipped",)


class OnlineState(struct.PyTreeNode):
  """What an online run carries from one iteration to the next (and checkpoints).

  Attributes:
    train: the `TrainState` (step counts optimizer steps; rng is the run's base key).
    kl_coef: float32 scalar, the KL coefficient (fixed, or the adaptive controller's).
  """

  train: TrainState
  kl_coef: jax.Array


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over the valid entries (1: perfect
  values, 0: no better than their mean, negative: worse); 0 / 0 gives NaN."""
  def variance(x):
    mean = losses.masked_mean(x, mask)
    return losses.masked_mean(jnp.square(x - mean), mask)
  return 1.0 - variance(returns - values) / variance(returns)


def rollout_metrics(rollout: objectives_lib.Rollout) -> dict[str, jax.Array]:
  """Scalar metrics of a scored rollout (see the module docstring)."""
  mask = rollout.completion_mask
  scores = jnp.asarray(rollout.scores, jnp.float32)
  lengths = jnp.sum(mask, axis=-1).astype(jnp.float32)
  metrics = {
      "reward_mean": jnp.mean(scores), "reward_std": jnp.std(scores),
      "completion_length": jnp.mean(lengths), "eos_fraction": jnp.mean(rollout.stopped.astype(jnp.float32)),
      "kl_coef": rollout.kl_coef,
  }
  if rollout.ref_logprobs is not None:
    log_ratio = jnp.where(mask, rollout.logprobs - rollout.ref_logprobs, 0.0)
    kl = jnp.sum(log_ratio, axis=-1)
    metrics["kl"] = jnp.mean(kl)
    metrics["kl_per_token"] = jnp.sum(log_ratio) / jnp.maximum(jnp.sum(mask), 1)
    metrics["kl_k3"] = jnp.mean(jnp.sum(jnp.where(
        mask, losses.kl_penalty(rollout.logprobs, rollout.ref_logprobs, kind="k3"), 0.0), axis=-1))
    metrics["rlhf_reward_mean"] = jnp.mean(scores - rollout.kl_coef * kl)
  return metrics


def make_update_fn(
    objective: objectives_lib.Objective,
    model: Any,
    tx: optax.GradientTransformation,
    *,
    settings: Any,
    layout: objectives_lib.Layout,
    group_size: int,
    epochs: int,
    minibatches: int,
    microbatches: int = 1,
    schedule: optax.Schedule | None = None,
    batch_sharding: NamedSharding | None = None,
    microbatch_sharding: NamedSharding | None = None,
) -> Callable[[OnlineState, Mapping[str, jax.Array], jax.Array], tuple[OnlineState, dict[str, jax.Array]]]:
  """The pure update `(state, rollout arrays, key) -> (state, metrics)`.

  `rollout arrays`: the rollout function's outputs plus "scores" [R]. `key`: this
  iteration's key (the shuffles use `fold_in(key, epoch)`; the steps the state's base
  key, as offline). `batch_sharding` keeps each minibatch split over the batch axes.
  """
  step = step_lib.train_step_fn(objective, model, tx, settings=settings, layout=layout,
                                microbatches=microbatches, schedule=schedule,
                                microbatch_sharding=microbatch_sharding)
  adaptive = getattr(settings, "adaptive_kl_target", 0.0) > 0

  def update(state: OnlineState, arrays: Mapping[str, jax.Array], key: jax.Array):
    rollout = objectives_lib.Rollout(
        tokens=arrays["tokens"], attention_mask=arrays["attention_mask"],
        completion_mask=arrays["completion_mask"], logprobs=arrays["logprobs"], scores=arrays["scores"],
        stopped=arrays["stopped"], kl_coef=state.kl_coef, ref_logprobs=arrays.get("ref_logprobs"),
        values=arrays.get("values"), group_size=group_size)
    batch = objective.prepare(rollout, settings)
    rows = next(iter(batch.values())).shape[0]
    size = rows // minibatches
    base_key = jax.random.wrap_key_data(state.train.rng)

    def epoch(train_state, index):
      order = jax.random.permutation(jax.random.fold_in(key, index), rows)

      def cut(x):
        return x[order].reshape(minibatches, size, *x.shape[1:])

      def minibatch(inner_state, part):
        if batch_sharding is not None:
          part = jax.lax.with_sharding_constraint(part, batch_sharding)
        return step(inner_state, part, base_key)

      return jax.lax.scan(minibatch, train_state, jax.tree.map(cut, batch))

    train_state, history = jax.lax.scan(epoch, state.train, jnp.arange(epochs))
    metrics = {}
    for name, values in history.items():
      flat = values.reshape(-1)
      metrics[name] = flat[-1] if name in _LAST else (jnp.sum(flat) if name in _SUM else jnp.mean(flat))
    metrics.update(rollout_metrics(rollout))
    if "returns" in batch and "old_values" in batch:
      metrics["value_explained_variance"] = explained_variance(
          batch["old_values"], batch["returns"], batch["completion_mask"])
    metrics["optimizer_steps"] = train_state.step
    kl_coef = state.kl_coef
    if adaptive:
      kl_coef = losses.adaptive_kl_update(
          losses.AdaptiveKLState(coef=kl_coef), metrics["kl"], jnp.asarray(rollout.scores.shape[0], jnp.float32),
          target=settings.adaptive_kl_target, horizon=settings.adaptive_kl_horizon).coef
    return OnlineState(train=train_state, kl_coef=kl_coef), metrics

  return update
