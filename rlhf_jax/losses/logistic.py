"""The label-smoothed logistic loss that Bradley-Terry, DPO (and its sigmoid-shaped
variants) and SimPO share.

    loss(x) = -(1 - eps) log sigmoid(x) - eps log sigmoid(-x)

the cross-entropy of sigmoid(x) against the soft label (1 - eps, eps): a pairwise label
flipped with probability eps (label smoothing, Szegedy et al. 2016, arXiv 1512.00567; as
the "conservative" DPO loss, Mitchell 2023). With eps = 0 it is the logistic loss
-log sigmoid(x) of Bradley & Terry 1952 on the logit x.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["smoothed_logistic_loss"]


def smoothed_logistic_loss(logits: jax.Array, label_smoothing: Any = 0.0) -> jax.Array:
  """Per-example `-(1 - eps) log sigmoid(logits) - eps log sigmoid(-logits)`.

  `jax.nn.log_sigmoid` keeps extreme logits finite. The callers check their arguments
  (floating logits, eps in [0, 0.5)); this is the formula alone.

  Args:
    logits: float [B] (any shape), the callers' scaled margins.
    label_smoothing: eps, a scalar or an array broadcasting against `logits`.

  Returns:
    float losses shaped like `logits`.
  """
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
          - label_smoothing * jax.nn.log_sigmoid(-logits))
