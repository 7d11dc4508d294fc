"""Configs: the `k=v` argument parser, every config file, and typo rejection on the command line."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from rlhf_jax.train import config as config_lib
from rlhf_jax.train import objectives

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = {"sft": "sft.py", "reward_model": "reward_model.py", "dpo": "dpo.py",
                "simpo": "simpo.py", "orpo": "orpo.py", "kto": "kto.py", "ppo": "ppo.py", "grpo": "grpo.py",
                "rloo": "rloo.py", "online_dpo": "online_dpo.py"}


def _load(name):
  spec = importlib.util.spec_from_file_location(f"_config_{name}", REPO / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_parse_arg_types_and_defaults():
  args = config_lib.parse_arg("preset=7b, steps=30,lr=0.5,flag=true", preset="tiny", steps=1, lr=1.0,
                              flag=False, name="x")
  assert (args.preset, args.steps, args.lr, args.flag, args.name) == ("7b", 30, 0.5, True, "x")
  assert config_lib.parse_arg(None, preset="tiny").preset == "tiny"


@pytest.mark.parametrize("arg, message", [
    ("preset=tiny,varient=ipo", "unknown config argument 'varient'"),
    ("preset", "not of the form key=value"),
    ("steps=ten", "expected a int"),
])
def test_parse_arg_errors_name_the_problem(arg, message):
  with pytest.raises(ValueError, match=message):
    config_lib.parse_arg(arg, preset="tiny", steps=1, variant="sigmoid")


@pytest.mark.parametrize("objective", sorted(CONFIG_FILES))
@pytest.mark.parametrize("preset", config_lib.PRESETS)
def test_every_config_file_builds_every_preset(objective, preset):
  config = _load(CONFIG_FILES[objective]).get_config(f"preset={preset}")
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.objective == objective
  assert config.model.preset == preset
  objectives.get(config.objective)  # registered
  # The docstring holds the launch command and names the doc that records its result;
  # the figures themselves live only there (so they cannot drift apart).
  doc = _load(CONFIG_FILES[objective]).__doc__
  command = f"python scripts/train.py --config=configs/{CONFIG_FILES[objective]}:preset=tiny"
  assert command in doc
  assert 'docs/benchmarks.md ("Demo runs: the configs and make run")' in doc
  assert not re.search(r"\d\.\d+x\b|accuracy (about |of )?[01]\.\d\d|about \d+ s\b", doc)
  demos = (REPO / "docs" / "benchmarks.md").read_text().split("## Demo runs: the configs and make run")[1]
  assert f"`{command} --workdir=" in demos.split("\n## ")[0]


def test_loss_section_holds_only_the_objectives_fields():
  dpo = config_lib.base_config("dpo", "tiny")
  assert "variant" in dpo.loss and "lam" not in dpo.loss
  orpo = config_lib.base_config("orpo", "tiny")
  assert set(orpo.loss.keys()) == {"lam"}
  with pytest.raises(ValueError, match="unknown objective 'ppx'"):
    config_lib.base_config("ppx", "tiny")
  with pytest.raises(ValueError, match="unknown preset '3b'"):
    config_lib.base_config("dpo", "3b")


def test_dpo_config_argument_picks_the_variant():
  assert _load("dpo.py").get_config("preset=tiny,variant=ipo").loss.variant == "ipo"
  assert _load("reward_model.py").get_config("loss=crowd_bt").loss.name == "crowd_bt"
  dr_grpo = _load("grpo.py").get_config("preset=tiny,variant=dr_grpo")
  assert (dr_grpo.loss.scale, dr_grpo.loss.aggregation) == ("none", "constant_normalizer")
  assert _load("grpo.py").get_config("variant=grpo").loss.scale == "group"
  with pytest.raises(ValueError, match="unknown GRPO variant 'drgrpo'"):
    _load("grpo.py").get_config("variant=drgrpo")
  assert _load("online_dpo.py").get_config("variant=ipo").loss.variant == "ipo"


def _run_script(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_config_typo_is_rejected_with_a_clear_message(tmp_path):
  result = _run_script("--config=configs/dpo.py:preset=tiny", f"--workdir={tmp_path}",
                       "--config.optim.lrr=1")
  assert result.returncode != 0
  assert "unknown config field 'optim.lrr'" in result.stderr
  assert "learning_rate" in result.stderr  # the valid fields are listed
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()  # nothing ran
