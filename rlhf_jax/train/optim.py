"""The optimizer: optax AdamW with warmup-cosine, global-norm clipping and a NaN/Inf guard.

    tx = make_optimizer(OptimizerSettings(...), total_steps=steps)   # train.config.optimizer_settings

  apply_if_finite(                        skip an update whose gradient is not finite
    chain(clip_by_global_norm(c),         Pascanu et al. 2013
          adamw(warmup_cosine(lr), ...))) Loshchilov & Hutter 2019 (arXiv 1711.05101)

Weight decay is applied to matrices only (ndim >= 2), not to norm scales and biases, as
in GPT-2/Llama training recipes. A skipped update leaves the parameters and the inner
optimizer state (moments, schedule count) unchanged and adds one to the skip counter
(`skipped_updates(opt_state)`); the trainer aborts after `max_consecutive_skips`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OptimizerSettings",
    "consecutive_skips",
    "learning_rate_schedule",
    "make_optimizer",
    "skipped_updates",
]

# apply_if_finite gives up and applies a non-finite update after this many consecutive
# ones; the trainer stops long before (config.optim.max_consecutive_skips).
_NEVER_APPLY_NONFINITE = 2**30


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The values of a config's `optim` section (defaults and comments live there:
  `rlhf_jax/train/config.py`)."""

  learning_rate: float
  warmup_steps: int
  end_learning_rate_factor: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float  # 0 disables clipping
  max_consecutive_skips: int  # read by the loops, not by the optimizer


def learning_rate_schedule(settings: OptimizerSettings, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine decay to `end_learning_rate_factor`
  times it at `total_steps`:

    lr(t) = peak * t / W                                            for t < W
    lr(t) = peak * (a + (1 - a) * (1 + cos(pi * (t - W) / (T - W))) / 2)   for W <= t <= T

  with W = warmup_steps, T = total_steps, a = end_learning_rate_factor (constant after T).
  """
  peak = float(settings.learning_rate)
  warmup = int(settings.warmup_steps)
  factor = float(settings.end_learning_rate_factor)
  if peak < 0:
    raise ValueError(f"optim.learning_rate must be >= 0, got {peak}.")
  if not 0 <= factor <= 1:
    raise ValueError(f"optim.end_learning_rate_factor must lie in [0, 1], got {factor}.")
  if total_steps < 1:
    raise ValueError(f"train.steps must be >= 1, got {total_steps}.")
  if not 0 <= warmup < total_steps:
    raise ValueError(
        f"optim.warmup_steps must lie in [0, train.steps) = [0, {total_steps}), got {warmup}.")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total_steps,
      end_value=peak * factor)


def _matrices(params: Any) -> Any:
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(settings: OptimizerSettings, total_steps: int) -> optax.GradientTransformation:
  """AdamW + schedule + clipping inside a NaN/Inf guard, all from `settings`."""
  clip_norm = float(settings.clip_norm)
  weight_decay = float(settings.weight_decay)
  if clip_norm < 0:
    raise ValueError(f"optim.clip_norm must be >= 0 (0 disables clipping), got {clip_norm}.")
  if weight_decay < 0:
    raise ValueError(f"optim.weight_decay must be >= 0, got {weight_decay}.")
  adamw = optax.adamw(
      learning_rate_schedule(settings, total_steps),
      b1=float(settings.b1),
      b2=float(settings.b2),
      eps=float(settings.eps),
      weight_decay=weight_decay,
      mask=_matrices,
  )
  inner = optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm > 0 else adamw
  return optax.apply_if_finite(inner, max_consecutive_errors=_NEVER_APPLY_NONFINITE)


def _guard_state(opt_state: Any) -> optax.ApplyIfFiniteState:
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    return opt_state
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState))
           if isinstance(s, optax.ApplyIfFiniteState)]
  if len(found) != 1:
    raise ValueError("the optimizer state holds no (or several) apply_if_finite states.")
  return found[0]


def skipped_updates(opt_state: Any) -> jax.Array:
  """Total number of updates skipped because the gradient was not finite (int32 scalar)."""
  return _guard_state(opt_state).total_notfinite


def consecutive_skips(opt_state: Any) -> jax.Array:
  """Number of skipped updates in a row up to now (0 after a finite update)."""
  return _guard_state(opt_state).notfinite_count
