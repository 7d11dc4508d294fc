"""The one config builder every `configs/*.py` calls, with every field commented here once.

    config = base_config("dpo", "tiny")      # an ml_collections.ConfigDict
    config.loss.beta = 0.2

Layout (big_vision style: plain nested ConfigDicts, no classes):

  objective            registry name of the training objective (`rlhf_jax/train/objectives/`)
  seed                 parameter init, data order and per-step randomness
  model.*              transformer preset and options (`rlhf_jax.models`)
  data.*               training / evaluation files, tokenizer, lengths, toy data
  mesh.*               device mesh sizes for the axes data / fsdp / tensor
  optim.*              AdamW, warmup-cosine schedule, clipping, NaN/Inf guard
  train.*              steps, global batch, microbatches, logging
  eval.*               evaluation cadence and calibration bins
  checkpoint.*         orbax checkpoint cadence and retention
  reference.*          DPO/KTO reference log-probs: cached per data set or on the fly
  loss.*               the objective's own hyper-parameters (only those of `objective`)

Online objectives (ppo, grpo, rloo, online_dpo, trained by `rlhf_jax.rl`) have no
eval.* and no offline data or reference fields; instead:

  data.*               the prompts file (or toy prompts), tokenizer, prompt length
  rollout.*            prompts per iteration, samples per prompt, sampling, the update's
                       epochs and minibatches
  reward.*             the reward source: reward-model checkpoints (an ensemble and how
                       to combine it) or a Python function
  reference.*          the frozen reference: the starting policy, or a checkpoint
  train.steps          counts iterations (rollout, score, update), not optimizer steps

`parse_arg("preset=tiny,variant=ipo")` reads the `get_config(arg)` string.

The loops read a config here, once, into the frozen dataclasses the modules below them
take (`build_settings`, `data_settings`, `model_settings`, `optimizer_settings`, ...):
no module below a loop sees a ConfigDict, and each settings class names the fields it
reads. The readers take a ConfigDict or the plain dict of a run's stored config.json.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import ml_collections
from ml_collections.config_dict import placeholder

from rlhf_jax.data import packing
from rlhf_jax.train import components
from rlhf_jax.train import inputs
from rlhf_jax.train import networks
from rlhf_jax.train import optim
from rlhf_jax.train import padding_free
from rlhf_jax.train import pretrained

__all__ = ["DEFAULT_PRESET", "OBJECTIVES", "OFFLINE_OBJECTIVES", "ONLINE_OBJECTIVES", "PRESETS", "base_config",
           "build_settings", "data_settings", "loss_default", "loss_settings", "model_settings", "optimizer_settings",
           "packing_settings", "parse_arg", "to_dict"]

OFFLINE_OBJECTIVES = ("sft", "reward_model", "dpo", "simpo", "orpo", "kto")
ONLINE_OBJECTIVES = ("ppo", "grpo", "rloo", "online_dpo")
OBJECTIVES = OFFLINE_OBJECTIVES + ONLINE_OBJECTIVES
PRESETS = ("tiny", "125m", "1b", "7b", "smollm2")
# Presets that start from a pretrained checkpoint (`model.init_from`), with LoRA.
PRETRAINED_PRESETS = {"smollm2": "hf:smollm2"}
# The preset of a config file's `get_config()` without an argument.
DEFAULT_PRESET = "tiny"

# Learning rates for the accelerator presets, from the papers' recipes: SFT and reward
# models as in Ouyang et al. 2022 (arXiv 2203.02155) and TRL's examples, DPO 5e-7
# (Rafailov et al. 2023, Tunstall et al. 2023 Zephyr), SimPO 5e-7 (Meng et al. 2024),
# ORPO 8e-6 (Hong et al. 2024), KTO 5e-7 (Ethayarajh et al. 2024 with beta 0.1).
# Online: PPO 3e-6 (TRL's PPO examples; Huang et al. 2024 use 3e-6 for 1B models), GRPO
# 1e-6 (TRL's GRPOConfig default; DeepSeekMath used 1e-6), RLOO 3e-6 (Ahmadian et al.
# 2024 / TRL), online DPO 5e-7 (Guo et al. 2024 as DPO).
_LEARNING_RATES = {"sft": 2e-5, "reward_model": 1e-5, "dpo": 5e-7, "simpo": 5e-7,
                   "orpo": 8e-6, "kto": 5e-7, "ppo": 3e-6, "grpo": 1e-6, "rloo": 3e-6, "online_dpo": 5e-7}
# LoRA on a pretrained model (preset smollm2): adapters take larger steps than full
# fine-tuning (Hu et al. 2021 use 2e-4 to 5e-4 for GPT-2 / RoBERTa; TRL's LoRA DPO
# examples 5e-5 to 5e-6).
_LORA_LEARNING_RATES = {"sft": 2e-4, "reward_model": 1e-4, "dpo": 5e-5, "simpo": 5e-5,
                        "orpo": 1e-4, "kto": 5e-5, "ppo": 1e-5, "grpo": 1e-5, "rloo": 1e-5, "online_dpo": 5e-6}
# The tiny CPU demo: a fresh 2-layer model learns the planted toy rule within the
# preset's steps (online: raises the toy reward within its iterations); the recorded
# results are in docs/benchmarks.md ("Demo runs: the configs and make run").
_TINY_LEARNING_RATES = {"sft": 3e-3, "reward_model": 1e-3, "dpo": 1e-3, "simpo": 1e-3,
                        "orpo": 3e-3, "kto": 1e-3, "ppo": 1e-3, "grpo": 1e-3, "rloo": 1e-3, "online_dpo": 1e-3}


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses the `get_config` argument "k=v,k2=v2" over `defaults`.

  Values take the type of their default (int, float, bool, str). An unknown key or a
  malformed entry raises ValueError naming it and the valid keys.
  """
  result = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
      raise ValueError(f"config argument {item!r} is not of the form key=value (in {arg!r}).")
    if key not in defaults:
      raise ValueError(
          f"unknown config argument {key!r} (in {arg!r}); valid keys: {', '.join(sorted(defaults))}.")
    default = defaults[key]
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        result[key] = value.lower() in ("true", "1")
      elif isinstance(default, int):
        result[key] = int(value)
      elif isinstance(default, float):
        result[key] = float(value)
      else:
        result[key] = value
    except ValueError:
      raise ValueError(
          f"config argument {key}={value!r}: expected a {type(default).__name__}.") from None
  return ml_collections.ConfigDict(result)


def _field_default(cls: type, name: str) -> Any:
  """The default of field `name` of the settings dataclass `cls` (its one home)."""
  return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def loss_default(objective: str, field: str) -> Any:
  """The default of `loss.<field>` of `objective`: its settings dataclass's, which for a
  loss hyper-parameter is the loss function's own signature default (the one home a
  config file reads it from, e.g. the DPO variant a `get_config` argument falls back to)."""
  from rlhf_jax.train import objectives  # pylint: disable=g-import-not-at-top
  return _field_default(objectives.get(objective).settings, field)


def _loss_config(objective: str) -> ml_collections.ConfigDict:
  """The `loss` section: the fields of the objective's settings dataclass with their
  defaults (`objectives.config_defaults`; the fields are documented there), so a typo
  in any other field fails."""
  from rlhf_jax.train import objectives  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(objectives.config_defaults(objectives.get(objective)))


def base_config(objective: str, preset: str = DEFAULT_PRESET) -> ml_collections.ConfigDict:
  """The full default config of `objective` at size `preset` (see the module docstring).

  Args:
    objective: one of `OBJECTIVES`.
    preset: "tiny" (CPU demo on synthetic data, no file) or "125m" / "1b" / "7b"
      (accelerator shapes; give `data.train` for a real run), or "smollm2": LoRA on
      the pretrained SmolLM2-135M-Instruct (`make smollm2`; model.init_from=hf:smollm2,
      its architecture and tokenizer), sized for a run of minutes on 2 CPU cores: a
      demonstration of the path, not a converged model (docs/benchmarks.md, "Pretrained:
      SmolLM2 on the HH-RLHF sample").
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown objective {objective!r}; valid objectives: {', '.join(OBJECTIVES)}.")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}.")
  tiny = preset == "tiny"
  pretrained = preset in PRETRAINED_PRESETS
  config = ml_collections.ConfigDict()
  # Registry name of the objective (`rlhf_jax.train.objectives.names()`).
  config.objective = objective
  # Seeds parameter init, the data order and the per-step keys fold_in(key, step).
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  # `rlhf_jax.models.get_preset` name: "tiny", "125m", "1b", "7b" (not read when
  # `init_from` is a pretrained checkpoint, whose architecture it is).
  config.model.preset = preset
  # Vocabulary size; 0 takes it from the tokenizer (or the toy data).
  config.model.vocab_size = 0
  # Compute dtype "float32" | "bfloat16"; unset (None) keeps the preset's.
  config.model.dtype = placeholder(str)
  # Parameter storage dtype; float32 master weights are the safe default.
  config.model.param_dtype = "float32"
  # Rematerialise each block in the backward pass (saves activation memory); unset
  # keeps the preset's choice.
  config.model.remat = placeholder(bool)
  # Reward models: number of scalar heads on one backbone (an ensemble of K heads).
  config.model.reward_heads = _field_default(networks.ModelSettings, "reward_heads")
  # Reward models: number of independent models trained together (ensemble of K models).
  config.model.ensemble_models = _field_default(networks.ModelSettings, "ensemble_models")
  # Start from the parameters of an earlier run's latest checkpoint (its workdir), e.g.
  # an SFT run for DPO; or from a pretrained model, "hf:PATH" (a Hugging Face checkpoint
  # directory or a GGUF file; "hf:smollm2" is the file of `make smollm2`), whose
  # architecture and tokenizer the run then takes (`rlhf_jax.train.pretrained`); ""
  # initialises from `seed`. The reference model is this start.
  config.model.init_from = PRETRAINED_PRESETS.get(preset, "")
  config.model.lora = ml_collections.ConfigDict()
  # LoRA (Hu et al. 2021, arXiv 2106.09685; `rlhf_jax.models.lora`): rank r of the
  # adapters, 0 trains every parameter. With r > 0 only the adapters (and a reward or
  # value head) train, have optimizer state and are checkpointed; the base comes from
  # `init_from` (again on resume), and the reference (DPO family, online KL) is the base
  # with the adapters off.
  config.model.lora.rank = 8 if pretrained else 0
  # Scale alpha / r of the adapters' product.
  config.model.lora.alpha = 16.0
  # Dropout on the adapters' input during training steps.
  config.model.lora.dropout = 0.05 if pretrained else 0.0
  # Adapted projections, comma-separated: query, key, value, out, gate, up, down.
  config.model.lora.targets = "query,key,value,out" if pretrained else "query,value"

  config.data = ml_collections.ConfigDict()
  # Training file (JSON Lines / Parquet / CSV, local); "" uses synthetic toy data.
  config.data.train = ""
  # Evaluation file; "" uses toy data when `train` is empty, else no evaluation (or
  # the share of `train` that `eval_fraction` holds out).
  config.data.eval = ""
  # With `train` and no `eval`: hold out this share of the training file's examples for
  # evaluation, in (0, 1); 0 is off. The split is seeded and deterministic, and the pairs
  # of one prompt stay on one side (`rlhf_jax.train.inputs.split_by_prompt`); run.json
  # records it under data.split.
  config.data.eval_fraction = 0.0
  # Seed of that split; separate from `seed`, so runs over several seeds share one split.
  config.data.eval_split_seed = 0
  # Record format: "auto" or a format of `rlhf_jax.data` (e.g. "hh_rlhf", "explicit").
  config.data.format = "auto"
  # sentencepiece model file; "" takes the checkpoint's own tokenizer when
  # `model.init_from` is "hf:...", else trains one on the training file into the workdir.
  config.data.tokenizer = ""
  # Vocabulary size of a tokenizer trained here.
  config.data.tokenizer_vocab_size = 512 if tiny else 32000
  # Length of every tokenized sequence (prompt + completion + eos), padded / truncated.
  # smollm2: 128, the cost of a CPU step and evaluation being linear in it.
  config.data.max_length = 128 if tiny or pretrained else 1024
  # Longest prompt segment (bos included); longer prompts lose their oldest tokens
  # (smollm2: 96, keeping the last turns of a dialogue and 32 tokens for the completion).
  config.data.max_prompt_length = 64 if tiny else 96 if pretrained else 512
  # Pairs (dpo, simpo, orpo, reward_model): pack each pair as one row [prompt | chosen |
  # rejected] so the prompt goes through the model once; logits only where a completion
  # token is predicted, rewards at each completion's last token
  # (`rlhf_jax.train.shared_prompt`; same log-probs and rewards).
  config.data.share_prompt = False
  # Packed row length and completion tokens per row; 0 measures the longest pair of
  # the training and evaluation data (rounded up to a multiple of 8).
  config.data.shared_length = 0
  config.data.shared_targets = 0
  # Pairs and SFT sequences: lay the examples of a batch end to end, one row per
  # data-parallel shard, without padding (`rlhf_jax.data.packing`): the matmuls skip the
  # padding, attention runs per sequence (per pair with share_prompt), logits only where
  # a completion token is predicted. Same log-probs, losses and rewards; one compiled
  # step per row-length bucket.
  config.data.padding_free = False
  # Padding-free rows: row lengths and completion-token counts are rounded up to one of
  # this many sizes per octave (a power of two): at most 1/k padding, and the step
  # compiles once per size met; 16 halves the padding for about twice the shapes
  # (measured: docs/benchmarks.md, "Step shapes of padding-free batches").
  config.data.buckets_per_octave = packing.BUCKETS_PER_OCTAVE
  # Slots per document (the longest sequence, or packed pair with share_prompt); 0
  # measures the training and evaluation data (rounded up to a multiple of 8).
  config.data.document_width = 0
  config.data.toy = ml_collections.ConfigDict()
  # Toy data (`rlhf_jax.data.toy_*`, used when `data.train` is empty): training and
  # evaluation examples (0: no evaluation), vocabulary of the integer "words", sequence
  # length.
  config.data.toy.num_train = 4096
  config.data.toy.num_eval = 64
  config.data.toy.vocab_size = 32
  config.data.toy.max_length = 16

  config.mesh = ml_collections.ConfigDict()
  # Device mesh axis sizes; -1 fills with the remaining devices (at most one axis).
  # data: pure data parallelism; fsdp: data parallel with sharded parameters and
  # optimizer state (ZeRO-3); tensor: Megatron-style tensor parallelism.
  config.mesh.data = -1 if preset in ("tiny", "125m", "smollm2") else 1
  config.mesh.fsdp = 1 if preset in ("tiny", "125m", "smollm2") else -1
  config.mesh.tensor = 1

  config.optim = ml_collections.ConfigDict()
  # Peak learning rate of the warmup-cosine schedule.
  config.optim.learning_rate = (_TINY_LEARNING_RATES if tiny else _LORA_LEARNING_RATES if pretrained
                                else _LEARNING_RATES)[objective]
  # Linear warmup from 0 to the peak over this many steps.
  config.optim.warmup_steps = 10 if tiny else 2 if pretrained else 100
  # Final learning rate as a fraction of the peak (end of the cosine decay).
  config.optim.end_learning_rate_factor = 0.1
  # AdamW moments and epsilon.
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95 if not tiny else 0.98
  config.optim.eps = 1e-8
  # Decoupled weight decay, applied to matrices only (not norms, biases).
  config.optim.weight_decay = 0.0 if tiny else 0.01
  # Clip the global gradient norm to this value; 0 disables clipping.
  config.optim.clip_norm = 1.0
  # Abort the run after more than this many consecutive skipped (non-finite) updates
  # (checked at every logging step).
  config.optim.max_consecutive_skips = 10

  config.train = ml_collections.ConfigDict()
  # Optimizer steps of the run (the schedule decays to its end at this step).
  # smollm2: 10 steps of 8, what 2 shared CPU cores do in minutes (step times and the
  # run's result: docs/benchmarks.md, "Pretrained: SmolLM2 on the HH-RLHF sample").
  config.train.steps = 200 if tiny else 10 if pretrained else 2000
  # Global batch: pairs (reward model, DPO family) or sequences (SFT, KTO) per step.
  config.train.batch_size = 16 if tiny else 8 if pretrained else 64
  # Gradient accumulation: the batch is split into this many microbatches (lax.scan).
  config.train.microbatches = 1
  # Write metrics (metrics.jsonl, TensorBoard, progress bar) every this many steps.
  config.train.log_every = 10 if tiny else 2 if pretrained else 20
  # Show a tqdm progress bar (process 0 only).
  config.train.progress_bar = True
  # Compile without XLA backend optimisation (`components.FAST_COMPILE_OPTIONS`): faster
  # compilation, slower steps. On for the tiny CPU preset, where compiling takes longer
  # than training.
  config.train.fast_compile = tiny

  config.eval = ml_collections.ConfigDict()
  # Evaluate every this many steps (and after the last one); 0 evaluates only at the end.
  config.eval.every = 50 if tiny else 0 if pretrained else 500
  # Evaluation batch size; the eval set is read in order, the last partial batch padded.
  config.eval.batch_size = 32 if tiny else 16 if pretrained else 64
  # Equal-width bins of the expected calibration error (reward models).
  config.eval.ece_bins = 10

  config.checkpoint = ml_collections.ConfigDict()
  # Save every this many steps (and at the end); 0 saves only at the end.
  config.checkpoint.every = 100 if tiny or pretrained else 500
  # Keep the newest this many checkpoints.
  config.checkpoint.keep = 2
  # Write checkpoints in a background thread (orbax async checkpointing).
  config.checkpoint.async_save = True

  config.reference = ml_collections.ConfigDict()
  # DPO / KTO reference log-probs: "cached" (one pass of the frozen reference over each
  # data set, stored as .npz keyed by data and parameter fingerprints) or "on_the_fly"
  # (a reference forward every step). smollm2: on the fly, its few steps see fewer
  # pairs than one pass over the training file would.
  config.reference.mode = "on_the_fly" if pretrained else "cached"
  # Folder of the reference cache; "" uses `<workdir>/reference_cache`.
  config.reference.cache_dir = ""
  # Batch size of the one-off reference pass.
  config.reference.batch_size = 32 if tiny or pretrained else 64

  # The objective's own hyper-parameters.
  config.loss = _loss_config(objective)
  if objective in ONLINE_OBJECTIVES:
    _make_online(config, objective, tiny)
  return config


# Fields of the offline layout that an online run does not read.
_OFFLINE_ONLY = {
    "model": ("reward_heads", "ensemble_models"),
    "data": ("eval", "eval_fraction", "eval_split_seed", "max_length", "share_prompt", "shared_length",
             "shared_targets", "padding_free", "buckets_per_octave", "document_width", "toy"),
    "train": ("batch_size",),
}
# Samples per prompt: PPO needs one; the group baselines several; online DPO a pair.
_NUM_SAMPLES = {"ppo": 1, "grpo": 4, "rloo": 4, "online_dpo": 2}


def _make_online(config: ml_collections.ConfigDict, objective: str, tiny: bool) -> None:
  """Turns the offline layout built above into an online run's (see the module docstring)."""
  # The reward section's defaults are `RewardSettings`'; rl imports train, so here.
  from rlhf_jax.rl import rewards  # pylint: disable=g-import-not-at-top
  for section, names in _OFFLINE_ONLY.items():
    for name in names:
      del config[section][name]
  del config["eval"]
  del config["reference"]
  if objective == "ppo":
    # PPO's critic (a separate network, `networks.PolicyWithValue`): "policy" starts it
    # from the starting policy's weights (without the output layer), "reward_model"
    # from the first reward checkpoint (Huang et al. 2024 detail; it then has the reward
    # model's shape and needs its tokenizer), "scratch" from `seed`.
    config.model.value_init = "policy"
  # Prompts file (any format with prompts, see `rlhf_jax.rl.prompts`); "" uses toy prompts.
  # data.format: "auto", a preference or SFT format, "unpaired" or "prompts".
  # data.tokenizer: "" takes `model.init_from`'s tokenizer, else the first reward
  # model's, else trains one on the prompts into the workdir.
  # data.max_prompt_length: longest prompt (bos included); longer prompts lose their
  # oldest tokens. The rollout rows have as many prompt slots as the longest prompt.
  config.data.toy = ml_collections.ConfigDict()
  # Toy prompts (used when `data.train` is empty): how many, the vocabulary of the toy
  # data (`rlhf_jax.data.toy`), the longest prompt in words.
  config.data.toy.num_prompts = 1024
  config.data.toy.vocab_size = 32
  config.data.toy.max_prompt_words = 6

  # Iterations (one rollout, scoring and update each); the learning-rate schedule runs
  # over iterations x rollout.epochs x rollout.minibatches optimizer steps.
  config.train.steps = 60 if tiny else 1000
  config.train.log_every = 5 if tiny else 10
  # Write `samples.jsonl` (prompt, completion, reward of a few rollout rows) every this
  # many iterations; 0 never.
  config.train.samples_every = 10 if tiny else 50
  # Rows written each time.
  config.train.samples_per_write = 4
  config.optim.warmup_steps = 0 if tiny else 20
  config.checkpoint.every = 20 if tiny else 100

  config.rollout = ml_collections.ConfigDict()
  # Prompts per iteration (a multiple of the data-parallel devices).
  config.rollout.prompts = 16 if tiny else 64
  # Completions sampled per prompt (prompt-major groups: GRPO / RLOO baselines, online
  # DPO's pair).
  config.rollout.num_samples = _NUM_SAMPLES[objective]
  # Completion length N (tokens drawn per row, the end token included).
  config.rollout.max_new_tokens = 16 if tiny else 128
  # Sampling: temperature (> 0), top-k (0: off), top-p (1: off). Online
  # objectives measure log-probs on logits / temperature (Huang et al. 2024 detail).
  # With top-k / top-p the old log-probs are the truncated sampling distribution's.
  config.rollout.temperature = 1.0
  config.rollout.top_k = 0
  config.rollout.top_p = 1.0
  # Decoding loop segments of the sampler (`rlhf_jax.models.SamplingConfig`).
  config.rollout.cache_segments = 2 if tiny else 4
  # The update: passes over the rollout (PPO epochs) x shuffled minibatches per pass,
  # one optimizer step per minibatch (`train.microbatches` splits each further).
  config.rollout.epochs = 4 if objective == "ppo" else 1
  config.rollout.minibatches = 4 if objective == "ppo" else 1

  config.reward = ml_collections.ConfigDict()
  # Reward-model runs of configs/reward_model.py: "DIR" or an ensemble "DIR1,DIR2".
  config.reward.checkpoints = ""
  # Ensemble members (every head of every model) -> one score: "mean", "min" (worst
  # case) or "mean_minus_std" (mean - std_coef * std; Coste et al. 2023).
  config.reward.combine = _field_default(rewards.RewardSettings, "combine")
  config.reward.std_coef = _field_default(rewards.RewardSettings, "std_coef")
  # Or a Python function "module:function" of (prompts, completions) -> floats. With
  # neither and toy prompts (no data.train), the toy task's reward
  # `rlhf_jax.rl.toy:good_marker_count` (the count of the toy GOOD marker).
  config.reward.function = _field_default(rewards.RewardSettings, "function")
  # Rows per reward-model forward pass; 0 uses each run's eval.batch_size.
  config.reward.batch_size = _field_default(rewards.RewardSettings, "batch_size")

  config.reference = ml_collections.ConfigDict()
  # The frozen reference of the KL: "" is the starting policy (`model.init_from`, or
  # the initialisation); or a policy run's workdir (its newest checkpoint).
  config.reference.checkpoint = ""


def to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """A plain (JSON-ready) dict of a config."""
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return dict(config)


# ----------------------------------------------------------------------------- readers

_Settings = TypeVar("_Settings")
Config = ml_collections.ConfigDict | Mapping[str, Any]


def _read(cls: type[_Settings], section: Config, **values: Any) -> _Settings:
  """An instance of the settings dataclass `cls` from a config section: its fields of
  the same names (a field the section lacks takes the dataclass default, or fails when
  there is none), plus `values`."""
  names = [f.name for f in dataclasses.fields(cls) if f.name not in values]
  return cls(**{name: section[name] for name in names if name in section}, **values)


def model_settings(config: Config) -> networks.ModelSettings:
  """The network's shape of `config.model` (its `lora` section included)."""
  model = config["model"]
  lora = model.get("lora") if hasattr(model, "get") else None
  return _read(networks.ModelSettings, model, **pretrained.lora_fields(lora))


def optimizer_settings(config: Config) -> optim.OptimizerSettings:
  """`config.optim`."""
  return _read(optim.OptimizerSettings, config["optim"])


def packing_settings(config: Config) -> padding_free.PackingSettings:
  """Prompt sharing and padding-free rows of `config.data` (an offline config)."""
  return _read(padding_free.PackingSettings, config["data"])


def data_settings(config: Config) -> inputs.DataSettings:
  """What an offline run reads and how it tokenizes it (`config.data`)."""
  data = config["data"]
  init_from = config["model"].get("init_from", "") if hasattr(config["model"], "get") else ""
  return _read(inputs.DataSettings, data, toy=_read(inputs.ToyDataSettings, data["toy"]),
               pretrained_tokenizer=init_from if pretrained.is_pretrained(init_from) else "")


def loss_settings(config: Config) -> Any:
  """The objective's settings dataclass from `config.loss` (`objectives.settings_from`:
  an unknown field or a bad value fails naming `loss.<field>`)."""
  from rlhf_jax.train import objectives  # pylint: disable=g-import-not-at-top
  return objectives.settings_from(objectives.get(config["objective"]), dict(config["loss"]))


def build_settings(config: Config) -> components.BuildSettings:
  """What an offline run compiles (`components.build`), read from `config`."""
  train = config["train"]
  return components.BuildSettings(
      objective=str(config["objective"]), loss=loss_settings(config), model=model_settings(config),
      optim=optimizer_settings(config), packing=packing_settings(config), steps=int(train["steps"]),
      microbatches=int(train["microbatches"]), fast_compile=bool(train["fast_compile"]))
