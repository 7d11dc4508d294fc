"""Pairwise reward-model training: Bradley-Terry, soft targets, ties, Crowd-BT."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.models import lora
from rlhf_jax.train import evaluate, networks, padding_free, shared_prompt
from rlhf_jax.train.objectives.contract import check_choice, loss_default, register, weighted_sum
from rlhf_jax.train.objectives.logps import concat

__all__ = ["RELIABILITY_PARAM", "REWARD_LOSSES", "RewardModelSettings", "reliability_table", "reward_model"]

# Parameter key of the learned per-annotator Crowd-BT reliabilities (logits).
RELIABILITY_PARAM = "annotator_reliability_logits"
REWARD_LOSSES = ("bradley_terry", "bradley_terry_soft", "bradley_terry_ties", "crowd_bt")


@dataclasses.dataclass(frozen=True)
class RewardModelSettings:
  """Attributes:
    name: the likelihood, one of `REWARD_LOSSES`: "bradley_terry", "bradley_terry_soft"
      (targets = the batch's target_prob), "bradley_terry_ties" (Davidson; the batch's
      is_tie), "crowd_bt" (annotator reliabilities).
    margin: bradley_terry: required reward gap (Llama 2 margin), a scalar here.
    label_smoothing: bradley_terry: probability that a label is flipped, in [0, 0.5).
    tie_param: bradley_terry_ties: Davidson tie parameter nu > 0.
    centering: coefficient of the reward-centering penalty mean((r_c + r_r)^2)
      (Eisenstein et al. 2023 use 0.01); 0 disables it.
    reliabilities: crowd_bt: "learn" (one reliability per annotator learned jointly
      with the reward, Chen et al. 2013) or a JSON file {"annotator id": reliability}.
    initial_reliability: crowd_bt: initial learned reliability, in (0, 1).
    unknown_reliability: crowd_bt: reliability of labels with no single known
      annotator (-1).
  """

  name: str = "bradley_terry"
  margin: float = loss_default(losses.bradley_terry, "margin")
  label_smoothing: float = loss_default(losses.bradley_terry, "label_smoothing")
  tie_param: float = 1.0
  centering: float = 0.0
  reliabilities: str = "learn"
  initial_reliability: float = 0.8
  unknown_reliability: float = 1.0

  def __post_init__(self):
    check_choice(self.name, "name", REWARD_LOSSES)
    if self.name == "crowd_bt" and self.reliabilities == "learn" and not 0.0 < self.initial_reliability < 1.0:
      raise ValueError(f"loss.initial_reliability must lie in (0, 1), got {self.initial_reliability}.")


def _logit(p: float) -> float:
  return float(np.log(p) - np.log1p(-p))


def _reward_extra_params(key, settings: RewardModelSettings, data_info) -> dict[str, Any]:
  """Learned Crowd-BT reliabilities, one logit per annotator, when configured."""
  del key
  if settings.name != "crowd_bt" or settings.reliabilities != "learn":
    return {}
  count = max(int(data_info.get("num_annotators", 0)), 1)
  return {RELIABILITY_PARAM: jnp.full((count,), _logit(float(settings.initial_reliability)), jnp.float32)}


def reliability_table(path: str, annotator_names: tuple[str, ...]) -> np.ndarray:
  """Reliabilities [A] for the data set's annotators from a JSON file {id: reliability}.

  Raises ValueError naming the file and the annotator when an id is missing or a value
  lies outside [0, 1].
  """
  try:
    table = json.loads(Path(path).read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(f"loss.reliabilities file {path}: cannot read it as JSON ({error}).") from None
  if not isinstance(table, dict):
    raise ValueError(f"loss.reliabilities file {path}: expected a JSON object {{annotator id: reliability}}.")
  values = np.zeros(len(annotator_names), np.float32)
  for i, name in enumerate(annotator_names):
    if name not in table:
      raise ValueError(f"loss.reliabilities file {path}: no reliability for annotator {name!r}.")
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
      raise ValueError(
          f"loss.reliabilities file {path}: annotator {name!r} has reliability {value!r}; "
          "expected a number in [0, 1].")
    values[i] = value
  return values


def _crowd_reliability(params, batch, settings: RewardModelSettings) -> jax.Array:
  """Per-example reliability: the batch's column (from a file) or the learned logits."""
  annotator = jnp.asarray(batch["annotator"], jnp.int32)
  known = annotator >= 0
  if "reliability" in batch:
    reliability = jnp.asarray(batch["reliability"], jnp.float32)
  else:
    logits = params[lora.OBJECTIVE_KEY][RELIABILITY_PARAM]
    reliability = jax.nn.sigmoid(logits[jnp.clip(annotator, 0, logits.shape[0] - 1)])
  return jnp.where(known, reliability, jnp.float32(settings.unknown_reliability))


def _reward_params(params):
  return lora.network_params(params)


def pair_rewards(model: Any, params: Any, batch: Mapping[str, jax.Array],
                 layout: shared_prompt.SharedPromptLayout | None = None) -> tuple[jax.Array, jax.Array]:
  """Rewards [B, K] of the chosen and rejected sequences of a pair batch: two rows per
  pair, one packed row (`layout`), or padding-free rows (`packed_tokens`)."""
  params = _reward_params(params)
  if "packed_tokens" in batch:  # data.padding_free
    return padding_free.packed_pair_rewards(model, params, batch)
  if layout is not None:
    return shared_prompt.shared_pair_rewards(model, params, batch, layout)
  size = batch["chosen_tokens"].shape[0]
  rewards = networks.apply_reward(
      model, params,
      concat(batch["chosen_tokens"], batch["rejected_tokens"]),
      concat(batch["chosen_attention_mask"], batch["rejected_attention_mask"]))
  return rewards[:size], rewards[size:]


def _summary(outputs: Mapping[str, Any], num_bins: int) -> dict[str, float]:
  return evaluate.reward_model_metrics(outputs, num_bins=num_bins)


@register("reward_model", settings=RewardModelSettings, data="pairs", model="reward",
          extra_params=_reward_extra_params, summary=_summary)
def reward_model(params, batch, rng, *, model, settings: RewardModelSettings, layout):
  """Pairwise reward-model training; `settings.name` picks the likelihood.

  - "bradley_terry": margin and label smoothing (`losses.bradley_terry`);
  - "bradley_terry_soft": cross-entropy against the batch's `target_prob`, i.e.
    confidence-weighted training on aggregated labels (`losses.bradley_terry_soft`);
  - "bradley_terry_ties": Davidson ties from the batch's `is_tie` (`losses.bradley_terry_ties`);
  - "crowd_bt": per-annotator reliabilities, learned or from a file, looked up by the
    batch's `annotator` ids (`losses.crowd_bt`, Chen et al. 2013).

  With K reward outputs (heads and/or ensemble members) the loss is the mean of the K
  per-head losses; `centering` adds `centering * mean_k (r_c + r_r)^2`
  (`losses.reward_centering`). Outputs use the mean reward over the K outputs.
  """
  del rng
  chosen, rejected = pair_rewards(model, params, batch, layout.shared_prompt)  # [B, K]

  def per_pair(column: jax.Array) -> jax.Array:
    return jnp.broadcast_to(column[:, None], chosen.shape)

  if settings.name == "bradley_terry":
    per_head = losses.bradley_terry(chosen, rejected, margin=settings.margin,
                                    label_smoothing=settings.label_smoothing)
  elif settings.name == "bradley_terry_soft":
    target_prob = per_pair(jnp.asarray(batch["target_prob"], jnp.float32))
    per_head = losses.bradley_terry_soft(chosen, rejected, target_prob)
  elif settings.name == "bradley_terry_ties":
    per_head = losses.bradley_terry_ties(chosen, rejected, per_pair(batch["is_tie"]), tie_param=settings.tie_param)
  else:
    per_head = losses.crowd_bt(chosen, rejected, per_pair(_crowd_reliability(params, batch, settings)))
  per_example = jnp.mean(per_head, axis=-1)
  if settings.centering:
    per_example = per_example + settings.centering * jnp.mean(losses.reward_centering(chosen, rejected), axis=-1)
  margin = jnp.mean(chosen, axis=-1) - jnp.mean(rejected, axis=-1)
  outputs = {"loss": per_example, "chosen_reward": jnp.mean(chosen, axis=-1),
             "rejected_reward": jnp.mean(rejected, axis=-1), "margin": margin,
             "accuracy": (margin > 0).astype(jnp.float32),
             "label_target_prob": jnp.asarray(batch["target_prob"], jnp.float32),
             "label_is_tie": jnp.asarray(batch["is_tie"], jnp.float32)}
  if chosen.shape[-1] > 1:
    # Disagreement of the ensemble on the reward gap (an uncertainty estimate).
    outputs["margin_std"] = jnp.std(chosen - rejected, axis=-1)
  return weighted_sum(per_example, batch), outputs
