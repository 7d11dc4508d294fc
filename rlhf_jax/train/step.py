"""The train and eval steps: pure functions of explicit state, compiled once with shardings.

    train_step(state, batch, key) -> (state, metrics)

- randomness: `rng = fold_in(key, state.step)` (and `fold_in(rng, i)` for microbatch i);
- gradient accumulation: the global batch is split into `microbatches` pieces and a
  `lax.scan` sums their losses and gradients; since every microbatch loss is divided
  by the denominator of the whole batch (`objectives.weighted_sum`), the sum equals the
  full-batch loss and gradient for any per-example weights;
- LoRA: gradients (and their accumulator) cover only what the run trains, the adapters
  and any reward / value head (`lora.trainable_params`), never the frozen base;
- the optimizer (with its NaN/Inf guard) updates parameters and moments;
- compiled by `jax.jit` with `in_shardings`/`out_shardings` and the state donated.

Metrics are scalars: the loss, gradient norm, learning rate, skip counters and the
batch mean of every per-example output of the objective.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax.models import TransformerConfig, lora
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import optim
from rlhf_jax.train.objectives import Layout, Objective
from rlhf_jax.train.state import TrainState

__all__ = ["make_eval_step", "make_train_step", "split_microbatches", "train_step_fn"]

Batch = Mapping[str, jax.Array]


def _as_key(key: jax.Array) -> jax.Array:
  """Accepts a typed key or raw uint32 key data."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def split_microbatches(batch: Batch, count: int) -> dict[str, jax.Array]:
  """[B, ...] -> [count, B / count, ...], microbatch m holding rows m, m + count, ...

  Interleaving (rather than contiguous blocks) gives every data-parallel shard the same
  number of rows of each microbatch, so the split needs no communication.
  """
  result = {}
  for name, value in batch.items():
    size = value.shape[0]
    if size % count:
      raise ValueError(
          f"batch array {name!r} has {size} rows, not divisible by train.microbatches={count}.")
    result[name] = jnp.swapaxes(value.reshape(size // count, count, *value.shape[1:]), 0, 1)
  return result


def _merge_microbatches(outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Inverse of `split_microbatches` for the stacked per-example outputs."""
  return {k: jnp.swapaxes(v, 0, 1).reshape(-1, *v.shape[2:]) for k, v in outputs.items()}


def train_step_fn(
    objective: Objective,
    model: Any,
    tx: optax.GradientTransformation,
    *,
    settings: Any,
    layout: Layout = Layout(),
    microbatches: int = 1,
    schedule: optax.Schedule | None = None,
    microbatch_sharding: NamedSharding | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
  """The pure (not yet jitted) train step of `objective` with its `settings` (an
  instance of `objective.settings`); see the module docstring."""
  microbatches = int(microbatches)
  if microbatches < 1:
    raise ValueError(f"train.microbatches must be >= 1, got {microbatches}.")

  adapters = lora.enabled(model.config) if isinstance(getattr(model, "config", None), TransformerConfig) else False

  def loss_fn(trained, params, batch, rng, denominator, rows):
    """The loss as a function of `trained` (all parameters, or a LoRA run's adapters and
    heads, which then replace their leaves in `params`)."""
    batch = dict(batch, loss_denominator=denominator, loss_rows=rows)
    if not adapters:
      return objective.fn(trained, batch, rng, model=model, settings=settings, layout=layout)
    # LoRA: the adapters' dropout draws from this step's key.
    with lora.dropout_key(jax.random.fold_in(rng, 0x10BA)):
      return objective.fn(lora.combine(params, trained), batch, rng, model=model, settings=settings, layout=layout)

  # Differentiated with respect to `trained` only: a LoRA run computes no gradient of the
  # frozen base and its accumulator holds only the adapters and heads.
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: Batch, key: jax.Array):
    rng = jax.random.fold_in(_as_key(key), state.step)
    denominator = objective.denominator(batch, settings)
    # Rows of the global batch, so that per-example outputs can be scaled to average
    # correctly over the microbatches (the online objectives' loss components).
    rows = jnp.asarray(next(iter(batch.values())).shape[0], jnp.float32)
    trained = lora.trainable_params(state.params) if adapters else state.params
    if microbatches == 1:
      (loss, outputs), grads = grad_fn(trained, state.params, batch, rng, denominator, rows)
    else:
      micro = split_microbatches(batch, microbatches)
      if microbatch_sharding is not None:
        micro = jax.lax.with_sharding_constraint(micro, microbatch_sharding)

      def accumulate(carry, inputs):
        grads_sum, loss_sum = carry
        index, microbatch = inputs
        (loss, outputs), grads = grad_fn(
            trained, state.params, microbatch, jax.random.fold_in(rng, index), denominator, rows)
        return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss), outputs

      zeros = jax.tree.map(jnp.zeros_like, trained)
      (grads, loss), outputs = jax.lax.scan(
          accumulate, (zeros, jnp.zeros((), jnp.float32)), (jnp.arange(microbatches), micro))
      outputs = _merge_microbatches(outputs)

    grad_norm = optax.tree.norm(grads)
    if adapters:
      # The optimizer takes a full tree; its frozen part ignores these zeros (set_to_zero),
      # which XLA never materialises.
      grads = lora.combine(jax.tree.map(jnp.zeros_like, state.params), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    skipped_before = optim.skipped_updates(state.opt_state)
    metrics = {k: jnp.mean(v) for k, v in outputs.items() if k != "loss" and not k.startswith("label_")}
    metrics.update(
        loss=loss,
        grad_norm=grad_norm,
        skipped_updates=optim.skipped_updates(opt_state),
        update_skipped=optim.skipped_updates(opt_state) - skipped_before,
        consecutive_skips=optim.consecutive_skips(opt_state),
    )
    if schedule is not None:
      # The schedule counts applied updates only (a skipped one does not advance it).
      metrics["learning_rate"] = schedule(state.step - skipped_before)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step


def make_train_step(
    objective: Objective,
    model: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    shardings: TrainState,
    *,
    settings: Any,
    layout: Layout = Layout(),
    microbatches: int = 1,
    schedule: optax.Schedule | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
  """`jax.jit` of the train step: state in/out with `shardings` (donated), the batch split
  over ("data", "fsdp"), the key and the metrics replicated."""
  step = train_step_fn(
      objective, model, tx, settings=settings, layout=layout, microbatches=microbatches,
      schedule=schedule, microbatch_sharding=NamedSharding(mesh, PartitionSpec(None, mesh_lib.BATCH_AXES)))
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(
      step,
      in_shardings=(shardings, mesh_lib.batch_sharding(mesh), replicated),
      out_shardings=(shardings, replicated),
      donate_argnums=0,
      compiler_options=compiler_options,
  )


def make_eval_step(
    objective: Objective,
    model: Any,
    mesh: Mesh,
    param_shardings: Any,
    *,
    settings: Any,
    layout: Layout = Layout(),
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """`eval_step(params, batch) -> per-example outputs` (replicated, so every process can
  read them), with a fixed key (objectives are deterministic at evaluation)."""

  def eval_step(params, batch):
    batch = dict(batch, loss_denominator=jnp.ones((), jnp.float32),
                 loss_rows=jnp.asarray(next(iter(batch.values())).shape[0], jnp.float32))
    _, outputs = objective.fn(params, batch, jax.random.key(0), model=model, settings=settings, layout=layout)
    return outputs

  return jax.jit(
      eval_step,
      in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.replicated(mesh),
      compiler_options=compiler_options,
  )
