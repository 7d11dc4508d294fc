"""`train(config, workdir)`: the whole run, from data files to checkpoints and metrics.

  0. run dir   `<workdir>` checked before any work (`rundir.check_resume`): a stored
               config.json that differs from `config` outside `MAY_CHANGE_ON_RESUME`,
               or input files whose contents changed, refuse the start with the fields
               that differ; `force_new` moves the earlier run aside
  1. data      read and tokenize (`inputs.py`), or the toy set when `data.train` is empty
  2. mesh      devices arranged as (data, fsdp, tensor) from `config.mesh`
  3. build     model, optimizer, shardings, jitted steps (`components.py`)
  4. state     restored from the newest checkpoint in `<workdir>`, else initialised
               (already sharded) or loaded from `model.init_from`
  5. reference DPO/KTO reference log-probs, cached per data set or on the fly
  6. loop      steps; metrics every `train.log_every`; evaluation every `eval.every`;
               checkpoints every `checkpoint.every`; SIGTERM (or `stop_at_step`) saves
               and stops at the next step boundary (`preempted`: resumable)
  7. end       final evaluation and checkpoint; returns the final metrics

The config is read here only: the modules below take plain values and the frozen
settings dataclasses of `rlhf_jax.train.config` (`build_settings`, `data_settings`).

Rerunning the same command on the same workdir resumes exactly: parameters, optimizer,
step, key and data position come from the checkpoint, and `metrics.jsonl` keeps the
records up to the restored step (a killed run's later records are dropped, TensorBoard
purges them), so each step is logged once. Rerunning a finished run trains and
evaluates nothing and returns its recorded final metrics.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax import host_memory, models
from rlhf_jax.train import components as components_lib
from rlhf_jax.train import checkpoint as checkpoint_lib
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import evaluate as evaluate_lib
from rlhf_jax.train import inputs as inputs_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import optim as optim_lib
from rlhf_jax.train import reference as reference_lib
from rlhf_jax.train import rundir
from rlhf_jax.train import padding_free, pretrained, shared_prompt

__all__ = ["MAY_CHANGE_ON_RESUME", "TrainingError", "check_config", "evaluate_dataset", "record_train_metrics", "train"]

_log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """The run cannot continue (e.g. the loss stayed non-finite); the message says why."""


# The config fields that may differ from a run directory's config.json when the run is
# resumed; any other difference is refused (`rundir.check_resume`). They say how long,
# how often and on what layout the run goes, not what it computes:
#  - cadence: logging, evaluation, checkpoints, the progress bar. Evaluations and
#    checkpoints of other steps; the trajectory is the same.
#  - train.steps: extending (or shortening) a run. The learning-rate schedule decays to
#    its end at train.steps, so from the resumed step on the schedule is the new one's:
#    the result is that of a continued run, not of a fresh run of the new length.
#    run.json records every resume's changes ("resumed": [{"changed": ...}]).
#  - layout: the device mesh, gradient accumulation, evaluation and reference batch
#    sizes, rematerialisation, padding-free buckets, the reference-cache folder (its
#    tables are keyed by data and parameter fingerprints). Same arithmetic, arranged
#    differently: results agree up to float rounding (a resume on another mesh is then
#    no longer bitwise equal to an uninterrupted run).
# Not here: anything that changes the data, the model, the objective, the optimizer or
# the random streams (seed, model.init_from, the evaluation set, ECE bins: metrics
# before and after would not be comparable).
MAY_CHANGE_ON_RESUME = (
    "train.steps", "train.log_every", "train.progress_bar", "eval.every", "checkpoint.every",
    "checkpoint.keep", "checkpoint.async_save",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "train.microbatches", "eval.batch_size", "reference.batch_size",
    "reference.cache_dir", "model.remat", "data.buckets_per_octave",
)
# Filled in from the data when 0 (`shared_prompt.resolve`, `padding_free.resolve`):
# compared only once the data is read.
_MEASURED_FIELDS = ("data.shared_length", "data.shared_targets", "data.document_width")


def check_config(config: Any, where: str = "") -> None:
  """Raises ValueError naming the first field of `config` a run cannot use; `where`
  prefixes the field names (a section of a larger config, e.g. "reward_model.")."""
  # An unknown objective lists the valid ones; a bad loss setting fails before any work.
  try:
    config_lib.loss_settings(config)
  except ValueError as error:
    if not where:
      raise
    message = str(error)
    named = message.replace("config loss.", f"{where}loss.")
    raise ValueError(named if named != message else f"{where.rstrip('.')}: {message}") from None
  for section, name in (("train", "steps"), ("train", "batch_size"), ("train", "log_every"),
                        ("train", "microbatches"), ("eval", "batch_size"), ("reference", "batch_size"),
                        ("checkpoint", "keep")):
    value = config[section][name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{where}{section}.{name} must be a positive int, got {value!r}.")
  for section, name in (("eval", "every"), ("checkpoint", "every")):
    if config[section][name] < 0:
      raise ValueError(f"{where}{section}.{name} must be >= 0 (0: only at the end), got {config[section][name]}.")
  if config.train.batch_size % config.train.microbatches:
    raise ValueError(f"{where}train.batch_size {config.train.batch_size} must be divisible by "
                     f"{where}train.microbatches {config.train.microbatches}.")
  try:  # LoRA settings (model.lora.*), checked as the model will read them.
    from rlhf_jax.models import TransformerConfig  # pylint: disable=g-import-not-at-top
    TransformerConfig(vocab_size=1, d_model=2, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=1, max_len=1,
                      **pretrained.lora_fields(config.model.get("lora")))
  except ValueError as error:
    raise ValueError(f"{where}model.lora: {error}".replace("TransformerConfig.lora_", "")) from None
  if config.reference.mode not in ("cached", "on_the_fly"):
    raise ValueError(f"{where}reference.mode must be 'cached' or 'on_the_fly', got {config.reference.mode!r}.")
  try:  # The optimizer's own checks (learning rate, warmup within train.steps, ...).
    optim_lib.make_optimizer(config_lib.optimizer_settings(config), int(config.train.steps))
  except ValueError as error:
    raise ValueError(f"{where}{error}") from None


def _input_fingerprints(config: Any) -> dict[str, str]:
  """What the run reads besides its config: sha256 of the data and tokenizer files, and
  the checkpoint folder `model.init_from` resolves to (an earlier run may have saved a
  newer one since)."""
  inputs = {}
  for field in ("train", "eval", "tokenizer"):
    path = config.data.get(field)
    if path and Path(path).is_file():
      inputs[f"data.{field}"] = data_lib.fingerprint(path)
  if config.model.init_from:
    try:
      inputs["model.init_from"] = os.fspath(
          pretrained.checkpoint_path(config.model.init_from) if pretrained.is_pretrained(config.model.init_from)
          else checkpoint_lib.latest_step_dir(config.model.init_from))
    except FileNotFoundError:
      pass  # Reported when the parameters are loaded.
  return inputs


# The compiled pieces of recent runs (a rerun in the same process compiles nothing).
_BUILD_CACHE: components_lib.BuildCache[components_lib.Components] = components_lib.BuildCache()


def _cached_build(settings: components_lib.BuildSettings, mesh: Any,
                  info: inputs_lib.DataInfo) -> components_lib.Components:
  return _BUILD_CACHE.get({"settings": settings, "info": info}, mesh,
                          lambda: components_lib.build(settings, mesh, info))


@jax.jit
def _copy(tree: Any) -> Any:
  """A copy of a (sharded) tree in fresh buffers, laid out like the original."""
  return jax.tree.map(lambda x: x.copy(), tree)


def _host(tree: Any) -> Any:
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _device_batch(host_batch: Mapping[str, np.ndarray], layout: Mapping[str, Any], mesh,
                  packing: padding_free.PackingSettings, microbatches: int = 1) -> dict[str, jax.Array]:
  """The arrays of `layout` placed on the mesh; with `data.padding_free` (a layout of
  packed rows) the pairs or sequences are packed first (`padding_free.pack_batch`)."""
  if "packed_tokens" in layout and "packed_tokens" not in host_batch:
    host_batch = padding_free.pack_batch(host_batch, packing, data_parallel=mesh_lib.data_parallel_size(mesh),
                                         microbatches=microbatches)
  missing = [k for k in layout if k not in host_batch]
  if missing:
    raise KeyError(f"the batch lacks the arrays {missing} the objective needs.")
  return mesh_lib.shard_batch({k: host_batch[k] for k in layout}, mesh)


class _Reference:
  """Adds reference log-probs to batches: from cached tables or a forward pass."""

  def __init__(self, parts: components_lib.Components, workdir: Path, ref_params: Any,
               datasets: inputs_lib.Datasets, *, mode: str, cache_dir: str, batch_size: int):
    self.parts = parts
    self.mode = mode
    self.tables: dict[str, reference_lib.ReferenceTable] = {}
    self.ref_params = None
    if self.mode == "on_the_fly":
      self.ref_params = ref_params
      return
    cache_path = Path(cache_dir) if cache_dir else workdir / "reference_cache"
    params_fp = reference_lib.params_fingerprint(ref_params)
    description = {"model": repr(parts.model.config), "kind": parts.objective.model,
                   "shared_prompt": repr(parts.build_settings.packing.shared_layout)}

    def compute(arrays):
      return reference_lib.compute_reference_logps(
          parts.reference_cached, ref_params, arrays, parts.reference_groups,
          batch_size=int(batch_size), mesh=parts.mesh)

    for name, arrays in (("train", datasets.train), ("eval", datasets.eval)):
      if arrays is not None:
        self.tables[name] = reference_lib.load_or_compute(
            cache_dir=cache_path, name=name, arrays=arrays, groups=parts.reference_groups,
            params_fp=params_fp, model_description=description, compute=compute)

  def host(self, split: str, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return self.tables[split].lookup(batch) if self.mode == "cached" else dict(batch)

  def device(self, batch: dict[str, jax.Array], microbatches: int = 1, params: Any = None) -> dict[str, jax.Array]:
    """`batch` plus its reference log-probs; `microbatches`: how a padding-free batch was
    packed (`padding_free.pack_batch`); `params`: the current parameters, whose base is
    the reference of a LoRA run (it holds no copy of its own)."""
    if self.mode == "on_the_fly":
      batch = dict(batch)
      ref_params = self.ref_params if self.ref_params is not None else params
      logps = self.parts.reference_on_the_fly(ref_params, batch)
      if "packed_tokens" in batch and microbatches > 1:
        logps = {k: padding_free.batch_order(v, batch, microbatches) for k, v in logps.items()}
      batch.update(logps)
    return batch


def _note_packed_shape(batch: Mapping[str, jax.Array], seen: set[tuple[int, ...]],
                       results: dict[str, Any]) -> None:
  """Logs each new shape of padding-free training batches (the step compiles once per
  shape) and counts them in `results`."""
  slots = batch["packed_tokens"].shape
  targets = batch["target_tokens"].shape[1] if "target_tokens" in batch else None
  shape = (*slots, -1 if targets is None else targets)
  if shape not in seen:
    seen.add(shape)
    _log.info("padding-free batch shape %d: %d row%s of %d slots%s (the step compiles for each new shape; "
              "data.buckets_per_octave sets how many there are)", len(seen), slots[0],
              "" if slots[0] == 1 else "s", slots[1], "" if targets is None else f", {targets} completion tokens")
    results["train/padding_free_shapes"] = len(seen)


def _device_keys(layout: Mapping[str, Any], reference: _Reference | None) -> dict[str, Any]:
  """The batch arrays sent to the devices (reference columns come from the host only
  in cached mode)."""
  on_the_fly = reference is not None and reference.mode == "on_the_fly"
  return {k: v for k, v in layout.items() if not (on_the_fly and k.startswith("ref_"))}


def evaluate_dataset(
    parts: components_lib.Components,
    params: Any,
    arrays: Mapping[str, np.ndarray],
    reference: _Reference | None,
    split: str = "eval",
    *,
    batch_size: int,
    ece_bins: int,
) -> dict[str, float]:
  """Metrics of `params` on a whole data set (in order, `batch_size` examples at a time,
  the last batch padded); `ece_bins` bins of the calibration error."""
  settings = parts.build_settings
  layout = _device_keys(components_lib.device_batch_layout(settings, parts.info), reference)
  outputs = []
  for batch, valid in reference_lib.padded_batches(arrays, list(arrays), int(batch_size)):
    if reference is not None:
      batch = reference.host(split, batch)
    device = _device_batch(batch, layout, parts.mesh, settings.packing)
    if reference is not None:
      device = reference.device(device, params=params)
    result = _host(parts.eval_step(params, device))
    outputs.append({k: v[:valid] for k, v in result.items()})
  return evaluate_lib.summarize(parts.objective, evaluate_lib.concatenate(outputs), int(ece_bins))


def _initial_params(parts: components_lib.Components, init_from: str, init_key, train_key) -> Any:
  """The run's starting parameters (also the frozen reference): a fresh sharded init, or
  the latest checkpoint of the run `init_from` (`model.init_from`), or a pretrained
  checkpoint ("hf:..."); a LoRA model keeps its fresh adapters over the loaded base.

  From a pretrained checkpoint only the adapters and heads are initialised: each base
  tensor is read straight into its shards, with no random base to overwrite."""
  if pretrained.is_pretrained(init_from):
    fresh = parts.init_trainable(init_key)
    params = pretrained.load_base(init_from, models.lora.combine(parts.abstract_state.params, fresh),
                                  parts.model.config)
    return parts.state_from_params(params, train_key)
  state = parts.init_state(init_key, train_key)
  if models.lora.enabled(parts.model.config):
    return state.replace(params=pretrained.load_base(init_from, state.params, parts.model.config))
  if init_from:
    return state.replace(params=checkpoint_lib.load_params(init_from, state.params))
  return state


def _checkpointed(state: Any) -> Any:
  """What a LoRA run's checkpoint holds: the state with only its adapters and heads as
  parameters (the optimizer state covers only those already)."""
  return state.replace(params=pretrained.checkpoint_params(state.params))


def _resolve_measured(config: Any, datasets: inputs_lib.Datasets, data_kind: str) -> Any:
  """`config` with the sizes measured on the data filled in (a copy; `config` itself
  when nothing is measured): `data.shared_length` / `data.shared_targets` of prompt
  sharing and `data.document_width` of padding-free rows, when 0 (set ones are checked)."""
  data = config.data
  if not (data.share_prompt or data.padding_free):
    return config
  splits = {"train": datasets.train, "eval": datasets.eval}
  config = copy.deepcopy(config)
  if data.share_prompt:
    layout = shared_prompt.resolve(splits, data_kind=data_kind, objective=config.objective,
                                   length=data.shared_length, num_targets=data.shared_targets)
    config.data.shared_length, config.data.shared_targets = layout.length, layout.num_targets
  if data.padding_free:
    config.data.document_width = padding_free.resolve(
        splits, data_kind=data_kind, objective=config.objective, share_prompt=bool(data.share_prompt),
        buckets_per_octave=data.buckets_per_octave, document_width=data.document_width)
  return config


def _format(metrics: Mapping[str, float], names: tuple[str, ...]) -> str:
  return " ".join(f"{n}={metrics[n]:.4g}" for n in names if n in metrics)


def record_train_metrics(step: int, metrics: Mapping[str, float], *, writer: rundir.MetricWriter,
                         results: dict[str, Any], progress: Any, shown: tuple[str, ...], max_consecutive_skips: int,
                         unit: str, check: str, checkpoint_dir: Path) -> None:
  """Writes a logging window's train metrics (metrics file, `results`, progress bar), and
  stops a run whose updates keep failing: more than `max_consecutive_skips` updates in a
  row skipped for a non-finite gradient raise `TrainingError`, naming what to `check` and
  the last good checkpoint. Shared by the offline loop (`unit` "step") and the online one
  ("iteration")."""
  writer.write(step, metrics, split="train")
  results.update({f"train/{k}": v for k, v in metrics.items()})
  if progress is not None:
    progress.set_postfix_str(_format(metrics, shown))
  if metrics.get("consecutive_skips", 0) > max_consecutive_skips:
    raise TrainingError(
        f"{unit} {step}: {int(metrics['consecutive_skips'])} consecutive updates were skipped "
        f"because the gradient was not finite (NaN/Inf); lower optim.learning_rate or check "
        f"{check}. The last good checkpoint is in " + str(checkpoint_dir))


def _last_records(records: list[dict[str, Any]]) -> dict[str, Any]:
  """{"train/<metric>", "eval/<metric>"} of the last record of each split."""
  results: dict[str, Any] = {}
  for split in ("train", "eval"):
    last = [r for r in records if r.get("split") == split][-1:]
    for record in last:
      results.update({f"{split}/{k}": (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v)
                      for k, v in record.items() if k not in ("step", "split")})
  return results


def train(config: Any, workdir: str | os.PathLike[str], *, stop_at_step: int | None = None,
          force_new: bool = False) -> dict[str, Any]:
  """Trains `config.objective` as configured; returns the final metrics.

  Args:
    config: a config from `configs/*.py` (`rlhf_jax.train.config.base_config`).
    workdir: the run directory; an existing checkpoint there is resumed when the run
      directory holds the same config (up to `MAY_CHANGE_ON_RESUME`) and inputs.
    stop_at_step: stop (saving a checkpoint) once this step is reached, as a preemption
      would; the run resumes from there when started again. A run already at this step
      stops without training.
    force_new: start afresh: the earlier run's files in `workdir` are moved to
      `<workdir>/superseded/<time>/` (`rundir.supersede`).

  Returns:
    {"step", "preempted" (stopped early, resumable), "seconds", "examples_per_second"
    (None when no step was timed), "train/<metric>" of the last logged step,
    "eval/<metric>" of the last evaluation, "state": the final TrainState}.

  Raises:
    rundir.RunDirError: `workdir` is a file, or holds a run with other settings.
    ValueError: a config field a run cannot use (named).
  """
  check_config(config)
  start_time = time.time()
  workdir = rundir.prepare(workdir)
  inputs = _input_fingerprints(config)
  resume = rundir.check_resume(workdir, config.to_dict(), may_change=MAY_CHANGE_ON_RESUME, ignore=_MEASURED_FIELDS,
                               inputs=inputs, force_new=force_new)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=int(config.checkpoint.keep), async_save=bool(config.checkpoint.async_save))
  latest = checkpointer.latest_step()
  if latest is not None and latest > int(config.train.steps):
    checkpointer.close()
    raise rundir.RunDirError(
        f"train.steps {config.train.steps} is below the step {latest} of the checkpoint in "
        f"{checkpointer.directory}; give train.steps >= {latest} to resume, or --force_new to start afresh.")
  try:
    return _train(config, workdir, resume, inputs, checkpointer, latest, start_time, stop_at_step)
  finally:
    checkpointer.close()


def _train(config: Any, workdir: Path, resume: rundir.Resume, inputs: dict[str, str],
           checkpointer: checkpoint_lib.Checkpointer, latest: int | None, start_time: float,
           stop_at_step: int | None) -> dict[str, Any]:
  """`train` once the run directory is checked and the checkpointer is open."""
  datasets = inputs_lib.load_datasets(config_lib.data_settings(config), workdir, objective=config.objective,
                                      loss=config_lib.loss_settings(config), seed=int(config.seed))
  objective = objectives_lib.get(config.objective)
  # Packed-pair sizes are measured on the data and become part of the resolved config.
  config = _resolve_measured(config, datasets, objective.data)
  settings = config_lib.build_settings(config)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  dp = mesh_lib.data_parallel_size(mesh)
  for name, size in (("train.batch_size", config.train.batch_size // config.train.microbatches),
                     ("eval.batch_size", config.eval.batch_size)):
    if size % dp:
      raise ValueError(f"{name} (per microbatch) {size} must be divisible by the {dp} data-parallel "
                       f"shards of the mesh {dict(mesh.shape)}.")
  if not resume.new:
    # The measured fields, now that the data is read (the rest was compared up front).
    rundir.check_resume(workdir, config.to_dict(), may_change=MAY_CHANGE_ON_RESUME)
  parts = _cached_build(settings, mesh, datasets.info)
  layout = components_lib.device_batch_layout(settings, datasets.info)
  rundir.write_start(workdir, config.to_dict(), resume, mesh=dict(mesh.shape), data_info=vars(datasets.info),
                     host_memory=host_memory.status(), inputs=inputs, **datasets.provenance)

  init_key, train_key = jax.random.split(jax.random.key(int(config.seed)))
  batch_size = int(config.train.batch_size)
  iterator = data_lib.BatchIterator(datasets.train, batch_size=batch_size, seed=int(config.seed))
  initial = None
  adapters = models.lora.enabled(parts.model.config)
  if latest is None:
    state = initial = _initial_params(parts, config.model.init_from, init_key, train_key)
  elif adapters:
    # A LoRA checkpoint holds the adapters (and heads) only: the base comes again from
    # model.init_from.
    initial = _initial_params(parts, config.model.init_from, init_key, train_key)
    restored, data_state = checkpointer.restore(latest, _checkpointed(parts.abstract_state))
    state = restored.replace(params=models.lora.combine(initial.params, restored.params))
    iterator.restore(data_state)
    _log.info("resumed from %s step %d (LoRA adapters; base from model.init_from)", checkpointer.directory, latest)
  else:
    state, data_state = checkpointer.restore(latest, parts.abstract_state)
    iterator.restore(data_state)
    _log.info("resumed from %s step %d", checkpointer.directory, latest)

  reference = None
  if parts.objective.reference:
    if initial is None:
      initial = _initial_params(parts, config.model.init_from, init_key, train_key)
    reference_options = dict(mode=config.reference.mode, cache_dir=config.reference.cache_dir,
                             batch_size=int(config.reference.batch_size))
    if adapters:
      # LoRA: the reference is the base under the adapters, read from the current
      # parameters (cached: the starting ones, before any step donates them).
      reference = _Reference(parts, workdir, initial.params, datasets, **reference_options)
      reference.ref_params = None
    else:
      # A copy: the state's buffers are donated to the first step.
      ref_params = _copy(initial.params)
      reference = _Reference(parts, workdir, ref_params, datasets, **reference_options)
      if reference.mode == "cached":
        del ref_params
  if initial is not None and initial is not state:
    del initial
  # The run's base key, as saved in the (restored) state; a separate buffer, since the
  # state is donated to every step.
  key = jax.device_put(np.asarray(jax.device_get(state.rng)), mesh_lib.replicated(mesh))
  train_layout = _device_keys(layout, reference)

  total = int(config.train.steps)
  step = int(jax.device_get(state.step))
  # Records of steps after the restored one were written by a run killed before its
  # next checkpoint: this run writes them again.
  writer = rundir.MetricWriter(workdir, resume_from=step)
  finished = latest is not None and step >= total
  log_every, eval_every = int(config.train.log_every), int(config.eval.every)
  checkpoint_every = int(config.checkpoint.every)
  # A resumed run reports what it recorded so far (a finished one, only that).
  results: dict[str, Any] = _last_records(writer.kept) if latest is not None else {}
  progress = None
  if config.train.progress_bar and jax.process_index() == 0:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    progress = tqdm(total=total, initial=step, desc=config.objective, unit="step", dynamic_ncols=True)
  window_start, window_steps = time.time(), 0
  examples_per_second = None  # Not measured: no step was timed.

  def run_eval(at_step: int) -> None:
    if datasets.eval is None:
      return
    metrics = evaluate_dataset(parts, state.params, datasets.eval, reference,
                               batch_size=int(config.eval.batch_size), ece_bins=int(config.eval.ece_bins))
    writer.write(at_step, metrics, split="eval")
    results.update({f"eval/{k}": v for k, v in metrics.items()})
    _log.info("step %d eval: %s", at_step, _format(metrics, tuple(metrics)))

  first_step = step
  packed_shapes: set[tuple[int, ...]] = set()
  saves = checkpoint_lib.LoopSaves(
      checkpointer, lambda: (_checkpointed(state) if adapters else state, iterator.state()),
      step=step, total=total, every=checkpoint_every, stop_at_step=stop_at_step)

  try:
    with saves:
      while step < total:
        if saves.stop_here(step):
          break
        host_batch = iterator.next()
        if reference is not None:
          host_batch = reference.host("train", host_batch)
        batch = _device_batch(host_batch, train_layout, mesh, settings.packing, int(config.train.microbatches))
        if "packed_tokens" in batch:
          _note_packed_shape(batch, packed_shapes, results)
        if reference is not None:
          batch = reference.device(batch, int(config.train.microbatches), state.params)
        state, metrics = parts.train_step(state, batch, key)
        step += 1
        window_steps += 1
        if step == first_step + 1:
          # Throughput excludes the first step's compilation.
          jax.block_until_ready(state)
          window_start, window_steps = time.time(), 0
        if step % log_every == 0 or step == total:
          metrics = {k: float(v) for k, v in _host(metrics).items()}
          elapsed = time.time() - window_start
          if window_steps:
            examples_per_second = window_steps * batch_size / max(elapsed, 1e-9)
            metrics["examples_per_second"] = examples_per_second
          window_start, window_steps = time.time(), 0
          record_train_metrics(
              step, metrics, writer=writer, results=results, progress=progress,
              shown=("loss", "accuracy", "examples_per_second"),
              max_consecutive_skips=int(config.optim.max_consecutive_skips), unit="step", check="the data",
              checkpoint_dir=checkpointer.directory)
        if progress is not None:
          progress.update(1)
        if eval_every and step % eval_every == 0 and step < total:
          run_eval(step)
        saves.periodic(step)
      if not saves.preempted and not finished:
        run_eval(step)
        saves.final(step)
  finally:
    if progress is not None:
      progress.close()
    writer.close()
  results.update(step=step, preempted=saves.preempted, seconds=time.time() - start_time,
                 examples_per_second=examples_per_second)
  results["state"] = state
  return results
