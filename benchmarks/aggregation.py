"""Benchmark: Dawid-Skene and Crowd-BT at a million annotations, side by side with crowd-kit.

    .venv/bin/python benchmarks/aggregation.py
    .venv/bin/python benchmarks/aggregation.py --skip_crowdkit      # ours only
    .venv/bin/python benchmarks/aggregation.py --case=stream        # streaming, 1M annotations
    .venv/bin/python benchmarks/aggregation.py --case=stream --total=20000   # a quick run
    .venv/bin/python benchmarks/aggregation.py --case=process --sizes=1000000,10000000,100000000

Three cases (`--case`):

* `in_process` (default): the two algorithms timed inside one process, described below.
* `stream`: `--total` annotations (default 1,000,000; 3 per item, `feedback.simulate_
  annotations`' default population, K = 3) arrive as JSONL files of `--batch` annotations
  (1,000) in timestamp order, written before the clock starts. Streaming: each file is fed
  to `feedback.StreamingAggregator` (read, validated, incremental Dawid-Skene, changes,
  rejects, annotators.csv and the checkpoint written); its latency is from the call to
  the committed checkpoint, and the sustained rate is total annotations over the summed
  latencies. From scratch: `feedback.dawid_skene` (default tol, 50 iterations) on all
  annotations so far, timed warm (compiled beforehand, reading excluded: both favour it) at
  `--scratch_points` batch counts spread over the stream; its rate sums the latencies
  interpolated linearly over every batch. The final `converge()` (EM from the vote shares
  over everything, what `--follow` runs when its folder is idle) is timed on its own.
  JAX's persistent compilation cache is on, as in the scripts (`--no_compile_cache`
  turns it off): the first run on a machine compiles each padded size, later runs load
  the programs.
* `process`: whole processes on both sides, imports, reading the file and writing the
  labels included, as a user pays them; each side runs in a fresh process
  (`benchmarks/_aggregation_worker.py`) at the library's DEFAULT settings. Dawid-Skene on
  simulated crowds of 3 answers per item and 2 classes at each of `--sizes` annotations
  (CSV `question,worker,answer`; above `--chunk` = 10M annotations the crowd is simulated
  in chunks, each its own population of `--annotators`); Crowd-BT against crowd-kit's `NoisyBradleyTerry` on
  `--process_comparisons` comparisons (CSV `worker,left,right,label`). Ours runs twice:
  first with an empty persistent compilation cache (a fresh folder), then again with
  the cache it filled (`rlhf_jax.cli.enable_compilation_cache`), which is what every run
  after the first on a machine sees. Peak memory is each process's maximum resident set
  (the child's VmHWM). Accuracy against the simulated truth; Spearman correlation for scores.
  The data files are written before any clock starts, in `--work_dir` (a temporary
  folder by default; 100M annotations take about 2.5 GB of CSV). `--max_rss_gb` and
  `--min_available_gb` kill a side whose memory would exhaust the machine (polled every
  0.2 s); its row then says "did not finish" with the memory it had reached.

`--json_out=PATH` writes every figure as JSON as well. Figures are recorded only in
docs/benchmarks.md, with the command.

What is measured (on simulated data, so the truth is known):

* Dawid-Skene (`rlhf_jax.feedback.dawid_skene`, K = 3 classes a / b / tie) on
  `--annotations` annotations (default 1,000,000: 100,000 items, 2,000 annotators, 10
  annotations per item from `feedback.simulate_annotations`' default population of good,
  biased, spamming, adversarial, fast and drifting annotators), exactly `--iters` EM
  iterations (50; the early stop is off). Accuracy = share of items whose label equals
  the simulated true class.
* Crowd-BT (`rlhf_jax.feedback.models.crowd_bt.crowd_bt`, with position bias) on `--comparisons`
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
import json
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


# ----------------------------------------------------------------------------------------
# --case=stream


def bench_stream(args) -> dict:
  import tempfile  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  from rlhf_jax import cli, feedback  # pylint: disable=g-import-not-at-top
  if not args.no_compile_cache:
    cli.enable_compilation_cache()
  total, batch = args.total, args.batch
  config = simulate.SimulationConfig(num_items=max(total // 3, 1), num_annotators=args.annotators,
                                     annotations_per_item=3)
  sim = simulate.simulate_annotations(jax.random.key(args.seed), config)
  order = np.argsort(np.asarray(sim.timestamps), kind="stable")
  work = Path(args.work_dir or tempfile.mkdtemp(prefix="stream_bench_"))
  inbox = work / "inbox"
  inbox.mkdir(parents=True, exist_ok=True)
  records = simulate.to_records(sim, with_text=False)
  files = []
  for b, start in enumerate(range(0, len(order), batch)):
    path = inbox / f"{b:06d}.jsonl"
    path.write_text("".join(json.dumps(records[i]) + "\n" for i in order[start:start + batch]))
    files.append(path)
  del records
  print(f"\nStreaming Dawid-Skene: {sim.num_annotations:,} annotations in {len(files)} batches "
        f"of {batch:,} ({config.num_items:,} items, {args.annotators:,} annotators, K = 3)")
  aggregator = feedback.StreamingAggregator(work / "out", feedback.StreamConfig(format="jsonl"))
  latencies, read_seconds, full_fits = [], [], 0
  for path in files:
    fitted_before = aggregator._full_fit_size  # pylint: disable=protected-access
    start = time.perf_counter()
    result = aggregator.feed(path)
    latencies.append(time.perf_counter() - start)
    read_seconds.append(result.read_seconds)
    full_fits += aggregator._full_fit_size != fitted_before  # pylint: disable=protected-access
  latencies = np.asarray(latencies)
  start = time.perf_counter()
  aggregator.converge()
  converge_s = time.perf_counter() - start
  stream_rate = sim.num_annotations / latencies.sum()

  # From scratch at a few points of the stream (warm: compiled before the clock).
  items = np.asarray(sim.items)[order]
  annotators = np.asarray(sim.annotators)[order]
  labels = np.asarray(sim.labels)[order]
  points = np.unique(np.linspace(1, len(files), min(args.scratch_points, len(files))).astype(int))
  scratch = []
  for count in points:
    n = min(count * batch, sim.num_annotations)
    arrays = (items[:n], annotators[:n], labels[:n])
    fit = lambda: aggregation.dawid_skene(*arrays, num_classes=3, num_items=config.num_items,  # noqa: E731
                                          num_annotators=args.annotators)
    jax.block_until_ready(fit())
    start = time.perf_counter()
    jax.block_until_ready(fit())
    scratch.append(time.perf_counter() - start)
  scratch = np.asarray(scratch)
  every_batch = np.interp(np.arange(1, len(files) + 1), points, scratch)
  scratch_rate = sim.num_annotations / every_batch.sum()
  out = {
      "annotations": int(sim.num_annotations), "batches": len(files), "batch": batch,
      "stream_seconds": float(latencies.sum()), "stream_rate": float(stream_rate),
      "stream_latency_median": float(np.median(latencies)),
      "stream_latency_p95": float(np.percentile(latencies, 95)),
      "stream_latency_max": float(latencies.max()), "stream_full_fits": int(full_fits),
      "stream_read_seconds": float(np.sum(read_seconds)),
      "converge_seconds": converge_s,
      "scratch_points": [int(p) for p in points], "scratch_latency": scratch.tolist(),
      "scratch_seconds": float(every_batch.sum()), "scratch_rate": float(scratch_rate),
      "scratch_latency_last": float(scratch[-1]),
  }
  print(f"{'':<34}{'annotations/s':>14}{'median s':>10}{'p95 s':>10}{'max s':>10}")
  print(f"{'streaming (feed per batch)':<34}{stream_rate:14,.0f}{np.median(latencies):10.3f}"
        f"{out['stream_latency_p95']:10.3f}{latencies.max():10.3f}")
  print(f"{'from scratch each batch':<34}{scratch_rate:14,.0f}{np.median(every_batch):10.3f}"
        f"{np.percentile(every_batch, 95):10.3f}{every_batch.max():10.3f}")
  print(f"streaming sustains {stream_rate / scratch_rate:.2f}x the rate of re-aggregating from "
        f"scratch; {full_fits} of {len(files)} batches ran a full warm EM (compilations "
        f"included); reading and validating the files took {np.sum(read_seconds):.1f} of "
        f"streaming's {latencies.sum():.1f} s (from scratch is timed without reading); "
        f"converge() over everything at the end: {converge_s:.2f} s")
  out["speedup"] = float(stream_rate / scratch_rate)
  return out


# ----------------------------------------------------------------------------------------
# --case=process


def _memory_kb(path: str, field: str) -> int | None:
  """One `kB` field of a /proc file (`VmRSS` of a process, `MemAvailable` of the machine)."""
  try:
    with open(path, encoding="ascii") as handle:
      for line in handle:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def _run_process(command: list[str], env: dict[str, str], max_rss_gb: float = 0.0,
                 min_available_gb: float = 0.0) -> dict:
  """Wall seconds and peak RSS (MB) of one child process, and its JSON line.

  A watchdog polls the child (every 0.2 s) and kills it when its resident memory passes
  `max_rss_gb` or the machine's available memory falls below `min_available_gb` (0: no
  limit), so that a side that cannot run a size fails alone instead of exhausting a
  shared machine; it then returns {"failed": reason, "seconds": ..., "peak_rss_mb": ...}.
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  watch = {"reason": None, "rss_kb": 0}

  def watchdog():
    while process.poll() is None:
      rss = _memory_kb(f"/proc/{process.pid}/status", "VmRSS") or 0
      available = _memory_kb("/proc/meminfo", "MemAvailable")
      watch["rss_kb"] = max(watch["rss_kb"], rss)
      if max_rss_gb and rss > max_rss_gb * 2**20:
        watch["reason"] = f"killed at {rss / 2**20:.1f} GB resident (limit {max_rss_gb:g} GB)"
      elif min_available_gb and available is not None and available < min_available_gb * 2**20:
        watch["reason"] = (f"killed at {rss / 2**20:.1f} GB resident: the machine had "
                           f"{available / 2**20:.1f} GB available (floor {min_available_gb:g} GB)")
      if watch["reason"]:
        process.kill()
        return
      time.sleep(0.2)

  thread = threading.Thread(target=watchdog, daemon=True)
  thread.start()
  stdout, stderr = process.communicate()
  seconds = time.perf_counter() - start
  thread.join()
  if watch["reason"]:
    return {"failed": watch["reason"], "seconds": seconds, "peak_rss_mb": watch["rss_kb"] / 1024}
  if process.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
  # Peak RSS comes from the child's own report of its high-water mark (VmHWM): rusage of a
  # child on Linux also counts the parent's resident memory at fork.
  inner = json.loads(stdout.strip().splitlines()[-1])
  return {"seconds": seconds, **inner}


def _worker_command(side: str, task: str, data, out, *options: str) -> list[str]:
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_aggregation_worker.py")
  return [sys.executable, worker, side, task, str(data), str(out), *options]


# The extra Dawid-Skene row: ours with crowd-kit's kind of stopping rule (our objective's gain),
# run after the others so its compile cache is warm.
OBJECTIVE_STOP_SIDE = "ours, objective stop (warm cache)"


def bench_process(args, crowdkit) -> dict:
  import csv  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from pyarrow import csv as pa_csv  # pylint: disable=g-import-not-at-top
  work = Path(args.work_dir or tempfile.mkdtemp(prefix="process_bench_"))
  work.mkdir(parents=True, exist_ok=True)
  cache = Path(tempfile.mkdtemp(prefix="jax_cache_", dir=work))
  env = {**os.environ, "RLHF_JAX_COMPILATION_CACHE": str(cache)}
  results: dict = {"dawid_skene": [], "crowd_bt": None}
  sides = ["ours (empty compile cache)", "ours (warm compile cache)"]
  if crowdkit is not None:
    sides.append(f"crowd-kit {crowdkit['version']}")
  header = f"{'':<34}{'wall s':>9}{'import s':>10}{'fit s':>8}{'peak MB':>9}   quality"

  def run(side_name, task, data, out):
    side = "crowdkit" if side_name.startswith("crowd-kit") else "ours"
    options = ("stop_on=objective",) if side_name == OBJECTIVE_STOP_SIDE else ()
    return _run_process(_worker_command(side, task, data, out, *options), env, args.max_rss_gb,
                        args.min_available_gb)

  def row(name, r, quality, label):
    if "failed" in r:
      return (f"{name:<34}{r['seconds']:9.2f}{'-':>10}{'-':>8}{r['peak_rss_mb']:9.0f}"
              f"   did not finish: {r['failed']}")
    return (f"{name:<34}{r['seconds']:9.2f}{r['import_s']:10.2f}{r['fit_s']:8.2f}"
            f"{r['peak_rss_mb']:9.0f}   {label} {quality:.4f}")

  for size in args.sizes:
    data = work / f"crowd_{size}.csv"
    truth, num_items, num_annotators = _write_crowd(data, size, args)
    print(f"\nDawid-Skene, whole processes: {3 * num_items:,} annotations "
          f"({num_items:,} items, {num_annotators:,} annotators, 3 per item, 2 classes)")
    print(header)
    entry = {"annotations": 3 * num_items}
    for side_name in sides + [OBJECTIVE_STOP_SIDE] * bool(args.objective_stop):
      out = work / f"labels_{size}_{len(entry)}.csv"
      r = run(side_name, "dawid_skene", data, out)
      entry[side_name] = r
      if "failed" in r:
        print(row(side_name, r, 0.0, ""))
        continue
      table = pa_csv.read_csv(out)
      predicted = np.full(num_items, -1, np.int64)
      predicted[table["question"].to_numpy()] = table["label"].to_numpy()
      r["accuracy"] = float(np.mean(predicted == truth))
      entry[side_name] = r
      print(row(side_name, r, r["accuracy"], f"{r['num_iters']} iterations, accuracy"))
    _print_ratios(entry, sides)
    results["dawid_skene"].append(entry)

  data_bt = pairwise.simulate_comparisons(
      jax.random.key(args.seed + 1), num_items=args.bt_items, num_annotators=args.bt_annotators,
      num_comparisons=args.process_comparisons)
  left, right = np.asarray(data_bt.left), np.asarray(data_bt.right)
  winner = np.where(np.asarray(data_bt.left_wins), left, right)
  data = work / f"comparisons_{args.process_comparisons}.csv"
  pa_csv.write_csv(pa.table({"worker": np.asarray(data_bt.annotators), "left": left,
                             "right": right, "label": winner}), data)
  true_scores = np.asarray(data_bt.scores)
  print(f"\nCrowd-BT, whole processes: {args.process_comparisons:,} comparisons "
        f"({args.bt_items:,} items, {args.bt_annotators:,} annotators)")
  print(header)
  entry = {"comparisons": args.process_comparisons}
  for side_name in sides:
    out = work / f"scores_{len(entry)}.csv"
    r = run(side_name, "crowd_bt", data, out)
    entry[side_name] = r
    if "failed" in r:
      print(row(side_name, r, 0.0, ""))
      continue
    scores = np.full(args.bt_items, np.nan)
    with open(out, encoding="utf-8") as handle:
      for row_ in csv.DictReader(handle):
        scores[int(row_["item"])] = float(row_["score"])
    scores = np.where(np.isnan(scores), np.nanmedian(scores), scores)  # items never compared
    r["spearman"] = _spearman(scores, true_scores)
    entry[side_name] = r
    print(row(side_name, r, r["spearman"], "Spearman"))
  _print_ratios(entry, sides)
  results["crowd_bt"] = entry
  return results


def _write_crowd(path, size: int, args) -> tuple[np.ndarray, int, int]:
  """Writes a simulated crowd of `size` annotations (3 per item, 2 classes) as CSV
  `question,worker,answer`, in chunks of at most `--chunk` annotations so that 100M fit in
  memory: each chunk is its own population of `--annotators` annotators (ids offset per
  chunk) on its own items. Returns (true labels, items, annotators)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from pyarrow import csv as pa_csv  # pylint: disable=g-import-not-at-top
  num_items = size // 3
  per_chunk = max(args.chunk // 3, 1)
  truth, writer = [], None
  for c, start in enumerate(range(0, num_items, per_chunk)):
    items = min(per_chunk, num_items - start)
    config = simulate.SimulationConfig(num_items=items, num_annotators=args.annotators,
                                       annotations_per_item=3, num_classes=2)
    sim = simulate.simulate_annotations(jax.random.fold_in(jax.random.key(args.seed), c), config)
    table = pa.table({"question": np.asarray(sim.items, np.int64) + start,
                      "worker": np.asarray(sim.annotators, np.int64) + c * args.annotators,
                      "answer": np.asarray(sim.labels)})
    if writer is None:
      writer = pa_csv.CSVWriter(str(path), table.schema)
    writer.write_table(table)
    truth.append(np.asarray(sim.true_labels))
    del sim
  writer.close()
  num_chunks = len(truth)
  return np.concatenate(truth), num_items, num_chunks * args.annotators


def _print_ratios(entry: dict, sides: list[str]) -> None:
  """crowd-kit's wall time over ours (each cache state), as printed and stored."""
  if len(sides) < 3 or any("failed" in entry[side] for side in sides):
    return
  theirs = entry[sides[2]]["seconds"]
  for side in sides[:2]:
    entry[side]["speedup"] = theirs / entry[side]["seconds"]
  print(f"speed-up over crowd-kit (whole process): {entry[sides[0]]['speedup']:.2f}x with an "
        f"empty compile cache, {entry[sides[1]]['speedup']:.2f}x with a warm one")
  extra = entry.get(OBJECTIVE_STOP_SIDE)
  if extra is not None and "failed" not in extra:
    extra["speedup"] = theirs / extra["seconds"]
    print(f"with crowd-kit's kind of stopping rule (our objective's gain < tol), warm cache: {extra['speedup']:.2f}x")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", choices=("in_process", "stream", "process"), default="in_process")
  parser.add_argument("--total", type=int, default=1_000_000, help="--case=stream: annotations.")
  parser.add_argument("--batch", type=int, default=1_000, help="--case=stream: per batch.")
  parser.add_argument("--scratch_points", type=int, default=8,
                      help="--case=stream: batch counts at which from-scratch is timed.")
  parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                      default=[1_000_000], help="--case=process: annotation counts.")
  parser.add_argument("--chunk", type=int, default=10_000_000,
                      help="--case=process: annotations simulated at a time (one population each).")
  parser.add_argument("--process_comparisons", type=int, default=50_000,
                      help="--case=process: Crowd-BT comparisons.")
  parser.add_argument("--no_compile_cache", action="store_true",
                      help="--case=stream: without JAX's persistent compilation cache.")
  parser.add_argument("--objective_stop", action=argparse.BooleanOptionalAction, default=True,
                      help="--case=process: also run our Dawid-Skene with crowd-kit's stopping rule "
                           "(stop_on=objective), one more row.")
  parser.add_argument("--max_rss_gb", type=float, default=0.0,
                      help="--case=process: kill a side above this resident memory (0: no limit).")
  parser.add_argument("--min_available_gb", type=float, default=0.0,
                      help="--case=process: kill a side when the machine has less available (0: off).")
  parser.add_argument("--work_dir", default="", help="Data files (default: a temporary folder).")
  parser.add_argument("--json_out", default="", help="Also write the figures as JSON here.")
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
  args = parser.parse_args(argv)
  if args.case != "in_process":
    crowdkit = None if args.skip_crowdkit or args.case == "stream" else _crowdkit()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
          f"load average {load}" + (f"; crowd-kit {crowdkit['version']}" if crowdkit else ""))
    results = bench_stream(args) if args.case == "stream" else bench_process(args, crowdkit)
    if args.json_out:
      with open(args.json_out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    return
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
