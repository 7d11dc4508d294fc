"""The cell functions of the ablations in `experiments/*/config.py`.

Each is `function(params: dict, seeds: list[int]) -> list[dict[str, float]]` for
`rlhf_jax.ablate.run`. Seed s fixes the world (`GradedWorld.create(s)`), its pairs and
its annotators, so every cell of an experiment sees the same worlds for the same seed and
cells are compared by paired differences. Reward models and policies of all seeds of a
cell train in one vmapped program (`rlhf_jax.worlds.models`). The aggregation cells
(redundancy, bad_annotators, speed_penalty) are `rlhf_jax.ablate.SeedProgram`s: each
seed's crowd is simulated on the host (`aggregation_inputs`), and the aggregation of all
seeds (`aggregate_arrays`: voting, Dawid-Skene, MACE, GLAD) runs in one vmapped program.

Common params: `world` (fields of `WorldConfig`), `crowd` (fields of `CrowdConfig`),
`reward_model` (fields of `RewardModelConfig`), `costs` (crowd and expert price per label),
`eval_pairs` (held-out pairs scored against the gold preference).

Metrics: `rm_accuracy` (held-out accuracy of the reward model against gold),
`label_accuracy` (training labels against the gold preference of their pair),
`cost` (money spent on labels), `training_pairs`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import feedback
from rlhf_jax.ablate import vectorize as ablate_vectorize
from rlhf_jax.worlds import annotate, graded, models

__all__ = ["AGGREGATORS", "aggregate", "aggregate_arrays", "aggregation_inputs", "bad_annotators", "base_params",
           "dpo_noise", "expert_review", "redundancy", "speed_penalty"]

AGGREGATORS = ("one_label", "majority_vote", "weighted_formula", "dawid_skene", "mace", "glad", "crowd_bt")


def base_params(**extra: Any) -> dict[str, Any]:
  """The parameters every experiment starts from (the world, crowd and learners at their
  defaults, written out so that results.jsonl fingerprints them), plus `extra`."""
  crowd = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(annotate.CrowdConfig()).items()}
  return {
      "world": dataclasses.asdict(graded.WorldConfig()),
      "crowd": crowd,
      "reward_model": dataclasses.asdict(models.RewardModelConfig()),
      "costs": dataclasses.asdict(annotate.Costs()),
      "eval_pairs": 1000,
      **extra,
  }


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _key(d: dict[str, Any]) -> str:
  return json.dumps(d, sort_keys=True)


@functools.lru_cache(maxsize=32)
def _world(seed: int, world_key: str) -> graded.GradedWorld:
  return graded.GradedWorld.create(seed, graded.WorldConfig(**_tuples(json.loads(world_key))))


@functools.lru_cache(maxsize=64)
def _pairs(seed: int, world_key: str, num_pairs: int, split: str) -> graded.Pairs:
  world = _world(seed, world_key)
  return graded.sample_pairs(world, num_pairs, seed=seed * 2 + (1 if split == "train" else 2))


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


# Methods whose aggregation runs on the host: item-level Crowd-BT checks the values of its
# inputs and cannot be traced.
_HOST_AGGREGATORS = ("crowd_bt",)


def aggregation_inputs(method: str, crowd: annotate.CrowdLabels, num_items: int, *,
                       expert: np.ndarray | None = None, fast_penalty: float = 0.7, seed: int = 0
                       ) -> dict[str, np.ndarray]:
  """The host half of `aggregate`: the arrays `aggregate_arrays` reads, for one seed.

  The crowd's flat annotations and the seed; for weighted_formula the annotator weights
  (`feedback.annotator_metrics` is NumPy work over timestamps and golden answers); for the
  host methods (crowd_bt) the finished labels and P(a).
  """
  if method not in AGGREGATORS:
    raise ValueError(f"aggregation method: expected one of {AGGREGATORS}, got {method!r}.")
  inputs = {"items": np.asarray(crowd.items, np.int32), "annotators": np.asarray(crowd.annotators, np.int32),
            "labels": np.asarray(crowd.labels, np.int32), "seed": np.asarray(seed, np.int32)}
  m = int(crowd.types.shape[0])
  if method == "weighted_formula":
    metrics = feedback.annotator_metrics(
        crowd.items, crowd.annotators, crowd.labels, timestamps=crowd.timestamps, response_ms=crowd.response_ms,
        is_golden=crowd.is_golden, golden_labels=crowd.golden_labels, expert_labels=expert,
        num_annotators=m, num_items=num_items)
    inputs["annotator_weights"] = np.asarray(feedback.annotator_weights(metrics, fast_penalty=fast_penalty),
                                             np.float32)
  elif method == "crowd_bt":
    result = feedback.crowd_bt(2 * crowd.items, 2 * crowd.items + 1, crowd.annotators,
                               crowd.labels == feedback.A_PREFERRED, num_items=2 * num_items, num_annotators=m)
    diff = np.asarray(result.scores, np.float64)[0::2] - np.asarray(result.scores, np.float64)[1::2]
    inputs["host_labels"] = np.where(diff > 0, feedback.A_PREFERRED, feedback.B_PREFERRED).astype(np.int32)
    inputs["host_prob_a"] = _sigmoid(diff).astype(np.float32)
  return inputs


def aggregate_arrays(static: tuple[str, int, int], inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The JAX half of `aggregate` for one seed: {"labels": int32 [P], "prob_a": float32 [P]}.

  `static` is (method, num_items, num_annotators). Traceable, so that the seeds of a cell
  run under one `jax.vmap` (`rlhf_jax.ablate.vectorize`); the host methods pass their
  labels through.
  """
  method, num_items, m = static
  items, annotators, labels = inputs["items"], inputs["annotators"], inputs["labels"]
  if method in _HOST_AGGREGATORS:
    return {"labels": inputs["host_labels"], "prob_a": inputs["host_prob_a"]}
  if method == "one_label":
    # The first annotation of each item: the smallest annotation index among its annotations.
    position = jnp.arange(items.shape[0], dtype=jnp.int32)
    first = jax.ops.segment_min(position, items, num_segments=num_items)
    has_label = first < items.shape[0]
    first_label = jnp.where(has_label, labels[jnp.minimum(first, items.shape[0] - 1)], -1).astype(jnp.int32)
    return {"labels": first_label, "prob_a": (first_label == feedback.A_PREFERRED).astype(jnp.float32)}
  common = dict(num_classes=2, num_items=num_items)
  if method == "majority_vote":
    result = feedback.majority_vote(items, annotators, labels, num_annotators=m, **common)
  elif method == "weighted_formula":
    result = feedback.weighted_vote(items, annotators, labels, annotator_weights=inputs["annotator_weights"],
                                    **common)
  elif method == "dawid_skene":
    result = feedback.dawid_skene(items, annotators, labels, num_annotators=m, smoothing=0.01, **common)
  elif method == "mace":
    result = feedback.mace(items, annotators, labels, num_annotators=m, key=jax.random.key(inputs["seed"]),
                           **common)
  elif method == "glad":
    result = feedback.glad(items, annotators, labels, num_annotators=m, **common)
  else:
    raise ValueError(f"aggregation method: expected one of {AGGREGATORS}, got {method!r}.")
  # Only arrays leave the function (a result's extras may hold strings, which vmap refuses).
  return {"labels": result.labels.astype(jnp.int32),
          "prob_a": result.posteriors[:, feedback.A_PREFERRED].astype(jnp.float32)}


def aggregate(method: str, crowd: annotate.CrowdLabels, num_items: int, *, expert: np.ndarray | None = None,
              fast_penalty: float = 0.7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(labels [P] (0 = a), P(a preferred) [P]) of one aggregation method over crowd labels.

  one_label: the first annotation of each item. majority_vote: plurality (ties -> a,
  P(a) = vote share). weighted_formula: `feedback.weighted_vote` with the weights of
  `feedback.annotator_weights` (0.4 golden accuracy + 0.4 expert agreement + 0.2 temporal
  consistency, times `fast_penalty` under 3 s; `expert` gives the expert's labels per item,
  -1 where none). dawid_skene, mace, glad: the `feedback` EM models. crowd_bt: item-level
  Crowd-BT (`feedback.crowd_bt`) with each response an item; P(a) = sigmoid(s_a - s_b).
  One seed at a time: `aggregation_inputs` on the host, then `aggregate_arrays`.
  """
  inputs = aggregation_inputs(method, crowd, num_items, expert=expert, fast_penalty=fast_penalty, seed=seed)
  out = aggregate_arrays((method, num_items, int(crowd.types.shape[0])), inputs)
  return np.asarray(out["labels"], np.int32), np.asarray(out["prob_a"], np.float64)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
  return np.stack(arrays, axis=0)


def _train_rm(params: dict[str, Any], seeds: list[int], train: list[graded.Pairs], target: list[np.ndarray],
              weight: list[np.ndarray], annotator: list[np.ndarray] | None = None,
              num_annotators: int = 0, evals: list[graded.Pairs] | None = None) -> np.ndarray:
  if evals is None:
    world_key = _key(params["world"])
    evals = [_pairs(s, world_key, params["eval_pairs"], "eval") for s in seeds]
  out = models.train_reward_model(
      np.asarray(seeds), _stack([p.tokens for p in train]), _stack([p.lengths for p in train]), _stack(target),
      _stack(weight), _stack([e.tokens for e in evals]), _stack([e.lengths for e in evals]),
      _stack([e.gold_prefers_a for e in evals]), vocab_size=params["world"]["vocab_size"],
      config=models.RewardModelConfig(**params["reward_model"]),
      annotator=None if annotator is None else _stack(annotator), num_annotators=num_annotators)
  return out["accuracy"]


def _label_accuracy(labels: np.ndarray, pairs: graded.Pairs) -> float:
  truth = np.where(pairs.gold_prefers_a, feedback.A_PREFERRED, feedback.B_PREFERRED)
  return float(np.mean(labels == truth))


def gold_baseline(params: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
  """The calibration cell: a reward model on `num_pairs` noise-free gold preferences."""
  world_key = _key(params["world"])
  train = [_pairs(s, world_key, params["num_pairs"], "train") for s in seeds]
  target = [p.gold_prefers_a.astype(np.float32) for p in train]
  accuracy = _train_rm(params, seeds, train, target, [np.ones_like(t) for t in target])
  return [{"rm_accuracy": float(a), "label_accuracy": 1.0, "training_pairs": float(params["num_pairs"])}
          for a in accuracy]


@functools.lru_cache(maxsize=4)
def _hh_data(path: str, vocab_size: int, max_length: int):
  from rlhf_jax.worlds import hh  # pylint: disable=import-outside-toplevel
  return hh.load(path or hh.DEFAULT_PATH, vocab_size=vocab_size, max_length=max_length)


_TARGET_AGGREGATOR = {"hard": "majority_vote", "soft": "dawid_skene", "weighted": "dawid_skene"}


def _targets(method: str, crowd: annotate.CrowdLabels, pairs: graded.Pairs, seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels, target P(a), weight) for target hard | soft | weighted | gold."""
  if method == "gold":
    return _targets_from(method, None, None, pairs)
  labels, prob_a = aggregate(_TARGET_AGGREGATOR[method], crowd, len(pairs), seed=seed)
  return _targets_from(method, labels, prob_a, pairs)


def _targets_from(method: str, labels: np.ndarray | None, prob_a: np.ndarray | None, pairs: graded.Pairs
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`_targets` from the aggregated labels and P(a) (of `_TARGET_AGGREGATOR[method]`)."""
  n = len(pairs)
  if method == "gold":
    return (np.where(pairs.gold_prefers_a, 0, 1), pairs.gold_prefers_a.astype(np.float32),
            np.ones(n, np.float32))
  if method == "soft":
    return labels, prob_a.astype(np.float32), np.ones(n, np.float32)
  confidence = np.where(labels == feedback.A_PREFERRED, prob_a, 1.0 - prob_a)
  weight = confidence if method == "weighted" else np.ones(n)
  return labels, (labels == feedback.A_PREFERRED).astype(np.float32), weight.astype(np.float32)


def hh_redundancy(params: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
  """Ablation 1 on the semi-real HH-RLHF world (`worlds.hh`): `budget` crowd labels as
  `annotations_per_item` labels per pair, targets as in `redundancy`; the reward model is
  scored on `eval_pairs` held-out pairs against the data set's own label."""
  hh_params = params["hh"]
  data = _hh_data(hh_params["path"], int(hh_params["vocab_size"]), int(hh_params["max_length"]))
  from rlhf_jax.worlds import hh  # pylint: disable=import-outside-toplevel
  r = int(params["annotations_per_item"])
  num_pairs = int(params["budget"]) // r
  num_eval = int(params["eval_pairs"])
  if num_pairs + num_eval > len(data):
    raise ValueError(f"hh_redundancy: budget / annotations_per_item + eval_pairs = {num_pairs + num_eval} "
                     f"exceeds the {len(data)} HH pairs.")
  config = annotate.CrowdConfig(**_tuples({**params["crowd"], "annotations_per_item": r}))
  train, target, weight, label_acc, evals = [], [], [], [], []
  for s in seeds:
    pairs, _ = hh.to_pairs(data, s, margin_mean=float(hh_params["margin_mean"]))
    used = pairs.take(np.arange(num_pairs))
    crowd = annotate.simulate_crowd(s, used.difference, used.lengths, config)
    labels, t, w = _targets(params["target"], crowd, used, s)
    train.append(used)
    target.append(t)
    weight.append(w)
    label_acc.append(_label_accuracy(labels, used))
    evals.append(pairs.take(np.arange(len(data) - num_eval, len(data))))
  params = {**params, "world": {"vocab_size": int(hh_params["vocab_size"])}}
  accuracy = _train_rm(params, seeds, train, target, weight, evals=evals)
  return [{"rm_accuracy": float(a), "label_accuracy": la, "training_pairs": float(num_pairs)}
          for a, la in zip(accuracy, label_acc)]


def _redundancy_prepare(params: dict[str, Any], seed: int) -> tuple[dict[str, np.ndarray], graded.Pairs]:
  r = int(params["annotations_per_item"])
  num_pairs = int(params["budget"]) // r
  world_key = _key(params["world"])
  pairs = _pairs(seed, world_key, int(params["budget"]), "train").take(np.arange(num_pairs))
  if params["target"] == "gold":
    return {}, pairs  # the gold preference: nothing to aggregate
  crowd = _crowd_cached(seed, world_key, int(params["budget"]), num_pairs,
                        _key({**params["crowd"], "annotations_per_item": r}))
  return aggregation_inputs(_TARGET_AGGREGATOR[params["target"]], crowd, num_pairs, seed=seed), pairs


def _redundancy_finish(params: dict[str, Any], seeds: list[int], contexts: list[graded.Pairs],
                       outputs: list[dict[str, np.ndarray]]) -> list[dict[str, float]]:
  target, weight, label_acc = [], [], []
  for pairs, out in zip(contexts, outputs):
    labels, t, w = _targets_from(params["target"], out.get("labels"), out.get("prob_a"), pairs)
    target.append(t)
    weight.append(w)
    label_acc.append(_label_accuracy(labels, pairs))
  accuracy = _train_rm(params, seeds, contexts, target, weight)
  return [{"rm_accuracy": float(a), "label_accuracy": la, "training_pairs": float(len(contexts[0])),
           "cost": float(params["budget"]) * params["costs"]["crowd"]} for a, la in zip(accuracy, label_acc)]


redundancy = ablate_vectorize.SeedProgram(
    prepare=_redundancy_prepare, compute=aggregate_arrays, finish=_redundancy_finish,
    static_of=lambda params: (_TARGET_AGGREGATOR.get(params["target"], "none"),
                              int(params["budget"]) // int(params["annotations_per_item"]),
                              int(params["crowd"]["num_annotators"])),
    doc="""Ablation 1: `budget` crowd labels as `annotations_per_item` labels on budget / r pairs.

  `target`: hard (majority vote label, weight 1), soft (Dawid-Skene posterior P(a) as the
  target, weight 1), weighted (Dawid-Skene label, weight = its posterior confidence), or
  gold (the noise-free gold preference of the same pairs: the ceiling of that volume).
  A `SeedProgram`: every seed's aggregation in one vmapped program, then the reward models.""")


@functools.lru_cache(maxsize=64)
def _crowd_cached(seed: int, world_key: str, budget: int, num_pairs: int, crowd_key: str) -> annotate.CrowdLabels:
  pairs = _pairs(seed, world_key, budget, "train").take(np.arange(num_pairs))
  config = annotate.CrowdConfig(**_tuples(json.loads(crowd_key)))
  return annotate.simulate_crowd(seed, pairs.difference, pairs.lengths, config)


def _first_items(crowd: annotate.CrowdLabels, num_items: int) -> annotate.CrowdLabels:
  """The annotations of items 0 .. num_items - 1 (a crowd over a prefix of the pool)."""
  keep = crowd.items < num_items
  per_annotation = ("items", "annotators", "labels", "timestamps", "response_ms", "is_golden", "golden_labels",
                    "after_drift", "probability_a")
  changes = {name: getattr(crowd, name)[keep] for name in per_annotation}
  return dataclasses.replace(crowd, truth=crowd.truth[:num_items], **changes)


def _bad_shares(bad_share: float, kind: str) -> dict[str, float]:
  kinds = ("spammer", "adversary", "position_biased") if kind == "mixed" else (kind,)
  shares = {f"{name}_share": 0.0 for name in feedback.ANNOTATOR_TYPES}
  for name in kinds:
    shares[f"{name}_share"] = bad_share / len(kinds)
  shares["good_share"] = 1.0 - bad_share
  return shares


def _train_on_labels(params: dict[str, Any], seeds: list[int], contexts: list[tuple[graded.Pairs, Any]],
                     outputs: list[dict[str, np.ndarray]]) -> list[dict[str, float]]:
  """The last stage of the aggregation cells: label accuracy of each seed's aggregated
  labels, and a reward model per seed on them (hard targets, weight 1), all seeds in one
  vmapped program."""
  train, target, weight, label_acc = [], [], [], []
  for (pairs, _), out in zip(contexts, outputs):
    labels = np.asarray(out["labels"], np.int32)
    train.append(pairs)
    target.append((labels == feedback.A_PREFERRED).astype(np.float32))
    weight.append(np.ones(len(pairs), np.float32))
    label_acc.append(_label_accuracy(labels, pairs))
  accuracy = _train_rm(params, seeds, train, target, weight)
  return [{"rm_accuracy": float(a), "label_accuracy": float(la)} for a, la in zip(accuracy, label_acc)]


def _aggregation_static(params: dict[str, Any], method: str) -> tuple[str, int, int]:
  return (method, int(params["num_pairs"]), int(params["crowd"]["num_annotators"]))


def _bad_annotators_prepare(params: dict[str, Any], seed: int) -> tuple[dict[str, np.ndarray], tuple]:
  num_pairs = int(params["num_pairs"])
  shares = _bad_shares(float(params["bad_share"]), params["bad_kind"])
  world_key = _key(params["world"])
  pairs = _pairs(seed, world_key, num_pairs, "train")
  crowd = _crowd_cached(seed, world_key, num_pairs, num_pairs, _key({**params["crowd"], **shares}))
  if params["method"] == "crowd_bt_joint":
    return {}, (pairs, crowd)  # no aggregation: the reward model reads the annotations
  rng = np.random.default_rng([seed, 0xE1])
  expert = np.where(rng.random(num_pairs) < params["expert_rate"],
                    annotate.expert_labels(seed, pairs.difference, params["crowd"]["expert_temperature"]), -1)
  return aggregation_inputs(params["method"], crowd, num_pairs, expert=expert, seed=seed), (pairs, crowd)


def _bad_annotators_finish(params: dict[str, Any], seeds: list[int], contexts: list[tuple],
                           outputs: list[dict[str, np.ndarray]]) -> list[dict[str, float]]:
  if params["method"] != "crowd_bt_joint":
    return _train_on_labels(params, seeds, contexts, outputs)
  train = [pairs.take(crowd.items) for pairs, crowd in contexts]
  target = [(crowd.labels == feedback.A_PREFERRED).astype(np.float32) for _, crowd in contexts]
  weight = [np.ones(crowd.num_annotations, np.float32) for _, crowd in contexts]
  accuracy = _train_rm(params, seeds, train, target, weight, annotator=[crowd.annotators for _, crowd in contexts],
                       num_annotators=int(params["crowd"]["num_annotators"]))
  return [{"rm_accuracy": float(a), "label_accuracy": float("nan")} for a in accuracy]


bad_annotators = ablate_vectorize.SeedProgram(
    prepare=_bad_annotators_prepare, compute=aggregate_arrays, finish=_bad_annotators_finish,
    static_of=lambda params: _aggregation_static(params, params["method"]),
    sequential_because=lambda params: (
        "GLAD's L-BFGS line search moves every seed in lockstep, slower vmapped than seed after seed on a CPU"
        if params["method"] == "glad" else None),
    doc="""Ablation 3: a share `bad_share` of bad annotators (`bad_kind`: spammer, adversary,
  position_biased or mixed thirds) and one aggregation `method` (AGGREGATORS, or
  crowd_bt_joint: the reward model trained on the raw annotations with Crowd-BT and a
  learned reliability per annotator). Experts label `expert_rate` of the pairs (for the
  weighted formula's expert agreement). A `SeedProgram`: every seed's aggregation in one
  vmapped program (`aggregate_arrays`), then every seed's reward model in another.""")


def _speed_penalty_prepare(params: dict[str, Any], seed: int) -> tuple[dict[str, np.ndarray], tuple]:
  num_pairs = int(params["num_pairs"])
  fast = float(params["fast_share"])
  shares = {f"{name}_share": 0.0 for name in feedback.ANNOTATOR_TYPES}
  shares.update(good_share=1.0 - fast, fast_share=fast)
  world_key = _key(params["world"])
  pairs = _pairs(seed, world_key, num_pairs, "train")
  crowd = _crowd_cached(seed, world_key, num_pairs, num_pairs, _key({**params["crowd"], **shares}))
  inputs = aggregation_inputs("weighted_formula", crowd, num_pairs, fast_penalty=float(params["fast_penalty"]),
                              seed=seed)
  return inputs, (pairs, crowd)


speed_penalty = ablate_vectorize.SeedProgram(
    prepare=_speed_penalty_prepare, compute=aggregate_arrays, finish=_train_on_labels,
    static_of=lambda params: _aggregation_static(params, "weighted_formula"),
    doc="""Ablation 5: the weighted formula with the speed penalty (`fast_penalty` < 1) or
  without (1.0), with a share `fast_share` of fast random clickers in the pool. A
  `SeedProgram`: every seed's weighted vote in one vmapped program, then the reward models.""")


def expert_review(params: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
  """Ablation 2: `num_pairs` pairs with `annotations_per_item` crowd labels, Dawid-Skene;
  items whose confidence is below `threshold` go to the expert (price `costs.expert`),
  whose label replaces the crowd's. `threshold` 0 is no review. The `volume` strategy
  instead spends the money that review at `threshold` would cost the experts on more
  crowd-labelled pairs (3 labels each, from the same pool of `pool_pairs`)."""
  num_pairs = int(params["num_pairs"])
  r = int(params["crowd"]["annotations_per_item"])
  world_key = _key(params["world"])
  costs = params["costs"]
  pool = int(params["pool_pairs"])
  rows, train, target, weight = [], [], [], []
  for s in seeds:
    pairs = _pairs(s, world_key, pool, "train").take(np.arange(num_pairs))
    pool_crowd = _crowd_cached(s, world_key, pool, pool, _key(params["crowd"]))
    crowd = _first_items(pool_crowd, num_pairs)
    labels, prob_a = aggregate("dawid_skene", crowd, num_pairs, seed=s)
    confidence = np.maximum(prob_a, 1.0 - prob_a)
    threshold = float(params["threshold"])
    reviewed = confidence < threshold
    cost = num_pairs * r * costs["crowd"]
    if params["strategy"] == "review":
      expert = annotate.expert_labels(s, pairs.difference, params["crowd"].get("expert_temperature", annotate.CrowdConfig.expert_temperature))
      labels = np.where(reviewed, expert, labels)
      cost += reviewed.sum() * costs["expert"]
      used = pairs
    else:
      extra = int(reviewed.sum() * costs["expert"] // (r * costs["crowd"]))
      total = min(num_pairs + extra, pool)
      used = _pairs(s, world_key, pool, "train").take(np.arange(total))
      crowd = _first_items(pool_crowd, total)
      labels, _ = aggregate("dawid_skene", crowd, total, seed=s)
      cost = total * r * costs["crowd"]
    train.append(used)
    target.append((labels == feedback.A_PREFERRED).astype(np.float32))
    weight.append(np.ones(len(used), np.float32))
    rows.append({"label_accuracy": _label_accuracy(labels, used), "cost": float(cost),
                 "reviewed_share": float(reviewed.mean()), "training_pairs": float(len(used))})
  # Pad to a common number of pairs (weight 0) so that the seeds train in one program.
  width = max(len(p) for p in train)
  for i, p in enumerate(train):
    missing = width - len(p)
    if missing:
      filler = p.take(np.zeros(missing, np.int64))
      train[i] = graded.Pairs(*(np.concatenate([a, b]) for a, b in zip(
          (p.tokens, p.lengths, p.gold, p.edited, p.raw_difference),
          (filler.tokens, filler.lengths, filler.gold, filler.edited, filler.raw_difference))))
      target[i] = np.concatenate([target[i], np.zeros(missing, np.float32)])
      weight[i] = np.concatenate([weight[i], np.zeros(missing, np.float32)])
  accuracy = _train_rm(params, seeds, train, target, weight)
  for row, a in zip(rows, accuracy):
    row["rm_accuracy"] = float(a)
  return rows


def dpo_noise(params: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
  """Ablation 6: each pair gets `labels_per_pair` labels, each the gold preference flipped
  independently with probability `flip_rate` (symmetric noise). dpo, cdpo, robust and ipo
  train on the majority label; cdpo and robust are told its true flip rate
  eps = P(majority wrong) = sum_{k > r/2} C(r, k) flip^k (1 - flip)^(r - k) (the noise rate
  these losses assume known). dpo_soft trains DPO on the Dawid-Skene posterior P(a)."""
  from math import comb  # pylint: disable=import-outside-toplevel
  num_pairs = int(params["num_pairs"])
  r = int(params["labels_per_pair"])
  flip = float(params["flip_rate"])
  world_key = _key(params["world"])
  majority_flip = sum(comb(r, k) * flip**k * (1 - flip) ** (r - k) for k in range(r // 2 + 1, r + 1))
  train, target, label_acc, evals = [], [], [], []
  for s in seeds:
    pairs = _pairs(s, world_key, num_pairs, "train")
    rng = np.random.default_rng([s, 0xF11B])
    truth = np.where(pairs.gold_prefers_a, 0, 1)
    flips = rng.random((num_pairs, r)) < flip
    labels = np.where(flips, 1 - truth[:, None], truth[:, None])
    items = np.repeat(np.arange(num_pairs), r)
    annotators = rng.integers(0, int(params["num_annotators"]), num_pairs * r)
    if params["loss"] == "dpo_soft":
      result = feedback.dawid_skene(items, annotators, labels.reshape(-1), num_classes=2, num_items=num_pairs,
                                    num_annotators=int(params["num_annotators"]), smoothing=0.01)
      prob_a = np.asarray(result.posteriors)[:, 0]
      majority = np.asarray(result.labels)
    else:
      majority = (labels.sum(axis=1) * 2 > r).astype(np.int32)  # r odd: no ties
      prob_a = (majority == 0).astype(np.float64)
    train.append(pairs)
    target.append(prob_a.astype(np.float32))
    label_acc.append(float(np.mean(majority == truth)))
    evals.append(_pairs(s, world_key, params["eval_pairs"], "eval"))
  loss = "dpo" if params["loss"] == "dpo_soft" else params["loss"]
  smoothing = majority_flip if loss in ("cdpo", "robust") else 0.0
  config = models.PolicyConfig(loss=loss, beta=float(params["beta"]), label_smoothing=min(smoothing, 0.49),
                               steps=int(params["steps"]), learning_rate=float(params["learning_rate"]))
  # Each seed's world has its own word frequencies, hence its own reference policy.
  out = models.train_policy(_stack([_world(s, world_key).word_probs for s in seeds]),
                            _stack([p.tokens for p in train]), _stack([p.lengths for p in train]), _stack(target),
                            _stack([e.tokens for e in evals]), _stack([e.lengths for e in evals]),
                            _stack([e.gold_prefers_a for e in evals]), config=config)
  accuracy = [float(a) for a in out["accuracy"]]
  return [{"implicit_reward_accuracy": a, "label_accuracy": la, "majority_flip_rate": majority_flip}
          for a, la in zip(accuracy, label_acc)]


def _leave_one_out_agreement(items: np.ndarray, labels: np.ndarray, num_items: int
                             ) -> tuple[np.ndarray, np.ndarray]:
  """(agrees [N], usable [N]): the label equals the majority of the other labels of its
  item; unusable when the others tie or there are none."""
  votes_a = np.bincount(items, weights=labels == feedback.A_PREFERRED, minlength=num_items)
  votes = np.bincount(items, minlength=num_items).astype(np.float64)
  others_a = votes_a[items] - (labels == feedback.A_PREFERRED)
  others = votes[items] - 1
  usable = (others > 0) & (2 * others_a != others)
  majority_a = 2 * others_a > others
  return (majority_a == (labels == feedback.A_PREFERRED)), usable


def golden_drift(params: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
  """Ablation 4: annotators whose quality drops at a change point (`drifting_share`),
  golden items at `golden_rate`, and a Bernoulli CUSUM (`feedback.detect_annotator_drift`,
  in-control accuracy `p0`, out-of-control `p1`, decision interval `threshold`) on each
  annotator's stream of golden correctness (`detection` = golden) or of agreement with the
  leave-one-out majority of its item (consensus), or none (off). An alarm acts on the
  weights: the annotator's labels after its alarm time get weight 0 in the vote.

  Metrics: label_accuracy (all pairs), label_accuracy_third_1..3 (pairs by the mean time
  of their labels, in thirds of the span; late_label_accuracy is the last third, after most
  change points), detection_rate (drifting
  annotators with an alarm after their change), false_alarms (annotators with an alarm
  before any change: the good ones, or a drifting one before its change), delay_days
  (mean alarm time - change time over detected drifting annotators; NaN when none).
  """
  num_pairs = int(params["num_pairs"])
  world_key = _key(params["world"])
  drifting = float(params["drifting_share"])
  shares = {f"{name}_share": 0.0 for name in feedback.ANNOTATOR_TYPES}
  shares.update(good_share=1.0 - drifting, drifting_share=drifting, golden_rate=float(params["golden_rate"]))
  rows = []
  m = int(params["crowd"]["num_annotators"])
  for s in seeds:
    pairs = _pairs(s, world_key, num_pairs, "train")
    crowd = _crowd_cached(s, world_key, num_pairs, num_pairs, _key({**params["crowd"], **shares}))
    alarm_time = np.full(m, np.nan)
    if params["detection"] == "golden":
      signal = crowd.labels == crowd.golden_labels
      usable = crowd.is_golden
    elif params["detection"] == "consensus":
      signal, usable = _leave_one_out_agreement(crowd.items, crowd.labels, num_pairs)
    else:
      signal, usable = None, np.zeros(crowd.num_annotations, bool)
    if usable.any():
      result, _ = feedback.detect_annotator_drift(
          crowd.annotators[usable], signal[usable].astype(np.float32), crowd.timestamps[usable], num_annotators=m,
          method="cusum", p0=float(params["p0"]), p1=float(params["p1"]), threshold=float(params["threshold"]))
      alarm_time = np.asarray(result.alarm_time, np.float64)
    excluded = crowd.timestamps >= np.where(np.isnan(alarm_time), np.inf, alarm_time)[crowd.annotators]
    kept = ~excluded
    # Items whose every label was excluded fall back to all their labels.
    has_kept = np.bincount(crowd.items, weights=kept, minlength=num_pairs) > 0
    use = kept | ~has_kept[crowd.items]
    votes_a = np.bincount(crowd.items[use], weights=crowd.labels[use] == feedback.A_PREFERRED, minlength=num_pairs)
    votes = np.bincount(crowd.items[use], minlength=num_pairs)
    labels = np.where(2 * votes_a >= votes, feedback.A_PREFERRED, feedback.B_PREFERRED)  # ties -> a
    truth = np.where(pairs.gold_prefers_a, feedback.A_PREFERRED, feedback.B_PREFERRED)
    mean_time = np.bincount(crowd.items, weights=crowd.timestamps - crowd.timestamps.min(), minlength=num_pairs)
    mean_time /= np.maximum(np.bincount(crowd.items, minlength=num_pairs), 1)
    span = crowd.timestamps.max() - crowd.timestamps.min()
    third = np.minimum((3 * mean_time / span).astype(int), 2)  # 0, 1, 2: early, middle, late
    late = third == 2
    change = crowd.simulation.change_times
    is_drifting = np.isfinite(change)
    detected = is_drifting & np.isfinite(alarm_time) & (alarm_time >= np.nan_to_num(change, nan=np.inf))
    false_alarm = np.isfinite(alarm_time) & ~(is_drifting & (alarm_time >= np.nan_to_num(change, nan=np.inf)))
    delays = (alarm_time - change)[detected] / 86400.0
    rows.append({
        "label_accuracy": float(np.mean(labels == truth)),
        "late_label_accuracy": float(np.mean(labels[late] == truth[late])),
        **{f"label_accuracy_third_{t + 1}": float(np.mean(labels[third == t] == truth[third == t])) for t in range(3)},
        "detection_rate": float(detected.sum() / max(is_drifting.sum(), 1)),
        "false_alarms": float(false_alarm.sum()),
        "delay_days": float(delays.mean()) if delays.size else float("nan"),
    })
  return rows


def active_selection(params: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
  """Ablation 7: from a pool of `pool_pairs`, pairs are bought in rounds of `batch` (each
  labelled by `annotations_per_item` crowd labels, majority vote) up to `budget` pairs.
  The first batch is random; later ones by `strategy`: random, disagreement (largest
  standard deviation of r(a) - r(b) across an ensemble of `ensemble` reward models with
  different initialisations and bootstrap weights) or margin (smallest |mean r(a) - r(b)|).
  After each round the ensemble is retrained from scratch on all pairs bought; metric
  accuracy_at_N is the held-out accuracy of the ensemble's mean reward with N pairs
  bought; bought_label_accuracy and bought_abs_difference describe the pairs bought in
  the end (their majority labels against gold, their mean |gold difference|) (the unlabelled pool is padded in with weight 0, so every round has the same
  shapes and one compiled program)."""
  pool = int(params["pool_pairs"])
  budget, batch, k = int(params["budget"]), int(params["batch"]), int(params["ensemble"])
  num_eval = int(params["eval_pairs"])
  world_key = _key(params["world"])
  crowd_key = _key(params["crowd"])
  config = models.RewardModelConfig(**params["reward_model"])
  data = []
  for s in seeds:
    pairs = _pairs(s, world_key, pool, "train")
    crowd = _crowd_cached(s, world_key, pool, pool, crowd_key)
    labels, _ = aggregate("majority_vote", crowd, pool, seed=s)
    evals = _pairs(s, world_key, num_eval, "eval")
    data.append((pairs, labels, evals))
  # Scored set: held-out pairs first (accuracy), then the pool (selection).
  score_tokens = np.concatenate([[np.concatenate([e.tokens, p.tokens])] * k for p, _, e in data])
  score_lengths = np.concatenate([[np.concatenate([e.lengths, p.lengths])] * k for p, _, e in data])
  score_prefers = np.concatenate([[np.concatenate([e.gold_prefers_a, p.gold_prefers_a])] * k for p, _, e in data])
  tokens = np.concatenate([[p.tokens] * k for p, _, _ in data])
  lengths = np.concatenate([[p.lengths] * k for p, _, _ in data])
  target = np.concatenate([[(l == feedback.A_PREFERRED).astype(np.float32)] * k for _, l, _ in data])
  model_seeds = np.arange(len(seeds) * k) + 1000 * int(params["ensemble_seed_offset"])
  bootstrap = np.stack([np.random.default_rng([int(x), 0xB007]).poisson(1.0, pool) for x in model_seeds])
  bought = np.zeros((len(seeds), pool), bool)
  for i, s in enumerate(seeds):
    bought[i, np.random.default_rng([s, 0xAC7]).permutation(pool)[:batch]] = True
  rows = [dict() for _ in seeds]
  while True:
    weight = np.repeat(bought, k, axis=0).astype(np.float32) * np.where(k > 1, bootstrap, 1.0).astype(np.float32)
    out = models.train_reward_model(model_seeds, tokens, lengths, target, weight, score_tokens, score_lengths,
                                    score_prefers, vocab_size=params["world"]["vocab_size"], config=config)
    diff = out["eval_rewards"][..., 0] - out["eval_rewards"][..., 1]  # [S * k, E + pool]
    diff = diff.reshape(len(seeds), k, -1)
    mean = diff.mean(axis=1)
    num_bought = int(bought[0].sum())
    for i in range(len(seeds)):
      correct = (mean[i, :num_eval] > 0) == data[i][2].gold_prefers_a
      rows[i][f"accuracy_at_{num_bought}"] = float(np.mean(correct))
    if num_bought >= budget:
      break
    for i, s in enumerate(seeds):
      if params["strategy"] == "random":
        score = np.random.default_rng([s, num_bought, 0x5E1]).random(pool)
      elif params["strategy"] == "disagreement":
        score = diff[i, :, num_eval:].std(axis=0)
      elif params["strategy"] == "margin":
        score = -np.abs(mean[i, num_eval:])
      else:
        raise ValueError(f"active_selection strategy: expected random, disagreement or margin, got "
                         f"{params['strategy']!r}.")
      score = np.where(bought[i], -np.inf, score)
      bought[i, np.argsort(-score, kind="stable")[:batch]] = True
  for i, s in enumerate(seeds):
    pairs, labels, _ = data[i]
    truth = np.where(pairs.gold_prefers_a, feedback.A_PREFERRED, feedback.B_PREFERRED)
    rows[i]["rm_accuracy"] = rows[i][f"accuracy_at_{budget}"]
    rows[i]["bought_label_accuracy"] = float(np.mean(labels[bought[i]] == truth[bought[i]]))
    rows[i]["bought_abs_difference"] = float(np.mean(np.abs(pairs.difference[bought[i]])))
  return rows
