r"""DPO (Rafailov et al. 2023, arXiv 2305.18290) and its variants (`loss.variant`).

Launch (tiny CPU demo on the synthetic separable toy set, no file, no download):

  python scripts/train.py --config=configs/dpo.py:preset=tiny --workdir=/tmp/dpo_tiny

Its result (eval implicit-reward accuracy, margin, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run"). Any variant: `--config=configs/dpo.py:preset=tiny,variant=ipo`.

A real run (HH-RLHF jsonl, tokenizer trained into the workdir when none is given):

  python scripts/train.py --config=configs/dpo.py:preset=125m --workdir=runs/dpo \
    --config.data.train=train.jsonl.gz --config.data.eval=test.jsonl.gz \
    --config.model.init_from=runs/sft

Prompt-prefix sharing: `--config.data.share_prompt=true` packs each pair as one row
[prompt | chosen | rejected], so the prompt goes through the policy (and the reference)
once and logits are computed only at completion positions; the log-probs are the same
(`rlhf_jax/train/shared_prompt.py`); its speed against PyTorch is in docs/benchmarks.md
("Train step against PyTorch"). Also for SimPO and ORPO.

Padding-free batches: `--config.data.padding_free=true` lays the pairs of a batch end to
end, one row per data-parallel shard, without padding (`rlhf_jax/data/packing.py`):
attention runs per sequence, logits only at completion tokens, the log-probs are the
same. With `data.share_prompt=true` as well each pair is one [prompt | chosen | rejected]
document. Row lengths and completion-token counts are rounded up to one of
`data.buckets_per_octave` sizes per octave (at most 1/k padding; measured padding and
shape counts in docs/benchmarks.md, "Step shapes of padding-free batches"); the step
compiles once per size met, and the log names each new one. To keep compiled steps across runs and
resumes, set JAX's own disk cache before launching, in a directory only you can write
(its entries are executable code): `export JAX_COMPILATION_CACHE_DIR=~/.cache/jax`.

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/dpo.py:preset=smollm2 --workdir=runs/dpo_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/dpo.py:preset=125m --workdir=runs/dpo_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint. The preset is sized for minutes on 2 CPU cores (10 steps of
8 pairs of 128 tokens); its run on the HH-RLHF sample is recorded in docs/benchmarks.md
("Pretrained: SmolLM2 on the HH-RLHF sample").

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2,variant=<losses.DPO_VARIANTS>"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET, variant=config_lib.loss_default("dpo", "variant"))
  config = config_lib.base_config("dpo", args.preset)
  config.loss.variant = args.variant
  return config
