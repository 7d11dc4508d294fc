"""The train state and its creation directly in its sharded layout.

    TrainState(step, params, opt_state, rng)

Parameters are created already sharded (big_vision / flax "scale up" pattern):
`jax.eval_shape(init)` gives abstract parameters with their logical axis names, the
sharding rules turn them into NamedShardings, and `jax.jit(init, out_shardings=...)`
materialises every shard on its own device, so no device ever holds a full copy.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from rlhf_jax.models import lora
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import optim

__all__ = [
    "TrainState",
    "abstract_state",
    "init_params_fn",
    "make_init_state",
    "make_init_subset",
    "make_state_from_params",
    "state_shardings",
]


class TrainState(struct.PyTreeNode):
  """Everything a step reads and a checkpoint saves (besides the data position).

  Attributes:
    step: int32 scalar, number of optimizer steps taken (skipped ones included).
    params: the parameters (a dict tree).
    opt_state: the optax state (AdamW moments, schedule count, NaN-guard counters).
    rng: uint32 key data of the run's base key; step `s` uses `fold_in(key, s)`.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  @property
  def skipped_updates(self) -> jax.Array:
    """Updates skipped by the NaN/Inf guard so far (int32 scalar)."""
    return optim.skipped_updates(self.opt_state)


def init_params_fn(
    model: nn.Module,
    *,
    batch_size: int,
    length: int,
    extra_params: Callable[[jax.Array], dict[str, Any]] | None = None,
) -> Callable[[jax.Array], Any]:
  """`key -> boxed params` of `model` (and the objective's extra parameters, under
  `lora.OBJECTIVE_KEY`).

  The dummy input only fixes the traced shapes; parameter shapes do not depend on it.
  """

  def init(key: jax.Array) -> Any:
    model_key, extra_key = jax.random.split(key)
    tokens = jnp.zeros((batch_size, length), jnp.int32)
    mask = jnp.ones((batch_size, length), jnp.bool_)
    params = dict(model.init(model_key, tokens, mask)["params"])
    extra = extra_params(extra_key) if extra_params is not None else {}
    if extra:  # beside the network's, under one key (what LoRA trains in full, no checkpoint holds)
      params[lora.OBJECTIVE_KEY] = extra
    return params

  return init


def state_shardings(
    boxed_params: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Any,
) -> TrainState:
  """NamedShardings of every TrainState leaf: parameters from their logical names,
  optimizer moments like their parameters (`optax.tree_utils.tree_map_params`),
  counters and the key replicated."""
  param_sh = mesh_lib.param_shardings(boxed_params, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, mesh_lib.unbox_values(boxed_params))
  replicated = mesh_lib.replicated(mesh)
  masked = any(isinstance(x, optax.MaskedNode) for x in jax.tree.leaves(
      abstract_opt, is_leaf=lambda x: isinstance(x, optax.MaskedNode)))
  if masked:
    # Moments of only some parameters (LoRA: `optax.multi_transform`): each takes the
    # sharding of the parameter at the end of its path.
    opt_sh = _shardings_by_path(abstract_opt, param_sh, replicated)
  else:
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt, param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)


def _shardings_by_path(abstract_opt: Any, param_sh: Any, replicated: NamedSharding) -> Any:
  """For every optimizer-state leaf, the sharding of the parameter whose dict path ends
  its own path (and has its shape), else replicated (counters, scalars)."""
  by_path = {tuple(k.key for k in path): sharding for path, sharding in jax.tree_util.tree_flatten_with_path(
      param_sh, is_leaf=lambda x: isinstance(x, NamedSharding))[0]}

  def pick(path, leaf):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for start in range(len(keys)):
      sharding = by_path.get(keys[start:])
      if sharding is not None and len(sharding.spec) <= len(leaf.shape):
        return sharding
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def make_init_state(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    shardings: TrainState,
    *,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[jax.Array, jax.Array], TrainState]:
  """A jitted `(init_key, train_key) -> TrainState` whose outputs land in `shardings`."""

  def init_state(init_key: jax.Array, train_key: jax.Array) -> TrainState:
    params = nn.unbox(init_params(init_key))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        rng=jax.random.key_data(train_key))

  return jax.jit(init_state, out_shardings=shardings, compiler_options=compiler_options)


def make_init_subset(
    init_params: Callable[[jax.Array], Any],
    select: Callable[[Any], Any],
    param_shardings: Any,
    *,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[jax.Array], Any]:
  """A jitted `init_key -> select(params)`: only the selected parameters of the full
  initialisation, with the values it gives them (the same keys), in their shardings.

  What `select` drops is never computed (XLA removes it), so a run that reads its base
  weights from a checkpoint initialises only the rest (LoRA adapters, a new head).
  """

  def init_subset(init_key: jax.Array) -> Any:
    return select(nn.unbox(init_params(init_key)))

  return jax.jit(init_subset, out_shardings=select(param_shardings), compiler_options=compiler_options)


def make_state_from_params(
    tx: optax.GradientTransformation,
    shardings: TrainState,
    *,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[Any, jax.Array], TrainState]:
  """A jitted `(params, train_key) -> TrainState` at step 0 around given parameters (a
  pretrained base with fresh adapters): the optimizer state is `tx.init(params)`, and
  the parameters are donated, so they are not copied."""

  def state_from_params(params: Any, train_key: jax.Array) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(train_key))

  return jax.jit(state_from_params, in_shardings=(shardings.params, None), out_shardings=shardings,
                 donate_argnums=0, compiler_options=compiler_options)


def abstract_state(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    shardings: TrainState,
) -> TrainState:
  """ShapeDtypeStructs (with shardings) of the TrainState: the restore target of a
  checkpoint and the input of ahead-of-time compilation; nothing is allocated."""

  def init_state(init_key, train_key):
    params = nn.unbox(init_params(init_key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(train_key))

  key = jax.random.key(0)
  shapes = jax.eval_shape(init_state, key, key)
  return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
