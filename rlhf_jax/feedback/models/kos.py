"""KOS: the message-passing estimator of Karger, Oh & Shah for binary labels.

Karger, Oh & Shah 2014, "Budget-optimal task allocation for reliable crowdsourcing
systems" (Operations Research 62(1); arXiv 1110.3564). Each annotation n is an edge of
the bipartite item-annotator graph with A_n = +1 for class 0 and -1 for class 1.
Messages live on the edges: x_n (item to annotator: how likely the item is class 0,
leaving out annotator a_n's own answer) and y_n (annotator to item: how reliable a_n
is, leaving out item i_n). With y^(0)_n ~ N(1, 1),

  x^(k)_n = sum_{m : i_m = i_n} A_m y^(k-1)_m - A_n y^(k-1)_n
  y^(k)_n = sum_{m : a_m = a_n} A_m x^(k)_m   - A_n x^(k)_n

and after `num_iters` rounds label_i = 0 if sum_{n : i_n = i} A_n y_n > 0, else 1.

Both updates are linear, so rescaling y by a positive number after each round changes
no sign: the messages are divided by their largest magnitude each round (the plain
recursion overflows float64 after a few dozen rounds on dense graphs; crowd-kit's `KOS`
stops early when a message passes 1e300). Each round is two segment sums over the N
annotations. KOS is a decision rule without probabilities: the posterior is the one-hot
decision (uniform on an exact tie) and `extras["score"]` the final item score, scaled to
[-1, 1] over the items.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rlhf_jax.feedback.models._arrays import annotation_arrays, check_size
from rlhf_jax.feedback.models.em import item_counts
from rlhf_jax.feedback.types import AggregationResult

__all__ = ["kos"]


def _scaled(messages: jax.Array) -> jax.Array:
  scale = jnp.max(jnp.abs(messages))
  return jnp.where(scale > 0, messages / jnp.where(scale > 0, scale, 1.0), messages)


@functools.partial(jax.jit, static_argnames=("num_items", "num_annotators", "num_iters"))
def _kos(items, annotators, labels, key, *, num_items, num_annotators, num_iters):
  sign = jnp.where(labels == 0, 1.0, -1.0).astype(jnp.float32)
  y = 1.0 + jax.random.normal(key, labels.shape, jnp.float32)

  def round_(_, y):
    weighted = sign * y
    x = jax.ops.segment_sum(weighted, items, num_segments=num_items)[items] - weighted
    weighted = sign * x
    y = jax.ops.segment_sum(weighted, annotators, num_segments=num_annotators)[annotators] - weighted
    return _scaled(y)

  y = jax.lax.fori_loop(0, num_iters, round_, y)
  score = _scaled(jax.ops.segment_sum(sign * y, items, num_segments=num_items))
  labels_out = jnp.where(score < 0, 1, 0).astype(jnp.int32)
  decided = jax.nn.one_hot(labels_out, 2, dtype=jnp.float32)
  posteriors = jnp.where((score == 0)[:, None], 0.5, decided)
  confidence = jnp.take_along_axis(posteriors, labels_out[:, None], axis=-1)[:, 0]
  # Reliability: the annotator's agreement with the decided labels.
  agreement = posteriors[items, labels]
  counts = jax.ops.segment_sum(jnp.ones_like(agreement), annotators, num_segments=num_annotators)
  reliability = jnp.where(
      counts > 0, jax.ops.segment_sum(agreement, annotators, num_segments=num_annotators) / jnp.maximum(counts, 1.0),
      0.0)
  extras = {"score": score, "num_annotations": item_counts(items, num_items).astype(jnp.int32)}
  return AggregationResult(posteriors, labels_out, confidence, {"reliability": reliability}, extras)


def kos(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int = 2,
    num_items: int | None = None,
    num_annotators: int | None = None,
    num_iters: int = 100,
    key: jax.Array | None = None,
) -> AggregationResult:
  """Karger-Oh-Shah message passing for two classes (see the module docstring).

  Args:
    items, annotators, labels: int [N] flat annotations; labels in {0, 1}.
    num_classes: must be 2 (KOS is defined for binary tasks).
    num_items, num_annotators: static sizes, inferred when None (outside `jit` only).
    num_iters: message-passing rounds (crowd-kit's default 100).
    key: PRNG key of the initial messages y^(0) ~ N(1, 1); None uses `jax.random.key(0)`.

  Returns:
    `AggregationResult`: posteriors [I, 2] one-hot on the decision (0.5 each on a tie),
    labels [I], confidence [I], annotator_params "reliability" [A] (agreement with the
    decision), extras "score" [I] and "num_annotations" [I].
  """
  if num_classes != 2:
    raise ValueError(f"KOS is defined for two classes, got `num_classes` = {num_classes}.")
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items, num_annotators=num_annotators)
  num_iters = check_size(num_iters, "num_iters")
  key = jax.random.key(0) if key is None else key
  return _kos(items, annotators, labels, key, num_items=num_items, num_annotators=num_annotators,
              num_iters=num_iters)
