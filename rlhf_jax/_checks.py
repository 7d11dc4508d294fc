"""Trace-time argument checks shared by the losses and the feedback models.

The checks look only at static information (shapes, dtypes, Python scalars), so they
cost nothing inside `jax.jit` and fail when the function is traced, naming the argument.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp


def as_float(x: Any, name: str) -> jax.Array:
  """Returns `x` as a float32 (or float64) array; raises if its dtype is not floating.

  bfloat16 and float16 inputs are upcast so that the loss math runs in float32.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`{name}` must have a floating dtype, got {x.dtype} with shape {x.shape}.")
  if x.dtype in (jnp.bfloat16, jnp.float16):
    x = x.astype(jnp.float32)
  return x


def as_bool(x: Any, name: str) -> jax.Array:
  """Returns `x` as a boolean array; accepts bool, integer 0/1 and floating 0./1. masks."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    return x
  if jnp.issubdtype(x.dtype, jnp.number):
    return x != 0
  raise ValueError(f"`{name}` must be boolean or numeric 0/1, got dtype {x.dtype}.")


def check_rank(x: jax.Array, name: str, rank: int) -> None:
  if x.ndim != rank:
    raise ValueError(f"`{name}` must have rank {rank}, got shape {x.shape} (rank {x.ndim}).")


def check_same_shape(**arrays: jax.Array) -> None:
  """Raises when the named arrays do not all share one shape, listing every shape."""
  shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items()}
  if len(set(shapes.values())) > 1:
    listed = ", ".join(f"`{name}` {shape}" for name, shape in shapes.items())
    raise ValueError(f"shapes must match, got {listed}.")


def check_scalar_range(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
  """Checks a hyper-parameter against its valid range when it is a concrete number.

  Traced values (a hyper-parameter passed through `jit` as an argument) cannot be
  checked at trace time and are let through.
  """
  if isinstance(value, jax.core.Tracer):
    return
  if not isinstance(value, numbers.Real):
    try:
      value = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"`{name}` must be a real number, got {value!r}.") from None
  too_low = low is not None and (value < low or (value == low and not low_inclusive))
  too_high = high is not None and (value > high or (value == high and not high_inclusive))
  if too_low or too_high:
    left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low}"
    right = "inf)" if high is None else f"{high}" + ("]" if high_inclusive else ")")
    raise ValueError(f"`{name}` must lie in {left}, {right}, got {value}.")


def check_choice(value: str, name: str, choices: tuple[str, ...] | list[str]) -> None:
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")
