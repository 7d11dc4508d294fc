"""Data types shared across the feedback layer.

Every algorithm takes annotations as flat integer arrays of equal length N (one entry per
annotation): `items[n]` the comparison/question index in [0, num_items), `annotators[n]`
the annotator index in [0, num_annotators), `labels[n]` the class in [0, num_classes).
For pairwise preferences the classes are `A_PREFERRED = 0`, `B_PREFERRED = 1`, `TIE = 2`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

# Class indices for pairwise comparisons (response a vs response b).
A_PREFERRED = 0
B_PREFERRED = 1
TIE = 2
PAIRWISE_CLASS_NAMES = ("a", "b", "tie")


class AggregationResult(NamedTuple):
  """What every aggregation method returns.

  Attributes:
    posteriors: [num_items, num_classes] posterior class probabilities per item (the soft
      label; for pairwise data `posteriors[:, A_PREFERRED]` is the target probability for
      `losses.bradley_terry_soft` when a is the chosen response).
    labels: [num_items] int, the argmax label (ties broken toward the lowest class index
      unless a method documents otherwise).
    confidence: [num_items] the posterior probability of `labels` (majority vote: the
      share of agreeing votes).
    annotator_params: method-specific per-annotator parameters, e.g.
      `{"confusion": [num_annotators, K, K]}` or `{"reliability": [num_annotators]}`;
      always includes `"reliability"` [num_annotators], a number in [0, 1] summarising
      how often the annotator's label equals the true class under the model.
    extras: method-specific diagnostics (class priors, log-likelihood trace, iterations).
  """

  posteriors: jax.Array
  labels: jax.Array
  confidence: jax.Array
  annotator_params: dict[str, jax.Array]
  extras: dict[str, Any]


class IdTables:
  """`num_items` and `num_annotators` of whatever keeps the tables index -> id.

  Shared by `EncodedAnnotations` (one file) and the streaming aggregator (all batches so
  far), so that both count items and annotators the same way: by their id tables.
  """

  item_ids: Sequence[str]  # item index -> id in the input
  annotator_ids: Sequence[str]  # annotator index -> id in the input

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @property
  def num_annotators(self) -> int:
    return len(self.annotator_ids)


@dataclasses.dataclass(frozen=True)
class EncodedAnnotations(IdTables):
  """Annotations read from a file and encoded to flat arrays, with lineage.

  The integer arrays are what the algorithms take; the id tables map indices back to the
  identifiers in the input so that every aggregated label is traceable.
  """

  items: np.ndarray  # [N] int32 item index
  annotators: np.ndarray  # [N] int32 annotator index
  labels: np.ndarray  # [N] int32 class index
  item_ids: tuple[str, ...]  # item index -> id in the input
  annotator_ids: tuple[str, ...]  # annotator index -> id in the input
  class_names: tuple[str, ...]  # class index -> label as written in the input
  # [N] id of each annotation (given, or file:line); a tuple, or `rlhf_jax.io.ingest.RowIds`
  # (the default file:line ids worded on demand, equal to the tuple of them).
  annotation_ids: Sequence[str]
  # Optional per-annotation fields (None when the input format lacks them).
  timestamps: np.ndarray | None = None  # [N] float64 seconds since epoch
  response_ms: np.ndarray | None = None  # [N] float64 response time in ms
  strength: np.ndarray | None = None  # [N] float32 preference strength, NaN if absent
  is_golden: np.ndarray | None = None  # [N] bool, item has a known answer
  golden_labels: np.ndarray | None = None  # [N] int32 known answer, -1 if not golden
  guideline_versions: tuple[str, ...] | None = None  # [N] guideline version per annotation
  item_payloads: tuple[dict[str, Any], ...] | None = None  # per item: prompt, responses

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_annotations(self) -> int:
    return int(self.items.shape[0])
