"""The ablation runner: grid expansion, resume without rerun, failures reported, README."""
import json

import ml_collections
import pytest

from rlhf_jax import ablate
from rlhf_jax.ablate import report, runner


def _config(**changes):
  config = ml_collections.ConfigDict()
  config.name = "toy"
  config.title = "Toy"
  config.question = "Does x move y?"
  config.function = "toy_module:toy"
  config.base = ml_collections.ConfigDict({"x": 0, "mode": "add", "nested": {"scale": 1.0}})
  config.grid = [("x", [1, 2]), ("mode", ["add", "mul"])]
  config.cells = [{"x": 0}]
  config.baseline = {"x": 0}
  config.seeds = 3
  config.metrics = ["y"]
  config.plots = [{"metric": "y", "x": "x", "series": "mode", "file": "y.png"}]
  for key, value in changes.items():
    config[key] = value
  return config


class Counter:
  """A cell function that counts its calls; y = x + seed (add) or x * (seed + 1) (mul)."""

  def __init__(self, fail_on=None):
    self.calls = []
    self.fail_on = fail_on

  def __call__(self, params, seeds):
    self.calls.append((params["x"], params["mode"], tuple(seeds)))
    if self.fail_on is not None and (params["x"], params["mode"]) == self.fail_on:
      raise RuntimeError("diverged at step 7")
    if params["mode"] == "add":
      return [{"y": params["x"] + s, "z": 1.0} for s in seeds]
    return [{"y": params["x"] * (s + 1), "z": 2.0} for s in seeds]


@pytest.fixture
def counter(monkeypatch):
  function = Counter()
  monkeypatch.setattr(runner, "_resolve_function", lambda name: function)
  return function


def test_expand_grid_product_order_and_extra_cells():
  cells = ablate.expand_grid({"a": [1, 2], "b": ["u", "v", "w"]}, [{"a": 0}, {"a": 1, "b": "u"}])
  assert cells == [{"a": 1, "b": "u"}, {"a": 1, "b": "v"}, {"a": 1, "b": "w"},
                   {"a": 2, "b": "u"}, {"a": 2, "b": "v"}, {"a": 2, "b": "w"}, {"a": 0}]
  assert ablate.cell_id({"a": 1, "b": "u"}) == 'a=1,b="u"'


def test_resolve_params_dotted_and_unknown_keys():
  base = {"x": 0, "nested": {"scale": 1.0}}
  assert ablate.resolve_params(base, {"nested.scale": 2.5}) == {"x": 0, "nested": {"scale": 2.5}}
  assert base["nested"]["scale"] == 1.0  # not mutated
  with pytest.raises(KeyError, match="nested.sclae"):
    ablate.resolve_params(base, {"nested.sclae": 2.5})


def test_run_writes_results_and_resumes_without_rerun(tmp_path, counter):
  summary = ablate.run(_config(), tmp_path, progress=False)
  assert summary.ran == 5 and summary.skipped == 0 and not summary.failed
  assert len(counter.calls) == 5 and all(seeds == (0, 1, 2) for _, _, seeds in counter.calls)
  rows = ablate.load_results(tmp_path / "results.jsonl")
  assert len(rows) == 15  # 5 cells x 3 seeds, one line each
  row = next(r for r in rows if r["cell"] == 'x=2,mode="mul"' and r["seed"] == 2)
  assert row["overrides"] == {"x": 2, "mode": "mul"} and row["metrics"] == {"y": 6.0, "z": 2.0}

  # A second run does nothing; more seeds run only the missing ones.
  again = ablate.run(_config(), tmp_path, progress=False)
  assert again.ran == 0 and again.skipped == 5 and len(counter.calls) == 5
  more = ablate.run(_config(), tmp_path, seeds=4, progress=False)
  assert more.ran == 5 and all(seeds == (3,) for _, _, seeds in counter.calls[5:])
  assert len(ablate.load_results(tmp_path / "results.jsonl")) == 20

  # A changed base config invalidates the earlier lines.
  changed = _config(base=ml_collections.ConfigDict({"x": 0, "mode": "add", "nested": {"scale": 2.0}}))
  fresh = ablate.run(changed, tmp_path, progress=False)
  assert fresh.ran == 5 and len(ablate.load_results(tmp_path / "results.jsonl")) == 15


def test_table_means_intervals_and_paired_differences(tmp_path, counter):
  summary = ablate.run(_config(), tmp_path, progress=False)
  lines = summary.table.splitlines()
  # Cell x=2, add: y = 2, 3, 4 -> 3.000 ± 4.303 * 1 / sqrt(3) = 2.484.
  assert "| 2 | add | 3 | 3.000 ± 2.484 |" in lines
  # Cell x=0 (baseline): y = 0, 1, 2. Paired difference of x=1, mul (y = 1, 2, 3): 1, 1, 1.
  assert "| 1 | mul | 3 | 1.000 ± 0.000 * |" in lines
  readme = (tmp_path / "README.md").read_text()
  assert "Does x move y?" in readme and "3.000 ± 2.484" in readme and "![y](y.png)" in readme
  assert (tmp_path / "y.png").stat().st_size > 1000


def test_failing_cell_is_reported_and_retried(tmp_path, monkeypatch):
  function = Counter(fail_on=(2, "mul"))
  monkeypatch.setattr(runner, "_resolve_function", lambda name: function)
  summary = ablate.run(_config(), tmp_path, progress=False)
  assert summary.failed == ['x=2,mode="mul"']
  assert any("FAILED (3/3 seeds): RuntimeError: diverged at step 7" in line for line in summary.table.splitlines())
  failed_rows = [r for r in ablate.load_results(tmp_path / "results.jsonl") if r["error"]]
  assert len(failed_rows) == 3 and failed_rows[0]["metrics"] == {}
  assert "FAILED" in (tmp_path / "README.md").read_text()
  # On resume only the failed cell runs again; once it succeeds the table is clean.
  function.fail_on = None
  retry = ablate.run(_config(), tmp_path, progress=False)
  assert retry.ran == 1 and not retry.failed and "FAILED" not in retry.table


def test_readme_keeps_the_conclusion(tmp_path, counter):
  ablate.run(_config(), tmp_path, progress=False)
  readme = tmp_path / "README.md"
  text = readme.read_text()
  assert "Not written yet" in text
  written = "y grows with x: the claim holds."
  start = text.index(report.CONCLUSION_START) + len(report.CONCLUSION_START)
  end = text.index(report.CONCLUSION_END)
  readme.write_text(text[:start] + "\n" + written + "\n" + text[end:])
  ablate.run(_config(), tmp_path, seeds=4, progress=False)
  assert written in readme.read_text() and "Not written yet" not in readme.read_text()


def test_bad_config_fields_named():
  with pytest.raises(ValueError, match="missing field"):
    ablate.Experiment.from_config({"name": "x"})
  with pytest.raises(ValueError, match="grid.x"):
    ablate.Experiment.from_config({"name": "x", "question": "q", "function": "m:f", "base": {}, "grid": [("x", [])]})


def test_partial_baseline_compares_within_each_group(tmp_path, counter):
  summary = ablate.run(_config(baseline={"mode": "add"}, cells=[]), tmp_path, progress=False)
  # x=2: mul gives 2, 4, 6 and add gives 2, 3, 4 -> differences 0, 1, 2: 1.000 ± 2.484.
  assert "| 2 | mul | 3 | 1.000 ± 2.484 |" in summary.table.split("Paired differences")[1].splitlines()
  assert "same other settings" in summary.table
