"""Tests for rlhf_jax.feedback.metrics.agreement.

References: published worked examples typed in below (Fleiss 1971-style table, Cohen's
kappa textbook 2x2, Krippendorff 2011, Gwet 2014) and NumPy float64 implementations
written here that follow the definitions literally (loops over units and pairs of
annotations), independent of the count-matrix algebra of the library.
"""

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.feedback.metrics import agreement

DATA_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

# Fleiss' kappa worked example (Wikipedia "Fleiss' kappa"; 10 subjects, 14 raters,
# 5 categories): counts[i, j] raters who put subject i in category j.
# Published: P-bar = 0.378, P-bar_e = 0.213, kappa = 0.210.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
])

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers (rows)
# code 12 units (columns) with values 1..5; 0 marks a missing value. Published:
# nominal alpha = 0.743, ordinal 0.815, interval 0.849. The same data is Gwet's (2014)
# 4-rater example, whose generalized Fleiss kappa is 0.76117 (P_a = 0.81818,
# P_e = 0.239; irrCAC).
KRIPPENDORFF_DATA = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, 0, 0, 0],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, 0, 3],
    [0, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, 0],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, 0],
])


def flat_from_table(table):
  """Flat (items, annotators, labels) from an item-by-class count table."""
  items, annotators, labels = [], [], []
  for i, row in enumerate(table):
    rater = 0
    for k, count in enumerate(row):
      for _ in range(count):
        items.append(i)
        annotators.append(rater)
        labels.append(k)
        rater += 1
  return np.array(items), np.array(annotators), np.array(labels)


def flat_from_matrix(data):
  """Flat arrays from an annotator-by-unit matrix of values 1..V (0 = missing)."""
  annotators, items = np.nonzero(data)
  return items, annotators, data[annotators, items] - 1


def random_annotations(seed, num_items=30, num_annotators=6, num_classes=4, coverage=0.6):
  """Random incomplete annotations with item-dependent truth, so agreement is not 0."""
  rng = np.random.default_rng(seed)
  truth = rng.integers(num_classes, size=num_items)
  observed = rng.random((num_annotators, num_items)) < coverage
  noise = rng.random((num_annotators, num_items)) < 0.4
  labels = np.where(noise, rng.integers(num_classes, size=(num_annotators, num_items)), truth)
  annotators, items = np.nonzero(observed)
  return items, annotators, labels[annotators, items]


def units_of(items, labels):
  """{item: list of labels} in the order given."""
  units = {}
  for i, label in zip(items.tolist(), labels.tolist()):
    units.setdefault(i, []).append(label)
  return units


def np_pair_agreement(items, labels):
  """Pooled share of agreeing ordered pairs, by enumerating the pairs."""
  agree = total = 0
  for values in units_of(items, labels).values():
    for a, b in itertools.permutations(range(len(values)), 2):
      total += 1
      agree += values[a] == values[b]
  return agree / total


def np_item_agreement(items, labels, num_items):
  out = np.full(num_items, np.nan)
  for i, values in units_of(items, labels).items():
    pairs = list(itertools.permutations(range(len(values)), 2))
    if pairs:
      out[i] = np.mean([values[a] == values[b] for a, b in pairs])
  return out


def np_cohen(a, b):
  """Cohen (1960) from the label lists."""
  a, b = np.asarray(a), np.asarray(b)
  n = len(a)
  classes = np.union1d(a, b)
  p_o = np.mean(a == b)
  p_e = sum((np.sum(a == c) / n) * (np.sum(b == c) / n) for c in classes)
  return (p_o - p_e) / (1 - p_e)


def np_fleiss_classic(table):
  """Fleiss (1971) for a constant number n of ratings per subject."""
  table = np.asarray(table, np.float64)
  num_subjects = table.shape[0]
  n = table[0].sum()
  p_j = table.sum(axis=0) / (num_subjects * n)
  p_i = (np.sum(table**2, axis=1) - n) / (n * (n - 1))
  p_bar, p_e = p_i.mean(), np.sum(p_j**2)
  return (p_bar - p_e) / (1 - p_e)


def np_fleiss_gwet(items, labels, num_classes):
  """Gwet (2014) generalized Fleiss kappa, written per item."""
  shares, agreements = [], []
  for values in units_of(items, labels).values():
    m = len(values)
    counts = np.bincount(values, minlength=num_classes).astype(np.float64)
    shares.append(counts / m)
    if m >= 2:
      agreements.append(np.sum(counts * (counts - 1)) / (m * (m - 1)))
  p_a = np.mean(agreements)
  p_e = np.sum(np.mean(shares, axis=0) ** 2)
  return (p_a - p_e) / (1 - p_e)


def np_coincidences(items, labels, num_classes):
  """Krippendorff's coincidence matrix by enumerating ordered pairs within units."""
  o = np.zeros((num_classes, num_classes))
  for values in units_of(items, labels).values():
    m = len(values)
    if m < 2:
      continue
    for a, b in itertools.permutations(range(m), 2):
      o[values[a], values[b]] += 1.0 / (m - 1)
  return o


def np_alpha(items, labels, level):
  """Krippendorff (2011): alpha = 1 - D_o / D_e with the metric differences as defined."""
  num_classes = int(labels.max()) + 1
  o = np_coincidences(items, labels, num_classes)
  n_c = o.sum(axis=1)
  n = n_c.sum()
  delta2 = np.zeros((num_classes, num_classes))
  for c in range(num_classes):
    for k in range(num_classes):
      if level == "nominal":
        delta2[c, k] = float(c != k)
      elif level == "ordinal":
        lo, hi = min(c, k), max(c, k)
        delta2[c, k] = (sum(n_c[g] for g in range(lo, hi + 1)) - (n_c[c] + n_c[k]) / 2) ** 2
      else:
        delta2[c, k] = (c - k) ** 2
  d_o = np.sum(o * delta2) / n
  d_e = sum(n_c[c] * n_c[k] * delta2[c, k] for c in range(num_classes)
            for k in range(num_classes)) / (n * (n - 1))
  return 1 - d_o / d_e


# --------------------------------------------------------------------------------------
# Published worked examples.


def test_fleiss_kappa_classic_worked_example():
  items, annotators, labels = flat_from_table(FLEISS_TABLE)
  assert items.shape == (140,)
  kappa = float(agreement.fleiss_kappa(items, annotators, labels))
  assert kappa == pytest.approx(0.210, abs=5e-4)
  assert kappa == pytest.approx(np_fleiss_classic(FLEISS_TABLE), abs=1e-6)
  # P-bar = 0.378: with 14 raters everywhere the pooled pair share equals P-bar.
  p_bar = float(agreement.percent_agreement(items, annotators, labels))
  assert p_bar == pytest.approx(0.378, abs=5e-4)
  assert float(jnp.mean(agreement.item_agreement(items, annotators, labels))) == (
      pytest.approx(0.378, abs=5e-4)
  )
  # Per-subject P_i of the worked example: subject 1 has P_1 = 1, subject 2 P_2 = 0.253.
  per_item = np.asarray(agreement.item_agreement(items, annotators, labels))
  assert per_item[0] == pytest.approx(1.0)
  assert per_item[1] == pytest.approx(0.253, abs=5e-4)


def test_cohen_kappa_textbook_two_by_two():
  # 50 grant proposals read by A and B: 20 yes/yes, 5 A-yes/B-no, 10 A-no/B-yes,
  # 15 no/no. p_o = 0.7, p_e = 0.5, kappa = 0.4 (Wikipedia "Cohen's kappa").
  yes, no = 1, 0
  labels_a = np.array([yes] * 20 + [yes] * 5 + [no] * 10 + [no] * 15)
  labels_b = np.array([yes] * 20 + [no] * 5 + [yes] * 10 + [no] * 15)
  assert float(agreement.cohen_kappa(labels_a, labels_b)) == pytest.approx(0.4, abs=1e-6)


def test_krippendorff_alpha_worked_example_with_missing_data():
  items, annotators, labels = flat_from_matrix(KRIPPENDORFF_DATA)
  assert items.shape == (41,)
  published = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849}
  for level, value in published.items():
    alpha = float(agreement.krippendorff_alpha(items, annotators, labels, level=level))
    assert alpha == pytest.approx(value, abs=5e-4), level
    assert alpha == pytest.approx(np_alpha(items, labels, level), abs=1e-6), level


def test_coincidence_matrix_worked_example():
  items, annotators, labels = flat_from_matrix(KRIPPENDORFF_DATA)
  o = np.asarray(agreement.coincidence_matrix(items, annotators, labels))
  # Pairable values per class, counted by hand (unit 12 has a single value and drops).
  np.testing.assert_allclose(o.sum(axis=1), [9, 13, 10, 5, 3], atol=1e-5)
  np.testing.assert_allclose(o, o.T, atol=1e-6)
  np.testing.assert_allclose(o, np_coincidences(items, labels, 5), atol=1e-5)
  assert o[0, 0] == pytest.approx(7.0, abs=1e-5)
  assert o[0, 1] == pytest.approx(4 / 3, abs=1e-6)


def test_fleiss_kappa_unequal_raters_matches_gwet_example():
  items, annotators, labels = flat_from_matrix(KRIPPENDORFF_DATA)
  kappa = float(agreement.fleiss_kappa(items, annotators, labels))
  assert kappa == pytest.approx(0.76117, abs=5e-5)
  per_item = np.asarray(agreement.item_agreement(items, annotators, labels))
  assert np.isnan(per_item[11])  # unit 12: one rating, no pair
  assert np.nanmean(per_item) == pytest.approx(0.81818, abs=5e-5)  # Gwet's P_a


# --------------------------------------------------------------------------------------
# Independent NumPy references on random data.


@pytest.mark.parametrize("seed", range(4))
def test_random_data_matches_definitions(seed):
  items, annotators, labels = random_annotations(seed)
  num_items = int(items.max()) + 1
  np.testing.assert_allclose(
      agreement.percent_agreement(items, annotators, labels),
      np_pair_agreement(items, labels), atol=1e-6,
  )
  np.testing.assert_allclose(
      agreement.item_agreement(items, annotators, labels),
      np_item_agreement(items, labels, num_items), atol=1e-6,
  )
  np.testing.assert_allclose(
      agreement.fleiss_kappa(items, annotators, labels),
      np_fleiss_gwet(items, labels, 4), atol=1e-5,
  )
  for level in agreement.ALPHA_LEVELS:
    np.testing.assert_allclose(
        agreement.krippendorff_alpha(items, annotators, labels, level=level),
        np_alpha(items, labels, level), atol=1e-5, err_msg=level,
    )


@pytest.mark.parametrize("seed", range(4))
def test_fleiss_kappa_equal_raters_is_classic_formula(seed):
  rng = np.random.default_rng(100 + seed)
  table = rng.multinomial(5, [0.5, 0.3, 0.15, 0.05], size=25)
  items, annotators, labels = flat_from_table(table)
  np.testing.assert_allclose(
      agreement.fleiss_kappa(items, annotators, labels), np_fleiss_classic(table), atol=1e-5
  )


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_numpy(seed):
  rng = np.random.default_rng(200 + seed)
  num_classes = 2 + seed % 3
  labels_a = rng.integers(num_classes, size=60)
  labels_b = np.where(rng.random(60) < 0.6, labels_a, rng.integers(num_classes, size=60))
  kappa = agreement.cohen_kappa(labels_a, labels_b)
  np.testing.assert_allclose(kappa, np_cohen(labels_a, labels_b), atol=1e-6)
  # Declaring classes that never occur changes nothing.
  np.testing.assert_allclose(
      agreement.cohen_kappa(labels_a, labels_b, num_classes=num_classes + 3), kappa, atol=1e-6
  )


def test_two_complete_annotators_fleiss_is_scott_pi_and_alpha_its_small_sample_form():
  rng = np.random.default_rng(7)
  num_items = 40
  first = rng.integers(3, size=num_items)
  second = np.where(rng.random(num_items) < 0.7, first, rng.integers(3, size=num_items))
  items = np.concatenate([np.arange(num_items)] * 2)
  annotators = np.repeat([0, 1], num_items)
  labels = np.concatenate([first, second])
  p_o = np.mean(first == second)
  pooled = np.bincount(labels, minlength=3) / (2 * num_items)
  scott_pi = (p_o - np.sum(pooled**2)) / (1 - np.sum(pooled**2))
  np.testing.assert_allclose(agreement.fleiss_kappa(items, annotators, labels), scott_pi, atol=1e-6)
  # Krippendorff: for two coders without missing data, alpha = 1 - (1 - pi)(n - 1)/n,
  # n = 2N pairable values.
  n = 2 * num_items
  np.testing.assert_allclose(
      agreement.krippendorff_alpha(items, annotators, labels),
      1 - (1 - scott_pi) * (n - 1) / n, atol=1e-6,
  )


def test_item_majority_share_matches_counts():
  items, annotators, labels = random_annotations(11)
  num_items = int(items.max()) + 3  # two trailing items without annotations
  share = np.asarray(
      agreement.item_majority_share(items, annotators, labels, num_items=num_items)
  )
  assert share.shape == (num_items,)
  for i, values in units_of(items, labels).items():
    assert share[i] == pytest.approx(np.bincount(values).max() / len(values))
  assert np.isnan(share[-2:]).all()
  per_item = np.asarray(agreement.item_agreement(items, annotators, labels, num_items=num_items))
  assert np.isnan(per_item[-2:]).all()


def test_real_crowd_data_matches_definitions():
  path = DATA_DIR / "crowd" / "duck" / "answers.csv"
  if not path.exists():
    pytest.skip(f"real crowd data not found at {path} (shared data directory absent)")
  rows = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=str)
  _, items = np.unique(rows[:, 0], return_inverse=True)
  _, annotators = np.unique(rows[:, 1], return_inverse=True)
  _, labels = np.unique(rows[:, 2], return_inverse=True)
  np.testing.assert_allclose(
      agreement.krippendorff_alpha(items, annotators, labels), np_alpha(items, labels, "nominal"),
      atol=1e-5,
  )
  np.testing.assert_allclose(
      agreement.fleiss_kappa(items, annotators, labels),
      np_fleiss_gwet(items, labels, int(labels.max()) + 1), atol=1e-5,
  )


# --------------------------------------------------------------------------------------
# Properties.


def all_measures(items, annotators, labels):
  return {
      "percent": agreement.percent_agreement(items, annotators, labels),
      "fleiss": agreement.fleiss_kappa(items, annotators, labels),
      "alpha_nominal": agreement.krippendorff_alpha(items, annotators, labels),
      "alpha_ordinal": agreement.krippendorff_alpha(items, annotators, labels, level="ordinal"),
      "alpha_interval": agreement.krippendorff_alpha(items, annotators, labels, level="interval"),
  }


def test_perfect_agreement_gives_one():
  rng = np.random.default_rng(3)
  truth = rng.integers(4, size=20)
  truth[:4] = [0, 1, 2, 3]
  items, annotators, _ = random_annotations(3, num_items=20)
  items = np.concatenate([items, np.arange(4), np.arange(4)])  # every class pairable
  annotators = np.concatenate([annotators, np.full(4, 6), np.full(4, 7)])
  labels = truth[items]
  for name, value in all_measures(items, annotators, labels).items():
    assert float(value) == pytest.approx(1.0, abs=1e-6), name
  per_item = np.asarray(agreement.item_agreement(items, annotators, labels))
  assert np.all((per_item == 1.0) | np.isnan(per_item))
  assert float(agreement.cohen_kappa(truth, truth)) == pytest.approx(1.0, abs=1e-6)


def test_nominal_measures_are_invariant_to_label_permutation():
  items, annotators, labels = random_annotations(5)
  permutation = np.array([2, 0, 3, 1])
  before = all_measures(items, annotators, labels)
  after = all_measures(items, annotators, permutation[labels])
  for name in ("percent", "fleiss", "alpha_nominal"):
    np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)
  # The ordered levels do depend on the order of the classes.
  assert abs(float(after["alpha_interval"]) - float(before["alpha_interval"])) > 1e-3
  np.testing.assert_allclose(
      agreement.item_agreement(items, annotators, permutation[labels]),
      agreement.item_agreement(items, annotators, labels), atol=1e-6,
  )
  labels_a, labels_b = labels[:40], labels[40:80]
  np.testing.assert_allclose(
      agreement.cohen_kappa(permutation[labels_a], permutation[labels_b]),
      agreement.cohen_kappa(labels_a, labels_b), atol=1e-6,
  )


def test_invariant_to_order_of_annotations_and_to_item_and_annotator_ids():
  items, annotators, labels = random_annotations(9)
  before = all_measures(items, annotators, labels)
  rng = np.random.default_rng(0)
  order = rng.permutation(items.shape[0])
  after = all_measures(items[order], annotators[order], labels[order])
  for name in before:
    # Counts are exact integers, so the order of the segment sum cannot matter at all.
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  item_ids = rng.permutation(int(items.max()) + 1)
  annotator_ids = rng.permutation(int(annotators.max()) + 1) + 10
  renamed = all_measures(item_ids[items], annotator_ids[annotators], labels)
  for name in before:
    np.testing.assert_allclose(renamed[name], before[name], atol=1e-6, err_msg=name)


def test_dtypes_float32_by_default_and_float64_with_x64():
  items, annotators, labels = flat_from_matrix(KRIPPENDORFF_DATA)
  assert agreement.krippendorff_alpha(items, annotators, labels).dtype == jnp.float32
  with jax.enable_x64(True):
    alpha = agreement.krippendorff_alpha(items, annotators, labels, level="ordinal")
    kappa = agreement.fleiss_kappa(items, annotators, labels)
    assert alpha.dtype == jnp.float64 and kappa.dtype == jnp.float64
    assert float(alpha) == pytest.approx(np_alpha(items, labels, "ordinal"), abs=1e-12)
    assert float(kappa) == pytest.approx(np_fleiss_gwet(items, labels, 5), abs=1e-12)


# --------------------------------------------------------------------------------------
# Errors.


def test_mismatched_lengths():
  with pytest.raises(ValueError, match=r"`items` has 3, `annotators` has 3, `labels` has 2"):
    agreement.fleiss_kappa([0, 0, 1], [0, 1, 0], [1, 0])
  with pytest.raises(ValueError, match="`labels_a` has 3 entries and `labels_b` has 2"):
    agreement.cohen_kappa([0, 1, 1], [0, 1])


def test_negative_and_non_integer_indices():
  with pytest.raises(ValueError, match=r"`labels\[2\]` = -1 is negative"):
    agreement.krippendorff_alpha([0, 0, 1, 1], [0, 1, 0, 1], [0, 1, -1, 1])
  with pytest.raises(ValueError, match=r"`items\[0\]` = -3 is negative"):
    agreement.percent_agreement([-3, 0], [0, 1], [0, 1])
  with pytest.raises(ValueError, match=r"`labels_b\[1\]` = -2 is negative"):
    agreement.cohen_kappa([0, 1], [1, -2])
  with pytest.raises(ValueError, match="`labels` must hold integer class indices, got dtype float"):
    agreement.fleiss_kappa([0, 0], [0, 1], [0.0, 1.0])
  with pytest.raises(ValueError, match="`items` must be a 1-D array"):
    agreement.fleiss_kappa([[0, 0]], [[0, 1]], [[0, 1]])


def test_single_annotator_is_rejected():
  items, labels = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
  for fn in (agreement.fleiss_kappa, agreement.krippendorff_alpha):
    with pytest.raises(ValueError, match="at least two annotators are needed"):
      fn(items, np.zeros(4, int), labels)


def test_no_pairable_items_is_rejected():
  items, annotators, labels = np.array([0, 1, 2]), np.array([0, 1, 0]), np.array([0, 1, 1])
  for fn in (agreement.percent_agreement, agreement.fleiss_kappa, agreement.krippendorff_alpha):
    with pytest.raises(ValueError, match="no item has two or more annotations"):
      fn(items, annotators, labels)


def test_fewer_than_two_classes_is_rejected():
  with pytest.raises(ValueError, match="at least two classes"):
    agreement.cohen_kappa([0, 0], [0, 0], num_classes=1)
  with pytest.raises(ValueError, match="at least two classes"):
    agreement.item_agreement([0, 0], [0, 1], [0, 0], num_classes=1)
  # Data with one class only: chance-corrected measures are 0/0, raw agreement is fine.
  items, annotators, labels = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.full(4, 2)
  for fn in (agreement.fleiss_kappa, agreement.krippendorff_alpha):
    with pytest.raises(ValueError, match="only one class occurs"):
      fn(items, annotators, labels)
  with pytest.raises(ValueError, match="only one class occurs"):
    agreement.cohen_kappa([1, 1, 1], [1, 1, 1])
  assert float(agreement.percent_agreement(items, annotators, labels)) == 1.0


def test_other_bad_arguments():
  with pytest.raises(ValueError, match="`level` must be one of 'nominal', 'ordinal', 'interval'"):
    agreement.krippendorff_alpha([0, 0], [0, 1], [0, 1], level="ratio")
  with pytest.raises(ValueError, match="`num_classes` = 2 but `labels` contains 3"):
    agreement.item_agreement([0, 0], [0, 1], [0, 3], num_classes=2)
  with pytest.raises(ValueError, match="`num_items` = 1 but `items` contains 1"):
    agreement.item_agreement([0, 1], [0, 1], [0, 1], num_items=1)
  with pytest.raises(ValueError, match="no annotations"):
    agreement.fleiss_kappa([], [], [])
  with pytest.raises(ValueError, match="no items"):
    agreement.cohen_kappa([], [])
