"""Record formats: turning one row of a data file into a prompt and its completion(s).

Each parser takes one record (a dict) and returns an example or raises `RecordError`
naming the field and what was expected. The formats:

- `hh_rlhf` (Bai et al. 2022, arXiv 2204.05862): `chosen` and `rejected` are full
  dialogues "\\n\\nHuman: ...\\n\\nAssistant: ..." that share everything up to the final
  assistant turn. Each is split at its last "\\n\\nAssistant:"; the prompt keeps that
  marker, the completion is the text after it (usually starting with a space). A pair
  whose two prompts differ after splitting is rejected (`prompt_mismatch`).
- `explicit`: `prompt`, `chosen`, `rejected` strings; optional `target_prob` (P(chosen
  preferred), default 1), `weight` (default 1), `is_tie` (default false), `annotator`
  (one id), `id`.
- `messages`: chat message lists `[{"role": ..., "content": ...}]`, either
  `{"prompt": [...], "chosen": [...], "rejected": [...]}` (completions start with an
  assistant message) or `{"chosen": [...], "rejected": [...]}` full conversations that
  end with an assistant message and agree on every earlier message. Rendered with
  `MESSAGE_TEMPLATE` (see `render_messages`), which is the HH-RLHF layout, so both sources
  tokenize alike.
- `feedback_labels`: the labels written by `rlhf_jax.feedback`: `prompt`, `response_a`,
  `response_b`, `label` in {a, b, tie}, optional `target_prob` (soft label, P(a
  preferred)), `confidence` (becomes the example weight), `annotator_ids`,
  `annotation_ids` (lists, or strings joined with ";"), `item` (the comparison id),
  `expert_review` (true: the item awaits expert review and is kept out of training).
  Raw annotation records of `rlhf_jax.feedback.io.records` (`item_id`, `annotator_id`,
  `choice`, `annotation_id`) read the same way, one pair per annotation with its
  annotator, which is what Crowd-BT training needs.
  The chosen response is the one the label prefers (a for `a` and `tie`, b for `b`) and
  `target_prob` is re-expressed as P(chosen preferred), so objectives that ignore soft
  labels (DPO) still train in the labelled direction.

Unpaired (KTO; Ethayarajh et al. 2024, arXiv 2402.01306): `prompt`, `completion`,
`label` (true = desirable). SFT: `text` (the whole text is the completion, the prompt is
empty), or `prompt` + `completion`, or `messages` (split before the last assistant
message).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

from rlhf_jax.data.sources import DataError, RecordError, Row
from rlhf_jax.io.ingest import describe_value, missing_field, read_id, read_string, unknown_choice

__all__ = [
    "ASSISTANT_MARKER",
    "MESSAGE_TEMPLATE",
    "PREFERENCE_FORMATS",
    "ROLE_NAMES",
    "PreferenceExample",
    "SequenceExample",
    "UnpairedExample",
    "detect_preference_format",
    "detect_sft_format",
    "parse_explicit",
    "parse_feedback_labels",
    "parse_hh_rlhf",
    "parse_messages",
    "parse_sft_messages",
    "parse_sft_prompt_completion",
    "parse_sft_text",
    "parse_unpaired",
    "render_messages",
    "split_hh_dialogue",
]

ASSISTANT_MARKER = "\n\nAssistant:"
# Chat roles and how they are written; "user" is "Human" as in HH-RLHF.
ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}
# One message; a conversation is the concatenation of its messages.
MESSAGE_TEMPLATE = "\n\n{role_name}: {content}"
PREFERENCE_FORMATS = ("auto", "hh_rlhf", "explicit", "messages", "feedback_labels")
SFT_FORMATS = ("auto", "text", "prompt_completion", "messages")
# Labels of the feedback layer (`rlhf_jax.feedback.types.PAIRWISE_CLASS_NAMES`).
FEEDBACK_LABELS = ("a", "b", "tie")


class PreferenceExample(NamedTuple):
  prompt: str
  chosen: str
  rejected: str
  target_prob: float = 1.0  # P(chosen preferred)
  weight: float = 1.0
  is_tie: bool = False
  annotator_ids: tuple[str, ...] = ()  # every annotator behind the label
  annotation_ids: tuple[str, ...] = ()  # lineage: the annotations behind the label
  example_id: str | None = None  # an id given in the record (`id`, `item`)


class SequenceExample(NamedTuple):
  prompt: str
  completion: str
  example_id: str | None = None


class UnpairedExample(NamedTuple):
  prompt: str
  completion: str
  is_desirable: bool
  example_id: str | None = None


# --- field readers -----------------------------------------------------------------


def _require(record: dict[str, Any], field: str) -> Any:
  value = record.get(field)
  if value is None:
    raise missing_field(field)
  return value


def _string(record: dict[str, Any], field: str) -> str:
  return read_string(record, field, required=True)


def _completion(record: dict[str, Any], field: str, value: str | None = None) -> str:
  value = _string(record, field) if value is None else value
  if not value.strip():
    raise RecordError("empty_completion", field, "completion is empty (or only whitespace)")
  return value


def _number(record: dict[str, Any], field: str, *, low: float, high: float | None) -> float | None:
  """An optional finite number in [low, high]; None when absent."""
  value = record.get(field)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise RecordError("wrong_type", field, f"expected a number, got {describe_value(value)}")
  value = float(value)
  if not math.isfinite(value) or value < low or (high is not None and value > high):
    upper = "inf)" if high is None else f"{high}]"
    raise RecordError("bad_value", field, f"expected a number in [{low}, {upper}, got {value}")
  return value


def _boolean(record: dict[str, Any], field: str, *, required: bool) -> bool | None:
  value = record.get(field)
  if value is None:
    if required:
      raise missing_field(field)
    return None
  if isinstance(value, bool):
    return value
  if isinstance(value, numbers.Integral) and value in (0, 1):
    return bool(value)
  raise RecordError("wrong_type", field, f"expected true/false (or 0/1), got {describe_value(value)}")


def _ids(record: dict[str, Any], field: str) -> tuple[str, ...]:
  """An optional list of ids, or a string of ids joined with ';'."""
  value = record.get(field)
  if value is None:
    return ()
  if isinstance(value, str):
    return tuple(part.strip() for part in value.split(";") if part.strip())
  if isinstance(value, (list, tuple)):
    out = []
    for item in value:
      if isinstance(item, bool) or not isinstance(item, (str, numbers.Integral)):
        raise RecordError(
            "wrong_type", field, f"expected a list of ids, got an element {describe_value(item)}")
      out.append(str(item))
    return tuple(out)
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    return (str(value),)
  raise RecordError(
      "wrong_type", field, f"expected a list of ids or a ';'-joined string, got {describe_value(value)}")


def _optional_id(record: dict[str, Any], *fields: str) -> str | None:
  """The first of `fields` that holds an id (`rlhf_jax.io.ingest.read_id`), else None."""
  for field in fields:
    value = read_id(record, field)
    if value is not None:
      return value
  return None


def _distinct(prompt: str, chosen: str, rejected: str) -> PreferenceExample:
  if chosen == rejected:
    raise RecordError(
        "identical_completions", "rejected",
        "chosen and rejected completions are identical; the pair carries no preference")
  return PreferenceExample(prompt, chosen, rejected)


# --- HH-RLHF -----------------------------------------------------------------------


def split_hh_dialogue(dialogue: str, field: str = "dialogue") -> tuple[str, str]:
  """Splits an HH-RLHF dialogue at its last "\\n\\nAssistant:" into (prompt, completion).

  The prompt keeps the marker, so it ends with "\\n\\nAssistant:"; the completion is the
  rest (usually starting with a space). `field` names the field in errors.
  """
  cut = dialogue.rfind(ASSISTANT_MARKER)
  if cut < 0:
    raise RecordError("no_assistant_turn", field, f"no {ASSISTANT_MARKER!r} turn to split at")
  cut += len(ASSISTANT_MARKER)
  return dialogue[:cut], dialogue[cut:]


def parse_hh_rlhf(record: dict[str, Any]) -> PreferenceExample:
  """HH-RLHF pair: split both dialogues at the last assistant turn; prompts must agree."""
  chosen_prompt, chosen = split_hh_dialogue(_string(record, "chosen"), "chosen")
  rejected_prompt, rejected = split_hh_dialogue(_string(record, "rejected"), "rejected")
  if chosen_prompt != rejected_prompt:
    common = 0
    for a, b in zip(chosen_prompt, rejected_prompt):
      if a != b:
        break
      common += 1
    raise RecordError(
        "prompt_mismatch", "rejected",
        f"chosen and rejected differ before their last {ASSISTANT_MARKER!r} turn "
        f"(first difference at character {common}); the pair does not share a prompt")
  _completion(record, "chosen", chosen)
  _completion(record, "rejected", rejected)
  return _distinct(chosen_prompt, chosen, rejected)


# --- explicit ----------------------------------------------------------------------


def parse_explicit(record: dict[str, Any]) -> PreferenceExample:
  """`prompt`, `chosen`, `rejected` strings plus optional label fields."""
  prompt = _string(record, "prompt")
  base = _distinct(prompt, _completion(record, "chosen"), _completion(record, "rejected"))
  target_prob = _number(record, "target_prob", low=0.0, high=1.0)
  weight = _number(record, "weight", low=0.0, high=None)
  is_tie = _boolean(record, "is_tie", required=False)
  annotator = _optional_id(record, "annotator", "annotator_id")
  return base._replace(
      target_prob=1.0 if target_prob is None else target_prob,
      weight=1.0 if weight is None else weight,
      is_tie=bool(is_tie),
      annotator_ids=() if annotator is None else (annotator,),
      example_id=_optional_id(record, "id"))


# --- chat messages -----------------------------------------------------------------


def _messages(record: dict[str, Any], field: str) -> list[tuple[str, str]]:
  value = _require(record, field)
  if not isinstance(value, (list, tuple)):
    raise RecordError("wrong_type", field, f"expected a list of messages, got {describe_value(value)}")
  out = []
  for i, message in enumerate(value):
    if not isinstance(message, dict):
      raise RecordError(
          "wrong_type", field, f"message {i}: expected an object, got {describe_value(message)}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLE_NAMES:
      raise RecordError(
          "bad_role", field, f"message {i}: role {role!r} is not one of {sorted(ROLE_NAMES)}")
    if not isinstance(content, str):
      raise RecordError(
          "wrong_type", field, f"message {i}: content must be a string, got {describe_value(content)}")
    out.append((role, content))
  return out


def render_messages(messages: Sequence[tuple[str, str]] | Sequence[dict[str, str]]) -> str:
  """Renders messages as "\\n\\n{Role}: {content}" each (the HH-RLHF layout).

  Roles: system -> "System", user -> "Human", assistant -> "Assistant". Accepts
  (role, content) pairs or {"role", "content"} dicts.
  """
  parts = []
  for message in messages:
    role, content = (message["role"], message["content"]) if isinstance(message, dict) else message
    parts.append(MESSAGE_TEMPLATE.format(role_name=ROLE_NAMES[role], content=content))
  return "".join(parts)


def _prompt_and_completion(prompt: list[tuple[str, str]], completion: list[tuple[str, str]],
                           field: str) -> tuple[str, str]:
  """Renders prompt + completion messages; the completion starts at the assistant turn."""
  if not completion:
    raise RecordError("empty_completion", field, "completion has no messages")
  if completion[0][0] != "assistant":
    raise RecordError(
        "bad_role", field,
        f"the completion must start with an assistant message, got {completion[0][0]!r}")
  prompt_text = render_messages(prompt) + ASSISTANT_MARKER
  full = render_messages(prompt + completion)
  return prompt_text, full[len(prompt_text):]


def parse_messages(record: dict[str, Any]) -> PreferenceExample:
  """Chat preference pair, with a separate `prompt` list or as full conversations."""
  chosen = _messages(record, "chosen")
  rejected = _messages(record, "rejected")
  if record.get("prompt") is not None:
    prompt = _messages(record, "prompt")
    chosen_prompt = rejected_prompt = prompt
  else:
    for field, conversation in (("chosen", chosen), ("rejected", rejected)):
      if not conversation or conversation[-1][0] != "assistant":
        raise RecordError(
            "bad_role", field, "a full conversation must end with an assistant message")
    chosen_prompt, chosen = chosen[:-1], chosen[-1:]
    rejected_prompt, rejected = rejected[:-1], rejected[-1:]
    if chosen_prompt != rejected_prompt:
      raise RecordError(
          "prompt_mismatch", "rejected",
          "chosen and rejected conversations differ before their last assistant message")
  prompt_text, chosen_text = _prompt_and_completion(chosen_prompt, chosen, "chosen")
  _, rejected_text = _prompt_and_completion(rejected_prompt, rejected, "rejected")
  _completion(record, "chosen", chosen_text)
  _completion(record, "rejected", rejected_text)
  return _distinct(prompt_text, chosen_text, rejected_text)._replace(
      example_id=_optional_id(record, "id"))


# --- feedback labels ---------------------------------------------------------------


def parse_feedback_labels(record: dict[str, Any]) -> PreferenceExample:
  """A label of the feedback layer, oriented so that `chosen` is the preferred side."""
  if _boolean(record, "expert_review", required=False):
    raise RecordError(
        "expert_review", "expert_review",
        "the item awaits expert review and stays out of training until resolved")
  prompt = _string(record, "prompt")
  response_a = _completion(record, "response_a")
  response_b = _completion(record, "response_b")
  label_field = "label" if record.get("label") is not None or "choice" not in record else "choice"
  label = _require(record, label_field)
  if not isinstance(label, str) or label.strip().lower() not in FEEDBACK_LABELS:
    raise unknown_choice(label_field, label, FEEDBACK_LABELS)
  label = label.strip().lower()
  prob_a = _number(record, "target_prob", low=0.0, high=1.0)
  confidence = _number(record, "confidence", low=0.0, high=1.0)
  if label == "a" and prob_a is not None and prob_a < 0.5:
    raise RecordError("contradiction", "target_prob",
                      f"label 'a' but target_prob P(a preferred) = {prob_a} < 0.5")
  if label == "b" and prob_a is not None and prob_a > 0.5:
    raise RecordError("contradiction", "target_prob",
                      f"label 'b' but target_prob P(a preferred) = {prob_a} > 0.5")
  if label == "b":
    chosen, rejected = response_b, response_a
    target_prob = 1.0 if prob_a is None else 1.0 - prob_a
  else:
    chosen, rejected = response_a, response_b
    target_prob = prob_a if prob_a is not None else (1.0 if label == "a" else 0.5)
  annotators = (_ids(record, "annotator_ids") or _ids(record, "annotator_id")
                or _ids(record, "annotator"))
  return _distinct(prompt, chosen, rejected)._replace(
      target_prob=target_prob,
      weight=1.0 if confidence is None else confidence,
      is_tie=label == "tie",
      annotator_ids=annotators,
      annotation_ids=_ids(record, "annotation_ids") or _ids(record, "annotation_id"),
      example_id=_optional_id(record, "item", "item_id", "id"))


_PREFERENCE_PARSERS = {
    "hh_rlhf": parse_hh_rlhf,
    "explicit": parse_explicit,
    "messages": parse_messages,
    "feedback_labels": parse_feedback_labels,
}


def preference_parser(format_name: str):
  if format_name not in _PREFERENCE_PARSERS:
    raise ValueError(
        f"unknown preference format {format_name!r}; expected one of {list(PREFERENCE_FORMATS)}")
  return _PREFERENCE_PARSERS[format_name]


def _first_record(rows: Sequence[Row]) -> dict[str, Any] | None:
  return next((row.record for row in rows if row.record is not None), None)


def detect_preference_format(rows: Sequence[Row], path: str = "") -> str:
  """Picks the preference format from the first readable record's fields."""
  record = _first_record(rows)
  if record is None:
    raise DataError(f"{path}: no readable record to detect the format from.")
  keys = {k for k, v in record.items() if v is not None}
  if {"response_a", "response_b"} <= keys and keys & {"label", "choice"}:
    return "feedback_labels"
  if {"chosen", "rejected"} <= keys:
    is_list = any(
        isinstance(record.get(k), (list, tuple)) for k in ("prompt", "chosen", "rejected"))
    if is_list:
      return "messages"
    return "explicit" if "prompt" in keys else "hh_rlhf"
  raise DataError(
      f"{path}: cannot detect the preference format from the fields {sorted(keys)}; expected "
      "chosen+rejected (hh_rlhf), prompt+chosen+rejected (explicit or messages), or "
      "prompt+response_a+response_b+label (feedback_labels). Pass format=... explicitly.")


# --- SFT and unpaired --------------------------------------------------------------


def parse_sft_text(record: dict[str, Any]) -> SequenceExample:
  return SequenceExample("", _completion(record, "text"), _optional_id(record, "id"))


def parse_sft_prompt_completion(record: dict[str, Any]) -> SequenceExample:
  return SequenceExample(_string(record, "prompt"), _completion(record, "completion"),
                         _optional_id(record, "id"))


def parse_sft_messages(record: dict[str, Any]) -> SequenceExample:
  """A conversation; the completion is the last assistant message (and anything after)."""
  messages = _messages(record, "messages")
  last = max((i for i, (role, _) in enumerate(messages) if role == "assistant"), default=-1)
  if last < 0:
    raise RecordError("no_assistant_turn", "messages", "the conversation has no assistant message")
  prompt, completion = _prompt_and_completion(messages[:last], messages[last:], "messages")
  return SequenceExample(
      prompt, _completion(record, "messages", completion), _optional_id(record, "id"))


_SFT_PARSERS = {
    "text": parse_sft_text,
    "prompt_completion": parse_sft_prompt_completion,
    "messages": parse_sft_messages,
}


def sft_parser(format_name: str):
  if format_name not in _SFT_PARSERS:
    raise ValueError(f"unknown SFT format {format_name!r}; expected one of {list(SFT_FORMATS)}")
  return _SFT_PARSERS[format_name]


def detect_sft_format(rows: Sequence[Row], path: str = "") -> str:
  record = _first_record(rows)
  if record is None:
    raise DataError(f"{path}: no readable record to detect the format from.")
  keys = {k for k, v in record.items() if v is not None}
  if "messages" in keys:
    return "messages"
  if {"prompt", "completion"} <= keys:
    return "prompt_completion"
  if "text" in keys:
    return "text"
  raise DataError(
      f"{path}: cannot detect the SFT format from the fields {sorted(keys)}; expected text, "
      "prompt+completion, or messages.")


def parse_unpaired(record: dict[str, Any]) -> UnpairedExample:
  """KTO example: `prompt`, `completion`, `label` (true = desirable)."""
  return UnpairedExample(
      _string(record, "prompt"), _completion(record, "completion"),
      bool(_boolean(record, "label", required=True)), _optional_id(record, "id"))
