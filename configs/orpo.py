r"""ORPO (Hong et al. 2024, arXiv 2403.07691): SFT loss plus an odds-ratio preference term,
no reference model.

Launch (tiny CPU demo on the separable toy pairs):

  python scripts/train.py --config=configs/orpo.py:preset=tiny --workdir=/tmp/orpo_tiny

Its result (eval accuracy: a positive log odds ratio; mean log odds ratio; chosen NLL
per token; time) is recorded in docs/benchmarks.md ("Demo runs: the configs and make run").

A real run (from a base model; ORPO needs no SFT stage):

  python scripts/train.py --config=configs/orpo.py:preset=125m --workdir=runs/orpo \
    --config.data.train=train.jsonl.gz --config.data.eval=test.jsonl.gz

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("orpo", args.preset)
