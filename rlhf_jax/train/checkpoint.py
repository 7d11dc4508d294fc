"""Checkpoints (orbax `CheckpointManager`) and the SIGTERM stop request.

A checkpoint at step s holds two items:

  state   the TrainState (params, optimizer state, step, RNG key), sharded arrays;
  data    the training iterator's position (`BatchIterator.state()`), JSON.

Saving is asynchronous (the arrays are copied to host, then written by a background
thread) and atomic (orbax writes into a temporary folder and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact); the newest
`keep` checkpoints are kept. Restoring with the abstract state (shapes + shardings) puts
every shard straight onto its device.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "LoopSaves", "StopRequest", "checkpoint_dir", "latest_step_dir", "load_params"]

_log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str | os.PathLike[str]) -> Path:
  return Path(workdir).absolute() / "checkpoints"


class Checkpointer:
  """Saves and restores (TrainState, data position) pairs under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str | os.PathLike[str], *, keep: int = 2, async_save: bool = True):
    if keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {keep}.")
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Mapping[str, Any], *, force: bool = True) -> bool:
    """Starts saving (returns once the arrays are on host); True when a save began."""
    data_state = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in data_state.items()}
    return self._manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        force=force)

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state, data position) of `step` (default: the latest), shards placed as in
    `abstract_state`'s shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, dict(restored.data)

  def wait(self) -> None:
    """Blocks until a pending asynchronous save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def latest_step_dir(path: str | os.PathLike[str]) -> Path:
  """`<checkpoints>/<newest step>` of a run directory (or of its `checkpoints` folder);
  FileNotFoundError when it has none."""
  directory = Path(path)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  steps = sorted((int(p.name), p) for p in directory.glob("*") if p.name.isdigit() and (p / "state").is_dir()) \
      if directory.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"model.init_from: no checkpoint found in {path} (expected a run directory "
                            "written by scripts/train.py, with checkpoints/<step>/state).")
  return steps[-1][1]


def load_params(path: str | os.PathLike[str], params: Any) -> Any:
  """The parameters of another run's latest checkpoint, laid out like `params`.

  Only the parameters are read (orbax partial restore), each shard straight onto the
  device `params` has it on. Same structure: every parameter is replaced. A language
  model's checkpoint given to a reward model fills the reward model's `backbone` (the SFT
  policy without its output layer `lm_head`); the reward head keeps its values from
  `params`, as do the objective's extra parameters.

  Args:
    path: the earlier run's workdir (or its `checkpoints` folder).
    params: the current (initialised, sharded) parameters.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: the checkpoint's parameters do not fit (names or shapes), listing them.
  """
  step_dir = latest_step_dir(path)
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(step_dir / "state").item_metadata["params"]
  into_backbone = "backbone" in params and "backbone" not in stored
  target = params["backbone"] if into_backbone else {k: v for k, v in params.items() if k in stored}
  source = {k: v for k, v in stored.items() if not (into_backbone and k == "lm_head")}
  def shapes(tree):
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

  stored_shapes, wanted_shapes = shapes(source), shapes(target)
  if stored_shapes != wanted_shapes:
    differ = sorted(set(stored_shapes.items()) ^ set(wanted_shapes.items()))[:6]
    raise ValueError(f"model.init_from: the parameters in {step_dir} do not fit this model "
                     f"(first differences, name and shape: {differ}).")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
  restored = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
      item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True))["params"]
  _log.info("model.init_from: loaded parameters of %s", step_dir)
  result = dict(params)
  if into_backbone:
    result["backbone"] = restored
  else:
    result.update(restored)
  return result


class StopRequest:
  """A SIGTERM (preemption) handler that asks the loop to stop at the next step boundary.

  Use as a context manager; the previous handler is restored on exit. Signals can only
  be caught in the main thread, elsewhere it is a flag set by `request()` alone.
  In a multi-process run the flag is shared with `any_process()`, so that all processes
  stop at the same step.
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self._event = threading.Event()
    self._signals = signals
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame
    _log.warning("received signal %d: saving a checkpoint at the next step and stopping.", signum)
    self._event.set()

  def request(self) -> None:
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def any_process(self) -> bool:
    """True when any process has been asked to stop (a collective in multi-process runs)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
    return bool(np.any(flags))


class LoopSaves:
  """When a training loop saves and when it stops: one schedule for the offline and online loops.

  `snapshot()` returns the (state, data position) to save at the current step; each step
  is saved at most once. Inside `with saves:` a SIGTERM (on any process) or reaching
  `stop_at_step` makes `stop_here(step)` save and return True, the loop then breaks and
  reports `preempted`; a rerun resumes from that checkpoint. `every` saves periodically
  (before the last step), `final` saves the last step unless it is already saved. On
  exit the signal handler is restored and pending (asynchronous) saves are waited for.
  """

  def __init__(self, checkpointer: Checkpointer, snapshot: Callable[[], tuple[Any, Mapping[str, Any]]], *,
               step: int, total: int, every: int, stop_at_step: int | None, unit: str = "step"):
    self._checkpointer = checkpointer
    self._snapshot = snapshot
    self._last_saved = step
    self._total = total
    self._every = every
    self._stop_at_step = stop_at_step
    self._unit = unit
    self._stop = StopRequest()
    self.preempted = False

  def __enter__(self) -> "LoopSaves":
    self._stop.__enter__()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.__exit__(*exc)
    self._checkpointer.wait()

  def save(self, step: int) -> None:
    """Saves `snapshot()` at `step` unless this step is already saved."""
    if self._last_saved != step:
      state, data_state = self._snapshot()
      self._checkpointer.save(step, state, data_state)
      self._last_saved = step

  def stop_here(self, step: int) -> bool:
    """Checked before each step, so that a run already at `stop_at_step` stops there."""
    if (self._stop_at_step is not None and step >= self._stop_at_step) or self._stop.any_process():
      self.save(step)
      self.preempted = True
      _log.warning("stopping at %s %d (checkpoint saved); rerun to resume.", self._unit, step)
      return True
    return False

  def periodic(self, step: int) -> None:
    """Saves every `every` steps (0: never), except at the last step (`final` saves that)."""
    if self._every and step % self._every == 0 and step < self._total:
      self.save(step)

  def final(self, step: int) -> None:
    """Saves the last step unless the newest checkpoint already holds it."""
    if self._checkpointer.latest_step() != step:
      self.save(step)
