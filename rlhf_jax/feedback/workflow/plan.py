r"""Planning the next batch of annotation work from the current labels (`scripts/plan_tasks.py`).

`plan_tasks` turns labels, annotator metrics and a budget into tasks:

1. Adaptive redundancy. An item gets another annotation only while it is uncertain:
   confidence (its posterior's top probability) below `confidence_threshold`, or fewer
   than `min_annotations` answers, and fewer than `max_annotations` already. New items
   (no answer yet) get `initial_annotations` tasks. Candidates are served most uncertain
   first (lowest confidence; new items after the labelled ones with the same priority as
   confidence 1 / K, i.e. maximally uncertain), until the budget runs out.
2. Price. Each task costs `feedback.price_items(difficulty)`: the base price for a
   certain item up to `hard_multiplier` times it for a uniform posterior, difficulty
   being the normalised posterior entropy (`feedback.difficulty`); new items are priced
   at the mean difficulty of the labelled ones. Golden tasks cost the base price.
3. Routing. `feedback.assign_hard_items` marks items hard (difficulty >=
   `hard_threshold`) and picks the skilled pool (top `skilled_share` by the annotators'
   measured skill, e.g. Dawid-Skene reliability); hard items go to the pool, hardest
   first to the most skilled, easy ones to the rest. Its choice is then repaired so that
   nobody labels an item twice and nobody exceeds `load_cap` tasks: the next annotator
   of the same pool by skill (hard) or the least loaded one (easy) takes the task.
   Annotators with skill below `min_skill` get no work ("fewer and better").
4. Golden items. `feedback.plan_golden_injection` places golden (known-answer) items at
   `golden_rate` of each annotator's queue, at stratified random positions, in an
   annotator-specific random order. Rotation: only the `golden_active_share` least
   exposed golden items so far are used in a round (exposure counted over the
   annotation history), and a golden slot holding an item the annotator has already
   seen is given an active item the annotator has not seen when one exists, so a
   golden item returns to the same person only after the pool is exhausted.
5. Every task carries the guideline version it is to be labelled under.

Formats. Tasks are written as JSONL (one task per line, every field above) and in
Label Studio's import format (a JSON list of `{"data": {...}, "meta": {...}}`; the
annotator sees `prompt`, `response_a`, `response_b`; the assignment, price, kind and the
golden answer are in `meta`, which the labelling interface does not show).
`read_label_studio_export` reads Label Studio's JSON export back into records of the
pairwise schema of `feedback.read_annotations` (choices `a`/`b`/`tie`, from a Choices
control or a Pairwise control's `left`/`right`), rejecting unusable annotations with
a reason.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rlhf_jax import feedback
from rlhf_jax.io import ingest

__all__ = [
    "PlanConfig",
    "TaskPlan",
    "plan_tasks",
    "read_label_studio_export",
    "read_labels_csv",
    "read_annotators_csv",
    "write_tasks_jsonl",
    "write_label_studio_tasks",
    "guideline_breakdown",
]

# Label Studio answer values understood as a class of the pairwise schema.
_LS_CHOICES = {"a": "a", "b": "b", "tie": "tie", "left": "a", "right": "b",
               "response a": "a", "response b": "b", "response_a": "a", "response_b": "b",
               "equal": "tie", "same": "tie", "draw": "tie"}


@dataclasses.dataclass(frozen=True)
class PlanConfig:
  """Settings of `plan_tasks` (see the module docstring for what each does)."""

  budget: float
  guideline_version: str
  confidence_threshold: float = 0.8
  min_annotations: int = 2
  max_annotations: int = 5
  initial_annotations: int = 2
  base_price: float = 1.0
  hard_multiplier: float = 2.0
  hard_threshold: float = 0.5
  skilled_share: float = 0.25
  load_cap: int = 200
  min_skill: float = 0.0
  golden_rate: float = 0.07
  golden_active_share: float = 0.5
  seed: int = 0
  round: int = 0

  def __post_init__(self):
    if not self.budget > 0:
      raise ValueError(f"budget must be > 0, got {self.budget}.")
    if not self.guideline_version:
      raise ValueError("guideline_version is required: every task is stamped with it.")
    if not 1 <= self.initial_annotations <= self.max_annotations:
      raise ValueError("need 1 <= initial_annotations <= max_annotations.")
    if not 0 <= self.golden_rate < 1:
      raise ValueError(f"golden_rate must be in [0, 1), got {self.golden_rate}.")
    if not 0 < self.golden_active_share <= 1:
      raise ValueError(f"golden_active_share must be in (0, 1], got {self.golden_active_share}.")
    if self.load_cap < 1:
      raise ValueError(f"load_cap must be >= 1, got {self.load_cap}.")


@dataclasses.dataclass
class TaskPlan:
  """The planned tasks and their accounting.

  Attributes:
    tasks: one dict per task: task_id, item_id, annotator_id, kind ("annotate" |
      "golden"), reason ("new_item" | "low_confidence" | "few_annotations" | "golden"),
      difficulty, price, is_hard, queue_position, guideline_version, golden_answer (golden
      only), and prompt / response_a / response_b when known.
    spent: total price of the tasks (<= budget).
    num_candidates: items that wanted another annotation.
    num_unfunded: of them, tasks left out by the budget.
    unassigned: tasks that no eligible annotator could take (everyone at the load cap
      or having labelled the item already), with the item and reason.
  """

  tasks: list[dict[str, Any]]
  spent: float
  num_candidates: int
  num_unfunded: int
  unassigned: list[dict[str, Any]]

  def load(self) -> dict[str, int]:
    return dict(collections.Counter(t["annotator_id"] for t in self.tasks))

  def summary(self) -> dict[str, Any]:
    kinds = collections.Counter(t["kind"] for t in self.tasks)
    reasons = collections.Counter(t["reason"] for t in self.tasks)
    load = self.load()
    return {"num_tasks": len(self.tasks), "by_kind": dict(kinds), "by_reason": dict(reasons),
            "spent": self.spent, "num_candidates": self.num_candidates,
            "num_unfunded": self.num_unfunded, "num_unassigned": len(self.unassigned),
            "num_annotators": len(load), "max_load": max(load.values()) if load else 0,
            "num_hard": sum(1 for t in self.tasks if t["is_hard"])}


# ----------------------------------------------------------------------------------------
# Reading the inputs.


def read_labels_csv(path: str | os.PathLike[str]) -> dict[str, Any]:
  """labels.csv of `scripts/aggregate.py` (or the streaming aggregator): item ids,
  posteriors [I, K] from the `p_<class>` columns, class names, annotation counts.

  Read whole through `ingest.read_reference_csv` (a malformed row is an error naming
  its line, not a row skipped)."""
  path = Path(path)
  columns, rows = ingest.read_reference_csv(path, ("item",))
  classes = [c[2:] for c in columns if c.startswith("p_")]
  if not classes:
    raise ValueError(f"{path}: line 1: expected columns item and p_<class>, got {columns}.")
  item_ids, posteriors, counts = [], [], []
  for line, row in rows:
    try:
      posteriors.append([float(row[f"p_{c}"]) for c in classes])
      counts.append(int(row.get("num_annotations") or 0))
    except (TypeError, ValueError) as error:
      raise ValueError(f"{path}: line {line}: a p_<class> or num_annotations value is not "
                       f"a number ({error}).") from None
    item_ids.append(row["item"])
  return {"item_ids": item_ids, "posteriors": np.asarray(posteriors, np.float32).reshape(-1, len(classes)),
          "class_names": classes, "num_annotations": np.asarray(counts, np.int64)}


def read_annotators_csv(path: str | os.PathLike[str], skill_column: str) -> dict[str, float]:
  """{annotator: skill} from annotators.csv; a blank or NaN skill becomes NaN."""
  path = Path(path)
  _, rows = ingest.read_reference_csv(path, ("annotator", skill_column))
  out = {}
  for line, row in rows:
    value = row[skill_column].strip()
    try:
      out[row["annotator"]] = float(value) if value else float("nan")
    except ValueError:
      raise ValueError(f"{path}: line {line}: {skill_column} {value!r} is not a number.") from None
  return out


def read_label_studio_export(path: str | os.PathLike[str]
                             ) -> tuple[list[dict[str, Any]], list[ingest.Reject]]:
  """Label Studio's JSON export -> (records of the pairwise schema, rejects).

  Each task's `data` gives item_id (`item_id`, else the task `id`), prompt, response_a,
  response_b, guideline_version; `meta.golden_answer` (as written by
  `write_label_studio_tasks`) marks a golden item. Each non-cancelled annotation becomes a
  record: annotator_id from `completed_by` (an id, or a dict with `email`/`id`),
  choice from the first `choices` result (a, b, tie, or left/right, any case) or a
  `pairwise` result's `selected` left/right, timestamp from `created_at`, response_ms
  from `lead_time` (seconds).

  A task that cannot be used is rejected whole, an unusable annotation of a usable task
  alone: every annotation read is a record or a reject. Rejects are `ingest.Reject`s
  numbered by task (1-based, location "task") whose `raw` is the rejected task or
  annotation as compact JSON text; `ingest.write_rejects(..., layout="line")` writes them
  in the feedback layer's layout ({"file", "line" (the task), "field", "reason", "raw"}).
  """
  path = Path(path)
  try:
    tasks = json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f"{path}: not a Label Studio JSON export ({error}).") from None
  if not isinstance(tasks, list):
    raise ValueError(f"{path}: a Label Studio JSON export is a list of tasks, got "
                     f"{type(tasks).__name__}.")
  records: list[dict[str, Any]] = []
  rejects: list[ingest.Reject] = []

  def reject(index: int, error: ingest.RecordError, rejected: Any) -> None:
    rejects.append(ingest.Reject(
        file=str(path), location="task", number=index, field=error.field, code=error.code,
        reason=error.reason, record=rejected, raw=json.dumps(rejected, ensure_ascii=False, default=str)))

  for index, task in enumerate(tasks, start=1):
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
      reject(index, ingest.RecordError("not_an_object", "data",
                                       "a task must be an object with a `data` object"), task)
      continue
    data, meta = task["data"], task.get("meta") or {}
    item_id = data.get("item_id", task.get("id"))
    if item_id is None:
      reject(index, ingest.missing_field("data.item_id", "data.item_id or a task id"), task)
      continue
    for annotation in task.get("annotations") or []:
      if not isinstance(annotation, dict):
        reject(index, ingest.RecordError("not_an_object", "annotations",
                                         f"an annotation must be an object, got {type(annotation).__name__}"),
               annotation)
        continue
      if annotation.get("was_cancelled"):
        reject(index, ingest.RecordError("cancelled", "was_cancelled", "the annotator skipped the task"),
               annotation)
        continue
      who = annotation.get("completed_by")
      if isinstance(who, dict):
        who = who.get("email") or who.get("id")
      if who is None:
        reject(index, ingest.missing_field("completed_by", "the annotator's id, or an object with email or id"),
               annotation)
        continue
      choice = _ls_choice(annotation.get("result") or [])
      if choice is None:
        reject(index, ingest.RecordError("bad_label", "result",
                                         "no choices/pairwise result with a/b/tie or left/right"), annotation)
        continue
      record = {"annotation_id": f"ls-{task.get('id', index)}-{annotation.get('id', len(records))}",
                "item_id": str(item_id), "annotator_id": str(who), "choice": choice}
      for field in ("prompt", "response_a", "response_b", "guideline_version"):
        if data.get(field) is not None:
          record[field] = data[field]
      if annotation.get("created_at"):
        record["timestamp"] = annotation["created_at"]
      lead_time = annotation.get("lead_time")
      if isinstance(lead_time, (int, float)) and not isinstance(lead_time, bool):
        if not math.isfinite(lead_time):
          reject(index, ingest.RecordError("wrong_type", "lead_time", "expected a finite number of seconds, "
                                           f"got {ingest.describe_value(lead_time)}"), annotation)
          continue
        record["response_ms"] = 1000.0 * float(lead_time)
      if meta.get("golden_answer") is not None:
        record["is_golden"] = True
        record["golden_answer"] = meta["golden_answer"]
      records.append(record)
  return records, rejects


def _ls_choice(results: Sequence[Mapping[str, Any]]) -> str | None:
  for result in results:
    value = result.get("value") or {}
    if result.get("type") == "pairwise" or "selected" in value:
      selected = str(value.get("selected", "")).strip().lower()
      return _LS_CHOICES.get(selected)
    choices = value.get("choices")
    if choices:
      return _LS_CHOICES.get(str(choices[0]).strip().lower())
  return None


# ----------------------------------------------------------------------------------------
# Planning.


def plan_tasks(
    config: PlanConfig,
    *,
    item_ids: Sequence[str],
    posteriors: np.ndarray,
    num_annotations: np.ndarray,
    annotator_skill: Mapping[str, float],
    labelled_by: Mapping[str, set[str]] | None = None,
    new_items: Sequence[str] = (),
    golden: Mapping[str, str] | None = None,
    golden_seen: Mapping[str, set[str]] | None = None,
    payloads: Mapping[str, Mapping[str, Any]] | None = None,
) -> TaskPlan:
  """Plans the next batch of tasks (see the module docstring).

  Args:
    config: `PlanConfig`.
    item_ids, posteriors [I, K], num_annotations [I]: the current labels.
    annotator_skill: {annotator: skill}; higher is better (NaN: lowest).
    labelled_by: {item: annotators who already labelled it}.
    new_items: ids of items with no annotation yet.
    golden: {golden item: known answer}; empty or None: no golden tasks.
    golden_seen: {annotator: golden items already shown to them}.
    payloads: {item: {"prompt", "response_a", "response_b"}} copied into tasks.

  Returns:
    `TaskPlan`.
  """
  labelled_by = labelled_by or {}
  golden = dict(golden or {})
  golden_seen = golden_seen or {}
  payloads = payloads or {}
  key = jax.random.fold_in(jax.random.key(config.seed), config.round)
  route_key, golden_key = jax.random.split(key)
  posteriors = np.asarray(posteriors, np.float32)
  num_classes = posteriors.shape[1]
  confidence = posteriors.max(-1) if len(item_ids) else np.zeros((0,))
  difficulty = (np.asarray(feedback.difficulty(posteriors)) if len(item_ids)
                else np.zeros((0,), np.float32))
  golden_ids = set(golden)

  # 1. Adaptive redundancy: who needs another answer, most uncertain first.
  candidates = []  # (priority, item, reason, copies, difficulty)
  for i, item in enumerate(item_ids):
    if item in golden_ids or num_annotations[i] >= config.max_annotations:
      continue
    if num_annotations[i] < config.min_annotations:
      candidates.append((confidence[i], item, "few_annotations", 1, float(difficulty[i])))
    elif confidence[i] < config.confidence_threshold:
      candidates.append((confidence[i], item, "low_confidence", 1, float(difficulty[i])))
  new_difficulty = float(difficulty.mean()) if difficulty.size else 0.5
  for item in new_items:
    if item not in golden_ids:
      candidates.append((1.0 / num_classes, item, "new_item", config.initial_annotations,
                         new_difficulty))
  candidates.sort(key=lambda c: (c[0], c[1]))
  num_candidates = len(candidates)

  # 2. Prices; take candidates in order while the budget (golden share reserved) lasts.
  prices = np.asarray(feedback.price_items(
      np.asarray([c[4] for c in candidates], np.float32) if candidates else np.zeros((0,), np.float32),
      base_price=config.base_price, hard_multiplier=config.hard_multiplier))
  golden_budget_share = config.golden_rate if golden else 0.0
  regular_budget = config.budget * (1.0 - golden_budget_share)
  funded, spent, unfunded, exhausted = [], 0.0, 0, False
  for candidate, price in zip(candidates, prices.tolist()):
    for _ in range(candidate[3]):
      exhausted = exhausted or spent + price > regular_budget
      if exhausted:  # strictly in priority order: nothing cheaper jumps the queue
        unfunded += 1
      else:
        funded.append((candidate[1], candidate[2], candidate[4], price))
        spent += price

  # 3. Routing: assign_hard_items' choice, repaired for repeats and the load cap.
  eligible = sorted((a for a, s in annotator_skill.items()
                     if not (s < config.min_skill)), key=lambda a: a)
  tasks: list[dict[str, Any]] = []
  unassigned: list[dict[str, Any]] = []
  if funded and not eligible:
    raise ValueError(f"no annotator has skill >= min_skill={config.min_skill}.")
  load = collections.Counter()
  if funded:
    skill = np.asarray([annotator_skill[a] for a in eligible], np.float32)
    assignment = feedback.assign_hard_items(
        np.asarray([f[2] for f in funded], np.float32), skill,
        hard_threshold=config.hard_threshold, skilled_share=config.skilled_share,
        num_per_item=1, key=route_key)
    first_choice = np.asarray(assignment.annotators)[:, 0]
    is_hard = np.asarray(assignment.is_hard)
    skilled = np.asarray(assignment.skilled)
    by_skill = sorted(range(len(eligible)),
                      key=lambda a: (-(skill[a] if np.isfinite(skill[a]) else -np.inf), a))
    pool = [a for a in by_skill if skilled[a]]
    rest = [a for a in by_skill if not skilled[a]] or by_skill
    planned_pairs: set[tuple[str, str]] = set()
    for t, (item, reason, item_difficulty, price) in enumerate(funded):
      done = labelled_by.get(item, set())

      def ok(a: int) -> bool:
        name = eligible[a]
        return load[name] < config.load_cap and name not in done and (item, name) not in planned_pairs

      choice = int(first_choice[t])
      if not ok(choice):
        if is_hard[t]:
          # Next most skilled in the pool, then anyone by skill.
          options = [a for a in pool + by_skill if ok(a)]
        else:
          options = sorted((a for a in rest if ok(a)), key=lambda a: (load[eligible[a]], a))
          options += sorted((a for a in by_skill if ok(a)), key=lambda a: (load[eligible[a]], a))
        if not options:
          unassigned.append({"item_id": item, "reason": "every eligible annotator is at the "
                             "load cap or has labelled the item"})
          spent -= price
          continue
        choice = options[0]
      name = eligible[choice]
      load[name] += 1
      planned_pairs.add((item, name))
      tasks.append(_task(item, name, "annotate", reason, item_difficulty, price,
                         bool(is_hard[t]), config, payloads))

  # 4. Golden items, rotated.
  if golden and tasks and config.golden_rate > 0:
    funded_order = list(tasks)
    tasks, spent = _inject_golden(tasks, golden, golden_seen, config, golden_key, spent, payloads)
    # At least one golden slot per queue can overshoot the reserve: drop the least
    # uncertain regular tasks (funded last) until the plan fits the budget.
    dropped = set()
    while spent > config.budget + 1e-9 and funded_order:
      task = funded_order.pop()
      dropped.add(id(task))
      spent -= task["price"]
      unfunded += 1
    tasks = [t for t in tasks if id(t) not in dropped]
  _number_queues(tasks)
  for n, task in enumerate(tasks):
    task["task_id"] = f"r{config.round}-{n:06d}"
  return TaskPlan(tasks, spent, num_candidates, unfunded, unassigned)


def _task(item, annotator, kind, reason, item_difficulty, price, is_hard, config, payloads):
  task = {"task_id": "", "item_id": item, "annotator_id": annotator, "kind": kind,
          "reason": reason, "difficulty": round(float(item_difficulty), 6),
          "price": round(float(price), 6), "is_hard": is_hard, "queue_position": -1,
          "guideline_version": config.guideline_version}
  for field in ("prompt", "response_a", "response_b"):
    value = (payloads.get(item) or {}).get(field)
    if value is not None:
      task[field] = value
  return task


def _inject_golden(tasks, golden, golden_seen, config, key, spent, payloads):
  """Places golden tasks in each annotator's queue with `feedback.plan_golden_injection`."""
  exposure = collections.Counter()
  for seen in golden_seen.values():
    exposure.update(seen)
  ordered = sorted(golden, key=lambda g: (exposure[g], g))
  active = ordered[:max(1, math.ceil(config.golden_active_share * len(ordered)))]
  queues: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
  for task in tasks:
    queues[task["annotator_id"]].append(task)
  by_length: dict[int, list[str]] = collections.defaultdict(list)
  for annotator, queue in queues.items():
    # Regular tasks are (1 - rate) of the queue.
    length = int(round(len(queue) / (1.0 - config.golden_rate)))
    by_length[length].append(annotator)
  out = []
  for length, annotators in sorted(by_length.items()):
    plan = feedback.plan_golden_injection(
        jax.random.fold_in(key, length), len(annotators), length,
        np.arange(len(active), dtype=np.int32), rate=config.golden_rate)
    slot_item = np.asarray(plan.slot_item)
    for row, annotator in enumerate(annotators):
      regular = iter(queues[annotator])
      seen = set(golden_seen.get(annotator, set()))
      queue = []
      for position in range(length):
        g = int(slot_item[row, position])
        if g < 0:
          task = next(regular, None)
          if task is not None:
            queue.append(task)
          continue
        item = active[g]
        if item in seen:  # rotate: an active golden item this annotator has not seen
          unseen = [x for x in active if x not in seen]
          if unseen:
            item = unseen[int(jax.random.randint(jax.random.fold_in(key, position * 7919 + row),
                                                 (), 0, len(unseen)))]
        seen.add(item)
        queue.append(_task(item, annotator, "golden", "golden", 0.0, config.base_price, False,
                           config, payloads))
        queue[-1]["golden_answer"] = golden[item]
        spent += config.base_price
      queue.extend(regular)  # rounding can leave a regular task past the last slot
      out.extend(queue)
  return out, spent


def _number_queues(tasks) -> None:
  """Numbers each annotator's tasks in order (queue_position)."""
  position = collections.Counter()
  for task in tasks:
    task["queue_position"] = position[task["annotator_id"]]
    position[task["annotator_id"]] += 1


# ----------------------------------------------------------------------------------------
# Writing.


def write_tasks_jsonl(path: str | os.PathLike[str], plan: TaskPlan) -> int:
  """One task per line (`ingest.write_json_lines`: atomic); returns the number of tasks."""
  ingest.write_json_lines(path, plan.tasks)
  return len(plan.tasks)


def write_label_studio_tasks(path: str | os.PathLike[str], plan: TaskPlan) -> int:
  """Label Studio import JSON: what the annotator reads in `data`, the rest in `meta`."""
  shown = ("item_id", "prompt", "response_a", "response_b", "guideline_version")
  out = []
  for task in plan.tasks:
    data = {k: task[k] for k in shown if k in task}
    meta = {k: v for k, v in task.items() if k not in shown or k == "item_id"}
    out.append({"data": data, "meta": meta})
  Path(path).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
  return len(out)


# ----------------------------------------------------------------------------------------
# Agreement and accuracy by guideline version (for report.md).


def guideline_breakdown(enc: Any, item_labels: np.ndarray,
                        truth: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
  """Per guideline version: annotations, annotators, percent agreement, golden accuracy,
  agreement with the aggregated label, and accuracy against known truth.

  percent agreement = over items with >= 2 annotations under that version, the share of
  agreeing pairs among them (Fleiss' observed agreement P_o); golden accuracy = answers
  equal to the golden answer over golden annotations of that version; agreement with the
  label = answers equal to the item's aggregated label; accuracy = aggregated labels equal
  to `truth` (item index -> class) over the items annotated under that version.

  Args:
    enc: `feedback.EncodedAnnotations` (needs `guideline_versions`).
    item_labels: [I] aggregated label per item.
    truth: optional {item index: true class}.

  Returns:
    One dict per version (sorted; "" is listed as "(none)"), or [] when no version is set.
  """
  versions = enc.guideline_versions
  if versions is None or not any(versions):
    return []
  versions = np.asarray([v or "(none)" for v in versions])
  items, annotators, labels = (np.asarray(x) for x in (enc.items, enc.annotators, enc.labels))
  k = enc.num_classes
  rows = []
  for version in sorted(set(versions.tolist())):
    mask = versions == version
    votes = np.zeros((enc.num_items, k))
    np.add.at(votes, (items[mask], labels[mask]), 1.0)
    n = votes.sum(-1)
    multi = n >= 2
    pairs = (n * (n - 1))[multi].sum()
    agreeing = (votes * (votes - 1)).sum(-1)[multi].sum()
    row = {"guideline_version": version, "num_annotations": int(mask.sum()),
           "num_annotators": int(np.unique(annotators[mask]).size),
           "num_items": int((n > 0).sum()),
           "percent_agreement": float(agreeing / pairs) if pairs else float("nan"),
           "agreement_with_label": float(np.mean(labels[mask] == item_labels[items[mask]])),
           "golden_accuracy": float("nan"), "num_golden": 0,
           "accuracy": float("nan"), "num_truth_items": 0}
    if enc.is_golden is not None and enc.golden_labels is not None:
      golden = mask & np.asarray(enc.is_golden, bool) & (np.asarray(enc.golden_labels) >= 0)
      if golden.any():
        row["golden_accuracy"] = float(np.mean(labels[golden] == np.asarray(enc.golden_labels)[golden]))
        row["num_golden"] = int(golden.sum())
    if truth:
      version_items = [i for i in np.unique(items[mask]).tolist() if i in truth]
      if version_items:
        row["accuracy"] = float(np.mean([item_labels[i] == truth[i] for i in version_items]))
        row["num_truth_items"] = len(version_items)
    rows.append(row)
  return rows


# ----------------------------------------------------------------------------------------
# The job behind scripts/plan_tasks.py.


def _annotation_history(config: Any, output_dir: Path):
  """(EncodedAnnotations or None, rejects written) from config.annotations."""
  if not config.annotations:
    return None
  fmt = config.annotations_format
  path = Path(config.annotations)
  if fmt == "label_studio":
    records, rejects = read_label_studio_export(path)
    converted = output_dir / "annotations_from_label_studio.jsonl"
    ingest.write_json_lines(converted, records)
    ingest.write_rejects(output_dir / "label_studio_rejects.jsonl", rejects, layout="line")
    path, fmt = converted, "jsonl"
  report = feedback.read_annotations(path, format=fmt,
                                     rejects_path=output_dir / "annotation_rejects.jsonl",
                                     duplicate_policy="keep_all")
  return report.annotations


def run(config: Any) -> dict[str, Any]:
  """Reads labels, annotator metrics and the annotation history named by a
  `configs/plan_tasks.py` config, plans, and writes tasks.jsonl,
  tasks_label_studio.json, unassigned.jsonl and plan.json to `config.output_dir`.
  Returns the summary written to plan.json."""
  output_dir = Path(config.output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  labels = read_labels_csv(config.labels)
  skill = read_annotators_csv(config.annotators, config.skill_column)
  enc = _annotation_history(config, output_dir)
  labelled_by: dict[str, set[str]] = collections.defaultdict(set)
  golden: dict[str, str] = {}
  golden_seen: dict[str, set[str]] = collections.defaultdict(set)
  payloads: dict[str, dict[str, Any]] = {}
  if enc is not None:
    for n in range(enc.num_annotations):
      item, annotator = enc.item_ids[enc.items[n]], enc.annotator_ids[enc.annotators[n]]
      labelled_by[item].add(annotator)
      if enc.is_golden is not None and enc.is_golden[n] and enc.golden_labels[n] >= 0:
        golden[item] = enc.class_names[enc.golden_labels[n]]
        golden_seen[annotator].add(item)
    if enc.item_payloads is not None:
      payloads = {item: dict(p or {}) for item, p in zip(enc.item_ids, enc.item_payloads)}
  if config.golden:
    golden.update(feedback.read_truth(config.golden))
  new_items: list[str] = []
  if config.new_items:
    known = set(labels["item_ids"])
    for line, row in ingest.read_reference_json_lines(config.new_items):
      if row.get("item_id") is None:
        raise ValueError(f"{config.new_items}:{line}: {ingest.missing_field('item_id')}; expected a JSON "
                         "object with item_id (and prompt, response_a, response_b).")
      item = str(row["item_id"])
      if item not in known:
        new_items.append(item)
        payloads[item] = {k: row[k] for k in ("prompt", "response_a", "response_b") if k in row}
  plan_config = PlanConfig(
      budget=float(config.budget), guideline_version=config.guideline_version,
      confidence_threshold=config.confidence_threshold, min_annotations=config.min_annotations,
      max_annotations=config.max_annotations, initial_annotations=config.initial_annotations,
      base_price=config.base_price, hard_multiplier=config.hard_multiplier,
      hard_threshold=config.hard_threshold, skilled_share=config.skilled_share,
      load_cap=config.load_cap, min_skill=config.min_skill, golden_rate=config.golden_rate,
      golden_active_share=config.golden_active_share, seed=config.seed, round=config.round)
  plan = plan_tasks(plan_config, item_ids=labels["item_ids"], posteriors=labels["posteriors"],
                    num_annotations=labels["num_annotations"], annotator_skill=skill,
                    labelled_by=labelled_by, new_items=new_items, golden=golden,
                    golden_seen=golden_seen, payloads=payloads)
  write_tasks_jsonl(output_dir / "tasks.jsonl", plan)
  write_label_studio_tasks(output_dir / "tasks_label_studio.json", plan)
  ingest.write_json_lines(output_dir / "unassigned.jsonl", plan.unassigned)
  summary = {**plan.summary(), "budget": plan_config.budget,
             "guideline_version": plan_config.guideline_version, "round": plan_config.round,
             "load": plan.load(), "config": dataclasses.asdict(plan_config)}
  (output_dir / "plan.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
  return summary
