"""Drift detectors on simulated annotator streams with a known change point.

  .venv/bin/python experiments/drift_detection.py [--num_seeds=20]

1. The level monitors: 1,000 streams of 1,000 annotations whose rate of correct (or
   agreeing) answers drops at annotation 500, and as many streams without a change;
   median detection delay, false alarms per 1,000 annotations, detection rate and the
   estimated drop for the Bernoulli CUSUM (golden-item correctness) and Page-Hinkley
   (agreement with the consensus).
2. The change-point test with its verdicts (`drift.change_point_test`,
   `drift.classify_drift`, the defaults of configs/aggregate.py): streams of 70, 150
   and 300 annotations whose agreement drops from 0.8 to 0.45 halfway, and streams that
   stay at 0.8 (always good) or at 0.45 (always bad): detection rate, delay, and how
   often an always-good or always-bad stream is called drift.
3. The same test on the annotator population of `make run` (configs/pipeline.py: 600
   comparisons, 40 annotators, about 75 annotations each), one population per seed,
   checked against Dawid-Skene labels as `feedback.pipeline` does: the verdicts per
   true annotator type, and the delay of the drifting annotators found.
"""

import collections
import os
import sys
from pathlib import Path

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from rlhf_jax import cli, feedback  # pylint: disable=g-import-not-at-top,wrong-import-position
from rlhf_jax.feedback.metrics import drift  # pylint: disable=g-import-not-at-top,wrong-import-position

_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 20, "make-run populations in part 3.")

SETTINGS = (
    ("cusum", "p0=0.9, p1=0.6, h=5", {"p0": 0.9, "p1": 0.6, "threshold": 5.0}),
    ("page_hinkley", "delta=0.05, lambda=5, min 30",
     {"delta": 0.05, "threshold": 5.0, "min_samples": 30}),
)
REPO = Path(__file__).resolve().parents[1]


def level_monitors():
  print("| detector | settings | rate before -> after | median delay | false alarms / 1,000 "
        "| detection rate | estimated drop |")
  print("|---|---|---|---|---|---|---|")
  for seed, (method, label, params) in enumerate(SETTINGS):
    for rate_after in (0.6, 0.75):
      result = feedback.evaluate_detector(
          jax.random.key(seed), method=method, num_streams=1000, stream_length=1000,
          change_index=500, rate_before=0.9, rate_after=rate_after, **params)
      print(f"| {method} | {label} | 0.9 -> {rate_after} | {result.median_delay:.0f} "
            f"| {result.false_alarms_per_1000:.2f} | {result.detection_rate:.3f} "
            f"| {result.median_magnitude:.3f} (true {result.true_magnitude:.2f}) |")


def _test_settings() -> dict:
  d = cli.load_config_file(REPO / "configs" / "aggregate.py").drift
  return dict(alpha=float(d.alpha), min_segment=int(d.min_segment),
              num_permutations=int(d.num_permutations)), float(d.min_agreement)


def change_point_streams():
  settings, bar = _test_settings()
  print("| annotations per stream | detection rate (0.8 -> 0.45) | median delay | "
        "always good called drift | always bad called drift | always bad called always bad |")
  print("|---|---|---|---|---|---|")
  for seed, length in enumerate((70, 150, 300)):
    e = feedback.evaluate_change_point_test(
        jax.random.key(100 + seed), num_streams=1000, stream_length=length,
        change_index=length // 2, rate_before=0.8, rate_after=0.45, min_rate=bar, **settings)
    print(f"| {length} | {e.detection_rate:.3f} | {e.median_delay:.0f} | "
          f"{e.false_alarm_rate_good:.3f} | {e.false_alarm_rate_bad:.3f} | {e.always_bad_rate:.3f} |")


def make_run_populations(num_seeds: int):
  settings, bar = _test_settings()
  config = cli.load_config_file(REPO / "configs" / "pipeline.py")
  verdicts = collections.defaultdict(collections.Counter)
  delays, found_both = [], 0
  for seed in range(num_seeds):
    sim = feedback.simulate_annotations(jax.random.key(seed), feedback.SimulationConfig(
        num_items=config.task.num_pairs, **config.annotators.to_dict()))
    k = config.annotators.num_classes
    labels = np.asarray(feedback.dawid_skene(
        sim.items, sim.annotators, sim.labels, num_classes=k, num_items=sim.config.num_items,
        num_annotators=sim.config.num_annotators).labels)
    reference = np.where(sim.is_golden, sim.golden_labels, labels[sim.items])
    agree = (sim.labels == reference).astype(np.float32)
    result, streams = drift.detect_change_points(
        sim.annotators, agree, sim.timestamps, num_annotators=sim.config.num_annotators,
        key=jax.random.key(seed), **settings)
    status = drift.classify_drift(result, min_rate=bar)
    found = 0
    for a, name in enumerate(sim.type_names()):
      verdicts[name][drift.DRIFT_STATUSES[status[a]]] += 1
      if name == "drifting" and status[a] == drift.STATUS_DRIFT:
        found += 1
        true_index = int(np.sum(streams.mask[a] & (streams.times[a] < sim.change_times[a])))
        delays.append(int(result.alarm_index[a]) - true_index)
    found_both += found == 2
  print("| true type | annotators | drift | always bad | ok |")
  print("|---|---|---|---|---|")
  for name in feedback.ANNOTATOR_TYPES:
    counts = verdicts[name]
    total = sum(counts.values())
    if total:
      print(f"| {name} | {total} | {counts['drift'] / total:.2f} | "
            f"{counts['always_bad'] / total:.2f} | {counts['ok'] / total:.2f} |")
  print(f"\nPopulations with both drifting annotators found: {found_both} of {num_seeds}; "
        f"delay of the {len(delays)} found: median {np.median(delays):.0f} annotations "
        f"(quartiles {np.percentile(delays, 25):.0f}-{np.percentile(delays, 75):.0f}).")


def main(argv):
  del argv
  level_monitors()
  print()
  change_point_streams()
  print()
  make_run_populations(_NUM_SEEDS.value)


if __name__ == "__main__":
  app.run(main)
