"""Everything a run compiles, built from (settings, mesh, data description) alone.

    parts = build(settings, mesh, info)                   # settings: BuildSettings
    state = parts.init_state(init_key, train_key)         # sharded from birth
    # or, from a pretrained base: only the adapters and heads are initialised
    params = load(combine(parts.abstract_state.params, parts.init_trainable(init_key)))
    state = parts.state_from_params(params, train_key)
    state, metrics = parts.train_step(state, batch, key)  # jitted, donated

Nothing here reads data or allocates parameters except `init_state`, so the same
`build` serves ahead-of-time planning: `parts.train_step.lower(parts.abstract_state,
abstract_batch(settings, info, batch_size), key_shape)` compiles the step for any mesh with abstract
shapes only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
from typing import Any, Callable, Generic, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import models
from rlhf_jax.data import packing
from rlhf_jax.train import networks
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import optim
from rlhf_jax.train import padding_free
from rlhf_jax.train import pretrained
from rlhf_jax.train import reference as reference_lib
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import step as step_lib
from rlhf_jax.train import inputs as inputs_lib
from rlhf_jax.train.inputs import DataInfo

__all__ = [
    "FAST_COMPILE_OPTIONS",
    "BuildCache",
    "BuildSettings",
    "Components",
    "MeshFunction",
    "abstract_batch",
    "axis_rules",
    "build",
    "compiler_options",
    "device_batch_layout",
]


# XLA options of `train.fast_compile`: no backend (LLVM) optimisation. Compilation is
# faster, steps slower; right for tests and the tiny CPU preset, where compiling takes
# longer than training.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiler_options(fast_compile: bool) -> dict[str, Any] | None:
  """The XLA compiler options of `train.fast_compile` (None: XLA's defaults)."""
  return dict(FAST_COMPILE_OPTIONS) if fast_compile else None


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  """What `build` compiles from: the config's values that change the compiled steps
  (batch sizes only change shapes; seeds, paths and cadences change nothing compiled).
  The config layer reads them (`rlhf_jax.train.config.build_settings`).

  Attributes:
    objective: the objective's registry name (`objective`).
    loss: the objective's settings dataclass (`loss`).
    model: `model` section.
    optim: `optim` section.
    packing: prompt sharing and padding-free rows (`data`), sizes resolved.
    steps: `train.steps` (the learning-rate schedule's length).
    microbatches: `train.microbatches` (gradient accumulation).
    fast_compile: `train.fast_compile`.
  """

  objective: str
  loss: Any
  model: networks.ModelSettings
  optim: optim.OptimizerSettings
  packing: padding_free.PackingSettings
  steps: int
  microbatches: int
  fast_compile: bool


_Built = TypeVar("_Built")


class BuildCache(Generic[_Built]):
  """The compiled pieces of the last `size` builds, by what they were built from, so that
  a loop called again in the same process with the same settings, mesh and data layout
  (a resumed run, a sweep over data seeds, tests) reuses the compiled steps."""

  def __init__(self, size: int = 4):
    self.size = size
    self._entries: "collections.OrderedDict[str, _Built]" = collections.OrderedDict()

  def get(self, what: Any, mesh: Mesh, build: Callable[[], _Built]) -> _Built:
    """The entry built from `what` (a JSON-able description; dataclasses are turned into
    dicts) on `mesh`; `build()` makes it when there is none."""
    key = json.dumps({"what": what, "mesh": {"shape": dict(mesh.shape),
                                            "devices": [d.id for d in mesh.devices.flat]}},
                     sort_keys=True, default=lambda x: dataclasses.asdict(x) if dataclasses.is_dataclass(x) else str(x))
    if key in self._entries:
      self._entries.move_to_end(key)
      return self._entries[key]
    built = self._entries[key] = build()
    while len(self._entries) > self.size:
      self._entries.popitem(last=False)
    return built


def axis_rules(mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  """The models' logical axis rules for `mesh`, plus the (replicated) ensemble axis."""
  return tuple(models.logical_axis_rules(mesh.axis_names)) + ((networks.ENSEMBLE_AXIS, None),)


class MeshFunction:
  """A jitted function that is traced, lowered and called inside the mesh and the
  logical-axis-rules contexts (needed by the models' `with_logical_constraint`)."""

  def __init__(self, jitted: Any, mesh: Mesh, rules: Any):
    self.jitted = jitted
    self.mesh = mesh
    self.rules = rules

  @contextlib.contextmanager
  def context(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def __call__(self, *args, **kwargs):
    with self.context():
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    """`jax.jit(...).lower` (ahead-of-time compilation with abstract arguments)."""
    with self.context():
      return self.jitted.lower(*args, **kwargs)


@dataclasses.dataclass
class Components:
  """The compiled pieces of a run (see the module docstring)."""

  build_settings: BuildSettings
  info: DataInfo
  objective: objectives_lib.Objective
  # The objective's hyper-parameters (`build_settings.loss`) and the batch layout.
  settings: Any
  layout: objectives_lib.Layout
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  rules: Any
  init_params: Callable[[jax.Array], Any]
  shardings: state_lib.TrainState
  abstract_state: state_lib.TrainState
  init_state: MeshFunction
  # init_key -> the adapters and heads of `init_state`'s parameters (the same values),
  # alone: the rest of a run from a pretrained base is read from its checkpoint.
  init_trainable: MeshFunction
  # (params, train_key) -> the TrainState at step 0 around `params` (donated).
  state_from_params: MeshFunction
  train_step: MeshFunction
  eval_step: MeshFunction
  # (ref_params, batch) -> reference columns; replicated outputs (for the cache) and
  # batch-sharded outputs (on the fly). None when the objective needs no reference.
  reference_cached: MeshFunction | None
  reference_on_the_fly: MeshFunction | None
  reference_groups: tuple[tuple[str, str, str, str], ...]

  @property
  def param_shardings(self) -> Any:
    return self.shardings.params


def device_batch_layout(settings: BuildSettings, info: DataInfo, *, packed: bool | None = None,
                        ) -> dict[str, tuple[tuple[int, ...], Any]]:
  """The arrays a training batch carries to the devices: {name: (per-example shape, dtype)}.

  `example_index` stays on the host (it only finds cached reference log-probs). With
  `data.padding_free` (or `packed=True`) the [B, T] pair (or sequence) arrays are
  replaced by the padding-free rows of `padding_free.pack_batch`, whose shapes change
  from batch to batch (given as None here).
  """
  length = info.max_length
  sequence = lambda prefix: {f"{prefix}tokens": ((length,), jnp.int32),
                             f"{prefix}attention_mask": ((length,), jnp.bool_),
                             f"{prefix}loss_mask": ((length,), jnp.bool_)}
  keys: dict[str, tuple[tuple[int, ...], Any]] = {}
  if info.kind == "pairs":
    keys.update(sequence("chosen_"))
    keys.update(sequence("rejected_"))
    keys.update(target_prob=((), jnp.float32), weight=((), jnp.float32), is_tie=((), jnp.bool_),
                annotator=((), jnp.int32))
    if inputs_lib.fixed_reliabilities(settings.objective, settings.loss) is not None:
      keys["reliability"] = ((), jnp.float32)
  elif info.kind == "sequences":
    keys.update(sequence(""))
  else:
    keys.update(sequence(""))
    keys["is_desirable"] = ((), jnp.bool_)
    if inputs_lib.uses_mismatched_pairs(settings.loss):
      keys.update(sequence("kl_"))
  objective = objectives_lib.get(settings.objective)
  if objective.reference:
    for group in reference_lib.reference_groups(info.kind, tuple(keys)):
      keys[group[3]] = ((), jnp.float32)
  if packed is None:
    packed = bool(settings.packing.padding_free) and info.kind in padding_free.PACKED_DATA
  if packed:
    sequences = info.kind == "sequences"
    replaced = packing.SEQUENCE_KEYS if sequences else packing.PAIR_SEQUENCE_KEYS
    keys = {k: v for k, v in keys.items() if k not in replaced}
    keys.update({k: (None, None) for k in padding_free.packed_keys(
        settings.packing.share_prompt, targets=objective.model != "reward", sequences=sequences)})
  return keys


def abstract_batch(settings: BuildSettings, info: DataInfo, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of one global training batch of `batch_size` examples (reference
  columns included).

  Padding-free batches have data-dependent shapes; this is the two-row layout, an upper
  bound of their size.
  """
  return {name: jax.ShapeDtypeStruct((int(batch_size), *shape), dtype)
          for name, (shape, dtype) in device_batch_layout(settings, info, packed=False).items()}


def build(build_settings: BuildSettings, mesh: Mesh, info: DataInfo, **preset_overrides: Any) -> Components:
  """Builds model, optimizer, shardings and the jitted init / train / eval / reference
  functions for `build_settings` on `mesh` (see the module docstring). `preset_overrides`
  change fields of the model preset (`TransformerConfig`), e.g. `n_layers` when planning."""
  objective = objectives_lib.get(build_settings.objective)
  settings = build_settings.loss
  layout = objectives_lib.Layout(
      shared_prompt=build_settings.packing.shared_layout if info.kind == "pairs" else None)
  model = networks.build_model(build_settings.model, info.vocab_size, objective.model, **preset_overrides)
  if info.max_length > model.config.max_len:
    raise ValueError(
        f"sequences of length {info.max_length} (data.max_length) exceed the model's max_len "
        f"{model.config.max_len} (preset {build_settings.model.preset!r}).")
  total_steps = int(build_settings.steps)
  tx = optim.make_optimizer(build_settings.optim, total_steps)
  if models.lora.enabled(model.config):
    # LoRA: the optimizer (and its state) covers the adapters and heads only.
    tx = pretrained.optimizer(tx)
  schedule = optim.learning_rate_schedule(build_settings.optim, total_steps)
  rules = axis_rules(mesh)

  extra = None
  if objective.extra_params is not None:
    extra = lambda key: objective.extra_params(key, settings, info)
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  init_params = state_lib.init_params_fn(model, batch_size=dp, length=min(8, model.config.max_len),
                                         extra_params=extra)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_params, jax.random.key(0))
    shardings = state_lib.state_shardings(boxed, tx, mesh, rules)
    abstract = state_lib.abstract_state(init_params, tx, shardings)
  options = compiler_options(build_settings.fast_compile)
  init_state = MeshFunction(
      state_lib.make_init_state(init_params, tx, shardings, compiler_options=options), mesh, rules)
  init_trainable = MeshFunction(state_lib.make_init_subset(
      init_params, models.lora.trainable_params, shardings.params, compiler_options=options), mesh, rules)
  state_from_params = MeshFunction(
      state_lib.make_state_from_params(tx, shardings, compiler_options=options), mesh, rules)
  train_step = MeshFunction(step_lib.make_train_step(
      objective, model, tx, mesh, shardings, settings=settings, layout=layout,
      microbatches=int(build_settings.microbatches), schedule=schedule, compiler_options=options),
      mesh, rules)
  eval_step = MeshFunction(step_lib.make_eval_step(
      objective, model, mesh, shardings.params, settings=settings, layout=layout,
      compiler_options=options), mesh, rules)

  groups: tuple = ()
  reference_cached = reference_on_the_fly = None
  if objective.reference:
    groups = reference_lib.reference_groups(
        info.kind, tuple(device_batch_layout(build_settings, info, packed=False)))
    # LoRA: the reference is the same parameters with the adapters off (the frozen base).
    reference_model = models.lora.base_model(model)
    reference_cached = MeshFunction(reference_lib.make_reference_fn(
        reference_model, groups, mesh, shardings.params, replicate_outputs=True, compiler_options=options,
        shared_layout=layout.shared_prompt), mesh, rules)
    reference_on_the_fly = MeshFunction(reference_lib.make_reference_fn(
        reference_model, groups, mesh, shardings.params, replicate_outputs=False, compiler_options=options,
        shared_layout=layout.shared_prompt), mesh, rules)
  return Components(
      build_settings=build_settings, info=info, objective=objective, settings=settings, layout=layout,
      model=model, tx=tx, schedule=schedule, mesh=mesh,
      rules=rules, init_params=init_params, shardings=shardings, abstract_state=abstract,
      init_state=init_state, init_trainable=init_trainable, state_from_params=state_from_params,
      train_step=train_step, eval_step=eval_step,
      reference_cached=reference_cached, reference_on_the_fly=reference_on_the_fly,
      reference_groups=groups)
