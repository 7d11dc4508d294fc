"""One side of `benchmarks/aggregation.py --case=process`: a whole process, as a user runs it.

    python benchmarks/_aggregation_worker.py {ours,crowdkit} {dawid_skene,crowd_bt} DATA OUT [stop_on=objective]

Imports, reading DATA, fitting at the library's default settings and writing OUT are all
inside the process the parent times; only the standard library is imported before the
side's own imports, so neither side pays for the other's. Prints one JSON line with the
in-process split (import, read, fit, write seconds). `stop_on=objective` runs our
Dawid-Skene with crowd-kit's kind of stopping rule (`feedback.dawid_skene(stop_on=...)`) instead
of our default.

DATA for dawid_skene: CSV `question,worker,answer` (the shared crowd data format); OUT:
`question,label`. DATA for crowd_bt: CSV `worker,left,right,label` (label = the winner,
crowd-kit's pairwise format); OUT: `item,score`.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _ours(task: str, data: str, out: str, stop_on: str = "posteriors") -> dict:
  start = time.perf_counter()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from rlhf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.enable_compilation_cache()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from pyarrow import csv as pa_csv  # pylint: disable=g-import-not-at-top
  from rlhf_jax import feedback  # pylint: disable=g-import-not-at-top
  timings = {"import_s": time.perf_counter() - start}
  start = time.perf_counter()
  if task == "dawid_skene":
    enc = feedback.read_annotations(data, format="crowd_csv").annotations
    timings["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result = feedback.dawid_skene(enc.items, enc.annotators, enc.labels,
                                  num_classes=enc.num_classes, stop_on=stop_on)
    labels = np.asarray(result.labels)
    timings["fit_s"] = time.perf_counter() - start
    timings["num_iters"] = int(result.extras["num_iters"])
    start = time.perf_counter()
    names = np.asarray(enc.class_names)[labels]
    table = pa.table({"question": list(enc.item_ids), "label": names})
  else:
    frame = pa_csv.read_csv(data)
    left = frame["left"].to_numpy().astype(np.int32)
    right = frame["right"].to_numpy().astype(np.int32)
    workers = frame["worker"].to_numpy().astype(np.int32)
    left_wins = frame["label"].to_numpy() == left
    timings["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    fit = feedback.crowd_bt(left, right, workers, left_wins,
                            num_items=int(max(left.max(), right.max())) + 1,
                            num_annotators=int(workers.max()) + 1)
    scores = np.asarray(fit.scores)
    timings["fit_s"] = time.perf_counter() - start
    timings["num_iters"] = int(fit.num_iters)
    start = time.perf_counter()
    table = pa.table({"item": np.arange(scores.shape[0]), "score": scores})
  pa_csv.write_csv(table, out)
  timings["write_s"] = time.perf_counter() - start
  return timings


def _crowdkit(task: str, data: str, out: str) -> dict:
  start = time.perf_counter()
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from crowdkit.aggregation import DawidSkene, NoisyBradleyTerry  # pylint: disable=g-import-not-at-top
  timings = {"import_s": time.perf_counter() - start}
  start = time.perf_counter()
  frame = pd.read_csv(data)
  timings["read_s"] = time.perf_counter() - start
  start = time.perf_counter()
  if task == "dawid_skene":
    frame = frame.rename(columns={"question": "task", "answer": "label"})
    model = DawidSkene()  # defaults: n_iter=100, tol=1e-5
    result = model.fit_predict(frame)
    timings["fit_s"] = time.perf_counter() - start
    timings["num_iters"] = len(model.loss_history_)
    start = time.perf_counter()
    result.rename("label").rename_axis("question").to_csv(out)
  else:
    result = NoisyBradleyTerry().fit_predict(frame)
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result.rename("score").rename_axis("item").to_csv(out)
  timings["write_s"] = time.perf_counter() - start
  return timings


def main() -> None:
  side, task, data, out = sys.argv[1:5]
  options = dict(arg.split("=", 1) for arg in sys.argv[5:])
  timings = _ours(task, data, out, **options) if side == "ours" else _crowdkit(task, data, out)
  timings["peak_rss_mb"] = _peak_rss_mb()
  print(json.dumps(timings))


def _peak_rss_mb() -> float:
  """This process's resident high-water mark. VmHWM belongs to the process's own address
  space (new at exec); ru_maxrss would also count the parent's RSS at fork on Linux."""
  try:
    with open("/proc/self/status", encoding="ascii") as handle:
      for line in handle:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
  main()
