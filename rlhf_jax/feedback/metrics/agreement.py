"""Inter-annotator agreement on flat annotation arrays.

Every function takes annotations as flat integer arrays of equal length N, one entry per
annotation (see `rlhf_jax.feedback.types`): `items[n]` the item index, `annotators[n]`
the annotator index and `labels[n]` the class index. Everything is computed from the
count matrix `counts[i, k]` = number of annotations of item i with class k, built by one
`jax.ops.segment_sum` over the flat arrays, so the cost is linear in N plus
`num_items * num_classes`, and the result does not depend on the order of the
annotations.

* `percent_agreement`: share of agreeing pairs of annotations within items.
* `item_agreement`, `item_majority_share`: the same per item, and the majority's share.
* `cohen_kappa`: two annotators on the same items (Cohen 1960).
* `fleiss_kappa`: many annotators, any number per item (Fleiss 1971; Gwet 2014 for
  unequal numbers of ratings).
* `krippendorff_alpha`, `coincidence_matrix`: nominal, ordinal and interval alpha with
  missing data (Krippendorff 2011).

The public functions are thin wrappers: they validate the inputs on the host (lengths,
integer dtypes, negative indices), infer the static sizes (`num_items = max(items) + 1`,
`num_classes = max(labels) + 1` unless given) and call jitted cores. They therefore need
concrete arrays and cannot themselves be traced by `jax.jit`.

Conventions shared by all functions:
* Items with fewer than two annotations cannot form a pair and are left out of every
  pairwise quantity (they still count in the chance term of Fleiss' kappa, following
  Gwet 2014). Item indices in [0, num_items) that have no annotation are ignored.
* Repeated annotations of one item by one annotator are counted as separate
  annotations; the readers flag such duplicates before the metrics see them.
* Results are float32, or float64 when `jax_enable_x64` is on; counts are exact int32.
* A chance-corrected measure is undefined (0/0) when only one class occurs in the data
  it uses; that case raises a `ValueError` instead of returning NaN.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "ALPHA_LEVELS",
    "coincidence_matrix",
    "cohen_kappa",
    "fleiss_kappa",
    "item_agreement",
    "item_majority_share",
    "krippendorff_alpha",
    "percent_agreement",
]

ALPHA_LEVELS = ("nominal", "ordinal", "interval")

# Flat indices item * num_classes + label are int32 inside the cores.
_MAX_CELLS = 2**31 - 1


# --------------------------------------------------------------------------------------
# Host-side validation (the wrappers).


def _float_dtype() -> Any:
  """float64 when `jax_enable_x64` is on, else float32."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _index_array(x: ArrayLike, name: str, what: str) -> np.ndarray:
  """Returns `x` as a 1-D int32 NumPy array; raises on other ranks, dtypes or negatives."""
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"`{name}` must be a 1-D array of {what}, got shape {x.shape}.")
  if x.size and not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
    raise ValueError(
        f"`{name}` must hold integer {what}, got dtype {x.dtype}; "
        f"encode the annotations to integer indices first."
    )
  if x.size == 0:
    return x.astype(np.int32)
  negative = np.flatnonzero(x < 0)
  if negative.size:
    first = int(negative[0])
    raise ValueError(
        f"`{name}[{first}]` = {int(x[first])} is negative; {what} must be >= 0 "
        f"({negative.size} negative entries in `{name}`)."
    )
  largest = int(x.max())
  if largest >= _MAX_CELLS:
    raise ValueError(f"`{name}` holds {what} up to {largest}; they must be below 2**31 - 1.")
  return x.astype(np.int32)


def _check_same_length(**arrays: np.ndarray) -> None:
  lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
  if len(set(lengths.values())) > 1:
    listed = ", ".join(f"`{name}` has {n}" for name, n in lengths.items())
    raise ValueError(f"the annotation arrays must have one entry per annotation; {listed}.")


def _resolve_size(
    given: int | None, data_max: int, name: str, array_name: str, *, minimum: int = 1
) -> int:
  """`given`, checked against the data, or `max(data_max + 1, minimum)` when None."""
  if given is None:
    return max(data_max + 1, minimum)
  if isinstance(given, bool) or not isinstance(given, (int, np.integer)):
    raise ValueError(f"`{name}` must be a positive int or None, got {given!r}.")
  given = int(given)
  if given <= data_max:
    raise ValueError(
        f"`{name}` = {given} but `{array_name}` contains {data_max}; "
        f"`{name}` must exceed every index in `{array_name}`."
    )
  return given


def _check_num_classes(num_classes: int) -> None:
  if num_classes < 2:
    raise ValueError(
        f"agreement needs at least two classes, got num_classes = {num_classes}; "
        f"pass `num_classes` if the data does not show every class."
    )


def _validated_counts(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_items: int | None = None,
    num_classes: int | None = None,
    need_two_annotators: bool = False,
    measure: str = "",
) -> jax.Array:
  """Validates the flat arrays; returns their count matrix (`_count_matrix`), int32 [I, K]."""
  items = _index_array(items, "items", "item indices")
  annotators = _index_array(annotators, "annotators", "annotator indices")
  labels = _index_array(labels, "labels", "class indices")
  _check_same_length(items=items, annotators=annotators, labels=labels)
  if items.shape[0] == 0:
    raise ValueError(f"{measure or 'agreement'}: no annotations (the arrays are empty).")
  if need_two_annotators and annotators.min() == annotators.max():
    raise ValueError(
        f"{measure}: at least two annotators are needed, but every annotation comes "
        f"from annotator {int(annotators[0])}."
    )
  num_items = _resolve_size(num_items, int(items.max()), "num_items", "items")
  # Two classes at least, so that data showing one class reaches the clearer
  # "only one class occurs" message of the chance-corrected measures.
  num_classes = _resolve_size(
      num_classes, int(labels.max()), "num_classes", "labels", minimum=2
  )
  _check_num_classes(num_classes)
  if num_items * num_classes >= _MAX_CELLS:
    raise ValueError(
        f"num_items * num_classes = {num_items} * {num_classes} does not fit the int32 "
        f"count matrix; re-index the items to 0..num_items-1."
    )
  return _count_matrix(items, labels, num_items=num_items, num_classes=num_classes)


def _require_pairable(num_pairable_items: jax.Array, measure: str) -> None:
  if int(num_pairable_items) == 0:
    raise ValueError(
        f"{measure}: no item has two or more annotations, so no pair of annotations "
        f"can be compared."
    )


def _require_variation(num_classes_used: jax.Array, measure: str, scope: str) -> None:
  if int(num_classes_used) < 2:
    raise ValueError(
        f"{measure} is undefined (0/0): only one class occurs in {scope}, so chance "
        f"agreement is 1; report percent_agreement instead."
    )


# --------------------------------------------------------------------------------------
# Jitted cores.


@functools.partial(jax.jit, static_argnames=("num_items", "num_classes"))
def _count_matrix(items: jax.Array, labels: jax.Array, *, num_items: int, num_classes: int):
  """counts[i, k] = number of annotations of item i with class k, int32 [I, K].

  One segment sum over the flat cell index `item * K + label`: no [N, K] one-hot.
  """
  cells = items * num_classes + labels
  ones = jnp.ones(cells.shape, jnp.int32)
  counts = jax.ops.segment_sum(ones, cells, num_segments=num_items * num_classes)
  return counts.reshape(num_items, num_classes)


def _pair_counts(counts: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per item: (agreeing ordered pairs sum_k n_ik (n_ik - 1), all ordered pairs m (m - 1))."""
  counts = counts.astype(_float_dtype())
  per_item = counts.sum(axis=1)
  agreeing = jnp.sum(counts * (counts - 1.0), axis=1)
  return agreeing, per_item * (per_item - 1.0)


@jax.jit
def _percent_agreement_core(counts: jax.Array) -> tuple[jax.Array, jax.Array]:
  agreeing, pairs = _pair_counts(counts)
  total_pairs = pairs.sum()
  num_pairable = jnp.sum(pairs > 0)
  return agreeing.sum() / jnp.where(total_pairs > 0, total_pairs, 1.0), num_pairable


@jax.jit
def _item_agreement_core(counts: jax.Array) -> jax.Array:
  agreeing, pairs = _pair_counts(counts)
  return jnp.where(pairs > 0, agreeing / jnp.where(pairs > 0, pairs, 1.0), jnp.nan)


@jax.jit
def _item_majority_share_core(counts: jax.Array) -> jax.Array:
  counts = counts.astype(_float_dtype())
  per_item = counts.sum(axis=1)
  safe = jnp.where(per_item > 0, per_item, 1.0)
  return jnp.where(per_item > 0, counts.max(axis=1) / safe, jnp.nan)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _cohen_core(labels_a: jax.Array, labels_b: jax.Array, *, num_classes: int):
  cells = labels_a * num_classes + labels_b
  confusion = jax.ops.segment_sum(
      jnp.ones(cells.shape, jnp.int32), cells, num_segments=num_classes * num_classes
  ).reshape(num_classes, num_classes)
  joint = confusion.astype(_float_dtype())
  joint = joint / joint.sum()
  observed = jnp.trace(joint)
  chance = jnp.sum(joint.sum(axis=1) * joint.sum(axis=0))
  kappa = (observed - chance) / jnp.where(chance < 1.0, 1.0 - chance, 1.0)
  # Undefined iff both annotators used one and the same class.
  classes_used = jnp.sum((joint.sum(axis=1) + joint.sum(axis=0)) > 0)
  return kappa, classes_used


@jax.jit
def _fleiss_core(counts: jax.Array):
  counts = counts.astype(_float_dtype())
  per_item = counts.sum(axis=1)
  rated = per_item > 0
  pairable = per_item >= 2
  agreeing = jnp.sum(counts * (counts - 1.0), axis=1)
  pairs = per_item * (per_item - 1.0)
  num_pairable = pairable.sum()
  # P_a: mean over pairable items of the share of agreeing pairs within the item.
  item_share = jnp.where(pairable, agreeing / jnp.where(pairable, pairs, 1.0), 0.0)
  observed = item_share.sum() / jnp.maximum(num_pairable, 1)
  # pi_k: mean over rated items of the share of the item's ratings in class k.
  shares = counts / jnp.where(rated, per_item, 1.0)[:, None]
  class_prob = shares.sum(axis=0) / jnp.maximum(rated.sum(), 1)
  chance = jnp.sum(class_prob**2)
  kappa = (observed - chance) / jnp.where(chance < 1.0, 1.0 - chance, 1.0)
  classes_used = jnp.sum(class_prob > 0)
  return kappa, num_pairable, classes_used


def _coincidence(counts: jax.Array) -> jax.Array:
  """Krippendorff's coincidence matrix o[c, k], float [K, K].

  o_ck = sum over pairable units u of (n_uc n_uk - [c = k] n_uc) / (m_u - 1): every
  ordered pair of values within a unit, each unit weighted by 1 / (m_u - 1) so that it
  contributes m_u pairable values in total.
  """
  counts = counts.astype(_float_dtype())
  per_item = counts.sum(axis=1)
  pairable = per_item >= 2
  weight = jnp.where(pairable, 1.0 / jnp.where(pairable, per_item - 1.0, 1.0), 0.0)
  weighted = counts * weight[:, None]
  products = jnp.einsum("ic,ik->ck", weighted, counts, precision=jax.lax.Precision.HIGHEST)
  return products - jnp.diag(weighted.sum(axis=0))


_coincidence_jit = jax.jit(_coincidence)


def _squared_differences(marginals: jax.Array, level: str) -> jax.Array:
  """delta^2[c, k] of Krippendorff (2011) for the given level, [K, K]."""
  num_classes = marginals.shape[0]
  if level == "nominal":
    return 1.0 - jnp.eye(num_classes, dtype=marginals.dtype)
  if level == "ordinal":
    # delta_ck = sum_{g=c..k} n_g - (n_c + n_k) / 2 = mid_k - mid_c with the mid-rank
    # position mid_c = cumsum(n)_c - n_c / 2; classes with n_g = 0 add nothing.
    positions = jnp.cumsum(marginals) - marginals / 2.0
  else:  # interval: the class index is the value.
    positions = jnp.arange(num_classes, dtype=marginals.dtype)
  return (positions[:, None] - positions[None, :]) ** 2


@functools.partial(jax.jit, static_argnames=("level",))
def _alpha_core(counts: jax.Array, *, level: str):
  coincidences = _coincidence(counts)
  marginals = coincidences.sum(axis=1)
  total = marginals.sum()
  squared = _squared_differences(marginals, level)
  observed = jnp.sum(coincidences * squared)
  expected = jnp.sum(marginals[:, None] * marginals[None, :] * squared)
  alpha = 1.0 - (total - 1.0) * observed / jnp.where(expected > 0, expected, 1.0)
  num_pairable = jnp.sum(counts.sum(axis=1) >= 2)
  classes_used = jnp.sum(marginals > 0)
  return alpha, num_pairable, classes_used


# --------------------------------------------------------------------------------------
# Public API.


def percent_agreement(items: ArrayLike, annotators: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Share of agreeing ordered pairs of annotations within items.

    P = sum_i sum_k n_ik (n_ik - 1) / sum_i m_i (m_i - 1)

  with `n_ik` the number of annotations of item i in class k and `m_i = sum_k n_ik`.
  Pairs are pooled over items, so an item with more annotations weighs more; items with
  one annotation have no pair and drop out. With the same number of annotations per
  item this equals Fleiss' (1971) mean observed agreement P-bar. Not chance-corrected.

  Args:
    items: int [N] item index of each annotation.
    annotators: int [N] annotator index (validated; agreement is between annotations).
    labels: int [N] class index.

  Returns:
    A float scalar in [0, 1].

  Raises:
    ValueError: mismatched lengths, negative or non-integer indices, empty input, or no
      item with two or more annotations.
  """
  measure = "percent agreement"
  counts = _validated_counts(items, annotators, labels, measure=measure)
  value, num_pairable = _percent_agreement_core(counts)
  _require_pairable(num_pairable, measure)
  return value


def item_agreement(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_items: int | None = None,
    num_classes: int | None = None,
) -> jax.Array:
  """Per-item share of agreeing ordered pairs of annotations.

    a_i = sum_k n_ik (n_ik - 1) / (m_i (m_i - 1))

  1 when all annotations of the item agree, 0 when no two agree. The mean of `a_i`
  over pairable items is the observed agreement of `fleiss_kappa`.

  Args:
    items, annotators, labels: int [N] flat annotation arrays.
    num_items: length of the output (default `max(items) + 1`), so that items without
      annotations get a row.
    num_classes: number of classes (default `max(labels) + 1`, at least 2).

  Returns:
    float [num_items]; NaN for items with fewer than two annotations (no pair).
  """
  counts = _validated_counts(
      items, annotators, labels, num_items=num_items, num_classes=num_classes,
      measure="item agreement",
  )
  return _item_agreement_core(counts)


def item_majority_share(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_items: int | None = None,
    num_classes: int | None = None,
) -> jax.Array:
  """Per-item share of annotations that fall in the item's most frequent class.

    s_i = max_k n_ik / m_i

  The confidence of a plain majority vote. It is 1 for an item with a single
  annotation, so use it together with the number of annotations or `item_agreement`.

  Args:
    items, annotators, labels: int [N] flat annotation arrays.
    num_items: length of the output (default `max(items) + 1`).
    num_classes: number of classes (default `max(labels) + 1`, at least 2).

  Returns:
    float [num_items] in [1/K, 1]; NaN for items without annotations.
  """
  counts = _validated_counts(
      items, annotators, labels, num_items=num_items, num_classes=num_classes,
      measure="item majority share",
  )
  return _item_majority_share_core(counts)


def cohen_kappa(
    labels_a: ArrayLike, labels_b: ArrayLike, *, num_classes: int | None = None
) -> jax.Array:
  """Cohen's kappa between two annotators who labelled the same N items.

  With the joint distribution `p[c, k]` of (annotator a says c, annotator b says k):

    p_o = sum_k p[k, k],   p_e = sum_k p[k, .] p[., k],   kappa = (p_o - p_e) / (1 - p_e)

  Cohen (1960), "A coefficient of agreement for nominal scales", Educational and
  Psychological Measurement 20(1). Chance agreement uses each annotator's own
  marginals (unlike Scott's pi and Fleiss' kappa, which pool them).

  Args:
    labels_a: int [N] labels of the first annotator; entry n is item n.
    labels_b: int [N] labels of the second annotator on the same items.
    num_classes: number of classes K (default `max(labels) + 1`, at least 2); unused classes do
      not change kappa.

  Returns:
    A float scalar in [-1, 1].

  Raises:
    ValueError: mismatched lengths, empty input, negative or non-integer labels,
      K < 2, or both annotators using one and the same class (kappa is 0/0).
  """
  measure = "Cohen's kappa"
  labels_a = _index_array(labels_a, "labels_a", "class indices")
  labels_b = _index_array(labels_b, "labels_b", "class indices")
  if labels_a.shape[0] != labels_b.shape[0]:
    raise ValueError(
        f"{measure} compares two annotators on the same items: `labels_a` has "
        f"{labels_a.shape[0]} entries and `labels_b` has {labels_b.shape[0]}."
    )
  if labels_a.shape[0] == 0:
    raise ValueError(f"{measure}: no items (the label arrays are empty).")
  largest = max(int(labels_a.max()), int(labels_b.max()))
  num_classes = _resolve_size(
      num_classes, largest, "num_classes", "labels_a/labels_b", minimum=2
  )
  _check_num_classes(num_classes)
  kappa, classes_used = _cohen_core(labels_a, labels_b, num_classes=num_classes)
  _require_variation(classes_used, measure, "the labels of both annotators")
  return kappa


def fleiss_kappa(items: ArrayLike, annotators: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Fleiss' kappa for many annotators, allowing a different number per item.

  With `n_ik` annotations of item i in class k and `m_i = sum_k n_ik`:

    P_a   = mean over items with m_i >= 2 of  sum_k n_ik (n_ik - 1) / (m_i (m_i - 1))
    pi_k  = mean over items with m_i >= 1 of  n_ik / m_i
    P_e   = sum_k pi_k^2,        kappa = (P_a - P_e) / (1 - P_e)

  Fleiss (1971), "Measuring nominal scale agreement among many raters", Psychological
  Bulletin 76(5), defines kappa for a constant number of ratings per item. For unequal
  numbers we use the generalisation of Gwet (2014), "Handbook of Inter-Rater
  Reliability", 4th ed., ch. 2 (Fleiss' generalized kappa, as in the irrCAC package):
  observed agreement averages the per-item agreement over items that have a pair, and
  the class probabilities average per-item class shares over all rated items. With
  `m_i = m` for every item both reduce to Fleiss' P-bar and p_j = sum_i n_ij / (N m),
  so the classic value is recovered exactly.

  Args:
    items: int [N] item index of each annotation.
    annotators: int [N] annotator index (at least two distinct annotators).
    labels: int [N] class index.

  Returns:
    A float scalar, at most 1.

  Raises:
    ValueError: mismatched lengths, negative or non-integer indices, empty input, a
      single annotator, no item with two annotations, or a single class in the data.
  """
  measure = "Fleiss' kappa"
  counts = _validated_counts(
      items, annotators, labels, need_two_annotators=True, measure=measure
  )
  kappa, num_pairable, classes_used = _fleiss_core(counts)
  _require_pairable(num_pairable, measure)
  _require_variation(classes_used, measure, "the annotations")
  return kappa


def coincidence_matrix(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int | None = None,
) -> jax.Array:
  """Krippendorff's coincidence matrix of the pairable annotations.

    o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1)   over units with m_u >= 2

  Symmetric; row sums `n_c` count the pairable values of class c and sum to `n`, the
  number of pairable values. Krippendorff (2011), "Computing Krippendorff's
  Alpha-Reliability", section "Coincidence matrices".

  Args:
    items, annotators, labels: int [N] flat annotation arrays.
    num_classes: K (default `max(labels) + 1`, at least 2).

  Returns:
    float [K, K].
  """
  counts = _validated_counts(
      items, annotators, labels, num_classes=num_classes, measure="coincidence matrix"
  )
  return _coincidence_jit(counts)


def krippendorff_alpha(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    level: str = "nominal",
) -> jax.Array:
  """Krippendorff's alpha with missing data, nominal, ordinal or interval.

  From the coincidence matrix `o` (see `coincidence_matrix`), its marginals `n_c` and
  `n = sum_c n_c`:

    alpha = 1 - D_o / D_e = 1 - (n - 1) sum_{c,k} o_ck d2_ck / sum_{c,k} n_c n_k d2_ck

  with the squared difference `d2_ck`:
    nominal:  [c != k]
    ordinal:  (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2   (ranks from the marginals)
    interval: (c - k)^2, the class index taken as the value.

  Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", Annenberg School
  for Communication Departmental Papers 43. Units (items) with a single annotation are
  not pairable and are dropped from the coincidence matrix, as Krippendorff prescribes;
  any number of annotators may label each item. For ordinal data the class indices must
  follow the order of the categories; classes absent from the data do not matter.

  Args:
    items: int [N] item index of each annotation.
    annotators: int [N] annotator index (at least two distinct annotators).
    labels: int [N] class index.
    level: one of "nominal", "ordinal", "interval".

  Returns:
    A float scalar, at most 1.

  Raises:
    ValueError: unknown level, mismatched lengths, negative or non-integer indices,
      empty input, a single annotator, no pairable item, or a single class among the
      pairable values (alpha is 0/0).
  """
  if level not in ALPHA_LEVELS:
    raise ValueError(
        f"`level` must be one of {', '.join(map(repr, ALPHA_LEVELS))}; got {level!r}."
    )
  measure = f"Krippendorff's alpha ({level})"
  counts = _validated_counts(
      items, annotators, labels, need_two_annotators=True, measure=measure
  )
  alpha, num_pairable, classes_used = _alpha_core(counts, level=level)
  _require_pairable(num_pairable, measure)
  _require_variation(classes_used, measure, "the pairable annotations")
  return alpha
