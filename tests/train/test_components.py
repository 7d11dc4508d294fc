"""What a run compiles, described before anything is compiled: the arrays a batch carries
for each objective and layout, abstract batches, XLA options, and the cache that lets a
rerun in the same process reuse its compiled pieces."""

import dataclasses

import jax
import jax.numpy as jnp

from rlhf_jax.train import components
from rlhf_jax.train import config as config_lib
from rlhf_jax.train.inputs import DataInfo

from train_testlib import tiny_config

PAIRS = DataInfo(kind="pairs", vocab_size=32, pad_id=0, max_length=16)
UNPAIRED = DataInfo(kind="unpaired", vocab_size=32, pad_id=0, max_length=16)
SEQUENCES = DataInfo(kind="sequences", vocab_size=32, pad_id=0, max_length=16)
TWO_ROWS = {f"{side}_{name}" for side in ("chosen", "rejected") for name in ("tokens", "attention_mask", "loss_mask")}


def _layout(objective, info, **overrides):
  return components.device_batch_layout(config_lib.build_settings(tiny_config(objective, **overrides)), info)


def test_pair_layouts_per_objective():
  reward = _layout("reward_model", PAIRS)
  assert set(reward) == TWO_ROWS | {"target_prob", "weight", "is_tie", "annotator"}
  assert reward["chosen_tokens"] == ((16,), jnp.int32) and reward["weight"] == ((), jnp.float32)
  # DPO adds the reference columns; Crowd-BT with a reliability file its column.
  assert set(_layout("dpo", PAIRS)) == set(reward) | {"ref_chosen_logps", "ref_rejected_logps"}
  crowd = _layout("reward_model", PAIRS, loss__name="crowd_bt", loss__reliabilities="r.json")
  assert set(crowd) == set(reward) | {"reliability"}
  assert "reliability" not in _layout("reward_model", PAIRS, loss__name="crowd_bt")  # learned


def test_unpaired_and_sequence_layouts():
  kto = _layout("kto", UNPAIRED)
  assert {"tokens", "is_desirable", "kl_tokens", "ref_logps", "ref_kl_logps"} <= set(kto)
  no_kl = _layout("kto", UNPAIRED, loss__reference_point="zero")
  assert not {k for k in no_kl if k.startswith("kl_") or k == "ref_kl_logps"}
  assert set(_layout("sft", SEQUENCES)) == {"tokens", "attention_mask", "loss_mask"}


def test_padding_free_layouts_replace_the_rows():
  packed = _layout("dpo", PAIRS, data__padding_free=True)
  assert not TWO_ROWS & set(packed) and packed["packed_tokens"] == (None, None)
  assert "target_tokens" in packed and "packed_segments" not in packed
  shared = _layout("dpo", PAIRS, data__padding_free=True, data__share_prompt=True)
  assert "packed_segments" in shared


def test_abstract_batch_is_the_two_row_layout_of_the_batch_size():
  settings = config_lib.build_settings(tiny_config("dpo", data__padding_free=True))
  batch = components.abstract_batch(settings, PAIRS, 6)
  assert batch["chosen_tokens"] == jax.ShapeDtypeStruct((6, 16), jnp.int32)
  assert batch["ref_chosen_logps"] == jax.ShapeDtypeStruct((6,), jnp.float32)


def test_compiler_options():
  assert components.compiler_options(False) is None
  assert components.compiler_options(True) == components.FAST_COMPILE_OPTIONS
  assert components.compiler_options(True) is not components.FAST_COMPILE_OPTIONS


@dataclasses.dataclass(frozen=True)
class _What:
  name: str


def test_build_cache_reuses_and_evicts_the_oldest():
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  other_mesh = jax.sharding.Mesh(jax.devices()[:1], ("fsdp",))
  cache = components.BuildCache(size=2)
  built = []

  def build(label):
    built.append(label)
    return label

  assert cache.get(_What("a"), mesh, lambda: build("a")) == "a"
  assert cache.get(_What("a"), mesh, lambda: build("again")) == "a"  # same description: reused
  assert cache.get({"what": _What("b")}, mesh, lambda: build("b")) == "b"
  cache.get(_What("a"), mesh, lambda: build("unused"))  # a is now the newest
  cache.get(_What("c"), mesh, lambda: build("c"))  # evicts b, the oldest
  assert cache.get({"what": _What("b")}, mesh, lambda: build("b2")) == "b2"
  assert built == ["a", "b", "c", "b2"]
  # Another mesh is another build.
  assert cache.get(_What("c"), other_mesh, lambda: build("c on fsdp")) == "c on fsdp"
