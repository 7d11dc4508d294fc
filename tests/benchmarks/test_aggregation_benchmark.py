"""`benchmarks/aggregation.py --case=stream|process` at tiny sizes: the printed ratios are
the arithmetic of the measured times, and the whole-process runs fill the compile cache."""

import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import aggregation  # noqa: E402


def test_stream_case_rates_and_ratio(tmp_path, capsys):
  out = tmp_path / "stream.json"
  aggregation.main(["--case=stream", "--total=3000", "--batch=500", "--annotators=30",
                    "--scratch_points=3", "--no_compile_cache", f"--work_dir={tmp_path}",
                    f"--json_out={out}"])
  printed = capsys.readouterr().out
  r = json.loads(out.read_text())
  assert (r["annotations"], r["batches"]) == (3000, 6)
  assert r["stream_rate"] == pytest.approx(3000 / r["stream_seconds"])
  # From scratch: latencies interpolated over all 6 batches between the timed points.
  assert r["scratch_points"] == [1, 3, 6]
  assert min(r["scratch_latency"]) * 6 <= r["scratch_seconds"] <= max(r["scratch_latency"]) * 6
  assert r["scratch_rate"] == pytest.approx(3000 / r["scratch_seconds"])
  assert r["speedup"] == pytest.approx(r["stream_rate"] / r["scratch_rate"])
  assert f"streaming sustains {r['speedup']:.2f}x" in printed
  assert f"{r['stream_rate']:14,.0f}" in printed
  assert r["stream_latency_median"] <= r["stream_latency_p95"] <= r["stream_latency_max"]
  assert 0 < r["stream_read_seconds"] < r["stream_seconds"]


@pytest.mark.slow
def test_process_case_ratios_against_crowdkit(tmp_path, capsys):
  pytest.importorskip("crowdkit")
  out = tmp_path / "process.json"
  aggregation.main(["--case=process", "--sizes=3000", "--annotators=30",
                    "--process_comparisons=2000", "--bt_items=100", "--bt_annotators=20",
                    f"--work_dir={tmp_path}", f"--json_out={out}"])
  printed = capsys.readouterr().out
  r = json.loads(out.read_text())
  for entry in (r["dawid_skene"][0], r["crowd_bt"]):
    sides = [k for k in entry if k.startswith(("ours", "crowd-kit"))]
    theirs = entry[sides[2]]["seconds"]
    for side in sides[:2]:
      assert entry[side]["speedup"] == pytest.approx(theirs / entry[side]["seconds"])
    assert (f"{entry[sides[0]]['speedup']:.2f}x with an empty compile cache, "
            f"{entry[sides[1]]['speedup']:.2f}x with a warm one") in printed
  assert r["dawid_skene"][0]["ours (warm compile cache)"]["accuracy"] > 0.6
  # The extra row: ours with crowd-kit's stopping rule, no more iterations than our default.
  ds = r["dawid_skene"][0]
  extra, crowdkit = ds[aggregation.OBJECTIVE_STOP_SIDE], next(v for k, v in ds.items() if k.startswith("crowd-kit"))
  assert extra["speedup"] == pytest.approx(crowdkit["seconds"] / extra["seconds"])
  assert (f"with crowd-kit's kind of stopping rule (our objective's gain < tol), warm cache: "
          f"{extra['speedup']:.2f}x") in printed
  assert 1 <= extra["num_iters"] <= ds["ours (warm compile cache)"]["num_iters"]
  assert f"{extra['num_iters']} iterations, accuracy" in printed


@pytest.mark.slow  # four fresh processes, each importing JAX
def test_process_case_ours_fills_the_compile_cache(tmp_path, capsys):
  out = tmp_path / "process.json"
  aggregation.main(["--case=process", "--skip_crowdkit", "--sizes=3000", "--annotators=30",
                    "--process_comparisons=2000", "--bt_items=100", "--bt_annotators=20",
                    f"--work_dir={tmp_path}", f"--json_out={out}"])
  r = json.loads(out.read_text())
  entry = r["dawid_skene"][0]
  cold, warm = entry["ours (empty compile cache)"], entry["ours (warm compile cache)"]
  assert cold["accuracy"] == warm["accuracy"] > 0.6  # same labels from cached programs
  caches = list(tmp_path.glob("jax_cache_*"))
  assert len(caches) == 1 and any(caches[0].iterdir())  # the first run wrote programs
  assert "speed-up" not in capsys.readouterr().out  # no ratio without crowd-kit


def test_run_process_kills_a_side_above_its_memory_limit():
  # A child that holds 400 MB for 30 s, against a 0.1 GB limit: killed, not awaited.
  hog = [sys.executable, "-c", "import time; x = bytearray(400 * 2**20); time.sleep(30)"]
  start = time.perf_counter()
  r = aggregation._run_process(hog, {}, max_rss_gb=0.1)  # pylint: disable=protected-access
  assert time.perf_counter() - start < 20
  assert r["failed"].endswith("resident (limit 0.1 GB)")
  assert r["peak_rss_mb"] > 0.1 * 1024
  # Within the limit the child's own JSON line is returned.
  quiet = [sys.executable, "-c", "print('{\"fit_s\": 0.5}')"]
  assert aggregation._run_process(quiet, {}, max_rss_gb=1.0)["fit_s"] == 0.5  # pylint: disable=protected-access
