"""Benchmark: the pieces of a train step one by one, JAX (jitted) against PyTorch (eager).

    .venv/bin/python benchmarks/kernels.py
    .venv/bin/python benchmarks/kernels.py --tokens=2560 --d_model=256 --d_ff=1024 \\
        --n_heads=4 --documents=8 --width=392

`benchmarks/train_step.py` times whole steps; this times what they are made of, so that
a gap between the two frameworks can be put on a kernel. The default sizes are those of
one padding-free reward-model step of the issue's benchmark (a row of 2560 slots holding
8 pairs, attention per document 392 slots wide). Pieces:

  * the six matmuls of a linear layer [n, a] -> [n, b], for the feed-forward layer's
    up (d_model -> d_ff) and down (d_ff -> d_model) projections: forward `x W`, input
    gradient `g W^T` and weight gradient `x^T g`, in the forms of `layers.project`'s
    hand-written gradient (JAX) and of `torch.matmul` (PyTorch);
  * the SwiGLU feed-forward layer, forward and backward (`layers.FeedForward` and
    `torch_reference.FeedForward` with the same weights); the same layer in JAX as
    separately jitted pieces; and the sum of the times of its nine matmul forms timed
    alone, so that the rest (activation, products and their gradients, and what the
    matmuls lose inside the layer) shows. PyTorch's layer computes the gate and up
    projections as one matmul of twice the width; its sum is of the same nine forms;
  * causal attention over the documents, forward and backward: `layers.causal_attention`
    against `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`, and
    JAX's `layers.document_attention` on the packed row (its gathers included), which
    has no PyTorch counterpart in the two-row layout.

Each piece is run on the same float32 inputs on both sides; the script prints the
median time over `--repeats` calls (after two warm-up calls), PyTorch over JAX, and how
far the two results are apart (largest difference over the largest value). GFLOP/s
count every attention score, including the masked ones that both sides partly skip.
`--jax_dots` chooses XLA:CPU's matmul kernels and `--keep_freed_memory` the malloc
settings, as in `train_step.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

from rlhf_jax import models  # noqa: E402
from rlhf_jax.models import layers  # noqa: E402
from train_step import add_process_flags, configure_process  # noqa: E402

try:  # optional, as in train_step.py
  import torch  # noqa: E402

  import torch_reference  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the environment
  torch, torch_reference, TORCH_ERROR = None, None, error
else:
  TORCH_ERROR = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--tokens", type=int, default=2560, help="slots of the row (n)")
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--d_ff", type=int, default=1024)
  parser.add_argument("--n_heads", type=int, default=4)
  parser.add_argument("--documents", type=int, default=8, help="documents attended one by one")
  parser.add_argument("--width", type=int, default=392, help="slots per document")
  parser.add_argument("--repeats", type=int, default=20)
  add_process_flags(parser)
  parser.add_argument("--no_torch", action="store_true", help="JAX column only")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for name in ("tokens", "d_model", "d_ff", "n_heads", "documents", "width", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  if args.d_model % args.n_heads:
    parser.error(f"--d_model ({args.d_model}) must be a multiple of --n_heads ({args.n_heads})")
  return args


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
  for _ in range(2):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _dot_general(contract: tuple[int, int]) -> Callable[[jax.Array, jax.Array], jax.Array]:
  dims = (((contract[0],), (contract[1],)), ((), ()))
  return jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims))


def matmul_pieces(n: int, a: int, b: int, rng: np.random.Generator, label: str) -> list[dict[str, Any]]:
  """The forward, input-gradient and weight-gradient products of a linear layer
  [n, a] -> [n, b], each with its operands (float32) and both implementations."""
  x, w, g = (rng.standard_normal(s).astype(np.float32) for s in ((n, a), (a, b), (n, b)))
  forms = (
      (f"{label} forward x W [{n},{a}]x[{a},{b}]", (x, w), (1, 0), lambda p, q: p @ q),
      (f"{label} input grad g W^T [{n},{b}]x[{a},{b}]^T", (g, w), (1, 1), lambda p, q: p @ q.T),
      (f"{label} weight grad x^T g [{n},{a}]^T x[{n},{b}]", (x, g), (0, 0), lambda p, q: p.T @ q),
  )
  return [{"name": name, "inputs": inputs, "jax": _dot_general(contract), "torch": torch_fn,
           "flops": 2 * n * a * b} for name, inputs, contract, torch_fn in forms]


def feed_forward_piece(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
  """SwiGLU forward and backward: the loss sum(y * r) for a fixed random r, its
  gradients with respect to the input and the three kernels."""
  config = models.get_preset("tiny", d_model=args.d_model, d_ff=args.d_ff, n_heads=args.n_heads,
                             n_kv_heads=args.n_heads)
  module = layers.FeedForward(config)
  x = rng.standard_normal((1, args.tokens, args.d_model)).astype(np.float32)
  readout = rng.standard_normal((1, args.tokens, args.d_model)).astype(np.float32)
  params = jax.tree.map(np.asarray, nn.unbox(jax.jit(module.init)(jax.random.key(args.seed), jnp.asarray(x))["params"]))
  loss = lambda p, x: jnp.sum(module.apply({"params": p}, x) * readout)
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  def jax_fn(p, x):
    value, (dp, dx) = grad(p, x)
    return value, dx, dp["gate"], dp["up"], dp["down"]

  def torch_fn(p, x):
    layer = torch_reference.FeedForward(config)
    with torch.no_grad():
      layer.gate_up.weight.copy_(torch.from_numpy(np.concatenate([p["gate"], p["up"]], 1).T.copy()))
      layer.down.weight.copy_(torch.from_numpy(p["down"].T.copy()))
    weights, target = torch.from_numpy(readout), torch.from_numpy(x).requires_grad_()

    def run():
      layer.zero_grad(set_to_none=True)
      target.grad = None
      value = (layer(target) * weights).sum()
      value.backward()
      gate, up = layer.gate_up.weight.grad.T.split(config.d_ff, dim=1)
      return value, target.grad, gate, up, layer.down.weight.grad.T
    return run

  flops = 3 * 2 * args.tokens * 3 * args.d_model * args.d_ff
  return {"name": f"SwiGLU forward+backward [{args.tokens},{args.d_model}]->{args.d_ff}",
          "inputs": (params, x), "jax": jax_fn, "torch_factory": torch_fn, "flops": flops, "readout": readout}


def split_feed_forward_piece(layer: dict[str, Any]) -> dict[str, Any]:
  """The SwiGLU layer of `layer` (same weights, input and loss) computed as separately
  jitted pieces: each of its nine matmuls, the activation and its gradient on its own.
  Its time against the whole layer's shows whether XLA's fusion choices, or the
  matmuls themselves, cost the layer's extra time."""
  matmul, matmul_t, t_matmul = _dot_general((1, 0)), _dot_general((1, 1)), _dot_general((0, 0))
  activation = jax.jit(lambda a, b: jax.nn.silu(a) * b)

  @jax.jit
  def activation_grad(dh, a, b):
    s = jax.nn.sigmoid(a)
    return dh * b * (s * (1 + a * (1 - s))), dh * a * s

  total = jax.jit(lambda y, r: jnp.sum(y * r))
  add = jax.jit(jnp.add)

  def jax_fn(p, x, r):
    a, b = matmul(x, p["gate"]), matmul(x, p["up"])
    h = activation(a, b)
    value = total(matmul(h, p["down"]), r)
    dh, down = matmul_t(r, p["down"]), t_matmul(h, r)
    da, db = activation_grad(dh, a, b)
    dx = add(matmul_t(da, p["gate"]), matmul_t(db, p["up"]))
    return value, dx, t_matmul(x, da), t_matmul(x, db), down

  params, x = layer["inputs"]
  return {"name": "  same, each matmul and the activation jitted on its own",
          "inputs": (params, x[0], layer["readout"][0]), "jax": jax_fn, "torch_factory": None,
          "flops": layer["flops"], "readout": layer["readout"]}


def attention_pieces(args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
  """Causal attention over `documents` full documents of `width` slots, forward and
  backward (loss sum(out * r)): as a batch of documents, and as one packed row."""
  d, w, h = args.documents, args.width, args.n_heads
  head_dim = args.d_model // h
  q, k, v, readout = (rng.standard_normal((d, w, h, head_dim)).astype(np.float32) for _ in range(4))
  causal = jnp.tril(jnp.ones((w, w), jnp.bool_))[None, None]
  batched = lambda q, k, v: jnp.sum(layers.causal_attention(q, k, v, causal) * readout)
  batched_grad = jax.jit(jax.value_and_grad(batched, argnums=(0, 1, 2)))
  # Inputs, not constants: XLA would fold the gathers' transposes at compile time.
  slots = np.arange(d * w, dtype=np.int32).reshape(1, d, w)
  places = np.asarray(layers.document_places(jnp.asarray(slots), d * w))
  row = lambda x: jnp.reshape(x, (1, d * w, h, head_dim))

  def packed(q, k, v, slots, places):
    return jnp.sum(layers.document_attention(row(q), row(k), row(v), slots, places) * row(readout))
  packed_grad = jax.jit(jax.value_and_grad(packed, argnums=(0, 1, 2)))

  def torch_fn(q, k, v):
    leaves = [torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).requires_grad_() for x in (q, k, v)]
    weights = torch.from_numpy(readout.transpose(0, 2, 1, 3).copy())

    def run():
      for leaf in leaves:
        leaf.grad = None
      value = (torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=True) * weights).sum()
      value.backward()
      return (value, *(leaf.grad.transpose(1, 2) for leaf in leaves))
    return run

  # Scores and weighted values, forward (2) and backward (4): 2 d h w^2 head_dim each.
  flops = 6 * 2 * d * h * w * w * head_dim
  flatten = lambda out: (out[0], *out[1])
  return [
      {"name": f"causal attention fwd+bwd, {d} documents x {w} slots, {h} heads",
       "inputs": (q, k, v), "jax": lambda *x: flatten(batched_grad(*x)), "torch_factory": torch_fn,
       "flops": flops, "readout": readout},
      {"name": "  same, as one packed row (document_attention, with gathers)",
       "inputs": (q, k, v, slots, places), "jax": lambda *x: flatten(packed_grad(*x)), "torch_factory": None,
       "flops": flops},
  ]


def pieces(args: argparse.Namespace) -> list[dict[str, Any]]:
  rng = np.random.default_rng(args.seed)
  return (matmul_pieces(args.tokens, args.d_model, args.d_ff, rng, "up")
          + matmul_pieces(args.tokens, args.d_ff, args.d_model, rng, "down")
          + [layer := feed_forward_piece(args, rng), split_feed_forward_piece(layer)]
          + attention_pieces(args, rng))


def run_jax(piece: dict[str, Any]) -> tuple[np.ndarray, ...]:
  out = piece["jax"](*(jax.device_put(x) for x in piece["inputs"]))
  return tuple(np.asarray(x) for x in (out if isinstance(out, tuple) else (out,)))


def torch_runner(piece: dict[str, Any]) -> Callable[[], Any] | None:
  if torch is None:
    return None
  if "torch" in piece:
    operands = [torch.from_numpy(x) for x in piece["inputs"]]
    return lambda: piece["torch"](*operands)
  return piece["torch_factory"](*piece["inputs"]) if piece["torch_factory"] else None


def relative_difference(first: tuple[Any, ...], second: tuple[Any, ...]) -> float:
  """Largest |difference| over the largest |value|, across all outputs."""
  pairs = [(np.asarray(a, np.float64), np.asarray(b.detach().numpy() if hasattr(b, "detach") else b, np.float64))
           for a, b in zip(first, second)]
  return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30)) for a, b in pairs)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  memory = configure_process(args)
  use_torch = torch is not None and not args.no_torch
  print(f"kernel benchmark: tokens={args.tokens} d_model={args.d_model} d_ff={args.d_ff} n_heads={args.n_heads} "
        f"documents={args.documents} width={args.width} (float32), median of {args.repeats}")
  print(f"jax {jax.__version__} (backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); "
        + (f"torch {torch.__version__} ({torch.get_num_threads()} threads)" if use_torch
           else f"torch: not used ({'--no_torch' if torch is not None else TORCH_ERROR})"))
  print(f"host memory, both sides (one process): {memory}")
  header = f"{'piece':64s}{'jax ms':>9s}{'GFLOP/s':>9s}{'torch ms':>10s}{'GFLOP/s':>9s}{'torch/jax':>10s}{'apart':>9s}"
  print(header)
  jax_ms: dict[str, float] = {}
  torch_ms: dict[str, float] = {}
  for piece in pieces(args):
    device_inputs = tuple(jax.device_put(x) for x in piece["inputs"])
    jax_fn = lambda: jax.block_until_ready(piece["jax"](*device_inputs))
    name, flops = piece["name"], piece["flops"]
    jax_ms[name] = median_ms(jax_fn, args.repeats)
    line = f"{name:64s}{jax_ms[name]:9.2f}{flops / jax_ms[name] / 1e6:9.0f}"
    runner = torch_runner(piece) if use_torch else None
    if runner is not None:
      torch_ms[name] = median_ms(runner, args.repeats)
      torch_out = runner()
      apart = relative_difference(run_jax(piece), torch_out if isinstance(torch_out, tuple) else (torch_out,))
      line += (f"{torch_ms[name]:10.2f}{flops / torch_ms[name] / 1e6:9.0f}"
               f"{torch_ms[name] / jax_ms[name]:9.2f}x{apart:9.1e}")
    print(line)
  # The feed-forward layer is 2 up forwards, 1 down forward, and in the backward 2 up and
  # 1 down input gradients and 2 up and 1 down weight gradients.
  counts = {"forward": (2, 1), "input grad": (2, 1), "weight grad": (2, 1)}
  for side, times in (("jax", jax_ms), ("torch", torch_ms)):
    if not times:
      continue
    matmuls = sum(times[next(n for n in times if n.startswith(f"{part} {kind}"))] * count
                  for kind, (up, down) in counts.items() for part, count in (("up", up), ("down", down)))
    layer = times[next(n for n in times if n.startswith("SwiGLU"))]
    print(f"{side}: SwiGLU layer {layer:.2f} ms = its nine matmul forms timed alone {matmuls:.2f} ms "
          f"+ the rest {layer - matmuls:.2f} ms")


if __name__ == "__main__":
  main()
