"""Drift detectors on simulated annotator streams with a known change point.

  .venv/bin/python experiments/drift_detection.py

1,000 streams of 1,000 annotations whose rate of correct (or agreeing) answers drops at
annotation 500, and as many streams without a change; prints the median detection delay,
false alarms per 1,000 annotations, detection rate and the estimated drop for the
Bernoulli CUSUM (golden-item correctness) and Page-Hinkley (agreement with the consensus).
"""

import jax

from rlhf_jax import feedback

SETTINGS = (
    ("cusum", "p0=0.9, p1=0.6, h=5", {"p0": 0.9, "p1": 0.6, "threshold": 5.0}),
    ("page_hinkley", "delta=0.05, lambda=5, min 30",
     {"delta": 0.05, "threshold": 5.0, "min_samples": 30}),
)


def main():
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


if __name__ == "__main__":
  main()
