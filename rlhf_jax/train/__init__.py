"""Sharded training of offline RLHF objectives: SFT, reward models, DPO family, ORPO, KTO.

The objectives registry (`objectives`) also holds the online ones (ppo, grpo, rloo,
online_dpo), which `rlhf_jax.rl` trains on the policy's own samples with the same train
step (`step.train_step_fn`), mesh, state, optimizer and checkpoints.

    from rlhf_jax import train
    config = train.base_config("dpo", "tiny")          # or configs/dpo.py:get_config
    metrics = train.train(config, "/tmp/run")          # resumes if /tmp/run has a checkpoint

Modules: `config` (the config builder), `mesh` (device mesh and shardings), `optim`
(AdamW + warmup-cosine + clipping + NaN guard), `state` (TrainState, sharded init),
`objectives` (registry of loss functions), `step` (jitted train/eval steps),
`reference` (cached reference log-probs), `checkpoint` (orbax, SIGTERM), `rundir`
(config/run info/metrics/TensorBoard; `check_resume`: what a run directory is),
`evaluate` (accuracy, ECE, margins), `inputs` (config -> tokenized data), `components`
(everything compiled for a mesh), `loop` (`train`, `MAY_CHANGE_ON_RESUME`), `score` (a
trained reward model scoring texts: `load_reward_model(workdir)(prompts, completions)`),
`sampling` (a trained policy's completions, `load_policy(workdir).sample(prompts, ...)`,
and `make_sampler`: `models.generate` jitted over the train step's mesh).
"""

from rlhf_jax.train import objectives, sampling, score
from rlhf_jax.train.components import Components, MeshFunction, abstract_batch, build, device_batch_layout
from rlhf_jax.train.checkpoint import Checkpointer, StopRequest, load_params
from rlhf_jax.train.config import OBJECTIVES, PRESETS, base_config, parse_arg
from rlhf_jax.train.evaluate import expected_calibration_error, pairwise_accuracy, summarize
from rlhf_jax.train.inputs import DataInfo, Datasets, load_datasets, mismatched_pairs
from rlhf_jax.train.loop import MAY_CHANGE_ON_RESUME, TrainingError, check_config, evaluate_dataset, train
from rlhf_jax.train.mesh import batch_sharding, make_mesh, param_shardings, shard_batch
from rlhf_jax.train.optim import learning_rate_schedule, make_optimizer, skipped_updates
from rlhf_jax.train.score import RewardScorer, load_reward_model
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.step import make_eval_step, make_train_step, train_step_fn

__all__ = [
    "Checkpointer",
    "Components",
    "DataInfo",
    "Datasets",
    "MAY_CHANGE_ON_RESUME",
    "MeshFunction",
    "OBJECTIVES",
    "PRESETS",
    "RewardScorer",
    "StopRequest",
    "TrainState",
    "TrainingError",
    "abstract_batch",
    "base_config",
    "batch_sharding",
    "build",
    "check_config",
    "device_batch_layout",
    "evaluate_dataset",
    "expected_calibration_error",
    "learning_rate_schedule",
    "load_datasets",
    "load_params",
    "load_reward_model",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "mismatched_pairs",
    "objectives",
    "pairwise_accuracy",
    "param_shardings",
    "parse_arg",
    "sampling",
    "score",
    "shard_batch",
    "skipped_updates",
    "summarize",
    "train",
    "train_step_fn",
]
