"""Benchmark: Dawid-Skene and Crowd-BT at a million annotations, side by side with crowd-kit.

    .venv/bin/python benchmarks/aggregation.py
    .venv/bin/python benchmarks/aggregation.py --skip_crowdkit      # ours only

What is measured (on simulated data, so the truth is known):

* Dawid-Skene (`rlhf_jax.feedback.dawid_skene`, K = 3 classes a / b / tie) on
  `--annotations` annotations (default 1,000,000: 100,000 items, 2,000 annotators, 10
  annotations per item from `feedback.simulate_annotations`' default population of good,
  biased, spamming, adversarial, fast and drifting annotators), exactly `--iters` EM
  iterations (50; the early stop is off). Accuracy = share of items whose label equals
  the simulated true class.
* Crowd-BT (`rlhf_jax.feedback.pairwise.crowd_bt`, with position bias) on `--comparisons`
  comparisons (default 1,000,000 among 10,000 items by 2,000 annotators, from
  `pairwise.simulate_comparisons`: 10% spammers, 5% adversaries), run to its convergence
  test (at most 200 L-BFGS steps). Quality = Spearman rank correlation of the fitted
  scores with the simulated ones.

"first call" is the wall time of the first call in this process with these shapes, so it
includes tracing and XLA compilation and the host-to-device copy of the inputs; "warm" is
the median of `--repeats` further calls. crowd-kit (installed as the `bench` extra) runs on
the same data, as pandas DataFrames built before the clock starts: `DawidSkene(n_iter=50,
tol=0)` (its stopping rule off, so both run 50 iterations) at the full size, since it
finishes a million annotations in seconds, and `NoisyBradleyTerry()` (defaults: at most
100 L-BFGS-B iterations) on `--crowdkit_comparisons` comparisons (default 100,000), since
its gradient is a Python loop over comparisons. Our Crowd-BT is then rerun at that size on
the same comparisons for the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

# Allow `python benchmarks/aggregation.py` from the repository root without installation.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlhf_jax.feedback import simulate  # noqa: E402
from rlhf_jax.feedback.models import crowd_bt as pairwise, dawid_skene as aggregation  # noqa: E402


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.spearmanr(a, b).statistic)


def _timed(fn, repeats: int) -> tuple[float, float, object]:
  """(first-call seconds, median warm seconds, result of the first call)."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  warm = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    warm.append(time.perf_counter() - start)
  return first, statistics.median(warm) if warm else float("nan"), result


def _crowdkit():
  try:
    import crowdkit  # pylint: disable=g-import-not-at-top
    from crowdkit.aggregation import DawidSkene, NoisyBradleyTerry  # pylint: disable=g-import-not-at-top
    import pandas as pd  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    print(f"crowd-kit not importable ({error}); install the bench extra: pip install -e '.[bench]'")
    return None
  version = getattr(crowdkit, "__version__", None)
  if version is None:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    version = metadata.version("crowd-kit")
  return {"DawidSkene": DawidSkene, "NoisyBradleyTerry": NoisyBradleyTerry, "pd": pd,
          "version": version}


def _row(name: str, first: float, warm: float | None, quality: float, label: str) -> str:
  warm_text = f"{warm:10.3f}" if warm is not None and np.isfinite(warm) else f"{'-':>10}"
  return f"{name:<34}{first:12.3f}{warm_text}   {label} {quality:.4f}"


def bench_dawid_skene(args, crowdkit) -> None:
  per_item = args.annotations // args.items
  config = simulate.SimulationConfig(
      num_items=args.items, num_annotators=args.annotators, annotations_per_item=per_item)
  sim = simulate.simulate_annotations(jax.random.key(args.seed), config)
  items, annotators, labels = sim.items, sim.annotators, sim.labels
  print(f"\nDawid-Skene: {sim.num_annotations:,} annotations ({args.items:,} items, "
        f"{args.annotators:,} annotators, {per_item} per item, K = 3), {args.iters} EM iterations")
  print(f"{'':<34}{'first call s':>12}{'warm s':>10}   quality")

  def ours():
    return aggregation.dawid_skene(
        items, annotators, labels, num_classes=3, num_items=args.items,
        num_annotators=args.annotators, num_iters=args.iters, tol=None)

  first, warm, result = _timed(ours, args.repeats)
  accuracy = float(np.mean(np.asarray(result.labels) == sim.true_labels))
  print(_row("rlhf_jax dawid_skene", first, warm, accuracy, "accuracy"))
  assert int(result.extras["num_iters"]) == args.iters
  if crowdkit is None:
    return
  pd = crowdkit["pd"]
  frame = pd.DataFrame({"task": items, "worker": annotators, "label": labels})
  start = time.perf_counter()
  predicted = crowdkit["DawidSkene"](n_iter=args.iters, tol=0.0).fit_predict(frame)
  seconds = time.perf_counter() - start
  predicted = predicted.reindex(np.arange(args.items)).to_numpy()
  ck_accuracy = float(np.mean(predicted == sim.true_labels))
  print(_row(f"crowd-kit {crowdkit['version']} DawidSkene", seconds, None, ck_accuracy,
             "accuracy"))
  agree = float(np.mean(predicted == np.asarray(result.labels)))
  print(f"speed-up over crowd-kit: {seconds / first:.1f}x first call, {seconds / warm:.1f}x warm; "
        f"accuracy {accuracy:.4f} vs {ck_accuracy:.4f}; labels identical on {agree:.2%} of items")


def bench_crowd_bt(args, crowdkit) -> None:
  data = pairwise.simulate_comparisons(
      jax.random.key(args.seed + 1), num_items=args.bt_items, num_annotators=args.bt_annotators,
      num_comparisons=args.comparisons)
  arrays = [np.asarray(x) for x in (data.left, data.right, data.annotators, data.left_wins)]
  true_scores = np.asarray(data.scores)
  print(f"\nCrowd-BT: {args.comparisons:,} comparisons ({args.bt_items:,} items, "
        f"{args.bt_annotators:,} annotators; 10% spammers, 5% adversaries, position bias)")
  print(f"{'':<34}{'first call s':>12}{'warm s':>10}   quality")

  def ours(left, right, annotators, left_wins):
    return lambda: pairwise.crowd_bt(left, right, annotators, left_wins,
                                     num_items=args.bt_items, num_annotators=args.bt_annotators)

  first, warm, fit = _timed(ours(*arrays), args.repeats)
  rho = _spearman(np.asarray(fit.scores), true_scores)
  print(_row(f"rlhf_jax crowd_bt ({int(fit.num_iters)} steps)", first, warm, rho, "Spearman"))
  if crowdkit is None:
    return

  size = min(args.crowdkit_comparisons, args.comparisons)
  small = [x[:size] for x in arrays]
  print(f"\nCrowd-BT against crowd-kit on the first {size:,} of these comparisons")
  print(f"{'':<34}{'first call s':>12}{'warm s':>10}   quality")
  jax.clear_caches()  # a fresh compilation at the new size, as a new process would see
  first, warm, fit = _timed(ours(*small), args.repeats)
  rho = _spearman(np.asarray(fit.scores), true_scores)
  print(_row(f"rlhf_jax crowd_bt ({int(fit.num_iters)} steps)", first, warm, rho, "Spearman"))
  pd = crowdkit["pd"]
  left, right, annotators, left_wins = small
  frame = pd.DataFrame({"worker": annotators, "left": left, "right": right,
                        "label": np.where(left_wins, left, right)})
  start = time.perf_counter()
  scores = crowdkit["NoisyBradleyTerry"]().fit_predict(frame)
  seconds = time.perf_counter() - start
  # Items never compared get no crowd-kit score; rank them at its median.
  scores = scores.reindex(np.arange(args.bt_items)).fillna(scores.median()).to_numpy()
  ck_rho = _spearman(scores, true_scores)
  print(_row(f"crowd-kit {crowdkit['version']} NoisyBradleyTerry", seconds, None, ck_rho,
             "Spearman"))
  print(f"speed-up over crowd-kit: {seconds / first:.1f}x first call, {seconds / warm:.1f}x warm; "
        f"Spearman {rho:.4f} vs {ck_rho:.4f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--annotations", type=int, default=1_000_000)
  parser.add_argument("--items", type=int, default=100_000)
  parser.add_argument("--annotators", type=int, default=2_000)
  parser.add_argument("--iters", type=int, default=50)
  parser.add_argument("--comparisons", type=int, default=1_000_000)
  parser.add_argument("--bt_items", type=int, default=10_000)
  parser.add_argument("--bt_annotators", type=int, default=2_000)
  parser.add_argument("--crowdkit_comparisons", type=int, default=100_000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip_crowdkit", action="store_true")
  parser.add_argument("--only", choices=("dawid_skene", "crowd_bt"), default=None)
  args = parser.parse_args()
  if args.annotations % args.items:
    parser.error("--annotations must be a multiple of --items (annotations per item).")
  crowdkit = None if args.skip_crowdkit else _crowdkit()
  # Other jobs on the machine slow both libraries (compilation most): show the load.
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"load average {load}" + (f"; crowd-kit {crowdkit['version']}" if crowdkit else ""))
  if args.only in (None, "dawid_skene"):
    bench_dawid_skene(args, crowdkit)
  if args.only in (None, "crowd_bt"):
    bench_crowd_bt(args, crowdkit)


if __name__ == "__main__":
  main()
