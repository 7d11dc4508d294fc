"""Whole online runs: each objective learns a task whose best policy is known, a huge KL
coefficient holds the policy at the reference, resume is exact, reward models as the
reward source, the command line, and a start from a pretrained checkpoint that
initialises only what it does not read (the same state as initialising everything).

The task (`rlhf_jax.rl.toy`): toy prompts, the reward of a completion is the count of
the GOOD marker in it; the reference policy (a fresh tiny model) writes it about once in
32 tokens, the best policy in every slot.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from rlhf_jax import data, hf, models, rl, train
from rlhf_jax.rl import loop as rl_loop
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import pretrained, rundir, score

import rl_testlib
from rl_testlib import tiny_online_config

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOKENIZER = REPO / "tests" / "models" / "fixtures" / "hf" / "tokenizer"

sys.path.insert(0, str(REPO / "tests" / "models"))
import numpy_transformer as ref  # noqa: E402


def test_reward_settings_read_the_comma_separated_checkpoints():
  config = train.base_config("ppo", "tiny")
  config.reward.checkpoints = " runs/a, runs/b ,"
  config.reward.combine = "min"
  settings = rl.loop.read_reward_settings(config)
  assert settings.checkpoints == ("runs/a", "runs/b")
  assert (settings.combine, settings.std_coef, settings.function) == ("min", 1.0, "")


def _records(workdir):
  return rundir.read_metrics(workdir, "train")


def _samples(workdir):
  path = Path(workdir) / "samples.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("objective", ["ppo", "grpo", "rloo", "online_dpo"])
def test_each_objective_raises_the_toy_reward(objective, tmp_path):
  config = tiny_online_config(objective, train__steps=16, train__log_every=1, train__samples_every=4)
  results = rl.train(config, tmp_path)
  assert results["step"] == 16 and not results["preempted"]
  records = _records(tmp_path)
  assert [r["step"] for r in records] == list(range(1, 17))
  rewards = np.array([r["reward_mean"] for r in records])
  first, last = rewards[:4].mean(), rewards[-4:].mean()
  assert last >= first + 0.4 and last >= 2 * first, rewards
  # The KL to the reference is reported every iteration, finite, and grew from ~0.
  kl = np.array([r["kl"] for r in records])
  assert np.all(np.isfinite(kl)) and abs(kl[0]) < 0.05 and kl[-4:].mean() > kl[:2].mean()
  for name in ("reward_std", "completion_length", "eos_fraction", "kl_coef", "loss", "grad_norm"):
    assert all(math.isfinite(r[name]) for r in records), name
  assert all(r["entropy"] > 0 for r in records)
  if objective != "online_dpo":
    assert all(0 <= r["clip_fraction"] <= 1 for r in records)
  if objective == "ppo":
    assert all(math.isfinite(r["value_explained_variance"]) for r in records)
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())
  # samples.jsonl: what the policy wrote, with rewards a reader can check by hand.
  samples = _samples(tmp_path)
  assert {s["step"] for s in samples} == {4, 8, 12, 16}
  for sample in samples:
    assert sample["reward"] == float(sample["completion"].split().count(str(data.TOY_GOOD)))
    # The completion's tokens, the end token aside (and any pad or bos, which decode to nothing).
    assert len(sample["completion"].split()) <= sample["length"] - int(sample["ended"])


def test_non_finite_updates_are_skipped_counted_and_stop_the_run(tmp_path):
  """Rewards whose leave-one-out differences overflow give non-finite gradients: each
  update is skipped and counted, and after more than optim.max_consecutive_skips in a
  row the run stops with a clear error."""
  config = tiny_online_config("rloo", train__steps=16, train__log_every=1, train__samples_every=4,
                              reward__function="rl_testlib:overflowing", optim__max_consecutive_skips=1)
  with pytest.raises(train.TrainingError, match="iteration 2: 2 consecutive updates were skipped"):
    rl.train(config, tmp_path)
  records = _records(tmp_path)
  assert [(r["step"], r["update_skipped"], r["skipped_updates"]) for r in records] == [(1, 1, 1), (2, 1, 2)]


@pytest.mark.parametrize("objective, kl_bound", [("grpo", 0.15), ("ppo", 2.0)])
def test_a_huge_kl_coefficient_keeps_the_policy_at_the_reference(objective, kl_bound, tmp_path):
  """With the KL coefficient 1000 the reward does not rise and the KL stays small (PPO's
  penalty acts through sampled advantages, so its KL keeps the noise of the updates;
  without the penalty it passes 10 within these iterations, see the learning test)."""
  # The learning test's settings but the coefficient (the same compiled functions).
  config = tiny_online_config(objective, train__steps=16, train__log_every=1, train__samples_every=4,
                              loss__kl_coef=1000.0)
  rl.train(config, tmp_path)
  records = _records(tmp_path)
  kl = np.array([r["kl"] for r in records])
  rewards = np.array([r["reward_mean"] for r in records])
  assert np.all(np.abs(kl) < kl_bound), kl
  assert rewards[-4:].mean() < rewards[:4].mean() + 0.2, rewards


def test_a_stopped_run_resumes_bit_for_bit(tmp_path):
  """Adaptive KL (its coefficient changes every iteration), the critic, shuffled
  minibatches and sampling keys all come back from the checkpoint."""
  config = tiny_online_config("ppo", train__steps=6, train__log_every=1, train__samples_every=1,
                              loss__adaptive_kl_target=0.5, loss__adaptive_kl_horizon=64.0)
  straight = rl.train(config, tmp_path / "straight")
  first = rl.train(config, tmp_path / "resumed", stop_at_step=3)
  assert first["preempted"] and first["step"] == 3
  # The run directory knows what it is: another KL coefficient is refused before any work.
  other = copy.deepcopy(config)
  other.loss.kl_coef = 0.2
  with pytest.raises(rundir.RunDirError, match=r"loss.kl_coef 0.05 -> 0.2"):
    rl.train(other, tmp_path / "resumed")
  saved = json.loads((tmp_path / "resumed" / "checkpoints" / "3" / "data" / "metadata").read_text())
  assert saved["position"] == 3 * config.rollout.prompts  # the prompt iterator's position
  second = rl.train(config, tmp_path / "resumed")
  assert second["step"] == 6 and not second["preempted"]
  a, b = jax.device_get(straight["state"]), jax.device_get(second["state"])
  assert float(a.kl_coef) != 0.05  # the controller moved it
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  timing = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds_")}
  assert [timing(r) for r in _records(tmp_path / "straight")] == [timing(r) for r in _records(tmp_path / "resumed")]
  assert _samples(tmp_path / "straight") == _samples(tmp_path / "resumed")

  # The run's policy as the reference (reference.checkpoint), and also as the start
  # (model.init_from): the first rollout's KL is 0 only when the two agree.
  kl = {}
  for name, init_from in (("reference", ""), ("both", "straight")):
    config.model.init_from = str(tmp_path / init_from) if init_from else ""
    config.reference.checkpoint = str(tmp_path / "straight")
    rl.train(config, tmp_path / name, stop_at_step=1)
    kl[name] = _records(tmp_path / name)[0]["kl"]
  assert abs(kl["both"]) < 1e-3 and kl["reference"] > 0.1, kl


@pytest.mark.slow  # about 15 s on 2 quiet cores; CI runs it with make test-slow
def test_ppo_against_a_reward_model_scores_what_the_checkpoint_scores(reward_run, tmp_path):
  """Prompts from the reward model's own pairs file, the policy on its tokenizer, the
  critic started from it; every logged sample's reward is the reward model's score of
  that text, computed directly by `score.load_reward_model`. (Learning rate 0, so the
  final critic is the initial one.)"""
  rm_dir, rm_params, _, pairs = reward_run
  config = tiny_online_config("ppo", train__steps=2, train__log_every=1, train__samples_every=1,
                              train__samples_per_write=16, data__train=str(pairs), data__max_prompt_length=16,
                              rollout__max_new_tokens=6, reward__checkpoints=str(rm_dir),
                              model__value_init="reward_model", optim__learning_rate=0.0)
  results = rl.train(config, tmp_path)
  value = jax.device_get(results["state"].train.params["value"])
  for x, y in zip(jax.tree.leaves(value["backbone"]), jax.tree.leaves(rm_params["backbone"])):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(value["value_head"]["kernel"], rm_params["reward_head"]["kernel"][:, :1])
  np.testing.assert_array_equal(value["value_head"]["bias"], rm_params["reward_head"]["bias"][:1])
  assert results["step"] == 2
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["reward"]["checkpoints"][0]["outputs"] == 2
  assert run["data"]["tokenizer"]["fingerprint"] == run["reward"]["checkpoints"][0]["tokenizer"]
  samples = _samples(tmp_path)
  assert len(samples) == 32
  scorer = score.load_reward_model(rm_dir)
  nonempty = [s for s in samples if s["completion"]]
  direct = scorer([s["prompt"] for s in nonempty], [s["completion"] for s in nonempty])
  np.testing.assert_allclose([s["reward"] for s in nonempty], direct, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose([np.mean(s["member_rewards"]) for s in nonempty], direct, rtol=1e-5, atol=1e-5)
  # The critic reads the policy's tokens: another tokenizer cannot start it from the model.
  other = tmp_path / "other"
  data.train_tokenizer(None, other / "spm", vocab_size=310, texts=[json.dumps(p) for p in
                                                                    rl_testlib.preference_pairs(64, seed=5)])
  config.data.tokenizer = str(other / "spm.model")
  with pytest.raises(ValueError, match="the policy must use the tokenizer of"):
    rl.train(config, tmp_path / "again")


@pytest.mark.slow  # about 15 s on 2 quiet cores; CI runs it with make test-slow
def test_command_line_runs_an_online_objective(tmp_path):
  command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/online_dpo.py:preset=tiny",
             f"--workdir={tmp_path}", "--config.train.steps=2", "--config.train.log_every=1",
             "--config.rollout.max_new_tokens=4", "--config.train.progress_bar=false"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads(result.stdout.strip().splitlines()[-1])
  assert final["step"] == 2 and not final["preempted"]
  assert {"train/reward_mean", "train/kl"} <= set(final)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["reward"]["function"] == "rlhf_jax.rl.toy:good_marker_count"  # resolved for toy prompts
  records = _records(tmp_path)
  assert [r["step"] for r in records] == [1, 2] and all("reward_mean" in r and "kl" in r for r in records)
  # A typo in an online field is refused like any other.
  typo = subprocess.run(command[:3] + ["--config.rollout.num_sample=3"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert typo.returncode != 0 and "num_sample" in typo.stderr


@pytest.mark.slow
def test_two_devices_equal_one_device(tmp_path):
  """PPO sharded over 2 simulated CPU devices (FSDP: parameters and optimizer state
  split, rollouts, critic and minibatches too) equals the one-device run: the sampler
  draws each row from its own key."""
  outputs = {}
  for devices in (1, 2):
    output = tmp_path / f"run{devices}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(HERE / "sharded_run.py"), str(output), str(tmp_path / str(devices))],
                            env=env, cwd=HERE, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs[devices] = (json.loads(result.stdout.strip().splitlines()[-1]), dict(np.load(output)))
  (one_report, one), (two_report, two) = outputs[1], outputs[2]
  assert one_report["devices"] == 1 and two_report["devices"] == 2 and two_report["mesh"]["fsdp"] == 2
  # The output layer [64, 32] is split over "fsdp" on its first axis.
  assert two_report["lm_head"]["spec"].startswith("P('fsdp'")
  assert two_report["lm_head"]["shard"] == [32, 32] and one_report["lm_head"]["shard"] == [64, 32]
  assert sorted(one) == sorted(two) and len(one) > 10
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=2e-5, err_msg=name)
  for a, b in zip(one_report["metrics"], two_report["metrics"]):
    assert a["reward_mean"] == b["reward_mean"]  # the same completions were sampled
    for name in ("kl", "loss", "value_loss", "grad_norm"):
      np.testing.assert_allclose(b[name], a[name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("overrides, message", [
    (dict(rollout__num_samples=1), "objective 'rloo' with rollout.num_samples=1: .*group_size"),
    (dict(rollout__minibatches=3), "must be divisible by rollout.minibatches 3"),
    (dict(rollout__temperature=0.0), "rollout.temperature must be > 0"),
    (dict(rollout__prompts=2000), "rollout.prompts 2000 exceeds the 1024 distinct prompts"),
    (dict(reward__function="rl_testlib:count_token_5", reward__checkpoints="runs/rm"), "exactly one reward source"),
    (dict(loss__aggregation="mean"), "config loss.aggregation must be one of"),
])
def test_bad_online_configs_fail_before_any_work(overrides, message, tmp_path):
  config = tiny_online_config("rloo", **overrides)
  with pytest.raises(ValueError, match=message):
    rl.train(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_keeps_every_iteration_once(tmp_path):
  """The command line: SIGTERM saves and exits 75; a later SIGKILL loses the iterations
  after the last checkpoint; the same command resumes and metrics.jsonl and
  samples.jsonl hold every iteration once."""
  import signal
  import time
  command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/grpo.py:preset=tiny",
             f"--workdir={tmp_path}", "--config.train.steps=100000", "--config.train.log_every=1",
             "--config.train.samples_every=1", "--config.checkpoint.every=3", "--config.rollout.max_new_tokens=4",
             "--config.train.progress_bar=false"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  metrics = tmp_path / "metrics.jsonl"

  def run_until(lines, sig):
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < lines):
      time.sleep(0.2)
    process.send_signal(sig)
    return process, process.communicate(timeout=300)

  process, (stdout, stderr) = run_until(4, signal.SIGTERM)
  assert process.returncode == 75, stderr[-2000:]
  stopped = json.loads(stdout.strip().splitlines()[-1])["step"]
  process, _ = run_until(stopped + 5, signal.SIGKILL)
  assert process.returncode == -signal.SIGKILL
  killed_at = len(metrics.read_text().splitlines())
  final = killed_at + 2
  command[command.index("--config.train.steps=100000")] = f"--config.train.steps={final}"
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert [r["step"] for r in _records(tmp_path)] == list(range(1, final + 1))
  steps = sorted({s["step"] for s in _samples(tmp_path)})
  assert steps == list(range(1, final + 1)) and len(_samples(tmp_path)) == 4 * final


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


@pytest.mark.parametrize("objective, overrides", [
    ("grpo", dict(model__lora__rank=2, model__lora__targets="query,value")),
    ("ppo", dict(model__lora__rank=2, model__value_init="policy")),
    ("ppo", dict(model__value_init="scratch")),
])
def test_pretrained_start_initialises_only_what_no_checkpoint_replaces(objective, overrides, tmp_path):
  """The starting state of an online run from "hf:DIR" (adapters, heads and a critic from
  scratch initialised alone, the policy read into its shards) equals the other way round:
  the whole policy (and critic) initialised, then the checkpoint read over the policy's
  base and the critic copied from the policy, bit for bit."""
  arch = models.TransformerConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                  max_len=64, norm_eps=1e-5)
  model = models.Transformer(arch)
  hf.save(tmp_path / "base", model, ref.random_params(nn.unbox(models.abstract_params(model)), seed=7),
          tokenizer=hf.load_tokenizer(TOKENIZER))
  config = tiny_online_config(objective, rollout__prompts=4, reward__function="rl_testlib:count_token_5",
                              model__init_from=f"hf:{tmp_path / 'base'}",
                              **overrides)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  parts = rl.build(config, mesh, rl.PromptInfo(vocab_size=320, prompt_length=8, pad_id=0, eos_id=1))
  init_key, train_key = jax.random.split(jax.random.key(5))
  full = parts.init_state(init_key, train_key)
  value_model = parts.objective.value_model
  policy = pretrained.load_into(config.model.init_from, full.params["policy"] if value_model else full.params,
                                parts.model.config)
  params = policy
  if value_model:
    value = full.params["value"]
    if config.model.value_init == "policy":
      value = dict(value, backbone={k: v for k, v in policy.items() if k != "lm_head"})
    params = {"policy": policy, "value": value}
  want = _leaves(full.replace(params=params))
  got_state = rl_loop._initial_state(parts, config, init_key, train_key, rl_loop.read_reward_settings(config))
  got = _leaves(got_state)
  assert got.keys() == want.keys()
  assert any("lora_a" in name for name in got) == ("model__lora__rank" in overrides)
  assert value_model == any("value_head" in name for name in got)
  for name in got:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  for leaf, sharding in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(parts.shardings.train.params)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


@pytest.mark.slow  # about 30 s on 2 quiet cores; CI runs it with make test-slow
def test_ppo_from_a_pretrained_policy_starts_its_critic_from_a_lora_reward_model(tmp_path):
  """value_init "reward_model" where the reward model is a LoRA run from the same
  pretrained checkpoint: its checkpoint holds only adapters and head, so the critic is
  rebuilt over the checkpoint's base. With learning rate 0 the critic after one
  iteration is the reward model the earlier run ended with, leaf for leaf."""
  arch = models.TransformerConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                  max_len=64, norm_eps=1e-5)
  model = models.Transformer(arch)
  hf.save(tmp_path / "base", model, ref.random_params(nn.unbox(models.abstract_params(model)), seed=7),
          tokenizer=hf.load_tokenizer(TOKENIZER))
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps(p) + "\n" for p in rl_testlib.preference_pairs(32, seed=1)))
  lora = dict(model__init_from=f"hf:{tmp_path / 'base'}", model__lora__rank=2)
  rm_config = train.config.base_config("reward_model", "tiny")
  for path, value in dict(train__steps=2, train__batch_size=8, train__progress_bar=False, optim__warmup_steps=0,
                          optim__learning_rate=0.05, eval__every=0, data__train=str(pairs), data__max_length=48,
                          data__max_prompt_length=24, **lora).items():
    *parents, leaf = path.split("__")
    node = rm_config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  reward_model = _leaves(train.loop.train(rm_config, tmp_path / "rm")["state"].params)
  assert any(np.abs(v).max() > 0 for k, v in reward_model.items() if "lora_b" in k)  # the adapters trained
  config = tiny_online_config("ppo", train__steps=1, data__train=str(pairs), data__max_prompt_length=24,
                              rollout__max_new_tokens=4, reward__checkpoints=str(tmp_path / "rm"),
                              model__value_init="reward_model", optim__learning_rate=0.0, **lora)
  critic = _leaves(rl.train(config, tmp_path / "ppo")["state"].train.params["value"])
  backbone = {k: v for k, v in reward_model.items() if k.startswith("['backbone']")}
  assert {k for k in critic if k.startswith("['backbone']")} == backbone.keys()
  for name, value in backbone.items():
    np.testing.assert_array_equal(critic[name], value, err_msg=name)
  np.testing.assert_array_equal(critic["['value_head']['kernel']"], reward_model["['reward_head']['kernel']"][:, :1])
