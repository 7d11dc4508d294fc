"""Ahead-of-time plans: per-device memory and FLOPs of a train step on any mesh, without
allocating anything.

    info = planning_data_info(config)
    result = plan(config, make_mesh(parse_mesh("fsdp=64,tensor=4")), info)
    print(format_plan(result))

The step is lowered with abstract arguments (`jax.ShapeDtypeStruct`s carrying their
shardings: `components.build(...).abstract_state` and `components.abstract_batch`) and
compiled by XLA for the mesh; on a CPU the mesh's devices can be simulated
(`jax_num_cpu_devices`), which is how `scripts/plan.py` plans a pod run on a laptop.

What the numbers are (all per device):

- parameters / optimizer state / batch: bytes of each device's shards, from the shapes,
  dtypes and shardings of the compiled step's inputs (every shard of a NamedSharding has
  the same shape, as the mesh axes divide the dimensions they split);
- arguments, outputs, aliased, temporaries: XLA's buffer assignment
  (`compiled.memory_analysis()`); temporaries are the activations, gradients and scratch
  space live during the step; donated state is aliased into the outputs, so the peak is
  about arguments + outputs - aliased + temporaries;
- FLOPs: XLA's cost analysis of the partitioned (per-device) program
  (`compiled.cost_analysis()["flops"]`). XLA's `HloCostAnalysis` counts the body of a
  while loop once, whatever its trip count, so for a model that scans its layers
  (`scan_layers=True`) the raw count holds one layer instead of n. The plan then also
  compiles the same step with 1 and 2 unscanned layers; the FLOPs are exactly linear in
  the number of layers, so F(n) = F(1) + (n - 1) (F(2) - F(1)) (both counts are XLA's).

The memory is what the CPU compiler assigns; GPU and TPU compilers fuse and schedule
differently (temporaries mostly), while parameter and optimizer bytes do not change.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax.data import packing
from rlhf_jax.train import components as components_lib
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import networks
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train.inputs import DataInfo

__all__ = ["Plan", "format_plan", "parse_mesh", "per_device_bytes", "plan", "planning_data_info"]


def parse_mesh(spec: str) -> dict[str, int]:
  """"data=2,fsdp=64,tensor=4" -> {"data": 2, "fsdp": 64, "tensor": 4}; unspecified axes 1.

  Raises ValueError naming the entry that is not `axis=positive int` for a known axis.
  """
  sizes = {axis: 1 for axis in mesh_lib.MESH_AXES}
  seen = set()
  for item in spec.split(","):
    item = item.strip()
    if not item:
      continue
    axis, sep, value = item.partition("=")
    axis = axis.strip()
    if not sep or axis not in sizes:
      raise ValueError(f"--mesh entry {item!r} (in {spec!r}): expected axis=size with axis one of "
                       f"{', '.join(mesh_lib.MESH_AXES)}.")
    if axis in seen:
      raise ValueError(f"--mesh {spec!r}: axis {axis!r} is given twice.")
    try:
      size = int(value)
    except ValueError:
      size = 0
    if size < 1:
      raise ValueError(f"--mesh entry {item!r} (in {spec!r}): the size must be a positive int.")
    sizes[axis] = size
    seen.add(axis)
  return sizes


def planning_data_info(config: Any) -> DataInfo:
  """The data description of a run on real files with `config`, read from the config
  alone (no file is opened): sequences of `data.max_length` tokens and the vocabulary of
  `model.vocab_size`, else of the tokenizer a run would train (`data.tokenizer_vocab_size`).
  """
  kind = objectives_lib.get(config.objective).data
  vocab_size = int(config.model.vocab_size) or int(config.data.tokenizer_vocab_size)
  return DataInfo(kind=kind, vocab_size=vocab_size, pad_id=0, max_length=int(config.data.max_length))


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs (the sum of
  each leaf's shard size; shards of a NamedSharding all have the same shape)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = tuple(leaf.shape)
    shard = leaf.sharding.shard_shape(shape) if getattr(leaf, "sharding", None) is not None else shape
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return int(total)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device memory (bytes) and FLOPs of one train step (see the module docstring)."""

  mesh: dict[str, int]
  devices: int
  parameter_count: int
  parameter_bytes: int
  optimizer_bytes: int
  batch_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  flops: float
  xla_flops: float  # XLA's raw count (while-loop bodies counted once)
  tokens_per_step: int
  layers: int
  scan_layers: bool
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    """Arguments + outputs - aliased (donated) + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def _compile(settings: components_lib.BuildSettings, batch_size: int, mesh: Mesh, info: DataInfo,
             **preset_overrides: Any):
  parts = components_lib.build(settings, mesh, info, **preset_overrides)
  key = jax.ShapeDtypeStruct((2,), np.uint32)
  batch = components_lib.abstract_batch(settings, info, batch_size)
  compiled = parts.train_step.lower(parts.abstract_state, batch, key).compile()
  return parts, compiled


def _flops(compiled: Any) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError("XLA's cost analysis gave no FLOP count for this backend.")
  return float(analysis["flops"])


def plan(config: Any, mesh: Mesh, info: DataInfo | None = None, *, correct_scan_flops: bool = True,
         **preset_overrides: Any) -> Plan:
  """Compiles `config`'s train step for `mesh` with abstract inputs and measures it.

  Args:
    config: a trainer config (`configs/*.py`).
    mesh: the device mesh (simulated CPU devices are fine).
    info: the data description; default `planning_data_info(config)`.
    correct_scan_flops: for scanned layers, compile 1- and 2-layer unscanned steps to
      count every layer's FLOPs (see the module docstring); False reports XLA's raw count.
    **preset_overrides: fields of the model preset to change (`TransformerConfig`), e.g.
      `n_layers=4, scan_layers=True`.
  """
  info = planning_data_info(config) if info is None else info
  if config.data.get("share_prompt", False) and not (config.data.shared_length and config.data.shared_targets):
    # No data to measure: plan for the longest pair that fits two rows of max_length
    # (p + c + r <= 2T - 1, c + r <= 2T - 2), unless the config sets the sizes.
    config = copy.deepcopy(config)
    width = info.max_length
    config.data.shared_length = config.data.shared_length or 2 * width
    config.data.shared_targets = config.data.shared_targets or 2 * width - 2
  settings = config_lib.build_settings(config)
  batch_size = int(config.train.batch_size)
  start = time.time()
  parts, compiled = _compile(settings, batch_size, mesh, info, **preset_overrides)
  memory = compiled.memory_analysis()
  if memory is None:
    raise RuntimeError("XLA gave no memory analysis for this backend.")
  model_config = networks.model_config(settings.model, info.vocab_size, **preset_overrides)
  xla_flops = _flops(compiled)
  flops = xla_flops
  if model_config.scan_layers and correct_scan_flops and model_config.n_layers > 1:
    unscanned = dict(preset_overrides, scan_layers=False)
    one = _flops(_compile(settings, batch_size, mesh, info, **dict(unscanned, n_layers=1))[1])
    two = _flops(_compile(settings, batch_size, mesh, info, **dict(unscanned, n_layers=2))[1])
    flops = one + (model_config.n_layers - 1) * (two - one)
  state = parts.abstract_state
  batch = components_lib.abstract_batch(settings, info, batch_size)
  sequences = sum(1 for name in batch if name.endswith("tokens"))
  return Plan(
      mesh=dict(mesh.shape),
      devices=int(mesh.size),
      parameter_count=int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))),
      parameter_bytes=per_device_bytes(state.params),
      optimizer_bytes=per_device_bytes(state.opt_state),
      batch_bytes=per_device_bytes(jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mesh_lib.batch_sharding(mesh)), batch)),
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      flops=flops,
      xla_flops=xla_flops,
      tokens_per_step=batch_size * sequences * int(info.max_length),
      layers=int(model_config.n_layers),
      scan_layers=bool(model_config.scan_layers),
      compile_seconds=time.time() - start,
  )


def _size(count: float) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(count) >= scale:
      return f"{count / scale:.2f} {unit}"
  return f"{int(count)} B"


def format_plan(result: Plan, config: Any | None = None) -> str:
  """A human-readable report of `result`."""
  lines = []
  if config is not None:
    lines.append(f"objective {config.objective}, preset {config.model.preset}, global batch "
                 f"{config.train.batch_size} x {config.train.microbatches} microbatch(es)")
  mesh = ", ".join(f"{k}={v}" for k, v in result.mesh.items())
  lines += [
      f"mesh {mesh} ({result.devices} devices); {result.parameter_count:,} parameters; "
      f"{result.tokens_per_step:,} tokens per step",
      "per device:",
      f"  parameters       {_size(result.parameter_bytes):>12}",
      f"  optimizer state  {_size(result.optimizer_bytes):>12}",
      f"  batch            {_size(result.batch_bytes):>12}",
      f"  activations/temp {_size(result.temp_bytes):>12}   (XLA temp buffers)",
      f"  XLA arguments    {_size(result.argument_bytes):>12}   outputs {_size(result.output_bytes)}, "
      f"aliased (donated) {_size(result.alias_bytes)}",
      f"  peak estimate    {_size(result.peak_bytes):>12}   (arguments + outputs - aliased + temp)",
      f"  FLOPs per step   {result.flops:>12.4g}   ({result.flops * result.devices:.4g} on all devices)",
  ]
  if result.flops != result.xla_flops:
    lines.append(f"                   (XLA's raw count {result.xla_flops:.4g} holds the scanned layer body "
                 f"once; corrected with 1- and 2-layer compiles to {result.layers} layers)")
  lines.append(f"compiled in {result.compile_seconds:.1f} s (CPU compiler: temporaries on GPU/TPU differ)")
  if config is not None and config.data.get("padding_free", False):
    lines.append("data.padding_free: planned with the padded two-row layout; padding-free rows hold "
                 "the real tokens only (plus at most "
                 f"1/{config.data.get('buckets_per_octave', packing.BUCKETS_PER_OCTAVE)} "
                 "rounding), so they need less")
  return "\n".join(lines)
