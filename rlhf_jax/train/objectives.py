"""Training objectives by name: each a pure function of parameters and a batch.

    loss, outputs = objective.fn(params, batch, rng, model=model, config=config)

`loss` is a scalar to minimise, `outputs` a dict of per-example [B] arrays (the
per-example loss, rewards, accuracy, ...) that the train step averages into metrics and
the evaluation collects over a whole data set; names starting with "label_" carry the
batch's labels to the evaluation and are not averaged into training metrics. Every loss
comes from `rlhf_jax.losses` and every log-prob from `losses.sequence_logprobs`.

Weighting and accumulation: the loss is `sum_i weight_i * loss_i / batch["loss_denominator"]`,
where the train step computes the denominator once for the whole global batch (by
default the sum of the weights, `batch["weight"]` or ones) and hands it to every
microbatch. Summing the microbatch losses therefore gives exactly the loss (and
gradient) of the full batch, for any weights.

Adding an objective is adding one function:

    @register("my_loss", data="pairs", model="policy")
    def my_loss(params, batch, rng, *, model, config):
      ...
      return weighted_sum(per_example, batch), {"loss": per_example}

`data` is the batch layout ("pairs", "sequences" or "unpaired", see `rlhf_jax.data`),
`model` the network ("policy" or "reward"), `reference=True` asks the trainer for the
frozen reference's log-probs in the batch (`reference.py`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.train import networks
from rlhf_jax.train import padding_free, shared_prompt

__all__ = [
    "Objective",
    "get",
    "names",
    "pair_logps",
    "register",
    "sequence_logps",
    "weighted_sum",
]

Batch = Mapping[str, jax.Array]
ObjectiveFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

DATA_KINDS = ("pairs", "sequences", "unpaired")
MODEL_KINDS = ("policy", "reward")
# Parameter key of the learned per-annotator Crowd-BT reliabilities (logits).
RELIABILITY_PARAM = "annotator_reliability_logits"


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"config {name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def _default_denominator(batch: Batch, config: Any) -> jax.Array:
  del config
  if "weight" in batch:
    return jnp.sum(jnp.asarray(batch["weight"], jnp.float32))
  first = next(iter(batch.values()))
  return jnp.asarray(first.shape[0], jnp.float32)


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered objective: the loss function and what it needs.

  Attributes:
    name: registry name (`config.objective`).
    fn: `(params, batch, rng, *, model, config) -> (loss, outputs)`.
    data: batch layout, one of `DATA_KINDS`.
    model: network kind, one of `MODEL_KINDS`.
    reference: whether the batch must carry the reference model's log-probs.
    denominator: `(global_batch, config) -> scalar` normaliser of the summed loss.
    extra_params: optional `(key, config, data_info) -> dict` of parameters the
      objective learns besides the network's (e.g. annotator reliabilities).
  """

  name: str
  fn: ObjectiveFn
  data: str
  model: str
  reference: bool = False
  denominator: Callable[[Batch, Any], jax.Array] = _default_denominator
  extra_params: Callable[..., dict[str, Any]] | None = None


_REGISTRY: dict[str, Objective] = {}


def register(
    name: str,
    *,
    data: str,
    model: str,
    reference: bool = False,
    denominator: Callable[[Batch, Any], jax.Array] | None = None,
    extra_params: Callable[..., dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> Callable[[ObjectiveFn], ObjectiveFn]:
  """Decorator adding an objective function to the registry under `name`."""
  if data not in DATA_KINDS:
    raise ValueError(f"objective {name!r}: data must be one of {DATA_KINDS}, got {data!r}.")
  if model not in MODEL_KINDS:
    raise ValueError(f"objective {name!r}: model must be one of {MODEL_KINDS}, got {model!r}.")

  def decorator(fn: ObjectiveFn) -> ObjectiveFn:
    if name in _REGISTRY and not overwrite:
      raise ValueError(f"objective {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = Objective(
        name=name, fn=fn, data=data, model=model, reference=reference,
        denominator=denominator or _default_denominator, extra_params=extra_params)
    return fn

  return decorator


def names() -> tuple[str, ...]:
  """Registered objective names, sorted."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Objective:
  """The objective registered as `name`; an unknown name lists the valid ones."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(names())}.") from None


# ---------------------------------------------------------------------------------------
# Shared pieces.


def weighted_sum(per_example: jax.Array, batch: Batch) -> jax.Array:
  """sum_i weight_i * per_example_i / batch["loss_denominator"] (weights default to 1)."""
  weight = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else 1.0
  denominator = jnp.asarray(batch["loss_denominator"], jnp.float32)
  # An all-zero-weight batch contributes nothing instead of 0 / 0.
  return jnp.sum(weight * per_example) / jnp.maximum(denominator, jnp.finfo(jnp.float32).tiny)


def sequence_logps(
    model: Any, params: Any, tokens: jax.Array, attention_mask: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Summed completion log-probs [B] and completion lengths [B] of right-padded sequences.

  The log-prob of token t comes from the logits at t - 1 (data token convention), so
  `sequence_logprobs(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:])`.
  """
  logits = networks.apply_policy(model, params, tokens, attention_mask)
  mask = jnp.asarray(loss_mask[:, 1:], jnp.bool_)
  token_logps = losses.sequence_logprobs(logits[:, :-1], tokens[:, 1:], mask)
  return jnp.sum(token_logps, axis=-1), jnp.sum(mask, axis=-1).astype(jnp.float32)


def _concat(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.concatenate([a, b], axis=0)


def pair_logps(model: Any, params: Any, batch: Batch,
               layout: shared_prompt.SharedPromptLayout | None = None) -> dict[str, jax.Array]:
  """Policy log-probs and lengths of the chosen and rejected completions.

  One forward pass over the concatenated [2B, T] batch, or with a `layout` (from
  `config.data.share_prompt`) over [B, layout.length] rows that hold the prompt once
  (`shared_prompt.shared_pair_logps`; same values up to float rounding). A batch packed
  by `data.packing.pack_pairs` (`config.data.padding_free`: it carries `packed_tokens`)
  goes through its padding-free rows (`padding_free.packed_pair_logps`).
  """
  if "packed_tokens" in batch:
    return padding_free.packed_pair_logps(model, params, batch)
  if layout is not None:
    return shared_prompt.shared_pair_logps(model, params, batch, layout)
  logps, lengths = sequence_logps(
      model, params,
      _concat(batch["chosen_tokens"], batch["rejected_tokens"]),
      _concat(batch["chosen_attention_mask"], batch["rejected_attention_mask"]),
      _concat(batch["chosen_loss_mask"], batch["rejected_loss_mask"]))
  size = batch["chosen_tokens"].shape[0]
  return {"chosen_logps": logps[:size], "rejected_logps": logps[size:],
          "chosen_lengths": lengths[:size], "rejected_lengths": lengths[size:]}


def _pair_outputs(per_example, chosen_rewards, rejected_rewards) -> dict[str, jax.Array]:
  margin = chosen_rewards - rejected_rewards
  return {"loss": per_example, "chosen_reward": chosen_rewards, "rejected_reward": rejected_rewards,
          "margin": margin, "accuracy": (margin > 0).astype(jnp.float32)}


# ---------------------------------------------------------------------------------------
# SFT.


def _sft_denominator(batch: Batch, config: Any) -> jax.Array:
  if "packed_tokens" in batch:  # data.padding_free: the sequences of packed rows
    _check_unweighted(batch)
    if config.loss.aggregation == "token_mean":
      return jnp.sum(batch["target_owners"] >= 0).astype(jnp.float32)
    return jnp.asarray(batch["sequence_ends"].size, jnp.float32)
  weight = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones(
      batch["tokens"].shape[0], jnp.float32)
  if config.loss.aggregation == "token_mean":
    tokens = jnp.sum(jnp.asarray(batch["loss_mask"][:, 1:], jnp.float32), axis=-1)
    return jnp.sum(weight * tokens)
  return jnp.sum(weight)


def _check_unweighted(batch: Batch) -> None:
  # Per-sequence weights would have to follow the packed order of the whole batch for
  # the token-mean denominator; the trainer's sequence batches carry none.
  if "weight" in batch:
    raise ValueError("sft: padding-free batches of sequences take no per-sequence `weight`; "
                     "set data.padding_free=False to weight sequences.")


@register("sft", data="sequences", model="policy", denominator=_sft_denominator)
def sft(params, batch, rng, *, model, config):
  """Supervised fine-tuning: negative log-likelihood of the completion tokens.

  `loss.aggregation` "token_mean": sum of token NLLs over the global batch divided by
  its number of completion tokens (every token weighs the same, TRL's SFTTrainer);
  "sequence_mean": the mean NLL of each sequence, averaged over sequences. A batch of
  padding-free rows (`config.data.padding_free`, `data.packing.pack_sequences`) gives
  the same values from logits at its completion tokens only.
  """
  del rng
  _check_choice(config.loss.aggregation, "loss.aggregation", ("token_mean", "sequence_mean"))
  if "packed_tokens" in batch:  # data.padding_free
    _check_unweighted(batch)
    logps, lengths = padding_free.packed_sequence_logps(model, params, batch)
  else:
    logps, lengths = sequence_logps(model, params, batch["tokens"], batch["attention_mask"], batch["loss_mask"])
  nll = -logps
  mean_nll = nll / jnp.maximum(lengths, 1.0)
  per_example = nll if config.loss.aggregation == "token_mean" else mean_nll
  return weighted_sum(per_example, batch), {
      "loss": mean_nll, "nll_sum": nll, "num_tokens": lengths}


# ---------------------------------------------------------------------------------------
# Reward models.

_REWARD_LOSSES = ("bradley_terry", "bradley_terry_soft", "bradley_terry_ties", "crowd_bt")


def _logit(p: float) -> float:
  return float(np.log(p) - np.log1p(-p))


def _reward_extra_params(key, config, data_info) -> dict[str, Any]:
  """Learned Crowd-BT reliabilities, one logit per annotator, when configured."""
  del key
  if config.loss.name != "crowd_bt" or config.loss.reliabilities != "learn":
    return {}
  count = max(int(data_info.get("num_annotators", 0)), 1)
  initial = float(config.loss.initial_reliability)
  if not 0.0 < initial < 1.0:
    raise ValueError(f"loss.initial_reliability must lie in (0, 1), got {initial}.")
  return {RELIABILITY_PARAM: jnp.full((count,), _logit(initial), jnp.float32)}


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


def _crowd_reliability(params, batch, config) -> jax.Array:
  """Per-example reliability: the batch's column (from a file) or the learned logits."""
  annotator = jnp.asarray(batch["annotator"], jnp.int32)
  known = annotator >= 0
  if "reliability" in batch:
    reliability = jnp.asarray(batch["reliability"], jnp.float32)
  else:
    logits = params[RELIABILITY_PARAM]
    reliability = jax.nn.sigmoid(logits[jnp.clip(annotator, 0, logits.shape[0] - 1)])
  return jnp.where(known, reliability, jnp.float32(config.loss.unknown_reliability))


def _reward_params(params):
  return {k: v for k, v in params.items() if k != RELIABILITY_PARAM}


@register("reward_model", data="pairs", model="reward", extra_params=_reward_extra_params)
def reward_model(params, batch, rng, *, model, config):
  """Pairwise reward-model training; `loss.name` picks the likelihood.

  - "bradley_terry": margin and label smoothing (`losses.bradley_terry`);
  - "bradley_terry_soft": cross-entropy against the batch's `target_prob`, i.e.
    confidence-weighted training on aggregated labels (`losses.bradley_terry_soft`);
  - "bradley_terry_ties": Davidson ties from the batch's `is_tie` (`losses.bradley_terry_ties`);
  - "crowd_bt": per-annotator reliabilities, learned or from a file, looked up by the
    batch's `annotator` ids (`losses.crowd_bt`, Chen et al. 2013).

  With K reward outputs (heads and/or ensemble members) the loss is the mean of the K
  per-head losses; `loss.centering` adds `centering * mean_k (r_c + r_r)^2`
  (`losses.reward_centering`). Outputs use the mean reward over the K outputs. With
  `data.share_prompt` both rewards come from one packed row per pair, with
  `data.padding_free` from padding-free rows.
  """
  del rng
  cfg = config.loss
  _check_choice(cfg.name, "loss.name", _REWARD_LOSSES)
  layout = shared_prompt.from_config(config)
  if "packed_tokens" in batch:  # data.padding_free
    chosen, rejected = padding_free.packed_pair_rewards(model, _reward_params(params), batch)
  elif layout is not None:
    chosen, rejected = shared_prompt.shared_pair_rewards(model, _reward_params(params), batch, layout)
  else:
    size = batch["chosen_tokens"].shape[0]
    rewards = networks.apply_reward(
        model, _reward_params(params),
        _concat(batch["chosen_tokens"], batch["rejected_tokens"]),
        _concat(batch["chosen_attention_mask"], batch["rejected_attention_mask"]))
    chosen, rejected = rewards[:size], rewards[size:]  # [B, K]

  def per_pair(column: jax.Array) -> jax.Array:
    return jnp.broadcast_to(column[:, None], chosen.shape)

  if cfg.name == "bradley_terry":
    per_head = losses.bradley_terry(chosen, rejected, margin=cfg.margin, label_smoothing=cfg.label_smoothing)
  elif cfg.name == "bradley_terry_soft":
    target_prob = per_pair(jnp.asarray(batch["target_prob"], jnp.float32))
    per_head = losses.bradley_terry_soft(chosen, rejected, target_prob)
  elif cfg.name == "bradley_terry_ties":
    per_head = losses.bradley_terry_ties(chosen, rejected, per_pair(batch["is_tie"]), tie_param=cfg.tie_param)
  else:
    per_head = losses.crowd_bt(chosen, rejected, per_pair(_crowd_reliability(params, batch, config)))
  per_example = jnp.mean(per_head, axis=-1)
  if cfg.centering:
    per_example = per_example + cfg.centering * jnp.mean(losses.reward_centering(chosen, rejected), axis=-1)
  outputs = _pair_outputs(per_example, jnp.mean(chosen, axis=-1), jnp.mean(rejected, axis=-1))
  outputs["label_target_prob"] = jnp.asarray(batch["target_prob"], jnp.float32)
  outputs["label_is_tie"] = jnp.asarray(batch["is_tie"], jnp.float32)
  if chosen.shape[-1] > 1:
    # Disagreement of the ensemble on the reward gap (an uncertainty estimate).
    outputs["margin_std"] = jnp.std(chosen - rejected, axis=-1)
  return weighted_sum(per_example, batch), outputs


# ---------------------------------------------------------------------------------------
# DPO family.


@register("dpo", data="pairs", model="policy", reference=True)
def dpo(params, batch, rng, *, model, config):
  """DPO and its variants (`losses.dpo`, `loss.variant`), on summed completion log-probs.

  Lengths (for "ipo" and "sigmoid_norm") are the completion token counts of the loss
  masks. Reference log-probs come from the batch (`ref_chosen_logps`,
  `ref_rejected_logps`), cached or computed on the fly by the trainer.
  """
  del rng
  cfg = config.loss
  policy = pair_logps(model, params, batch, shared_prompt.from_config(config))
  use_lengths = cfg.variant in ("ipo", "sigmoid_norm")
  per_example, chosen_rewards, rejected_rewards = losses.dpo(
      policy["chosen_logps"], policy["rejected_logps"],
      batch["ref_chosen_logps"], batch["ref_rejected_logps"],
      beta=cfg.beta, variant=cfg.variant, label_smoothing=cfg.label_smoothing,
      chosen_lengths=policy["chosen_lengths"] if use_lengths else None,
      rejected_lengths=policy["rejected_lengths"] if use_lengths else None,
      discopop_tau=cfg.discopop_tau, exo_epsilon=cfg.exo_epsilon or None, bco_delta=cfg.bco_delta)
  outputs = _pair_outputs(per_example, jax.lax.stop_gradient(chosen_rewards),
                          jax.lax.stop_gradient(rejected_rewards))
  outputs["chosen_logps"] = jax.lax.stop_gradient(policy["chosen_logps"])
  outputs["rejected_logps"] = jax.lax.stop_gradient(policy["rejected_logps"])
  return weighted_sum(per_example, batch), outputs


def _average_logps(policy):
  return (policy["chosen_logps"] / jnp.maximum(policy["chosen_lengths"], 1.0),
          policy["rejected_logps"] / jnp.maximum(policy["rejected_lengths"], 1.0))


@register("simpo", data="pairs", model="policy")
def simpo(params, batch, rng, *, model, config):
  """SimPO (`losses.simpo`): reference-free, on average completion log-probs."""
  del rng
  cfg = config.loss
  chosen_avg, rejected_avg = _average_logps(
      pair_logps(model, params, batch, shared_prompt.from_config(config)))
  per_example, chosen_rewards, rejected_rewards = losses.simpo(
      chosen_avg, rejected_avg, beta=cfg.beta, gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)
  return weighted_sum(per_example, batch), _pair_outputs(per_example, chosen_rewards, rejected_rewards)


@register("orpo", data="pairs", model="policy")
def orpo(params, batch, rng, *, model, config):
  """ORPO (`losses.orpo`): chosen NLL (per-sequence token mean) + lam * odds-ratio term.

  The rewards reported are the average log-probs; `margin` is the log odds ratio and
  `accuracy` the fraction of pairs where it is positive.
  """
  del rng
  chosen_avg, rejected_avg = _average_logps(
      pair_logps(model, params, batch, shared_prompt.from_config(config)))
  per_example, log_odds_ratio = losses.orpo(chosen_avg, rejected_avg, -chosen_avg, lam=config.loss.lam)
  outputs = _pair_outputs(per_example, jax.lax.stop_gradient(chosen_avg),
                          jax.lax.stop_gradient(rejected_avg))
  outputs["margin"] = log_odds_ratio
  outputs["accuracy"] = (log_odds_ratio > 0).astype(jnp.float32)
  outputs["chosen_nll"] = jax.lax.stop_gradient(-chosen_avg)
  return weighted_sum(per_example, batch), outputs


# ---------------------------------------------------------------------------------------
# KTO.


@register("kto", data="unpaired", model="policy", reference=True)
def kto(params, batch, rng, *, model, config):
  """KTO (`losses.kto`) on unpaired desirable / undesirable completions.

  The reference point z0 is `kto_reference_kl` of the batch's mismatched pairs
  (`kl_tokens`: the prompt of example i with the completion of example i + 1, built by
  the trainer) when `loss.reference_point == "mismatched"`, else 0. Both the labelled
  and the mismatched sequences go through one forward pass.
  """
  del rng
  cfg = config.loss
  _check_choice(cfg.reference_point, "loss.reference_point", ("mismatched", "zero"))
  size = batch["tokens"].shape[0]
  if cfg.reference_point == "mismatched":
    logps, _ = sequence_logps(
        model, params,
        _concat(batch["tokens"], batch["kl_tokens"]),
        _concat(batch["attention_mask"], batch["kl_attention_mask"]),
        _concat(batch["loss_mask"], batch["kl_loss_mask"]))
    policy_logps = logps[:size]
    kl_reference = losses.kto_reference_kl(logps[size:], batch["ref_kl_logps"])
  else:
    policy_logps, _ = sequence_logps(model, params, batch["tokens"], batch["attention_mask"], batch["loss_mask"])
    kl_reference = jnp.zeros((), jnp.float32)
  per_example, rewards = losses.kto(
      policy_logps, batch["ref_logps"], batch["is_desirable"], kl_reference, beta=cfg.beta,
      desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
  desirable = jnp.asarray(batch["is_desirable"], jnp.bool_)
  outputs = {
      "loss": per_example, "reward": rewards,
      "label_is_desirable": desirable.astype(jnp.float32),
      # A desirable completion is "right" when its implicit reward is above the reference
      # point's, an undesirable one when below.
      "accuracy": jnp.where(desirable, rewards > 0, rewards < 0).astype(jnp.float32),
      "kl_reference": jnp.broadcast_to(kl_reference, (size,)),
  }
  return weighted_sum(per_example, batch), outputs
