"""Checkpoints: a saved (state, data position) comes back bit for bit, only the newest
`keep` stay, `load_params` fills another model's parameters (a policy into a reward
model's backbone) or names what does not fit, and SIGTERM becomes a stop request."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.train import checkpoint


def _state(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {"params": {"embed": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                     "lm_head": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)},
          "step": jnp.asarray(seed, jnp.int32)}


def test_save_restore_round_trip_and_keep(tmp_path):
  saver = checkpoint.Checkpointer(tmp_path, keep=2, async_save=False)
  try:
    for step in (1, 2, 3):
      assert saver.save(step, _state(step), {"epoch": np.int64(step), "position": 7 * step})
    saver.wait()
    assert saver.all_steps() == [2, 3] and saver.latest_step() == 3
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(0))
    state, data = saver.restore(None, abstract)
    expected = _state(3)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # NumPy scalars are stored as plain JSON numbers.
    assert data == {"epoch": 3, "position": 21}
    older, _ = saver.restore(2, abstract)
    assert int(older["step"]) == 2
  finally:
    saver.close()


def test_keep_must_be_positive_and_an_empty_directory_has_nothing_to_restore(tmp_path):
  with pytest.raises(ValueError, match="checkpoint.keep must be >= 1, got 0"):
    checkpoint.Checkpointer(tmp_path / "a", keep=0)
  saver = checkpoint.Checkpointer(tmp_path / "b", async_save=False)
  try:
    assert saver.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
      saver.restore(None, {})
  finally:
    saver.close()


def _save(workdir, state, step=4):
  saver = checkpoint.Checkpointer(workdir, async_save=False)
  saver.save(step, state, {})
  saver.close()


def test_latest_step_dir_of_a_run_or_its_checkpoints_folder(tmp_path):
  _save(tmp_path / "run", _state(1), step=4)
  _save(tmp_path / "run", _state(2), step=9)
  assert checkpoint.latest_step_dir(tmp_path / "run") == checkpoint.checkpoint_dir(tmp_path / "run") / "9"
  assert checkpoint.latest_step_dir(tmp_path / "run" / "checkpoints").name == "9"
  # A folder named like a step but without a state item is not a checkpoint.
  (tmp_path / "run" / "checkpoints" / "12").mkdir()
  assert checkpoint.latest_step_dir(tmp_path / "run").name == "9"
  with pytest.raises(FileNotFoundError, match="no checkpoint found in"):
    checkpoint.latest_step_dir(tmp_path / "nowhere")


def test_load_params_replaces_every_parameter(tmp_path):
  _save(tmp_path / "run", _state(5))
  fresh = _state(0)["params"]
  loaded = checkpoint.load_params(tmp_path / "run", fresh)
  for name in ("embed", "lm_head"):
    np.testing.assert_array_equal(np.asarray(loaded[name]), np.asarray(_state(5)["params"][name]))


def test_a_policy_fills_a_reward_models_backbone(tmp_path):
  _save(tmp_path / "policy", _state(5))
  head = jnp.full((3, 1), 0.25, jnp.float32)
  reward_params = {"backbone": {"embed": jnp.zeros((5, 3), jnp.float32)}, "reward_head": head}
  loaded = checkpoint.load_params(tmp_path / "policy", reward_params)
  np.testing.assert_array_equal(np.asarray(loaded["backbone"]["embed"]), np.asarray(_state(5)["params"]["embed"]))
  assert "lm_head" not in loaded["backbone"]  # the policy's output layer is not part of it
  np.testing.assert_array_equal(np.asarray(loaded["reward_head"]), np.asarray(head))


def test_parameters_that_do_not_fit_are_named(tmp_path):
  _save(tmp_path / "run", _state(5))
  wrong = {"embed": jnp.zeros((6, 3), jnp.float32), "lm_head": jnp.zeros((3, 5), jnp.float32)}
  with pytest.raises(ValueError, match=r"do not fit this model .*\['embed'\].*\(5, 3\).*\['embed'\].*\(6, 3\)"):
    checkpoint.load_params(tmp_path / "run", wrong)


def test_sigterm_becomes_a_stop_request_and_the_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with checkpoint.StopRequest() as stop:
    assert not stop.requested and not stop.any_process()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.any_process()
  assert signal.getsignal(signal.SIGTERM) is before
  manual = checkpoint.StopRequest()
  manual.request()
  assert manual.requested


def _run_loop(tmp_path, *, total, every, stop_at_step, signal_at=None, start=0):
  """A loop written as the training loops use `LoopSaves`; returns (saves, steps run)."""
  checkpointer = checkpoint.Checkpointer(tmp_path, keep=10, async_save=False)
  step = start
  saves = checkpoint.LoopSaves(checkpointer, lambda: (_state(step), {"position": step}), step=step,
                               total=total, every=every, stop_at_step=stop_at_step)
  ran = []
  with saves:
    while step < total:
      if saves.stop_here(step):
        break
      step += 1
      ran.append(step)
      if step == signal_at:
        os.kill(os.getpid(), signal.SIGTERM)
      saves.periodic(step)
    if not saves.preempted:
      saves.final(step)
  all_steps = checkpointer.all_steps()
  checkpointer.close()
  return saves, ran, all_steps


def test_loop_saves_every_k_steps_the_last_step_once_and_stops_with_a_save(tmp_path):
  saves, ran, steps = _run_loop(tmp_path / "full", total=7, every=3, stop_at_step=None)
  assert not saves.preempted and ran == list(range(1, 8)) and steps == [3, 6, 7]
  # stop_at_step: saved there (once, though every=2 saved it already), reported as preempted.
  saves, ran, steps = _run_loop(tmp_path / "stopped", total=7, every=2, stop_at_step=4)
  assert saves.preempted and ran == [1, 2, 3, 4] and steps == [2, 4]
  # A run already at stop_at_step runs nothing and saves nothing new.
  saves, ran, steps = _run_loop(tmp_path / "stopped", total=7, every=2, stop_at_step=4, start=4)
  assert saves.preempted and ran == [] and steps == [2, 4]
  # SIGTERM during step 5: the loop stops before step 6 with step 5 saved.
  before = signal.getsignal(signal.SIGTERM)
  saves, ran, steps = _run_loop(tmp_path / "signal", total=9, every=0, stop_at_step=None, signal_at=5)
  assert saves.preempted and ran == [1, 2, 3, 4, 5] and steps == [5]
  assert signal.getsignal(signal.SIGTERM) is before
