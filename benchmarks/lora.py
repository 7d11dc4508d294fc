"""Benchmark: LoRA DPO against full DPO, train-step time and peak memory on one model.

    .venv/bin/python benchmarks/lora.py                          # SmolLM2-135M shapes (--preset)
    .venv/bin/python benchmarks/lora.py --preset=tiny --steps=3  # a quick check
    .venv/bin/python benchmarks/lora.py --init_from=hf:smollm2   # the real checkpoint's shapes

Both sides are the trainer's own compiled DPO step (`rlhf_jax.train.components.build`,
configs/dpo.py's settings) on the same model shape, batch and sequence length, with
random pairs: "full" trains every parameter (AdamW moments for all of them) and, with
the reference on the fly (default), holds a second copy of the parameters for the
reference forward; "lora" trains rank-r adapters (`--rank`, `--targets`) and the
reference is the same parameters with the adapters off. Values do not change the
timing, so the weights are a random initialisation (with `--init_from=hf:...` the shapes
are the checkpoint's, nothing is read). `--reference=cached` feeds precomputed reference
log-probs instead (no reference forward on either side).

Each side runs in a fresh Python process and prints one JSON line; the parent prints the
two side by side: parameters trained, bytes of parameters and optimizer state, compile
seconds, median step seconds over `--steps` (after one warm-up step), and the peak
resident memory of the process (VmHWM) after the steps. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    # SmolLM2-135M (Llama architecture, GQA 9 / 3 heads, tied embeddings, 49152-token vocabulary).
    "smollm2": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536, max_len=2048,
                    norm_eps=1e-5, tie_embeddings=True),
}


def _status_kb(field: str) -> int:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def _at_least_one(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--preset", default="smollm2",
                      help="model shape: a rlhf_jax.models preset (tiny, 125m, ...) or smollm2")
  parser.add_argument("--init_from", default="", help="hf:PATH or hf:smollm2: that checkpoint's shapes instead")
  parser.add_argument("--batch_size", type=_at_least_one, default=8, help="pairs per step")
  parser.add_argument("--max_length", type=_at_least_one, default=256, help="tokens per sequence")
  parser.add_argument("--steps", type=_at_least_one, default=5, help="timed steps (after one warm-up)")
  parser.add_argument("--rank", type=_at_least_one, default=8, help="LoRA rank")
  parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
  parser.add_argument("--targets", default="query,key,value,out", help="adapted projections")
  parser.add_argument("--reference", choices=("on_the_fly", "cached"), default="on_the_fly",
                      help="reference log-probs: a forward each step, or precomputed")
  parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True,
                      help="rematerialise the blocks in the backward pass (both sides)")
  parser.add_argument("--child", choices=("full", "lora"), help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def dpo_config(args: argparse.Namespace, side: str):
  """The trainer's DPO config for one side."""
  from rlhf_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  preset = args.preset if args.preset in ("tiny", "125m", "1b", "7b") else "125m"
  config = config_lib.base_config("dpo", "tiny" if preset == "tiny" else "125m")
  config.model.preset = preset
  config.model.remat = bool(args.remat)
  config.model.dtype = "float32"
  config.train.batch_size = args.batch_size
  config.train.fast_compile = False
  config.data.max_length = args.max_length
  config.optim.warmup_steps = 0
  config.reference.mode = args.reference
  config.model.init_from = args.init_from
  if side == "lora":
    config.model.lora.rank = args.rank
    config.model.lora.alpha = args.alpha
    config.model.lora.targets = args.targets
  return config


def child(args: argparse.Namespace) -> None:
  """Builds one side, runs its steps and prints one JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rlhf_jax import models  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import components, mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train.inputs import DataInfo  # pylint: disable=g-import-not-at-top

  side = args.child
  config = dpo_config(args, side)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  settings = config_lib.build_settings(config)
  overrides = {}
  if args.preset in SHAPES and not args.init_from:
    # The smollm2 shapes are no models preset: the 125m preset with its fields replaced.
    overrides = {k: v for k, v in SHAPES[args.preset].items() if k != "vocab_size"}  # the vocabulary: from info
    overrides["max_len"] = max(overrides["max_len"], args.max_length)
  vocab = SHAPES.get(args.preset, {}).get("vocab_size", 32000)
  info = DataInfo(kind="pairs", vocab_size=vocab if args.preset != "tiny" else 512, pad_id=0,
                  max_length=args.max_length)
  parts = components.build(settings, mesh, info, **overrides)
  rng = np.random.default_rng(0)
  size, length = args.batch_size, args.max_length
  layout = components.device_batch_layout(settings, info)
  batch = {}
  for name, (shape, dtype) in layout.items():
    full_shape = (size, *shape)
    if name.endswith("_tokens"):
      batch[name] = rng.integers(3, min(info.vocab_size, parts.model.config.vocab_size), full_shape).astype(np.int32)
    elif name.endswith("_attention_mask"):
      batch[name] = np.ones(full_shape, bool)
    elif name.endswith("_loss_mask"):
      batch[name] = np.broadcast_to(np.arange(length)[None, :] >= length // 2, full_shape).copy()
    elif name.startswith("ref_"):
      batch[name] = rng.normal(-length, 1.0, full_shape).astype(np.float32)
    elif np.dtype(dtype) == np.bool_:
      batch[name] = np.zeros(full_shape, bool)
    else:
      batch[name] = np.ones(full_shape, dtype)
  on_the_fly = args.reference == "on_the_fly"
  device_batch = mesh_lib.shard_batch({k: v for k, v in batch.items() if not (on_the_fly and k.startswith("ref_"))},
                                      mesh)
  key = jax.random.key(0)
  state = parts.init_state(*jax.random.split(key))
  adapters = models.lora.enabled(parts.model.config)
  # Full DPO keeps the starting parameters as its reference (a second copy); LoRA reads
  # the base under its adapters from the state itself.
  reference_params = None if adapters or not on_the_fly else jax.jit(lambda t: jax.tree.map(lambda x: x.copy(), t))(
      state.params)

  def step(state):
    inputs = device_batch
    if on_the_fly:
      inputs = dict(device_batch, **parts.reference_on_the_fly(
          state.params if reference_params is None else reference_params, device_batch))
    return parts.train_step(state, inputs, key)

  begin = time.perf_counter()
  state, metrics = step(state)
  jax.block_until_ready((state, metrics))
  compile_seconds = time.perf_counter() - begin
  times = []
  for _ in range(args.steps):
    begin = time.perf_counter()
    state, metrics = step(state)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - begin)
  nbytes = lambda tree: int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))
  counts = models.lora.param_counts(state.params)
  print(json.dumps({
      "side": side, "parameters": counts["total"],
      "trained": counts["trainable"] if adapters else counts["total"],
      "param_bytes": nbytes(state.params), "optimizer_bytes": nbytes(state.opt_state),
      "reference_bytes": nbytes(reference_params) if reference_params is not None else 0,
      "first_step_s": compile_seconds, "step_s": statistics.median(times), "steps": args.steps,
      "peak_rss_kb": _status_kb("VmHWM"), "loss": float(metrics["loss"])}))


def run_child(side: str, argv: list[str]) -> dict:
  command = [sys.executable, os.path.abspath(__file__), *argv, f"--child={side}"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if done.returncode:
    raise RuntimeError(f"the {side} side failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def table(full: dict, lora: dict) -> str:
  rows = [("parameters trained", "trained", lambda v: f"{v:,}"),
          ("parameter MB", "param_bytes", lambda v: f"{v / 2**20:.1f}"),
          ("optimizer state MB", "optimizer_bytes", lambda v: f"{v / 2**20:.1f}"),
          ("reference copy MB", "reference_bytes", lambda v: f"{v / 2**20:.1f}"),
          ("first step (compile) s", "first_step_s", lambda v: f"{v:.1f}"),
          ("median step s", "step_s", lambda v: f"{v:.3f}"),
          ("peak RSS MB", "peak_rss_kb", lambda v: f"{v / 1024:.0f}")]
  lines = [f"{'':26s} {'full DPO':>14s} {'LoRA DPO':>14s} {'LoRA / full':>12s}"]
  for label, key, fmt in rows:
    ratio = lora[key] / full[key] if full[key] else float("nan")
    lines.append(f"{label:26s} {fmt(full[key]):>14s} {fmt(lora[key]):>14s} {ratio:>12.3f}")
  return "\n".join(lines)


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.child:
    child(args)
    return
  full, lora = run_child("full", argv), run_child("lora", argv)
  print(f"DPO train step, {args.preset if not args.init_from else args.init_from} shapes, batch {args.batch_size} "
        f"pairs x {args.max_length} tokens, reference {args.reference}, remat {args.remat}; LoRA rank {args.rank} "
        f"on {args.targets}; {full['parameters']:,} parameters")
  print(table(full, lora))
  print(json.dumps({"full": full, "lora": lora}, sort_keys=True))


if __name__ == "__main__":
  main()
