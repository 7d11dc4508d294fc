"""The objectives' contract (`objectives/contract.py`): one registry for offline and online
objectives, the config's `loss` section is the settings dataclass, bad settings name
the field."""

import dataclasses
import inspect

import pytest

from rlhf_jax import losses
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import objectives

from train_testlib import tiny_config


def test_registry_names_and_errors():
  assert set(objectives.names()) >= {"sft", "reward_model", "dpo", "simpo", "orpo", "kto"}
  with pytest.raises(ValueError, match="unknown objective 'dpoo'; did you mean 'dpo'.*Valid objective names: .*dpo"):
    objectives.get("dpoo")
  settings = objectives.DPOSettings
  with pytest.raises(ValueError, match="already registered"):
    objectives.register("dpo", settings=settings, data="pairs", model="policy")(lambda *a, **k: None)
  with pytest.raises(ValueError, match="data must be one of"):
    objectives.register("x", settings=settings, data="triples", model="policy")
  with pytest.raises(ValueError, match="settings must be a dataclass type"):
    objectives.register("x", settings=dict, data="pairs", model="policy")
  with pytest.raises(ValueError, match="online objective needs `prepare`"):
    objectives.register("x", settings=settings, data="rollouts", model="policy")


@pytest.mark.parametrize("name", ["sft", "reward_model", "dpo", "simpo", "orpo", "kto"])
def test_loss_section_is_the_settings_dataclass(name):
  """The config's `loss` section has exactly the settings' fields and defaults, and the
  defaults a loss function of `rlhf_jax.losses` has come from its signature."""
  import dataclasses
  import inspect
  from rlhf_jax import losses
  objective = objectives.get(name)
  config = tiny_config(name)
  assert config.loss.to_dict() == dataclasses.asdict(objective.settings())
  assert objectives.settings_from(objective, config.loss) == objective.settings()
  sources = {"dpo": losses.dpo, "simpo": losses.simpo, "orpo": losses.orpo, "kto": losses.kto}
  if name in sources:
    parameters = inspect.signature(sources[name]).parameters
    for field, value in dataclasses.asdict(objective.settings()).items():
      if field in parameters and field != "exo_epsilon":
        assert value == parameters[field].default, field


def test_bad_settings_fail_with_the_field():
  with pytest.raises(ValueError, match="config loss.variant: unknown DPO variant 'ipoo'; did you mean 'ipo'"):
    objectives.DPOSettings(variant="ipoo")
  with pytest.raises(ValueError, match="unknown loss field.*gama.*valid fields: beta, gamma"):
    objectives.settings_from(objectives.get("simpo"), {"gama": 1.0})
  with pytest.raises(ValueError, match="loss.initial_reliability must lie in"):
    objectives.RewardModelSettings(name="crowd_bt", initial_reliability=1.5)


@pytest.mark.parametrize("name", ["ppo", "grpo", "rloo", "online_dpo"])
def test_online_objectives_share_the_registry_and_config(name):
  objective = objectives.get(name)
  assert objective.online and objective.data == "rollouts" and objective.prepare is not None
  assert objective.value_model == (name == "ppo")
  assert name in objectives.names(online=True) and name not in objectives.names(online=False)
  config = config_lib.base_config(name, "tiny")
  assert config.loss.to_dict() == dataclasses.asdict(objective.settings())
  assert "eval" not in config and "batch_size" not in config.train and "rollout" in config


def test_bad_online_settings_name_the_field():
  with pytest.raises(ValueError, match="config loss.aggregation must be one of"):
    objectives.PPOSettings(aggregation="mean")
  with pytest.raises(ValueError, match="config loss.kl_estimator must be one of"):
    objectives.GRPOSettings(kl_estimator="k4")
  with pytest.raises(ValueError, match="config loss.scale must be one of"):
    objectives.GRPOSettings(scale="std")
  with pytest.raises(ValueError, match="loss.dual_clip must be 0"):
    objectives.RLOOSettings(dual_clip=0.5)
  with pytest.raises(ValueError, match="loss.lam must lie in"):
    objectives.PPOSettings(lam=1.5)
