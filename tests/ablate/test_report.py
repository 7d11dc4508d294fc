"""Tables, runtime, plots and the kept conclusion, on hand-made result rows."""
import numpy as np
import pytest

from rlhf_jax.ablate import report
from rlhf_jax.ablate.runner import Experiment


def _experiment(**changes):
  config = {"name": "t", "question": "q", "function": "m:f", "base": {"a": 0, "b": "u"},
            "grid": [("a", [1, 2]), ("b", ["u", "v"])], "baseline": {"b": "u"}, "metrics": ["m"],
            "plots": []}
  config.update(changes)
  return Experiment.from_config(config)


def _row(a, b, seed, value=None, error=None, seconds=3.0, seeds_in_call=3):
  return {"cell": f'a={a},b="{b}"', "overrides": {"a": a, "b": b}, "seed": seed,
          "metrics": {} if value is None else {"m": value}, "error": error, "cell_seconds": seconds,
          "seeds_in_call": seeds_in_call}


def test_table_with_failed_cell_and_partial_baseline():
  experiment = _experiment()
  cells = experiment.cell_overrides()
  rows = ([_row(1, "u", s, v) for s, v in enumerate([0.5, 0.6, 0.7])]
          + [_row(1, "v", s, v) for s, v in enumerate([0.6, 0.8, 0.7])]
          + [_row(2, "u", s, v) for s, v in enumerate([0.1, 0.2, 0.3])]
          + [_row(2, "v", s, error="ValueError: nan loss | step 3") for s in range(3)])
  table = report.results_table(experiment, cells, rows)
  means, paired = table.split("Paired differences")
  # 0.6, 0.8, 0.7: mean 0.7, s = 0.1, t_{0.975,2} = 4.303 -> 0.248.
  assert "| 1 | v | 3 | 0.700 ± 0.248 |" in means
  # The failure is shown (with the table's separator character escaped), not dropped.
  assert "| 2 | v | 0 | FAILED (3/3 seeds): ValueError: nan loss / step 3 |" in means
  # a=1: differences 0.1, 0.2, 0.0 -> 0.1 ± 4.303 * 0.1 / sqrt(3) = 0.248; a=2 has no pairs.
  assert "| 1 | v | 3 | 0.100 ± 0.248 |" in paired
  assert "| 2 | v | 0 | - |" in paired


def test_runtime_shares_each_call_among_its_seeds():
  rows = [_row(1, "u", s, 0.5, seconds=6.0, seeds_in_call=3) for s in range(3)] + [
      _row(1, "u", 3, 0.5, seconds=2.0, seeds_in_call=1)]
  assert report.runtime_seconds(rows) == pytest.approx(8.0)


def test_vectorized_cells_need_every_seed_vmapped():
  rows = [{"cell": "a", "seeds_vectorized": True}, {"cell": "a", "seeds_vectorized": True},
          {"cell": "b", "seeds_vectorized": True}, {"cell": "b", "seeds_vectorized": False},
          {"cell": "c", "seeds_vectorized": False}, {"cell": "d"}]
  assert report.vectorized_cells(rows) == (1, 3)  # a only; d is a plain cell function
  assert report.vectorized_cells([{"cell": "d"}]) == (0, 0)


def test_plots_and_kept_conclusion(tmp_path):
  experiment = _experiment(plots=[
      {"metric": "m", "x": "a", "series": "b", "file": "m.png"},
      {"metrics": ["m", "m"], "x_values": [1, 2], "series": "b", "metric": "m", "x": "a", "file": "several.png"}])
  rows = [_row(a, b, s, float(np.sin(a + s))) for a in (1, 2) for b in ("u", "v") for s in range(3)]
  written = report.write_plots(experiment, experiment.cell_overrides(), rows, tmp_path)
  assert [p.name for p in written] == ["m.png", "several.png"]
  assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
  readme = report.write_readme(experiment, tmp_path, table="TABLE", rows=rows, num_seeds=3, command="cmd")
  text = readme.read_text()
  assert "TABLE" in text and "    cmd" in text and "Not written yet" in text
  readme.write_text(text.replace("_Not written yet: run the experiment, read the table, then write what it shows "
                                 "here._", "It holds."))
  report.write_readme(experiment, tmp_path, table="NEW", rows=rows, num_seeds=3, command="cmd")
  assert "It holds." in readme.read_text() and "NEW" in readme.read_text()
