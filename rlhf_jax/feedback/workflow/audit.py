r"""Debugging labels: where a reward model disagrees, who is behind it, annotator report cards,
dataset balance (`scripts/audit_labels.py`).

Disputed labels. Given each item's aggregated label y_i and a model's class probabilities
m_i (a trained reward model: m_i(a) = sigmoid(r(x, a) - r(x, b)) for the two responses,
or a scores file), the model disputes the label with confidence

  dispute_i = max_{k != y_i} m_i(k)      (pairwise: 1 - m_i(y_i), for y_i in {a, b})

and labels are listed by decreasing dispute, each with the annotators whose answer
formed it (answered y_i) and those who answered otherwise. Ties have no model
probability and are not disputed. A label counts as disputed when dispute_i >=
`dispute_threshold` (0.8: the model is four times more confident in another class).

Annotators. For annotator a with answers y_n on items i_n:
* disputed_answer_rate = #{n : max_{k != y_n} m_{i_n}(k) >= threshold} / #{n scored}:
  how often the model confidently contradicts this annotator's own answer (a flipped
  or careless annotator stands out even when outvoted);
* share_of_disputed = #{disputed items whose label a backed} / #{disputed items}.
The report card adds golden accuracy and median response time
(`feedback.annotator_metrics`), agreement with the consensus label, drift alarms
(Page-Hinkley on agreement with the consensus and Bernoulli CUSUM on golden
correctness over each annotator's time-ordered stream, `feedback.detect_annotator_drift`),
the label distribution (share of each class) and position bias = P(answer a) -
P(label a) over the annotator's items with label a or b (0 for an annotator who follows
the consensus; +0.3 for one who says "a" 30 points more often than it is right to).
Cards are written as CSV and drawn as one PNG per annotator group (matplotlib).

Balance. Items per tag (task type; `item_tags`, several per item allowed, else the
label itself), their share, the label distribution within the tag, and the weight
w_t = N / (T n_t) that makes every tag weigh the same in a weighted loss (N items,
T tags, n_t items of tag t; an item with several tags gets the mean of its weights).
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rlhf_jax import feedback
from rlhf_jax.io import ingest

__all__ = [
    "AuditResult",
    "audit_labels",
    "dataset_balance",
    "model_probabilities_from_reward_model",
    "plot_report_cards",
    "read_model_scores",
]

CARD_COLUMNS = (
    "annotator", "group", "num_annotations", "golden_accuracy", "num_golden",
    "agreement_with_label", "median_response_ms", "disputed_answer_rate",
    "share_of_disputed", "drift_alarms_agreement", "drift_alarms_golden", "position_bias",
)


class AuditResult:
  """What `audit_labels` found.

  Attributes:
    disputed: one dict per scored item, most disputed first: item_id, label, confidence
      (the aggregation's), model_probability (of the label), dispute, model_label,
      backers (annotators who answered the label), dissenters, disputed (bool).
    cards: one dict per annotator (columns `CARD_COLUMNS` plus `label_share_<class>`),
      highest disputed_answer_rate first.
    balance: rows of `dataset_balance`.
  """

  def __init__(self, disputed, cards, balance, class_names):
    self.disputed = disputed
    self.cards = cards
    self.balance = balance
    self.class_names = class_names

  def summary(self) -> dict[str, Any]:
    flagged = [c["annotator"] for c in self.cards[:5]]
    return {"num_scored": len(self.disputed),
            "num_disputed": sum(1 for d in self.disputed if d["disputed"]),
            "most_disputed": [d["item_id"] for d in self.disputed[:10]],
            "annotators_most_disputed": flagged,
            "num_annotators": len(self.cards), "num_tags": len(self.balance)}


def read_model_scores(path: str | os.PathLike[str], item_ids: Sequence[str],
                      class_names: Sequence[str]) -> np.ndarray:
  """Model class probabilities [I, K] (NaN rows for unscored items) from a CSV or JSONL.

  Accepted columns/fields, per item (`item` or `item_id`): `p_<class>` for every class;
  or `p_a` alone (pairwise; b = 1 - a, tie 0); or `score_a` and `score_b` (rewards:
  p_a = sigmoid(score_a - score_b)); or `margin` (= score_a - score_b).
  """
  path = Path(path)
  kind = ingest.file_kind(path)
  if kind == "json":
    rows = ingest.read_reference_json_lines(path)
  elif kind == "csv":
    rows = ingest.read_reference_csv(path)[1]
  else:
    raise ValueError(f"{path}: model scores are read from CSV or JSON Lines, got {kind}.")
  index = {item: i for i, item in enumerate(item_ids)}
  k = len(class_names)
  out = np.full((len(item_ids), k), np.nan)
  for line, row in rows:
    item = row.get("item", row.get("item_id"))
    if item is None:
      raise ValueError(f"{path}: line {line}: no `item` (or `item_id`) field.")
    i = index.get(str(item))
    if i is None:
      continue
    try:
      if all(f"p_{c}" in row for c in class_names):
        probs = np.asarray([float(row[f"p_{c}"]) for c in class_names])
      else:
        if "p_a" in row:
          p_a = float(row["p_a"])
        elif "score_a" in row and "score_b" in row:
          p_a = 1.0 / (1.0 + math.exp(-(float(row["score_a"]) - float(row["score_b"]))))
        elif "margin" in row:
          p_a = 1.0 / (1.0 + math.exp(-float(row["margin"])))
        else:
          raise ValueError("expected p_<class> columns, p_a, score_a and score_b, or margin")
        probs = np.zeros(k)
        probs[list(class_names).index("a")] = p_a
        probs[list(class_names).index("b")] = 1.0 - p_a
    except (TypeError, ValueError) as error:
      raise ValueError(f"{path}: line {line}: {error}.") from None
    out[i] = probs
  return out


def model_probabilities_from_reward_model(workdir: str | os.PathLike[str], enc: Any
                                          ) -> np.ndarray:
  """[I, K] from a reward-model run of scripts/train.py: p(a) = sigmoid(r(x, a) - r(x, b))
  for items whose prompt and responses are in the annotations; NaN rows elsewhere."""
  from rlhf_jax.train import score  # pylint: disable=g-import-not-at-top
  scorer = score.load_reward_model(workdir)
  k = enc.num_classes
  out = np.full((enc.num_items, k), np.nan)
  if enc.item_payloads is None:
    return out
  rows = [i for i, p in enumerate(enc.item_payloads)
          if p and all(p.get(f) is not None for f in ("prompt", "response_a", "response_b"))]
  if not rows:
    return out
  prompts = [enc.item_payloads[i]["prompt"] for i in rows]
  reward_a = np.asarray(scorer(prompts, [enc.item_payloads[i]["response_a"] for i in rows]))
  reward_b = np.asarray(scorer(prompts, [enc.item_payloads[i]["response_b"] for i in rows]))
  p_a = 1.0 / (1.0 + np.exp(-(reward_a - reward_b)))
  names = list(enc.class_names)
  out[rows] = 0.0
  out[rows, names.index("a")] = p_a
  out[rows, names.index("b")] = 1.0 - p_a
  return out


def dataset_balance(item_labels: np.ndarray, class_names: Sequence[str],
                    item_tags: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
  """Per tag: items, share, label shares, and the weight N / (T n_t) (module docstring)."""
  num_items = len(item_labels)
  if item_tags is None:
    item_tags = [[f"label={class_names[int(y)]}"] for y in item_labels]
  counts = collections.Counter(tag for tags in item_tags for tag in set(tags))
  num_tags = len(counts)
  rows = []
  for tag in sorted(counts):
    members = [i for i, tags in enumerate(item_tags) if tag in tags]
    labels = np.bincount(np.asarray(item_labels)[members], minlength=len(class_names))
    rows.append({"tag": tag, "num_items": counts[tag], "share": counts[tag] / num_items,
                 "weight": num_items / (num_tags * counts[tag]),
                 **{f"label_share_{c}": labels[k] / counts[tag] for k, c in enumerate(class_names)}})
  return rows


def item_weights(balance: Sequence[Mapping[str, Any]], item_tags: Sequence[Sequence[str]]
                 ) -> np.ndarray:
  """Each item's rebalancing weight: the mean of its tags' weights."""
  weight = {row["tag"]: row["weight"] for row in balance}
  return np.asarray([np.mean([weight[t] for t in set(tags)]) if tags else 1.0
                     for tags in item_tags])


def audit_labels(
    enc: Any,
    item_labels: np.ndarray,
    label_confidence: np.ndarray,
    model_probabilities: np.ndarray,
    *,
    dispute_threshold: float = 0.8,
    annotator_groups: Mapping[str, str] | None = None,
    item_tags: Sequence[Sequence[str]] | None = None,
    drift: Mapping[str, float] | None = None,
) -> AuditResult:
  """Disputed labels, annotator report cards and balance (see the module docstring).

  Args:
    enc: `feedback.EncodedAnnotations` of the annotations behind the labels.
    item_labels, label_confidence: [I] the aggregated label and its confidence, indexed
      like `enc.item_ids`.
    model_probabilities: [I, K] model class probabilities (NaN rows: not scored).
    dispute_threshold: a label is disputed when the model gives another class at least
      this probability.
    annotator_groups: {annotator: group} for the cards and plots (default "all").
    item_tags: per item, its tags (default: its label).
    drift: Page-Hinkley `delta`, `threshold`, `min_samples` and CUSUM `p0`, `p1`,
      `cusum_threshold` (defaults as configs/aggregate.py).
  """
  drift = {"delta": 0.05, "threshold": 8.0, "min_samples": 30, "p0": 0.9, "p1": 0.6,
           "cusum_threshold": 5.0, **(drift or {})}
  items, annotators, labels = (np.asarray(x) for x in (enc.items, enc.annotators, enc.labels))
  item_labels = np.asarray(item_labels)
  k = enc.num_classes
  model = np.asarray(model_probabilities, np.float64)
  scored = ~np.isnan(model).any(-1)
  against_label = model.copy()
  against_label[np.arange(len(item_labels)), item_labels] = -np.inf
  dispute = np.where(scored, against_label.max(-1), np.nan)
  # A tie has no probability in a pairwise (Bradley-Terry) model: never disputed.
  tie = enc.class_names.index("tie") if "tie" in enc.class_names else -1
  dispute = np.where(item_labels == tie, np.nan, dispute)
  is_disputed = np.nan_to_num(dispute, nan=-1.0) >= dispute_threshold

  by_item = collections.defaultdict(list)
  for n in range(len(items)):
    by_item[int(items[n])].append(n)
  order = [i for i in np.argsort(-np.nan_to_num(dispute, nan=-np.inf), kind="stable")
           if not np.isnan(dispute[i])]
  disputed_rows = []
  for i in order:
    answers = by_item[i]
    disputed_rows.append({
        "item_id": enc.item_ids[i], "label": enc.class_names[item_labels[i]],
        "confidence": float(label_confidence[i]),
        "model_probability": float(model[i, item_labels[i]]),
        "model_label": enc.class_names[int(np.argmax(model[i]))],
        "dispute": float(dispute[i]), "disputed": bool(is_disputed[i]),
        "backers": [enc.annotator_ids[annotators[n]] for n in answers if labels[n] == item_labels[i]],
        "dissenters": [enc.annotator_ids[annotators[n]] for n in answers if labels[n] != item_labels[i]],
    })

  # Per answer: does the model confidently contradict the annotator's own answer?
  answer_scored = scored[items] & (labels != tie)
  against_answer = model[items].copy()
  against_answer[np.arange(len(items)), labels] = -np.inf
  answer_disputed = answer_scored & (np.nan_to_num(against_answer.max(-1), nan=-1) >= dispute_threshold)
  num_annotators = enc.num_annotators
  scored_count = np.bincount(annotators, weights=answer_scored, minlength=num_annotators)
  disputed_count = np.bincount(annotators, weights=answer_disputed, minlength=num_annotators)
  backed_disputed = np.bincount(annotators, weights=is_disputed[items] & (labels == item_labels[items]),
                                minlength=num_annotators)
  agreement = np.bincount(annotators, weights=labels == item_labels[items], minlength=num_annotators)
  count = np.bincount(annotators, minlength=num_annotators)

  metrics = feedback.annotator_metrics(
      items, annotators, labels, timestamps=enc.timestamps, response_ms=enc.response_ms,
      is_golden=enc.is_golden, golden_labels=enc.golden_labels if enc.is_golden is not None else None,
      num_annotators=num_annotators, num_items=enc.num_items)
  ph_alarms = np.zeros(num_annotators)
  cusum_alarms = np.zeros(num_annotators)
  if enc.timestamps is not None and np.isfinite(enc.timestamps).any():
    timed = np.isfinite(enc.timestamps)
    result, _ = feedback.detect_annotator_drift(
        annotators[timed], (labels == item_labels[items])[timed].astype(np.float32),
        np.asarray(enc.timestamps)[timed], num_annotators=num_annotators, method="page_hinkley",
        delta=drift["delta"], threshold=drift["threshold"], min_samples=int(drift["min_samples"]))
    ph_alarms = np.asarray(result.num_alarms)
    if enc.is_golden is not None:
      golden = timed & np.asarray(enc.is_golden, bool) & (np.asarray(enc.golden_labels) >= 0)
      if golden.any():
        result, _ = feedback.detect_annotator_drift(
            annotators[golden], (labels == np.asarray(enc.golden_labels))[golden].astype(np.float32),
            np.asarray(enc.timestamps)[golden], num_annotators=num_annotators, method="cusum",
            p0=drift["p0"], p1=drift["p1"], threshold=drift["cusum_threshold"])
        cusum_alarms = np.asarray(result.num_alarms)

  label_share = np.zeros((num_annotators, k))
  np.add.at(label_share, (annotators, labels), 1.0)
  label_share /= np.maximum(count, 1)[:, None]
  position_bias = np.full(num_annotators, np.nan)
  if "a" in enc.class_names and "b" in enc.class_names:
    a, b = enc.class_names.index("a"), enc.class_names.index("b")
    decided = np.isin(item_labels[items], (a, b)) & np.isin(labels, (a, b))
    said_a = np.bincount(annotators, weights=decided & (labels == a), minlength=num_annotators)
    truly_a = np.bincount(annotators, weights=decided & (item_labels[items] == a), minlength=num_annotators)
    total = np.bincount(annotators, weights=decided, minlength=num_annotators)
    position_bias = np.where(total > 0, (said_a - truly_a) / np.maximum(total, 1), np.nan)

  num_disputed = int(is_disputed.sum())
  golden_accuracy = np.asarray(metrics.golden_accuracy)
  cards = []
  for a in range(num_annotators):
    name = enc.annotator_ids[a]
    card = {
        "annotator": name, "group": (annotator_groups or {}).get(name, "all"),
        "num_annotations": int(count[a]), "golden_accuracy": float(golden_accuracy[a]),
        "num_golden": int(np.asarray(metrics.num_golden)[a]),
        "agreement_with_label": agreement[a] / max(count[a], 1),
        "median_response_ms": float(np.asarray(metrics.median_response_ms)[a]),
        "disputed_answer_rate": disputed_count[a] / scored_count[a] if scored_count[a] else float("nan"),
        "share_of_disputed": backed_disputed[a] / num_disputed if num_disputed else 0.0,
        "drift_alarms_agreement": int(ph_alarms[a]), "drift_alarms_golden": int(cusum_alarms[a]),
        "position_bias": float(position_bias[a]),
    }
    for c, name_c in enumerate(enc.class_names):
      card[f"label_share_{name_c}"] = float(label_share[a, c])
    cards.append(card)
  cards.sort(key=lambda c: (-np.nan_to_num(c["disputed_answer_rate"], nan=-1.0), c["annotator"]))
  balance = dataset_balance(item_labels, enc.class_names, item_tags)
  return AuditResult(disputed_rows, cards, balance, enc.class_names)


def plot_report_cards(cards: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike[str]
                      ) -> list[Path]:
  """One PNG per annotator group: per annotator, bars of golden accuracy, agreement with
  the label, disputed answer rate and |position bias| (matplotlib's Agg canvas)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  groups = collections.defaultdict(list)
  for card in cards:
    groups[card["group"]].append(card)
  paths = []
  measures = (("golden_accuracy", "golden accuracy"), ("agreement_with_label", "agreement"),
              ("disputed_answer_rate", "disputed by model"), ("position_bias", "position bias"))
  for group, members in sorted(groups.items()):
    members = sorted(members, key=lambda c: c["annotator"])
    width = max(6.0, 0.35 * len(members) + 2.0)
    figure = Figure(figsize=(width, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    x = np.arange(len(members))
    for offset, (field, label) in enumerate(measures):
      values = np.asarray([np.nan_to_num(c[field], nan=0.0) for c in members], float)
      axis.bar(x + (offset - 1.5) * 0.2, values, width=0.2, label=label)
    axis.set_xticks(x, [c["annotator"] for c in members], rotation=90, fontsize=7)
    axis.axhline(0.0, color="black", linewidth=0.5)
    axis.set_title(f"Annotator report cards: {group} ({len(members)} annotators)")
    axis.legend(fontsize=7, ncol=4)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(group))
    path = Path(output_dir) / f"cards_{safe}.png"
    figure.savefig(path, dpi=100)
    paths.append(path)
  return paths


def write_outputs(result: AuditResult, output_dir: str | os.PathLike[str], *, top: int = 50
                  ) -> dict[str, str]:
  """disputed.csv (the `top` most disputed), annotator_cards.csv, balance.csv, PNGs."""
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  files = {}
  with open(output_dir / "disputed.csv", "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(["rank", "item", "label", "confidence", "model_probability", "model_label",
                     "dispute", "disputed", "backers", "dissenters"])
    for rank, row in enumerate(result.disputed[:top], 1):
      writer.writerow([rank, row["item_id"], row["label"], f"{row['confidence']:.6g}",
                       f"{row['model_probability']:.6g}", row["model_label"],
                       f"{row['dispute']:.6g}", int(row["disputed"]), ";".join(row["backers"]),
                       ";".join(row["dissenters"])])
  files["disputed.csv"] = f"the {top} labels the model disputes most, with the annotators behind each"
  columns = list(CARD_COLUMNS) + [f"label_share_{c}" for c in result.class_names]
  with open(output_dir / "annotator_cards.csv", "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(columns)
    for card in result.cards:
      writer.writerow([card[c] if isinstance(card[c], str) else f"{card[c]:.6g}" for c in columns])
  files["annotator_cards.csv"] = "one report card per annotator, most disputed first"
  with open(output_dir / "balance.csv", "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    balance_columns = list(result.balance[0]) if result.balance else ["tag"]
    writer.writerow(balance_columns)
    for row in result.balance:
      writer.writerow([row[c] if isinstance(row[c], str) else f"{row[c]:.6g}" for c in balance_columns])
  files["balance.csv"] = "items, label shares and rebalancing weight per tag"
  for path in plot_report_cards(result.cards, output_dir):
    files[path.name] = "report cards of one annotator group"
  (output_dir / "audit.json").write_text(json.dumps({**result.summary(), "files": files}, indent=1),
                                         encoding="utf-8")
  return files


def run(config: Any) -> dict[str, Any]:
  """The job behind scripts/audit_labels.py (configs/audit_labels.py)."""
  from rlhf_jax.feedback.workflow import plan as plan_lib  # pylint: disable=g-import-not-at-top
  report = feedback.read_annotations(config.annotations, format=config.format,
                                     duplicate_policy="keep_all")
  enc = report.annotations
  labels = plan_lib.read_labels_csv(config.labels)
  index = {item: i for i, item in enumerate(labels["item_ids"])}
  missing = [item for item in enc.item_ids if item not in index]
  if missing:
    raise ValueError(f"{config.labels}: {len(missing)} annotated items have no label "
                     f"(first: {missing[0]}).")
  rows = [index[item] for item in enc.item_ids]
  posteriors = labels["posteriors"][rows]
  classes = labels["class_names"]
  if list(classes) != list(enc.class_names):
    raise ValueError(f"{config.labels}: classes {classes} differ from the annotations' "
                     f"{list(enc.class_names)}.")
  item_labels = np.argmax(posteriors, -1)
  confidence = posteriors.max(-1)
  if config.scores:
    model = read_model_scores(config.scores, enc.item_ids, enc.class_names)
  elif config.reward_model:
    model = model_probabilities_from_reward_model(config.reward_model, enc)
  else:
    raise ValueError("set --config.scores (a scores file) or --config.reward_model (a run dir).")
  groups = None
  if config.annotator_groups:
    groups = {row["annotator"]: row["group"]
              for _, row in ingest.read_reference_csv(config.annotator_groups, ("annotator", "group"))[1]}
  tags = None
  if config.item_tags:
    by_item = collections.defaultdict(list)
    for _, row in ingest.read_reference_csv(config.item_tags, ("item", "tag"))[1]:
      by_item[row["item"]].append(row["tag"])
    tags = [by_item.get(item, ["(untagged)"]) for item in enc.item_ids]
  result = audit_labels(enc, item_labels, confidence, model,
                        dispute_threshold=config.dispute_threshold,
                        annotator_groups=groups, item_tags=tags)
  files = write_outputs(result, config.output_dir, top=config.top)
  return {**result.summary(), "files": files}
