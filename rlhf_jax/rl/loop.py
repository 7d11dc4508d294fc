"""`train(config, workdir)` for online objectives: rollout, score, update; repeated.

  1. prompts   a data file's prompts (`rl.prompts`), or the toy prompts
  2. mesh      devices arranged as (data, fsdp, tensor) from `config.mesh`
  3. build     policy (+ critic), optimizer, shardings, the jitted rollout and update
  4. state     restored from the newest checkpoint in `<workdir>`, else initialised
               (already sharded) or loaded from `model.init_from`; the critic from the
               policy or the reward model (`model.value_init`)
  5. reward    reward-model checkpoints (an ensemble) or a Python function (`rl.rewards`)
  6. loop      per iteration i, with the key fold_in(base key, i):
                 rollout  sample num_samples completions of `rollout.prompts` prompts,
                          the reference's log-probs, the critic's values (`rl.rollout`)
                 score    the completions as text, by the reward source (host)
                 update   prepare + epochs x shuffled minibatches of the train step,
                          then the KL controller (`rl.update`)
               metrics every `train.log_every` iterations (metrics.jsonl, TensorBoard,
               progress bar); `samples.jsonl` every `train.samples_every`; checkpoints
               every `checkpoint.every`; SIGTERM saves and stops at the next iteration
  7. end       a final checkpoint; returns the final metrics

`train.steps` counts iterations. A checkpoint (`train.checkpoint`, at iteration i) holds
the TrainState (policy and critic parameters, optimizer, optimizer-step count, the run's
base key, so every later sampling key) as its "state" item, like an offline run's (so
`model.init_from`, `reference.checkpoint` and `load_params` read it), and the prompt
iterator's position with the KL coefficient as its "data" item: rerunning the same
command on the same workdir resumes exactly where the run stopped and gives the
uninterrupted run's numbers.

The reference of the KL is the starting policy (a copy of the initial parameters, made
again on resume), or `reference.checkpoint`. The loop reads its config here and hands
plain values down (`PromptSettings`, `RewardSettings`, `RolloutSettings`, the
objective's settings dataclass).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax import data as data_lib
from rlhf_jax import host_memory, models
from rlhf_jax.rl import prompts as prompts_lib
from rlhf_jax.rl import rewards as rewards_lib
from rlhf_jax.rl.rollout import make_rollout_fn
from rlhf_jax.rl.update import OnlineState, make_update_fn
from rlhf_jax.train import checkpoint as checkpoint_lib
from rlhf_jax.train import components as components_lib
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import networks
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import optim, pretrained, rundir
from rlhf_jax.train import score as score_lib
from rlhf_jax.train import state as state_lib
from rlhf_jax.train.loop import record_train_metrics

__all__ = ["OnlineComponents", "PromptInfo", "RolloutSettings", "build", "read_reward_settings", "train"]

_log = logging.getLogger(__name__)

VALUE_INITS = ("policy", "reward_model", "scratch")


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """Plain values of `config.rollout` (defaults and comments live in
  `rlhf_jax/train/config.py`)."""

  prompts: int
  num_samples: int
  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  cache_segments: int
  epochs: int
  minibatches: int

  def __post_init__(self):
    for name in ("prompts", "num_samples", "max_new_tokens", "epochs", "minibatches", "cache_segments"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rollout.{name} must be a positive int, got {value!r}.")
    if not self.temperature > 0:
      # A greedy sample has no distribution it was drawn from: no old log-probs, no KL.
      raise ValueError(f"rollout.temperature must be > 0 for online training, got {self.temperature!r}.")

  @classmethod
  def from_config(cls, section: Any) -> "RolloutSettings":
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


def read_reward_settings(config: Any) -> rewards_lib.RewardSettings:
  """`config.reward` (checkpoints a comma-separated string)."""
  section = config.reward
  checkpoints = tuple(p.strip() for p in str(section.checkpoints or "").split(",") if p.strip())
  return rewards_lib.RewardSettings(
      checkpoints=checkpoints, combine=str(section.combine), std_coef=float(section.std_coef),
      function=str(section.function or ""), batch_size=int(section.batch_size))


@dataclasses.dataclass(frozen=True)
class PromptInfo:
  """What the compiled functions need to know about the prompts."""

  vocab_size: int
  prompt_length: int
  pad_id: int
  eos_id: int


@dataclasses.dataclass
class OnlineComponents:
  """The compiled pieces of an online run (see `build`)."""

  objective: objectives_lib.Objective
  settings: Any
  layout: objectives_lib.Layout
  rollout_settings: RolloutSettings
  model: nn.Module
  tx: optax.GradientTransformation
  mesh: Mesh
  rules: Any
  shardings: OnlineState
  abstract_state: OnlineState
  init_state: components_lib.MeshFunction
  # init_key -> what `init_state` initialises of a run from a pretrained policy (the same
  # values), alone: adapters, heads, a critic from scratch (`_fresh_over_pretrained`).
  init_trainable: components_lib.MeshFunction
  # (params, train_key) -> the TrainState at step 0 around `params` (donated).
  state_from_params: components_lib.MeshFunction
  rollout: components_lib.MeshFunction
  update: components_lib.MeshFunction
  sampling: models.SamplingConfig
  update_rows: int

  @property
  def policy_shardings(self) -> Any:
    params = self.shardings.train.params
    return params["policy"] if self.objective.value_model else params


def _check_shapes(objective, settings, layout, rollout: RolloutSettings, dp: int, microbatches: int) -> int:
  """Checks the batch arithmetic (and `prepare` itself, traced on abstract arrays) before
  any work; returns the rows of the update's batch."""
  if rollout.prompts % dp:
    raise ValueError(f"rollout.prompts {rollout.prompts} must be divisible by the {dp} data-parallel shards of "
                     "the mesh (data x fsdp).")
  rows, n = rollout.prompts * rollout.num_samples, rollout.num_samples
  length = layout.prompt_length + layout.completion_length
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  abstract = objectives_lib.Rollout(
      tokens=spec((rows, length), jnp.int32), attention_mask=spec((rows, length), jnp.bool_),
      completion_mask=spec((rows, layout.completion_length), jnp.bool_),
      logprobs=spec((rows, layout.completion_length), jnp.float32), scores=spec((rows,), jnp.float32),
      stopped=spec((rows,), jnp.bool_), kl_coef=spec((), jnp.float32),
      ref_logprobs=spec((rows, layout.completion_length), jnp.float32) if objective.reference else None,
      values=spec((rows, layout.completion_length), jnp.float32) if objective.value_model else None, group_size=n)
  try:
    batch = jax.eval_shape(lambda r: objective.prepare(r, settings), abstract)
  except ValueError as error:
    raise ValueError(f"objective {objective.name!r} with rollout.num_samples={n}: {error}") from None
  update_rows = next(iter(batch.values())).shape[0]
  if update_rows % rollout.minibatches:
    raise ValueError(f"the update's {update_rows} rows (rollout.prompts x num_samples"
                     f"{' / 2 pairs' if update_rows != rows else ''}) must be divisible by rollout.minibatches "
                     f"{rollout.minibatches}.")
  size = update_rows // rollout.minibatches
  if size % (dp * microbatches):
    raise ValueError(f"minibatches of {size} rows must be divisible by the {dp} data-parallel shards x "
                     f"train.microbatches {microbatches}.")
  return update_rows


def _fresh_over_pretrained(value_model: bool, value_init: str) -> Callable[[Any], Any]:
  """The parameters a run from a pretrained policy ("hf:...") initialises (a selection
  of the full parameters): the adapters and heads (`lora.trainable_params`), and the
  whole critic when it starts from scratch; the rest is read from checkpoints
  (`_initial_state`)."""

  def select(params: Any) -> Any:
    fresh = models.lora.trainable_params(params)
    if value_model and value_init == "scratch":
      fresh = dict(fresh, value=params["value"])
    return fresh

  return select


def build(config: Any, mesh: Mesh, info: PromptInfo,
          value_config: models.TransformerConfig | None = None) -> OnlineComponents:
  """Model, optimizer, shardings and the jitted init / rollout / update for `config`."""
  objective = objectives_lib.get(config.objective)
  settings = config_lib.loss_settings(config)
  rollout = RolloutSettings.from_config(config.rollout)
  layout = objectives_lib.Layout(rollout=objectives_lib.RolloutLayout(
      prompt_length=info.prompt_length, completion_length=rollout.max_new_tokens,
      temperature=float(rollout.temperature)))
  model = networks.build_model(config_lib.model_settings(config), info.vocab_size,
                               "policy_value" if objective.value_model else "policy", value_config=value_config)
  length = info.prompt_length + rollout.max_new_tokens
  for name, cfg in (("policy", model.config), ("critic", value_config)):
    if cfg is not None and length > cfg.max_len:
      raise ValueError(f"prompts of {info.prompt_length} tokens (data.max_prompt_length at most) + "
                       f"rollout.max_new_tokens {rollout.max_new_tokens} = {length} exceed the {name}'s max_len "
                       f"{cfg.max_len}.")
  dp = mesh_lib.data_parallel_size(mesh)
  microbatches = int(config.train.microbatches)
  update_rows = _check_shapes(objective, settings, layout.rollout, rollout, dp, microbatches)
  total_steps = int(config.train.steps) * rollout.epochs * rollout.minibatches
  optimizer = config_lib.optimizer_settings(config)
  tx = optim.make_optimizer(optimizer, total_steps)
  if models.lora.enabled(model.config):
    # LoRA: the optimizer (and its state) covers the adapters and heads only.
    tx = pretrained.optimizer(tx)
  schedule = optim.learning_rate_schedule(optimizer, total_steps)
  rules = components_lib.axis_rules(mesh)
  init_params = state_lib.init_params_fn(model, batch_size=dp, length=min(8, model.config.max_len))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_params, jax.random.key(0))
    train_shardings = state_lib.state_shardings(boxed, tx, mesh, rules)
    abstract_train = state_lib.abstract_state(init_params, tx, train_shardings)
  replicated = mesh_lib.replicated(mesh)
  shardings = OnlineState(train=train_shardings, kl_coef=replicated)
  abstract = OnlineState(train=abstract_train,
                         kl_coef=jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated))
  options = components_lib.compiler_options(bool(config.train.fast_compile))
  init_state = components_lib.MeshFunction(
      state_lib.make_init_state(init_params, tx, train_shardings, compiler_options=options), mesh, rules)
  select = _fresh_over_pretrained(objective.value_model,
                                  str(config.model.value_init) if objective.value_model else "")
  init_trainable = components_lib.MeshFunction(state_lib.make_init_subset(
      init_params, select, train_shardings.params, compiler_options=options), mesh, rules)
  state_from_params = components_lib.MeshFunction(
      state_lib.make_state_from_params(tx, train_shardings, compiler_options=options), mesh, rules)
  sampling = models.SamplingConfig(
      max_new_tokens=rollout.max_new_tokens, temperature=float(rollout.temperature), top_k=int(rollout.top_k),
      top_p=float(rollout.top_p), eos_id=info.eos_id, pad_id=info.pad_id, num_samples=rollout.num_samples,
      cache_segments=rollout.cache_segments)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  policy_shardings = train_shardings.params["policy"] if objective.value_model else train_shardings.params
  rollout_fn = make_rollout_fn(objective, model, sampling, layout.rollout)

  def rollout_step(params, ref_params, prompt_tokens, prompt_mask, prompt_ids, rng, iteration):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng), iteration), 0)
    return rollout_fn(params, ref_params, prompt_tokens, prompt_mask, prompt_ids, key)

  # LoRA: no reference parameters (None), the reference is the base under the adapters.
  reference_shardings = None if models.lora.enabled(model.config) else policy_shardings
  rollout_jit = jax.jit(
      rollout_step,
      in_shardings=(train_shardings.params, reference_shardings, batch_sharding, batch_sharding, batch_sharding,
                    replicated, replicated),
      out_shardings=batch_sharding, compiler_options=options)
  update_fn = make_update_fn(
      objective, model, tx, settings=settings, layout=layout, group_size=rollout.num_samples,
      epochs=rollout.epochs, minibatches=rollout.minibatches, microbatches=microbatches, schedule=schedule,
      batch_sharding=batch_sharding,
      microbatch_sharding=NamedSharding(mesh, PartitionSpec(None, mesh_lib.BATCH_AXES)))

  def update_step(state, arrays, iteration):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.train.rng), iteration), 1)
    return update_fn(state, arrays, key)

  update_jit = jax.jit(update_step, in_shardings=(shardings, batch_sharding, replicated),
                       out_shardings=(shardings, replicated), donate_argnums=0, compiler_options=options)
  return OnlineComponents(
      objective=objective, settings=settings, layout=layout, rollout_settings=rollout, model=model, tx=tx,
      mesh=mesh, rules=rules, shardings=shardings, abstract_state=abstract, init_state=init_state,
      init_trainable=init_trainable, state_from_params=state_from_params,
      rollout=components_lib.MeshFunction(rollout_jit, mesh, rules),
      update=components_lib.MeshFunction(update_jit, mesh, rules), sampling=sampling, update_rows=update_rows)


# The compiled pieces of recent runs: a resumed run (or a test) in the same process
# with the same config, mesh and prompts reuses them instead of compiling again.
_BUILD_CACHE: components_lib.BuildCache[OnlineComponents] = components_lib.BuildCache()
# Config fields that change nothing compiled.
_NOT_COMPILED = ("seed", "checkpoint", "data", "reward", "reference")


def _cached_build(config: Any, mesh: Mesh, info: PromptInfo, value_config) -> OnlineComponents:
  compiled = {k: v for k, v in config.to_dict().items() if k not in _NOT_COMPILED}
  for name in ("log_every", "progress_bar", "samples_every", "samples_per_write"):
    compiled["train"].pop(name, None)
  for name in ("init_from", "value_init"):  # the critic's shape is `value_config`
    if not (name == "init_from" and pretrained.is_pretrained(compiled["model"].get(name))):  # hf: is the shape
      compiled["model"].pop(name, None)
  compiled["optim"].pop("max_consecutive_skips", None)
  # The KL coefficient is state (it starts the controller), never compiled in: the
  # objectives read it from the rollout.
  compiled["loss"].pop("kl_coef", None)
  return _BUILD_CACHE.get({"config": compiled, "info": info, "value": repr(value_config)}, mesh,
                          lambda: build(config, mesh, info, value_config))


# ----------------------------------------------------------------------------- state


@jax.jit
def _copy(tree: Any) -> Any:
  """A copy of a (sharded) tree in fresh buffers (the state's are donated each update)."""
  return jax.tree.map(lambda x: x.copy(), tree)


def load_policy(path: str | os.PathLike[str], policy_params: Any, field: str) -> Any:
  """A policy's parameters from a run's newest checkpoint, laid out like `policy_params`:
  a language-model run (SFT, DPO, ...; `checkpoint.load_params`) or an online run with
  a critic, whose policy is read alone from under "policy" (`score.restore_params`)."""
  try:
    _, step_dir = score_lib.latest_checkpoint(Path(path))
  except score_lib.ScoreError as error:
    raise FileNotFoundError(f"{field}: {error}") from None
  stored = ocp.PyTreeCheckpointer().metadata(step_dir / "state").item_metadata["params"]
  if "policy" not in stored:
    if "lm_head" not in stored and "embed" not in stored:
      raise ValueError(f"{field}: {path} does not hold a policy (its parameters are {sorted(stored)[:6]}); give "
                       "the workdir of a language-model run (sft, dpo, ...) or of an online run.")
    return checkpoint_lib.load_params(path, policy_params)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), policy_params)
  try:
    restored = score_lib.restore_params(step_dir, {"policy": abstract})
  except score_lib.ScoreError as error:
    raise ValueError(f"{field}: {error}") from None
  _log.info("%s: loaded the policy of %s", field, step_dir)
  return restored["policy"]


def _initial_state(parts: OnlineComponents, config: Any, init_key, train_key,
                   reward_settings: rewards_lib.RewardSettings, reward_heads: int = 1) -> state_lib.TrainState:
  """The run's starting TrainState: initialised, the policy from `model.init_from`, the
  critic from the policy or the reward model (`model.value_init`).

  From a pretrained policy ("hf:...") only what no checkpoint replaces is initialised
  (`init_trainable`); the rest stays abstract until each tensor is read straight into its
  shards, as in `train.loop` (the same state, bit for bit)."""
  if pretrained.is_pretrained(config.model.init_from):
    state = None
    params = models.lora.combine(parts.abstract_state.train.params, parts.init_trainable(init_key))
  else:
    state = parts.init_state(init_key, train_key)
    params = state.params
  policy = params["policy"] if parts.objective.value_model else params
  if pretrained.is_pretrained(config.model.init_from):
    policy = pretrained.load_into(config.model.init_from, policy, parts.model.config)
  elif config.model.init_from and models.lora.enabled(parts.model.config):
    policy = pretrained.load_base(config.model.init_from, policy, parts.model.config)
  elif config.model.init_from:
    policy = load_policy(config.model.init_from, policy, "model.init_from")
  if parts.objective.value_model:
    params = {"policy": policy, "value": _initial_critic(params["value"], policy, config.model.value_init,
                                                        reward_settings, reward_heads)}
  else:
    params = policy
  if state is None:  # from a pretrained policy: step 0 built around the parameters
    return parts.state_from_params(params, train_key)
  return state.replace(params=params)


def _initial_critic(value: Any, policy: Any, value_init: str, reward_settings: rewards_lib.RewardSettings,
                    reward_heads: int) -> Any:
  """The critic's starting parameters (`model.value_init`): `value` as initialised
  ("scratch"), the policy's backbone ("policy") or the reward model's ("reward_model")."""
  if value_init == "policy":
    # The critic's backbone is the policy without its output layer (same shapes).
    return dict(value, backbone=_copy({k: v for k, v in policy.items() if k != "lm_head"}))
  if value_init == "reward_model":
    # The reward head has K columns (heads); the critic's one column starts from the first.
    head = value["value_head"]
    wide = {name: jax.device_put(np.zeros(x.shape[:-1] + (reward_heads,), x.dtype), x.sharding)
            for name, x in head.items()}
    # Through the scorer's reader: a LoRA reward model's checkpoint holds only its adapters
    # and head, over the base of its own model.init_from.
    _, step_dir = score_lib.latest_checkpoint(reward_settings.checkpoints[0])
    loaded = score_lib.restore_params(step_dir, {"backbone": value["backbone"], "reward_head": wide})
    return {"backbone": loaded["backbone"],
            "value_head": _copy({name: x[..., :1] for name, x in loaded["reward_head"].items()})}
  return value


def _run(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict | None:
  """The config.json of a run directory, or None without one."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    return None
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(f"{path}: cannot read it ({error}).") from None


def _run_tokenizer(workdir: str | os.PathLike[str]) -> data_lib.Tokenizer | None:
  """The tokenizer a run trained with (`score.run_tokenizer`, checked against its
  run.json), or None for a run on the toy data."""
  if pretrained.is_pretrained(workdir):
    return pretrained.tokenizer(workdir)
  config = _run(workdir)
  if config is None or not config.get("data", {}).get("train"):
    return None
  return score_lib.run_tokenizer(Path(workdir), score_lib.tokenizer_source(config))


def _value_config(config: Any, prompts: prompts_lib.Prompts, reward: rewards_lib.RewardSettings
                  ) -> tuple[models.TransformerConfig | None, int]:
  """The critic's shape (None: the policy's) and the reward heads it starts from: the
  reward model's shape for value_init "reward_model", after checking that it can."""
  value_init = config.model.value_init
  if value_init not in VALUE_INITS:
    raise ValueError(f"model.value_init must be one of {', '.join(map(repr, VALUE_INITS))}; got {value_init!r}.")
  if value_init != "reward_model":
    return None, 1
  if not reward.checkpoints:
    raise ValueError("model.value_init='reward_model' needs a reward model (reward.checkpoints); with "
                     "reward.function use value_init='policy'.")
  rm_dir = Path(reward.checkpoints[0])
  rm_config = _run(rm_dir)
  if rm_config is None:
    raise ValueError(f"reward.checkpoints: {rm_dir} has no config.json; expected a reward-model run.")
  if rm_config.get("objective") != "reward_model":
    raise ValueError(f"reward.checkpoints: {rm_dir} trained {rm_config.get('objective')!r}, not a reward model.")
  if int(rm_config.model.ensemble_models) != 1:
    raise ValueError(f"model.value_init='reward_model': {rm_dir} is an ensemble of {rm_config.model.ensemble_models} "
                     "models (model.ensemble_models); the critic starts from one model (a run with several "
                     "reward_heads is fine: the first head is taken).")
  rm_tokenizer = _run_tokenizer(rm_dir)
  if prompts.toy or rm_tokenizer is None or rm_tokenizer.fingerprint != prompts.tokenizer.fingerprint:
    raise ValueError(f"model.value_init='reward_model': the critic reads the policy's tokens, so the policy must "
                     f"use the tokenizer of {rm_dir} ({getattr(rm_tokenizer, 'name', 'none')}); set data.tokenizer "
                     "to it (or leave it empty to take it), or use value_init='policy'.")
  return (networks.model_config(config_lib.model_settings(rm_config), prompts.vocab_size),
          int(rm_config.model.reward_heads))


# ----------------------------------------------------------------------------- host side


def _host(tree: Any) -> Any:
  """Device arrays as NumPy arrays on every process: replicated ones read locally, ones
  split over the batch gathered from every process (multi-process runs)."""
  def fetch(x):
    if jax.process_count() == 1 or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


class _SamplesWriter:
  """Appends rows of rollouts (prompt, completion, reward) to `<workdir>/samples.jsonl`;
  on resume from iteration s, lines of later iterations (written after that
  checkpoint) are dropped first (`rundir.truncate_records`), so the file holds every
  written iteration once."""

  def __init__(self, workdir: Path, resume_from: int):
    self.path = workdir / "samples.jsonl"
    self.active = jax.process_index() == 0
    if self.active and self.path.is_file():
      rundir.truncate_records(self.path, resume_from)

  def write(self, records: list[dict[str, Any]]) -> None:
    if not self.active:
      return
    with open(self.path, "a", encoding="utf-8") as f:
      for record in records:
        f.write(rundir.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def _finite(value: float) -> float | None:
  value = float(value)
  return value if np.isfinite(value) else None


# ----------------------------------------------------------------------------- train


def _check_config(config: Any) -> objectives_lib.Objective:
  objective = objectives_lib.get(config.objective)
  if not objective.online:
    raise ValueError(f"objective {config.objective!r} is trained offline (rlhf_jax.train.train), not by rlhf_jax.rl.")
  config_lib.loss_settings(config)
  for section, name in (("train", "steps"), ("train", "log_every"), ("train", "microbatches")):
    value = config[section][name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{section}.{name} must be a positive int, got {value!r}.")
  for section, name in (("train", "samples_every"), ("train", "samples_per_write"), ("checkpoint", "every")):
    value = config[section][name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{section}.{name} must be an int >= 0, got {value!r}.")
  RolloutSettings.from_config(config.rollout)
  return objective


# The config fields that may differ from a run directory's config.json when an online
# run is resumed (`rundir.check_resume`): how long, how often and on what layout it runs,
# as the offline `train.MAY_CHANGE_ON_RESUME` (whose reasons apply), plus the samples'
# cadence, the reward models' batch size and the sampler's cache segments (the same
# completions; log-probs up to float rounding).
MAY_CHANGE_ON_RESUME = (
    "train.steps", "train.log_every", "train.progress_bar", "train.samples_every", "train.samples_per_write",
    "checkpoint.every", "checkpoint.keep", "checkpoint.async_save", "mesh.data", "mesh.fsdp", "mesh.tensor",
    "train.microbatches", "model.remat", "reward.batch_size", "rollout.cache_segments",
)

TOY_REWARD = "rlhf_jax.rl.toy:good_marker_count"
# Key of the KL coefficient in a checkpoint's "data" item.
_KL_COEF = "kl_coef"


def _resolve(config: Any) -> Any:
  """The config with what the run decides filled in: the toy task's reward function when
  the prompts are the toy ones and no reward source is given (config.json shows it)."""
  if not config.data.train and not config.reward.checkpoints and not config.reward.function:
    config = copy.deepcopy(config)
    config.reward.function = TOY_REWARD
    _log.info("toy prompts and no reward source: the toy reward %s", TOY_REWARD)
  return config


def _input_fingerprints(config: Any, reward: rewards_lib.RewardSettings) -> dict[str, str]:
  """What the run reads besides its config: sha256 of the prompts and tokenizer files,
  and the checkpoint folders that the starting policy, the reference and the reward
  models resolve to (an earlier run may have saved a newer one since)."""
  inputs = {}
  for field in ("train", "tokenizer"):
    path = config.data.get(field)
    if path and Path(path).is_file():
      inputs[f"data.{field}"] = data_lib.fingerprint(path)
  runs = [("model.init_from", config.model.init_from), ("reference.checkpoint", config.reference.checkpoint)]
  runs += [(f"reward.checkpoints[{i}]", path) for i, path in enumerate(reward.checkpoints)]
  for name, path in runs:
    if path:
      try:
        inputs[name] = os.fspath(pretrained.checkpoint_path(path) if pretrained.is_pretrained(path)
                                 else checkpoint_lib.latest_step_dir(path))
      except FileNotFoundError:
        pass  # Reported when the parameters are loaded.
  return inputs


def train(config: Any, workdir: str | os.PathLike[str], *, stop_at_step: int | None = None,
          force_new: bool = False) -> dict[str, Any]:
  """Trains the online objective `config.objective`; returns the final metrics.

  Args:
    config: a config from `configs/{ppo,grpo,rloo,online_dpo}.py`.
    workdir: the run directory; an existing checkpoint there is resumed when the run
      directory holds the same config (up to `MAY_CHANGE_ON_RESUME`) and inputs.
    stop_at_step: stop (saving a checkpoint) once this iteration is reached, as a
      preemption would; the run resumes from there when started again. A run already
      at this iteration stops without training.
    force_new: start afresh: the earlier run's files in `workdir` are moved to
      `<workdir>/superseded/<time>/` (`rundir.supersede`).

  Returns:
    {"step" (iterations done), "preempted" (stopped early, resumable), "seconds",
    "train/<metric>" of the last logged iteration, "phase_seconds" {"rollout",
    "reward", "update"}: seconds of each phase of every iteration of this call,
    "state": the final `OnlineState`}.

  Raises:
    rundir.RunDirError: `workdir` is a file, or holds a run with other settings.
    ValueError: a config field a run cannot use (named).
  """
  objective = _check_config(config)
  config = _resolve(config)
  start_time = time.time()
  reward_settings = read_reward_settings(config)
  rollout_settings = RolloutSettings.from_config(config.rollout)
  prompt_settings = prompts_lib.PromptSettings(
      train=str(config.data.train), format=str(config.data.format), tokenizer=str(config.data.tokenizer),
      tokenizer_vocab_size=int(config.data.tokenizer_vocab_size),
      max_prompt_length=int(config.data.max_prompt_length), toy_num_prompts=int(config.data.toy.num_prompts),
      toy_vocab_size=int(config.data.toy.vocab_size), toy_max_prompt_words=int(config.data.toy.max_prompt_words),
      seed=int(config.seed))
  workdir = rundir.prepare(workdir)
  inputs = _input_fingerprints(config, reward_settings)
  resume = rundir.check_resume(workdir, config.to_dict(), may_change=MAY_CHANGE_ON_RESUME, inputs=inputs,
                               force_new=force_new)
  fallback = None  # The starting policy's tokenizer, else the (first) reward model's.
  for run in ([config.model.init_from] if config.model.init_from else []) + list(reward_settings.checkpoints[:1]):
    fallback = _run_tokenizer(run)
    if fallback is not None:
      break
  prompts = prompts_lib.load_prompts(prompt_settings, workdir, tokenizer_fallback=fallback)
  if rollout_settings.prompts > len(prompts):
    raise ValueError(f"rollout.prompts {rollout_settings.prompts} exceeds the {len(prompts)} distinct prompts of "
                     f"{config.data.train or 'the toy prompts (data.toy.num_prompts)'}.")
  if prompts.toy and reward_settings.checkpoints:
    _log.warning("toy prompts (data.train is empty) go to the reward models as numbers; give data.train to train "
                 "against a text reward model.")
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  value_config, reward_heads = _value_config(config, prompts, reward_settings) if objective.value_model else (None, 1)
  info = PromptInfo(vocab_size=prompts.vocab_size, prompt_length=prompts.prompt_length, pad_id=prompts.pad_id,
                    eos_id=prompts.eos_id)
  parts = _cached_build(config, mesh, info, value_config)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=int(config.checkpoint.keep), async_save=bool(config.checkpoint.async_save))
  try:
    latest = checkpointer.latest_step()
    if latest is not None and latest > int(config.train.steps):
      raise rundir.RunDirError(
          f"train.steps {config.train.steps} is below the iteration {latest} of the checkpoint in "
          f"{checkpointer.directory}; give train.steps >= {latest} to resume, or --force_new to start afresh.")
    reward_source = rewards_lib.make_reward_source(reward_settings, mesh=mesh)
    rundir.write_start(workdir, config.to_dict(), resume, mesh=dict(mesh.shape), data=prompts.provenance,
                       reward=reward_source.describe(), host_memory=host_memory.status(), inputs=inputs)
    return _train(config, parts, workdir, checkpointer, latest, prompts, reward_source, reward_settings,
                  rollout_settings, reward_heads, start_time, stop_at_step)
  finally:
    checkpointer.close()


def _train(config: Any, parts: OnlineComponents, workdir: Path, checkpointer: checkpoint_lib.Checkpointer,
           latest: int | None, prompts: prompts_lib.Prompts, reward_source: rewards_lib.RewardSource,
           reward_settings: rewards_lib.RewardSettings, rollout_settings: RolloutSettings, reward_heads: int,
           start_time: float, stop_at_step: int | None) -> dict[str, Any]:
  """`train` once the run directory is checked, the prompts read and the checkpointer open."""
  mesh = parts.mesh
  init_key, train_key = jax.random.split(jax.random.key(int(config.seed)))
  iterator = data_lib.BatchIterator(
      {"prompt_tokens": prompts.tokens, "prompt_mask": prompts.mask,
       "prompt_index": np.arange(len(prompts), dtype=np.int32)},
      batch_size=rollout_settings.prompts, seed=int(config.seed))
  initial = None
  adapters = models.lora.enabled(parts.model.config)
  if adapters and config.reference.checkpoint:
    raise ValueError("reference.checkpoint: a LoRA run's reference is its frozen base (the adapters off); "
                     "leave reference.checkpoint empty.")
  if latest is None or not config.reference.checkpoint:
    initial = _initial_state(parts, config, init_key, train_key, reward_settings, reward_heads)
  if latest is None:
    # From this config (a cached build may have been made with another coefficient).
    settings = config_lib.loss_settings(config)
    train_state, kl_coef = initial, np.float32(getattr(settings, "kl_coef", 0.0))
  elif adapters:
    # A LoRA checkpoint holds the adapters and heads; the base comes again from model.init_from.
    abstract = parts.abstract_state.train
    restored, data_state = checkpointer.restore(
        latest, abstract.replace(params=pretrained.checkpoint_params(abstract.params)))
    train_state = restored.replace(params=models.lora.combine(initial.params, restored.params))
    kl_coef = np.float32(data_state.pop(_KL_COEF))
    iterator.restore(data_state)
    _log.info("resumed from %s iteration %d (LoRA adapters)", checkpointer.directory, latest)
  else:
    train_state, data_state = checkpointer.restore(latest, parts.abstract_state.train)
    # The KL coefficient rides with the data position: a float32 is exact as a JSON number.
    kl_coef = np.float32(data_state.pop(_KL_COEF))
    iterator.restore(data_state)
    _log.info("resumed from %s iteration %d", checkpointer.directory, latest)
  state = OnlineState(train=train_state, kl_coef=jax.device_put(kl_coef, mesh_lib.replicated(mesh)))
  value_model = parts.objective.value_model
  if adapters:
    ref_params = None  # the base under the adapters, read from the policy's own parameters
  elif config.reference.checkpoint:
    template = state.train.params["policy"] if value_model else state.train.params
    ref_params = load_policy(config.reference.checkpoint, _copy(template), "reference.checkpoint")
  else:
    ref_params = _copy(initial.params["policy"] if value_model else initial.params)
  del initial
  # The base key, as saved in the (restored) state, in a buffer of its own (the state
  # is donated to every update).
  rng = jax.device_put(np.asarray(jax.device_get(state.train.rng)), mesh_lib.replicated(mesh))

  total = int(config.train.steps)
  step = int(latest or 0)
  # Records of iterations after the restored one were written by a run killed before its
  # next checkpoint: this run writes them again.
  writer = rundir.MetricWriter(workdir, resume_from=step)
  samples_writer = _SamplesWriter(workdir, step)
  finished = latest is not None and step >= total
  log_every, checkpoint_every = int(config.train.log_every), int(config.checkpoint.every)
  samples_every, samples_per_write = int(config.train.samples_every), int(config.train.samples_per_write)
  n = rollout_settings.num_samples
  prompt_length = prompts.prompt_length
  # A resumed run reports what it recorded so far (a finished one, only that).
  results: dict[str, Any] = {}
  for record in [r for r in writer.kept if r.get("split") == "train"][-1:]:
    results.update({f"train/{k}": (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v)
                    for k, v in record.items() if k not in ("step", "split")})
  phases: dict[str, list[float]] = {"rollout": [], "reward": [], "update": []}
  window: list[dict[str, float]] = []
  progress = None
  if config.train.progress_bar and jax.process_index() == 0:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    progress = tqdm(total=total, initial=step, desc=config.objective, unit="it", dynamic_ncols=True)

  def snapshot() -> tuple[Any, dict[str, Any]]:
    train_state = state.train
    if adapters:  # only the adapters and heads: the base is model.init_from's
      train_state = train_state.replace(params=pretrained.checkpoint_params(train_state.params))
    return train_state, {**iterator.state(), _KL_COEF: float(jax.device_get(state.kl_coef))}

  saves = checkpoint_lib.LoopSaves(checkpointer, snapshot, step=step, total=total, every=checkpoint_every,
                                   stop_at_step=stop_at_step, unit="iteration")
  try:
    with saves:
      while step < total:
        if saves.stop_here(step):
          break
        host_batch = iterator.next()
        device_prompts = mesh_lib.shard_batch(host_batch, mesh)
        iteration = np.int32(step)
        begin = time.perf_counter()
        arrays = parts.rollout(state.train.params, ref_params, device_prompts["prompt_tokens"],
                               device_prompts["prompt_mask"], device_prompts["prompt_index"], rng, iteration)
        sampled = _host({k: arrays[k] for k in ("tokens", "lengths", "stopped")})
        rolled = time.perf_counter()
        prompt_rows = np.repeat(host_batch["prompt_index"], n)
        prompt_texts = [prompts.texts[i] for i in prompt_rows]
        completion_texts = [prompts.completion_text(row[prompt_length:prompt_length + length])
                            for row, length in zip(sampled["tokens"], sampled["lengths"])]
        members = reward_source(prompt_texts, completion_texts)
        scores = rewards_lib.combine(members, reward_settings.combine, reward_settings.std_coef)
        arrays = dict(arrays, scores=mesh_lib.shard_batch({"scores": scores}, mesh)["scores"])
        scored = time.perf_counter()
        state, metrics = parts.update(state, arrays, iteration)
        jax.block_until_ready(state)
        done = time.perf_counter()
        step += 1
        for name, seconds in (("rollout", rolled - begin), ("reward", scored - rolled), ("update", done - scored)):
          phases[name].append(seconds)
        metrics = {k: float(v) for k, v in _host(metrics).items()}
        if members.shape[1] > 1:
          metrics["reward_member_std"] = float(np.mean(np.std(members, axis=1)))
        metrics.update(seconds_rollout=rolled - begin, seconds_reward=scored - rolled, seconds_update=done - scored)
        window.append(metrics)
        if step % log_every == 0 or step == total:
          # Means over the iterations since the last write (counters: their last value;
          # the updates skipped in the window: their sum).
          logged = {k: float(np.mean([m[k] for m in window if k in m])) for k in window[-1]}
          for name in ("skipped_updates", "consecutive_skips", "optimizer_steps", "kl_coef", "learning_rate"):
            if name in metrics:
              logged[name] = metrics[name]
          logged["update_skipped"] = float(sum(m.get("update_skipped", 0.0) for m in window))
          window = []
          record_train_metrics(
              step, logged, writer=writer, results=results, progress=progress, shown=("reward_mean", "kl", "loss"),
              max_consecutive_skips=int(config.optim.max_consecutive_skips), unit="iteration",
              check="the rewards", checkpoint_dir=checkpointer.directory)
        if samples_every and step % samples_every == 0 and samples_per_write:
          rows = np.unique(np.linspace(0, len(scores) - 1, min(samples_per_write, len(scores))).astype(int))
          samples_writer.write([{
              "step": step, "row": int(r), "prompt_index": int(prompt_rows[r]), "prompt": prompt_texts[r],
              "completion": completion_texts[r], "reward": _finite(scores[r]),
              "member_rewards": [_finite(v) for v in members[r]] if members.shape[1] > 1 else None,
              "length": int(sampled["lengths"][r]), "ended": bool(sampled["stopped"][r])} for r in rows])
        if progress is not None:
          progress.update(1)
        saves.periodic(step)
      if not saves.preempted and not finished:
        saves.final(step)
  finally:
    if progress is not None:
      progress.close()
    writer.close()
  results.update(step=step, preempted=saves.preempted, seconds=time.time() - start_time, phase_seconds=phases)
  results["state"] = state
  return results
