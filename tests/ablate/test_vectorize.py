"""Seeds vmapped in one program: equal to seed after seed and to NumPy, resumable, and a
fallback (announced) where the seeds' shapes differ."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax import ablate
from rlhf_jax.ablate import runner, vectorize


def _data(params, seed):
  """Seed s: positive numbers a (size 4, or 3 + s when `ragged`) drawn from the seed."""
  size = 3 + seed if params["ragged"] else 4
  return np.random.default_rng([seed, 7]).uniform(1.0, 100.0, size) * params["scale"]


class Program:
  """A toy SeedProgram: Newton's square root in a `lax.while_loop` that stops on a
  tolerance (so seeds stop after different numbers of steps, as EM does), summarised as
  the mean root and the iteration count. Counts the seeds it prepares."""

  def __init__(self):
    self.prepared = []
    self.fail_scale = None
    self.program = vectorize.SeedProgram(prepare=self.prepare, compute=_newton_sqrt, finish=self.finish,
                                         static_of=lambda params: params["tol"])

  def prepare(self, params, seed):
    self.prepared.append((params["scale"], params["ragged"], seed))
    if params["scale"] == self.fail_scale:
      raise RuntimeError("data missing")
    return {"a": _data(params, seed).astype(np.float32)}, seed

  def finish(self, params, seeds, contexts, outputs):
    assert contexts == seeds
    return [{"mean_root": float(np.mean(out["root"])), "steps": float(out["steps"])} for out in outputs]


def _newton_sqrt(tol, inputs):
  a = inputs["a"]

  def body(state):
    x, _, steps = state
    new = 0.5 * (x + a / x)
    return new, jnp.max(jnp.abs(new - x)), steps + 1

  root, _, steps = jax.lax.while_loop(lambda s: s[1] >= tol, body, (a, jnp.asarray(jnp.inf), 0))
  return {"root": root, "steps": steps}


def _newton_steps_numpy(a, tol):
  x, steps = a.astype(np.float64), 0
  while True:
    new = 0.5 * (x + a / x)
    steps += 1
    change, x = np.max(np.abs(new - x)), new
    if change < tol:
      return x, steps


def _config(grid=None):
  config = ml_collections.ConfigDict()
  config.name = "toy_vmap"
  config.question = "Does scale move the roots?"
  config.function = "toy:program"
  config.base = ml_collections.ConfigDict({"scale": 1.0, "ragged": False, "tol": 1e-3})
  config.grid = grid or [("scale", [1.0, 4.0, 9.0])]
  config.cells = []
  config.baseline = {"scale": 1.0}
  config.seeds = 3
  config.metrics = ["mean_root", "steps"]
  config.plots = []
  return config


@pytest.fixture
def program(monkeypatch):
  toy = Program()
  monkeypatch.setattr(runner, "_resolve_function", lambda name: toy.program)
  return toy


def _by_cell_and_seed(path):
  return {(r["cell"], r["seed"]): r for r in ablate.load_results(path / "results.jsonl")}


def test_vmapped_sweep_equals_seed_after_seed_and_numpy(tmp_path, program):
  ablate.run(_config(), tmp_path / "vmap", progress=False, write_report=False)
  ablate.run(_config(), tmp_path / "seq", progress=False, write_report=False, vectorize=False)
  vmapped, sequential = _by_cell_and_seed(tmp_path / "vmap"), _by_cell_and_seed(tmp_path / "seq")
  assert vmapped.keys() == sequential.keys() and len(vmapped) == 9
  step_counts = set()
  for key, row in vmapped.items():
    assert row["seeds_vectorized"] is True and sequential[key]["seeds_vectorized"] is False
    for metric in ("mean_root", "steps"):
      np.testing.assert_allclose(row["metrics"][metric], sequential[key]["metrics"][metric], rtol=1e-6)
    scale, seed = row["overrides"]["scale"], row["seed"]
    a = _data({"ragged": False, "scale": scale}, seed)
    root, steps = _newton_steps_numpy(a, 1e-3)
    np.testing.assert_allclose(row["metrics"]["mean_root"], np.mean(np.sqrt(a)), rtol=1e-5)
    np.testing.assert_allclose(row["metrics"]["mean_root"], np.mean(root), rtol=1e-5)
    assert row["metrics"]["steps"] == steps  # each seed stops at its own step under vmap
    step_counts.add(steps)
  assert len(step_counts) > 1  # the seeds did stop at different steps


def test_resume_of_a_half_done_vmapped_sweep_reruns_nothing_finished(tmp_path, program):
  program.fail_scale = 9.0  # the sweep stops half done: this cell fails
  first = ablate.run(_config(), tmp_path, seeds=2, progress=False, write_report=False)
  assert first.failed == ["scale=9.0"]
  finished = {(s, seed) for s, _, seed in program.prepared if s != 9.0}
  assert finished == {(1.0, 0), (1.0, 1), (4.0, 0), (4.0, 1)}
  program.fail_scale = None
  program.prepared.clear()
  second = ablate.run(_config(), tmp_path, seeds=3, progress=False, write_report=False)
  assert second.ran == 3 and not second.failed
  # Only the failed cell's seeds and the new seed 2 ran; nothing finished ran again.
  assert sorted((s, seed) for s, _, seed in program.prepared) == [(1.0, 2), (4.0, 2), (9.0, 0), (9.0, 1), (9.0, 2)]
  rows = _by_cell_and_seed(tmp_path)
  assert rows[("scale=9.0", 0)]["seeds_vectorized"] is True and rows[("scale=9.0", 0)]["seeds_in_call"] == 3
  assert rows[("scale=1.0", 2)]["seeds_in_call"] == 1  # a lone seed: nothing to vmap
  fresh_dir = tmp_path / "fresh"
  ablate.run(_config(), fresh_dir, seeds=3, progress=False, write_report=False)
  fresh = _by_cell_and_seed(fresh_dir)
  for key, row in fresh.items():
    np.testing.assert_allclose(rows[key]["metrics"]["mean_root"], row["metrics"]["mean_root"], rtol=1e-6)


def test_cell_whose_shapes_differ_between_seeds_falls_back_and_says_so(tmp_path, program, capsys):
  config = _config(grid=[("ragged", [False, True])])
  summary = ablate.run(config, tmp_path, progress=False)
  assert not summary.failed
  assert "The seeds of 1 of 2 cells ran in one vmapped program" in (tmp_path / "README.md").read_text()
  printed = capsys.readouterr().out
  assert ("cell ragged=true: shapes differ between seeds: inputs['a'] is float32[3] at seed 0, float32[4] at "
          "seed 1; its 3 seeds ran one after another.") in printed
  assert "ragged=false" not in printed
  rows = _by_cell_and_seed(tmp_path)
  for seed in range(3):
    assert rows[("ragged=false", seed)]["seeds_vectorized"] is True
    ragged = rows[("ragged=true", seed)]
    assert ragged["seeds_vectorized"] is False and ragged["error"] is None
    a = _data({"ragged": True, "scale": 1.0}, seed)
    assert a.shape == (3 + seed,)
    np.testing.assert_allclose(ragged["metrics"]["mean_root"], np.mean(np.sqrt(a)), rtol=1e-5)


def test_shape_mismatch_names_the_first_difference():
  same = [{"x": np.zeros((2, 3)), "y": np.zeros(4, np.int32)}] * 3
  assert vectorize.shape_mismatch(same, [0, 1, 2]) is None
  dtype = [{"x": np.zeros(2, np.float32)}, {"x": np.zeros(2, np.int32)}]
  assert vectorize.shape_mismatch(dtype, [5, 6]) == (
      "shapes differ between seeds: inputs['x'] is float32[2] at seed 5, int32[2] at seed 6")
  keys = [{"x": np.zeros(2)}, {"z": np.zeros(2)}]
  assert vectorize.shape_mismatch(keys, [0, 1]) == "the inputs of seed 0 and seed 1 differ in structure"


def test_program_called_directly_is_a_cell_function():
  toy = Program()
  params = {"scale": 4.0, "ragged": False, "tol": 1e-3}
  direct = toy.program(params, [0, 1])
  for seed, metrics in zip([0, 1], direct):
    np.testing.assert_allclose(metrics["mean_root"], np.mean(np.sqrt(_data(params, seed))), rtol=1e-5)


def test_a_program_may_choose_seed_after_seed_and_says_why():
  toy = Program()
  program = vectorize.SeedProgram(prepare=toy.prepare, compute=_newton_sqrt, finish=toy.finish,
                                  static_of=lambda params: params["tol"],
                                  sequential_because=lambda params: "slow vmapped" if params["scale"] > 1 else None)
  params = {"tol": 1e-4, "ragged": False, "scale": 2.0}
  chosen = vectorize.run_seeds(program, params, [0, 1, 2])
  assert (chosen.vectorized, chosen.note) == (False, "slow vmapped")
  vmapped = vectorize.run_seeds(program, {**params, "scale": 1.0}, [0, 1, 2])
  assert (vmapped.vectorized, vmapped.note) == (True, None)
  for seed, metrics in zip([0, 1, 2], chosen.metrics):
    root, _ = _newton_steps_numpy(_data(params, seed), 1e-4)
    np.testing.assert_allclose(metrics["mean_root"], np.mean(root), rtol=1e-5)
