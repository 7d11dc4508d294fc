"""The make-run comparison: figures recomputed independently, and the one-line readings."""
import numpy as np
import pytest

from rlhf_jax import feedback
from rlhf_jax.ablate import stats
from rlhf_jax.worlds import annotate, compare, experiments, graded


def test_readings_follow_the_interval():
  assert "beats majority vote by 0.040" in compare.reading(
      "Dawid-Skene", "majority vote", stats.Interval(0.04, 0.01, 3), "label accuracy")
  assert "trails" in compare.reading("A", "B", stats.Interval(-0.04, 0.01, 3), "accuracy")
  assert "cannot be told apart" in compare.reading("A", "B", stats.Interval(0.01, 0.02, 3), "accuracy")


@pytest.mark.slow
def test_majority_vote_accuracy_recomputed_from_the_crowd():
  result = compare.compare(num_seeds=2, num_pairs=200)
  params = experiments.base_params()
  params["crowd"].update(compare.PIPELINE_MIX, annotations_per_item=3)
  for s in result["seeds"]:
    world = graded.GradedWorld.create(s, graded.WorldConfig(**params["world"]))
    pairs = graded.sample_pairs(world, 200, seed=2 * s + 1)
    config = annotate.CrowdConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params["crowd"].items()})
    crowd = annotate.simulate_crowd(s, pairs.difference, pairs.lengths, config)
    votes_a = np.bincount(crowd.items, weights=crowd.labels == feedback.A_PREFERRED, minlength=200)
    votes = np.bincount(crowd.items, minlength=200)
    label_a = votes_a * 2 >= votes  # three votes: no ties
    assert result["values"]["majority_vote"][s] == pytest.approx(np.mean(label_a == pairs.gold_prefers_a))
  text = compare.format_report(result)
  assert "Dawid-Skene" in text and "Crowd-BT" in text and "confidence-weighted" in text
  assert all(0.4 < v < 1.0 for values in result["values"].values() for v in values)
