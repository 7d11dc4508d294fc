r"""SimPO (Meng et al. 2024, arXiv 2405.14734): reference-free, length-normalised rewards.

Launch (tiny CPU demo on the separable toy pairs):

  python scripts/train.py --config=configs/simpo.py:preset=tiny --workdir=/tmp/simpo_tiny

Its result (eval reward accuracy, mean margin, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run").

A real run:

  python scripts/train.py --config=configs/simpo.py:preset=125m --workdir=runs/simpo \
    --config.data.train=train.jsonl.gz --config.data.eval=test.jsonl.gz \
    --config.model.init_from=runs/sft

Fields: see `rlhf_jax/train/config.py`, where every field is commented.
"""

from rlhf_jax.train import config as config_lib


def get_config(arg=None):
  """`arg`: "preset=tiny|125m|1b|7b"."""
  args = config_lib.parse_arg(arg, preset=config_lib.DEFAULT_PRESET)
  return config_lib.base_config("simpo", args.preset)
