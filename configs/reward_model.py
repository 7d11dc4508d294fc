r"""Pairwise reward model: Bradley-Terry (hard, soft, ties), Crowd-BT, margins, centering,
and ensembles of K heads (`model.reward_heads`) or K models (`model.ensemble_models`).

Launch (tiny CPU demo: the planted rule "chosen completions hold GOOD, rejected hold BAD"):

  python scripts/train.py --config=configs/reward_model.py:preset=tiny --workdir=/tmp/rm_tiny

Its result (eval pairwise accuracy, calibration error, margin, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run"). Other likelihoods:
`--config=configs/reward_model.py:preset=tiny,loss=bradley_terry_soft` (confidence-weighted
training on `target_prob`), `loss=bradley_terry_ties`, `loss=crowd_bt` (annotator
reliabilities learned jointly, or `--config.loss.reliabilities=reliab.json`).

A real run on HH-RLHF (tokenizer trained into the workdir when none is given):

  python scripts/train.py --config=configs/reward_model.py:preset=125m --workdir=runs/rm \
    --config.data.train=train.jsonl.gz --config.data.eval=test.jsonl.gz

`--config.data.share_prompt=true` packs each pair as one row [prompt | chosen | rejected]
and reads both rewards from it: the prompt goes through the model once, the rewards are
the same (`rlhf_jax/train/shared_prompt.py`). `--config.data.padding_free=true` lays the
pairs of a batch end to end without padding (`rlhf_jax/data/packing.py`), alone or with
prompt sharing; the rewards are the same. The step compiles once per row length met,
rounded up to one of `data.buckets_per_octave` sizes per octave.

Scoring with the trained model (a run on a data file, which has a tokenizer):

  python scripts/score.py --workdir=runs/rm --input=test.jsonl.gz --output=scores.jsonl

From a pretrained model (`rlhf_jax/train/pretrained.py`): `preset=smollm2` is LoRA on
SmolLM2-135M-Instruct (`make smollm2` installs the file; its architecture and tokenizer
are used), or any Hugging Face checkpoint directory or GGUF file with LoRA:

  python scripts/train.py --config=configs/reward_model.py:preset=smollm2 --workdir=runs/reward_model_smollm2 \
    --config.data.train=train.jsonl.gz
  python scripts/train.py --config=configs/reward_model.py:preset=125m --workdir=runs/reward_model_hf \
    --config.model.init_from=hf:PATH --config.model.lora.rank=16 --config.data.train=train.jsonl.gz

`model.lora.rank=0` trains every parameter instead. `scripts/export.py` writes the result
as a Hugging Face checkpoint. The preset is sized for minutes on 2 CPU cores (10 steps of
8 pairs of 128 tokens); its run on the HH-RLHF sample is recorded in docs/benchmarks.md
("Pretrained: SmolLM2 on the HH-RLHF sample").

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b|smollm2,loss=bradley_terry|bradley_terry_soft|bradley_terry_ties|crowd_bt"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET, loss=config_lib.loss_default("reward_model", "name"))
  config = config_lib.base_config("reward_model", args.preset)
  config.loss.name = args.loss
  return config
