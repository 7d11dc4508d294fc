"""Tests for rlhf_jax.feedback.types: the class indices of pairwise data, the field order
of `AggregationResult`, and the sizes `EncodedAnnotations` (and the streaming aggregator,
through `IdTables`) take from their id tables."""

import dataclasses

import jax
import numpy as np
import pytest

from rlhf_jax import feedback
from rlhf_jax.feedback import types
from rlhf_jax.feedback.workflow import stream


def test_pairwise_class_indices_name_their_classes():
  assert types.PAIRWISE_CLASS_NAMES[types.A_PREFERRED] == "a"
  assert types.PAIRWISE_CLASS_NAMES[types.B_PREFERRED] == "b"
  assert types.PAIRWISE_CLASS_NAMES[types.TIE] == "tie"


def test_aggregation_result_unpacks_in_its_documented_order():
  posteriors = np.array([[0.2, 0.8]])
  result = types.AggregationResult(posteriors, np.array([1]), np.array([0.8]), {"reliability": np.ones(2)}, {})
  unpacked_posteriors, labels, confidence, annotator_params, extras = result
  assert unpacked_posteriors is posteriors and labels.tolist() == [1] and confidence.tolist() == [0.8]
  assert list(annotator_params) == ["reliability"] and extras == {}
  assert result._replace(extras={"num_iters": 3}).extras == {"num_iters": 3}


def _encoded(**optional):
  # Three annotations of two items; item "q3" and annotator "w3" are in the tables without
  # any annotation (an encoding may keep ids its annotations no longer use).
  return types.EncodedAnnotations(
      items=np.array([0, 0, 1], np.int32), annotators=np.array([0, 1, 1], np.int32),
      labels=np.array([0, 1, 1], np.int32), item_ids=("q1", "q2", "q3"), annotator_ids=("w1", "w2", "w3"),
      class_names=("a", "b", "tie"), annotation_ids=("n1", "n2", "n3"), **optional)


def test_encoded_annotations_sizes_come_from_the_id_tables_not_the_indices():
  encoded = _encoded()
  assert (encoded.num_items, encoded.num_annotators, encoded.num_classes, encoded.num_annotations) == (3, 3, 3, 3)
  assert int(encoded.items.max()) + 1 == 2  # what inferring from the indices would have said
  assert encoded.timestamps is None and encoded.golden_labels is None
  with pytest.raises(dataclasses.FrozenInstanceError):
    encoded.labels = np.zeros(3, np.int32)  # type: ignore[misc]
  # The optional fields are dataclass fields; the sizes are not.
  names = [field.name for field in dataclasses.fields(encoded)]
  assert names[:7] == ["items", "annotators", "labels", "item_ids", "annotator_ids", "class_names",
                       "annotation_ids"]
  assert "num_items" not in names and "guideline_versions" in names


def test_the_streaming_aggregator_counts_distinct_ids_through_the_same_tables(tmp_path):
  assert issubclass(stream.StreamingAggregator, types.IdTables)
  config = feedback.SimulationConfig(num_items=8, num_annotators=5, annotations_per_item=2)
  records = feedback.to_records(feedback.simulate_annotations(jax.random.key(0), config), with_text=False)
  aggregator = stream.StreamingAggregator(tmp_path, stream.StreamConfig(format="jsonl"))
  assert (aggregator.num_items, aggregator.num_annotators) == (0, 0)
  aggregator.feed(records)
  assert aggregator.num_items == len({r["item_id"] for r in records})
  assert aggregator.num_annotators == len({r["annotator_id"] for r in records})
  assert aggregator.num_annotations == len(records)
