"""All seeds of an ablation cell in one vmapped, jitted program, where their shapes agree.

A cell function (`runner`'s `function(params, seeds) -> [metrics per seed]`) may be a
`SeedProgram`: the same computation in three stages,

  prepare(params, seed) -> (inputs, context)   host, per seed: the seed's data (NumPy or
                                               JAX, keyed by the seed) as a dict of arrays,
                                               and anything else the last stage needs
  compute(static, inputs) -> outputs           JAX, one seed: a pure, traceable function of
                                               the arrays (aggregation EM, a small model)
  finish(params, seeds, contexts, outputs)     host, all seeds: metric dicts, one per seed
                                               (may train every seed's reward model in one
                                               vmapped program, `worlds.models`)

with `static = static_of(params)` the hashable settings `compute` branches on (a method
name, static sizes). `run_seeds` stacks the seeds' inputs along a new leading axis and
runs `jax.jit(jax.vmap(compute))` once when every seed's inputs have the same tree,
shapes and dtypes and `sequential_because(params)` gives no reason against it;
otherwise (or with `vectorize=False`) it runs the jitted `compute` once per seed, and
says why in `SeedRun.note`. Inputs without arrays ({}) skip the JAX
stage (all the work is then in `finish`). Both paths compute the same per-seed
function, so their results agree to float tolerance (a vmapped `lax.while_loop` runs
until every seed has stopped, but a stopped seed's state no longer changes).

The compiled programs are cached by (compute, static, shapes): the cells of a sweep that
differ only in values, not in `static`, share one compilation. Vmapped seeds move in
lockstep: a loop runs until the slowest seed stops, and an inner search (a line search
in an M-step) runs every branch for every seed, so on a CPU the batch can take longer
than the seeds one after another; it pays where a wide device runs the batch at once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Hashable, Sequence

import jax
import numpy as np

__all__ = ["SeedProgram", "SeedRun", "run_seeds", "shape_mismatch"]

Arrays = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SeedProgram:
  """A cell function split into host preparation, a per-seed JAX stage and a host finish.

  Calling it as `program(params, seeds)` is the runner's cell-function contract (the
  metric dicts, vectorized where shapes allow); `run_seeds` also says how it ran.
  """

  prepare: Callable[[dict[str, Any], int], tuple[Arrays, Any]]
  compute: Callable[[Hashable, Arrays], Arrays]
  finish: Callable[[dict[str, Any], list[int], list[Any], list[Arrays]], list[dict[str, float]]]
  static_of: Callable[[dict[str, Any]], Hashable] = lambda params: None
  # Why these params run seed after seed although shapes agree (None: vmap them), e.g. a
  # method whose vmapped line search costs more than the seeds one after another.
  sequential_because: Callable[[dict[str, Any]], str | None] = lambda params: None
  doc: str = ""  # what the cell computes (the docstring a plain cell function would have)

  def __call__(self, params: dict[str, Any], seeds: Sequence[int]) -> list[dict[str, float]]:
    return run_seeds(self, params, seeds).metrics


@dataclasses.dataclass(frozen=True)
class SeedRun:
  """The metrics per seed, whether the JAX stage ran vmapped, and why not when it did not."""

  metrics: list[dict[str, float]]
  vectorized: bool
  note: str | None


def shape_mismatch(inputs: Sequence[Arrays], seeds: Sequence[int]) -> str | None:
  """None when every seed's inputs have one tree, shapes and dtypes; else the first difference."""
  first_leaves, first_tree = jax.tree.flatten(inputs[0])
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(inputs[0])[0]]
  for seed, other in zip(seeds[1:], inputs[1:]):
    leaves, tree = jax.tree.flatten(other)
    if tree != first_tree:
      return f"the inputs of seed {seeds[0]} and seed {seed} differ in structure"
    for path, a, b in zip(paths, first_leaves, leaves):
      a_shape, b_shape = np.shape(a), np.shape(b)
      a_type, b_type = np.result_type(a), np.result_type(b)
      if a_shape != b_shape or a_type != b_type:
        return (f"shapes differ between seeds: inputs{path} is {a_type}{list(a_shape)} at seed {seeds[0]}, "
                f"{b_type}{list(b_shape)} at seed {seed}")
  return None


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vmapped(compute: Callable[[Hashable, Arrays], Arrays], static: Hashable, stacked: Arrays) -> Arrays:
  return jax.vmap(functools.partial(compute, static))(stacked)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _single(compute: Callable[[Hashable, Arrays], Arrays], static: Hashable, inputs: Arrays) -> Arrays:
  return compute(static, inputs)


def run_seeds(program: SeedProgram, params: dict[str, Any], seeds: Sequence[int], *,
              vectorize: bool = True) -> SeedRun:
  """Runs `program` for `seeds`: the JAX stage vmapped over seeds where shapes allow.

  Args:
    program: the cell's three stages.
    params: the cell's parameters (plain values).
    seeds: the seeds to run, in order; the metrics come back in this order.
    vectorize: False runs the JAX stage once per seed even when shapes agree (the
      reference the vmapped path is checked and timed against); chosen, so no note.
  """
  seeds = [int(s) for s in seeds]
  prepared = [program.prepare(params, s) for s in seeds]
  inputs = [p[0] for p in prepared]
  contexts = [p[1] for p in prepared]
  static = program.static_of(params)
  note = shape_mismatch(inputs, seeds) if len(seeds) > 1 else None
  if note is None and len(seeds) > 1:
    note = program.sequential_because(params)
  if not jax.tree.leaves(inputs[0]) and note is None:
    # No JAX stage for these params (the work is all in `finish`): nothing runs per seed.
    outputs, vectorized = [{} for _ in seeds], True
  elif vectorize and note is None and len(seeds) > 1:
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *inputs)
    batched = jax.device_get(_vmapped(program.compute, static, stacked))
    outputs = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), batched) for i in range(len(seeds))]
    vectorized = True
  else:
    outputs = [jax.tree.map(np.asarray, jax.device_get(_single(program.compute, static, x))) for x in inputs]
    vectorized = False
  metrics = program.finish(params, seeds, contexts, outputs)
  if len(metrics) != len(seeds):
    raise ValueError(f"SeedProgram.finish returned {len(metrics)} results for {len(seeds)} seeds.")
  return SeedRun(metrics=metrics, vectorized=vectorized, note=None if vectorized or not vectorize else note)
