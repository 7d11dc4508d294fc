"""Every experiments/*/config.py builds, its cells resolve against its base, its function
imports, its docstring's launch command names the file itself, and its README is the
runner's, with a written conclusion; scripts/ablate.py end to end on a toy function."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

from rlhf_jax import ablate, cli
from rlhf_jax.ablate import report, runner

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "experiments").glob("*/config.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_experiment_config(path):
  experiment = ablate.Experiment.from_config(cli.load_config_file(path))
  assert experiment.name == path.parent.name
  for overrides in experiment.cell_overrides():
    ablate.resolve_params(experiment.base, overrides)
  assert callable(runner._resolve_function(experiment.function))  # pylint: disable=protected-access
  docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
  assert f"python scripts/ablate.py --config=experiments/{path.parent.name}/config.py" in docstring
  readme = (path.parent / "README.md").read_text(encoding="utf-8")
  assert report.CONCLUSION_START in readme and "Not written yet" not in readme
  for spec in experiment.plots:
    assert (path.parent / spec["file"]).is_file()


@pytest.mark.slow  # three interpreter starts with JAX: about 15 s
def test_ablate_script_end_to_end(tmp_path):
  (tmp_path / "toy_cells.py").write_text(
      "def run(params, seeds):\n"
      "  if params['x'] == 2:\n"
      "    raise ValueError('diverged')\n"
      "  return [{'y': params['x'] * 10 + s} for s in seeds]\n")
  (tmp_path / "config.py").write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      "  c = ml_collections.ConfigDict()\n"
      "  c.name = 'toy'; c.question = 'q'; c.function = 'toy_cells:run'\n"
      "  c.base = ml_collections.ConfigDict({'x': 0}); c.grid = [('x', [0, 1, 2])]\n"
      "  c.cells = []; c.baseline = {'x': 0}; c.seeds = 2; c.metrics = ['y']; c.plots = []\n"
      "  return c\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, str(REPO / "scripts" / "ablate.py"), f"--config={tmp_path / 'config.py'}",
             "--noprogress"]
  first = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  assert first.returncode == 1, first.stderr  # a failed cell: reported, exit 1
  assert "| 1 | 2 | 10.500 ± 6.353 |" in first.stdout  # 10, 11: t_{0.975,1} = 12.706 * 0.707 / 1.414
  assert "FAILED (2/2 seeds): ValueError: diverged" in first.stdout
  assert "3 cells run, 0 already finished" in first.stdout
  second = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  assert "1 cells run, 2 already finished" in second.stdout  # only the failed cell again
  bad = subprocess.run(command + ["--seeds=0"], env=env, capture_output=True, text=True, check=False)
  assert bad.returncode == 2 and "--seeds: expected a positive integer" in bad.stderr
