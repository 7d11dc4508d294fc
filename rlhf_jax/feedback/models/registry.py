"""Aggregation methods by name: `AGGREGATION_METHODS.get("dawid_skene")(items, annotators, labels, ...)`.

Every class-level method takes the flat annotation arrays of `rlhf_jax.feedback.types`
and `num_classes`, `num_items`, `num_annotators` as keywords, and returns an
`AggregationResult`. A few need one more input, named in `EXTRA_INPUTS`
(`weighted_vote`: `annotator_weights`; `gold_majority_vote`: `gold_labels`, which fixes
`num_items`). An unknown name raises ValueError with the close matches and every name.
"""

from __future__ import annotations

from typing import Callable

from rlhf_jax.feedback.models import dawid_skene, kos, mmsr, spammer_models, voting
from rlhf_jax.feedback.types import AggregationResult
from rlhf_jax.registry import Registry

__all__ = ["AGGREGATION_METHODS", "EXTRA_INPUTS"]

AGGREGATION_METHODS: Registry[Callable[..., AggregationResult]] = Registry("aggregation method")
for _name, _method in (
    ("majority_vote", voting.majority_vote),
    ("weighted_vote", voting.weighted_vote),
    ("wawa", voting.wawa),
    ("zero_based_skill", voting.zero_based_skill),
    ("gold_majority_vote", voting.gold_majority_vote),
    ("dawid_skene", dawid_skene.dawid_skene),
    ("one_coin_dawid_skene", dawid_skene.one_coin_dawid_skene),
    ("bayesian_dawid_skene", dawid_skene.bayesian_dawid_skene),
    ("mace", spammer_models.mace),
    ("glad", spammer_models.glad),
    ("kos", kos.kos),
    ("mmsr", mmsr.mmsr),
):
  AGGREGATION_METHODS.register(_name, _method)

# Inputs a method needs beyond the annotations and the sizes.
EXTRA_INPUTS = {"weighted_vote": ("annotator_weights",), "gold_majority_vote": ("gold_labels",)}
