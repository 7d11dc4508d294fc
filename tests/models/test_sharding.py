"""Logical axis names on every parameter, the default sharding rules, parameter counts
of the presets against their formula, and a sharded forward on 4 simulated devices."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax import models
from rlhf_jax.models import sharding

ALLOWED = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers"}
HEAD_PARAMS = {"reward_head", "value_head"}


def boxed_leaves(model):
  """(path, boxed leaf) for every parameter, from abstract shapes (nothing allocated)."""
  boxed = models.abstract_params(model)
  return jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", {}), ("tiny", {"scan_layers": True, "tie_embeddings": True}), ("7b", {})])
@pytest.mark.parametrize("kind", ["policy", "reward", "value"])
def test_every_parameter_has_allowed_logical_axis_names(preset, overrides, kind):
  config = models.get_preset(preset, **overrides)
  model = {"policy": models.Transformer(config),
           "reward": models.RewardModel(config, num_heads=2),
           "value": models.ValueModel(config)}[kind]
  leaves = boxed_leaves(model)
  assert leaves
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{where} has no logical axis names"
    names = leaf.names
    assert len(names) == len(leaf.value.shape), where
    if HEAD_PARAMS & {getattr(p, "key", None) for p in path}:
      # Head outputs (K rewards, one value) are too few to shard: explicitly None.
      assert names in (("embed", None), (None,)), (where, names)
      continue
    assert all(name in ALLOWED for name in names), (where, names)
    in_blocks = any(str(getattr(p, "key", "")).startswith("layer") for p in path)
    assert ("layers" in names) == (in_blocks and config.scan_layers), (where, names)
    if "layers" in names:
      assert names[0] == "layers" and leaf.value.shape[0] == config.n_layers, where


def test_names_of_each_kind_of_parameter():
  spec = nn.get_partition_spec(models.abstract_params(models.Transformer(models.get_preset("tiny"))))
  assert spec["embed"]["embedding"] == P("vocab", "embed")
  attention = spec["layer_0"]["attention"]
  assert attention["query"] == P("embed", "heads", "head_dim")
  assert attention["key"] == attention["value"] == P("embed", "kv_heads", "head_dim")
  assert attention["out"] == P("heads", "head_dim", "embed")
  assert spec["layer_1"]["mlp"]["gate"] == spec["layer_1"]["mlp"]["up"] == P("embed", "mlp")
  assert spec["layer_1"]["mlp"]["down"] == P("mlp", "embed")
  assert spec["final_norm"]["scale"] == P("embed")
  assert spec["lm_head"] == P("embed", "vocab")


def test_logical_axis_rules_map_names_to_mesh_axes():
  rules = models.logical_axis_rules()
  to_mesh = lambda names, r=rules: tuple(nn.logical_to_mesh_axes(names, r))
  assert to_mesh(("embed", "heads", "head_dim")) == ("fsdp", "tensor", None)
  assert to_mesh(("mlp", "embed")) == ("tensor", "fsdp")
  assert to_mesh(("vocab", "embed")) == ("tensor", "fsdp")
  assert to_mesh(("layers", "embed", "kv_heads", "head_dim")) == (None, "fsdp", "tensor", None)
  # Activations: fsdp is taken by the batch, so the embed axis stays unsharded.
  assert to_mesh(("batch", "length", "embed")) == (("data", "fsdp"), None, None)
  data_only = models.logical_axis_rules(("data",))
  assert to_mesh(("batch", "length", "embed"), data_only) == ("data", None, None)
  assert to_mesh(("embed", "mlp"), data_only) == (None, None)
  with pytest.raises(ValueError, match="unknown mesh axes \\['model'\\]"):
    models.logical_axis_rules(("data", "model"))


def formula_count(vocab, d, layers, heads, kv_heads, ff, tied):
  """Llama parameter count: embeddings, per block 2 norms + Q,K,V,O + SwiGLU, final norm."""
  head_dim = d // heads
  attention = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d
  block = 2 * d + attention + 3 * d * ff
  return vocab * d * (1 if tied else 2) + layers * block + d


def test_non_divisible_dimensions_are_replicated():
  mesh = jax.sharding.AbstractMesh((1, 2, 4), ("data", "fsdp", "tensor"))
  # [embed 64, kv_heads 2, head_dim 16]: 2 kv heads cannot be split 4 ways.
  assert sharding.fit_spec(P("fsdp", "tensor", None), (64, 2, 16), mesh, "key") == P("fsdp", None, None)
  assert sharding.fit_spec(P(("data", "fsdp"), "tensor"), (6, 8), mesh, "w") == P(("data", "fsdp"), "tensor")
  assert sharding.fit_spec(P("fsdp"), (3, 5), mesh, "b") == P(None, None)
  # A spec shorter than the shape leaves the trailing dimensions replicated.
  assert sharding.fit_spec(P("tensor"), (8, 3), mesh) == P("tensor", None)


def test_param_shardings_follow_the_rules_and_fit_the_shapes():
  mesh = jax.sharding.AbstractMesh((1, 2, 4), ("data", "fsdp", "tensor"))
  model = models.Transformer(models.get_preset("tiny", vocab_size=30, n_kv_heads=2))
  boxed = sharding.abstract_params(model)
  shardings = sharding.param_shardings(boxed, mesh)
  specs = {jax.tree_util.keystr(path): s.spec for path, s in jax.tree_util.tree_leaves_with_path(shardings)}
  shapes = {jax.tree_util.keystr(path): x.shape
            for path, x in jax.tree_util.tree_leaves_with_path(sharding.unbox_values(boxed))}
  assert set(specs) == set(shapes)
  for name, spec in specs.items():
    for dim, axes in enumerate(spec):
      names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
      size = 1
      for axis in names:
        size *= dict(mesh.shape)[axis]
      assert shapes[name][dim] % size == 0, (name, spec, shapes[name])
  # The embedding table [vocab 30, embed]: 30 rows do not split over tensor=4.
  embed = next(name for name in specs if "embed" in name and len(shapes[name]) == 2)
  assert specs[embed][0] is None


@pytest.mark.parametrize("preset, shape, target, tolerance", [
    ("tiny", (512, 64, 2, 4, 2, 128, False), None, None),
    ("125m", (32000, 576, 30, 9, 3, 1536, True), 1.25e8, 0.02),
    ("1b", (32000, 2048, 22, 32, 4, 5632, False), 1.0e9, 0.15),
    ("7b", (32000, 4096, 32, 32, 32, 11008, False), 6.7e9, 0.02),
])
def test_preset_parameter_counts(preset, shape, target, tolerance):
  config = models.get_preset(preset)
  assert (config.vocab_size, config.d_model, config.n_layers, config.n_heads, config.n_kv_heads,
          config.d_ff, config.tie_embeddings) == shape
  if preset != "tiny":
    # Scanned layers trace one block instead of n_layers: same count, faster eval_shape.
    config = config.replace(scan_layers=True)
  count = models.param_count(config)
  print(f"{preset}: {count:,} parameters ({count:.3e})")
  assert count == formula_count(*shape)
  if target is not None:
    assert abs(count / target - 1) < tolerance
  # Heads add D*K + K parameters to the backbone (which has no lm_head).
  reward = models.param_count(models.RewardModel(config, num_heads=4))
  backbone = count - (0 if config.tie_embeddings else config.vocab_size * config.d_model)
  assert reward == backbone + 4 * config.d_model + 4


SHARDED_SCRIPT = textwrap.dedent("""
    import flax.linen as nn, jax, numpy as np
    from rlhf_jax import models
    assert jax.device_count() == 4, jax.devices()
    config = models.get_preset("tiny", n_layers=1)
    model = models.Transformer(config)
    abstract = models.abstract_params(model)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (rng.standard_normal(a.shape) / 8).astype(np.float32),
                          nn.unbox(abstract))
    tokens = rng.integers(0, config.vocab_size, (4, 16)).astype(np.int32)
    mask = np.arange(16)[None] < np.array([[16], [9], [4], [12]])
    forward = lambda p, t, m: model.apply({"params": p}, t, m)
    expected = jax.jit(forward)(params, tokens, mask)

    from jax.sharding import AxisType
    explicit = jax.make_mesh((4, 1, 1), ("data", "fsdp", "tensor"))
    try:
      with jax.set_mesh(explicit):
        jax.jit(forward)(params, tokens, mask)
      raise AssertionError("an Explicit mesh was accepted")
    except ValueError as error:
      assert "need Auto axes" in str(error), error

    mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rules = models.logical_axis_rules()
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    sharded = jax.device_put(params, shardings)
    spec = sharded["layer_0"]["mlp"]["gate"].sharding.spec
    assert tuple(spec) == ("fsdp", "tensor"), spec
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      logits = jax.jit(forward)(sharded, tokens, mask)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=1e-5)
    print("sharded ok")
""")


def test_sharded_forward_on_four_devices_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  repo = Path(__file__).resolve().parents[2]
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sharded ok" in result.stdout
