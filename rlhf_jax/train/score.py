"""Scoring texts with a trained reward model: load a run once, then score any number of completions.

    scorer = score.load_reward_model("runs/rm")         # config.json, tokenizer, latest checkpoint
    rewards = scorer(prompts, completions)              # float32 [N], the mean over heads and members
    per_head = scorer.per_head(prompts, completions)    # float32 [N, K]
    pairs = scorer.score_pairs(data.load_preference_data("test.jsonl"))
    pairs.metrics["accuracy"]

What the model sees is what it was trained on: the run's own tokenizer (checked against
the fingerprint `run.json` recorded), its `data.max_length` and `data.max_prompt_length`,
and the trainer's tokenization (`rlhf_jax.data.tokenize_sft` for single completions,
`tokenize_pairs` for pairs: [bos] prompt completion [eos], the prompt cut from the left,
the completion from the right). The reward is read at the last real token, as in training.
Runs trained with `data.share_prompt` or `data.padding_free` are scored in the plain
one-sequence-per-row layout, which gives the same rewards up to float rounding (those
layouts are tested against it).

An ensemble (`model.reward_heads` heads and/or `model.ensemble_models` members) has
K = heads x members outputs: `__call__` returns their mean (what the trainer's metrics
use), `per_head` every one of them.

`score_file` (behind `scripts/score.py`) reads a data file of (prompt, completion)
records or of preference pairs with the data layer's loaders and formats, writes one JSON
line of scores per usable record (with its line number) and the unusable ones to a
rejects file with the reason (read = scored + rejected), and returns a summary with the
pairwise accuracy when the records are pairs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from rlhf_jax import data as data_lib
from rlhf_jax.data import formats as formats_lib
from rlhf_jax.data import sources as sources_lib
from rlhf_jax.io import ingest
from rlhf_jax.train import components as components_lib
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import evaluate as evaluate_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import networks
from rlhf_jax.train import pretrained
from rlhf_jax.train import reference as reference_lib
from rlhf_jax.train import state as state_lib

__all__ = [
    "KINDS",
    "CompletionScores",
    "PairScores",
    "RewardScorer",
    "ScoreError",
    "abstract_params",
    "fresh_file_paths",
    "latest_checkpoint",
    "load_reward_model",
    "read_run_config",
    "restore_params",
    "run_tokenizer",
    "score_file",
    "write_file_job",
]

_log = logging.getLogger(__name__)

# What an input file holds: "auto" decides from its first readable record.
KINDS = ("auto", "pairs", "completions")


class ScoreError(ValueError):
  """A run directory or an input that cannot be scored (the message says why and what to do)."""


def latest_checkpoint(workdir: str | os.PathLike[str]) -> tuple[int, Path]:
  """(step, `<workdir>/checkpoints/<step>`) of the newest complete checkpoint of a run.

  Orbax writes a checkpoint into a temporary folder and renames it to its step when it
  is complete, so a folder named by a number holds a whole checkpoint.
  """
  directory = Path(workdir) / "checkpoints"
  steps = sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit() and (p / "state").is_dir()) \
      if directory.is_dir() else []
  if not steps:
    raise ScoreError(f"{workdir}: no checkpoint in {directory} (a run saves one every checkpoint.every steps "
                     "and at its end); train the model first, or give its run directory.")
  return steps[-1], directory / str(steps[-1])


def _read_json(path: Path, error: type[Exception] = ScoreError) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as reason:
    raise error(f"{path}: cannot read it as JSON ({reason}).") from None


def read_run_config(workdir: Path, error: type[Exception]) -> dict[str, Any]:
  """The plain values of the config.json of a run of scripts/train.py in `workdir`.

  Raises `error` (the caller's: ScoreError, SampleError, ExportError) naming the file
  when it is missing, is not JSON or does not hold a JSON object.
  """
  path = workdir / "config.json"
  if not path.is_file():
    raise error(f"{workdir}: no config.json; expected the --workdir of a run of scripts/train.py.")
  config = _read_json(path, error)
  if not isinstance(config, dict):
    raise error(f"{path}: does not hold a config (a JSON object).")
  return config


def _run_config(workdir: Path) -> dict[str, Any]:
  """The plain values of a reward-model run's stored config.json."""
  if not workdir.is_dir():
    raise ScoreError(f"{workdir}: no such run directory (expected the --workdir of a reward-model run of "
                     "scripts/train.py).")
  config = read_run_config(workdir, ScoreError)
  if config.get("objective") != "reward_model":
    raise ScoreError(f"{workdir / 'config.json'}: the run trained objective {config.get('objective')!r}; scoring "
                     "needs a reward model (configs/reward_model.py).")
  if not config["data"]["train"]:
    raise ScoreError(f"{workdir}: the run trained on the synthetic toy data (token ids, no tokenizer), so it "
                     "cannot score text; train the reward model on a data file (--config.data.train=...).")
  return config


def run_tokenizer(workdir: Path, tokenizer_path: str) -> data_lib.Tokenizer:
  """The tokenizer the run in `workdir` trained with (`tokenizer_path`, its
  `data.tokenizer`, or "" for the one it trained into its workdir, or "hf:..." for a
  pretrained checkpoint's own: `tokenizer_source`), checked against the fingerprint in
  run.json."""
  if pretrained.is_pretrained(tokenizer_path):
    path = tokenizer_path
    tokenizer = pretrained.tokenizer(tokenizer_path)
  else:
    path = Path(tokenizer_path) if tokenizer_path else workdir / "tokenizer" / "spm.model"
    if not path.is_file():
      raise ScoreError(f"{workdir}: the run's tokenizer {path} is missing (data.tokenizer in config.json, or "
                       "the tokenizer/spm.model the run trained into its workdir).")
    tokenizer = data_lib.Tokenizer.load(path)
  run_path = workdir / "run.json"
  recorded = None
  if run_path.is_file():
    run = _read_json(run_path)
    data = run.get("data") if isinstance(run, dict) else None
    tokenizer_record = data.get("tokenizer") if isinstance(data, dict) else None
    recorded = tokenizer_record.get("fingerprint") if isinstance(tokenizer_record, dict) else None
  if recorded is not None and recorded != tokenizer.fingerprint:
    raise ScoreError(f"{path}: this tokenizer (sha256 {tokenizer.fingerprint[:12]}...) is not the one the run "
                     f"trained with (run.json records {recorded[:12]}...); the model would see other token ids.")
  return tokenizer


def tokenizer_source(config: Mapping[str, Any]) -> str:
  """What `run_tokenizer` reads for a run's config: its `data.tokenizer`, else its
  pretrained `model.init_from` ("hf:..."), else "" (the one trained into the workdir)."""
  if config["data"].get("tokenizer"):
    return str(config["data"]["tokenizer"])
  init_from = config["model"].get("init_from", "")
  return init_from if pretrained.is_pretrained(init_from) else ""


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


class _NoItemMetadataWarning(logging.Filter):
  """Drops orbax's warning that an item folder has no `_CHECKPOINT_METADATA`: reading
  one item of a `CheckpointManager` step directly is what this module does, and the
  step's metadata sits one folder up."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Metadata file does not exist")


def abstract_params(model: nn.Module, mesh: Mesh) -> Any:
  """Shapes, dtypes and shardings of `model`'s parameters on `mesh`, none allocated: the
  target `restore_params` places a checkpoint's parameters into."""
  rules = components_lib.axis_rules(mesh)
  init = state_lib.init_params_fn(model, batch_size=mesh_lib.data_parallel_size(mesh),
                                  length=min(8, model.config.max_len))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
  shardings = mesh_lib.param_shardings(boxed, mesh, rules)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      mesh_lib.unbox_values(boxed), shardings)


def restore_params(step_dir: Path, abstract: Any) -> Any:
  """The model parameters of a checkpoint (orbax partial restore: no optimizer state is
  read), each shard placed as `abstract`'s shardings say."""
  quiet = _NoItemMetadataWarning()
  logging.getLogger("absl").addFilter(quiet)
  try:
    # Orbax finds no item metadata under a relative path (`--workdir=runs/x`): absolute.
    return _restore_item_params(Path(step_dir).absolute(), abstract)
  finally:
    logging.getLogger("absl").removeFilter(quiet)


def _restore_item_params(step_dir: Path, abstract: Any) -> Any:
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(step_dir / "state").item_metadata["params"]
  run_dir = step_dir.parent.parent
  if (run_dir / "config.json").is_file() and pretrained.uses_lora(_read_json(run_dir / "config.json")):
    # A LoRA run's checkpoint holds its adapters and heads; the base is its model.init_from.
    trainable = pretrained.checkpoint_params(abstract)
    restored = _restore_item_params_exact(checkpointer, step_dir, stored, trainable)
    return pretrained.fill_base(run_dir, restored, abstract)
  return _restore_item_params_exact(checkpointer, step_dir, stored, abstract)


def _restore_item_params_exact(checkpointer: Any, step_dir: Path, stored: Any, abstract: Any) -> Any:
  stored = {k: v for k, v in stored.items() if k in abstract}
  if _shapes(stored) != _shapes(abstract):
    differ = sorted(set(_shapes(stored).items()) ^ set(_shapes(abstract).items()))[:6]
    raise ScoreError(f"{step_dir}: the checkpoint's parameters do not fit the model of config.json (first "
                     f"differences, name and shape: {differ}); was config.json rewritten by another run?")
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
  return checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
      item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True))["params"]


@dataclasses.dataclass(frozen=True)
class CompletionScores:
  """Rewards of (prompt, completion) texts.

  Attributes:
    rewards: float32 [N, K], one column per head / ensemble member; NaN rows for the
      completions listed in `rejected`.
    rejected: {index: reason} of completions that could not be scored (nothing of the
      completion is left after truncation).
    truncated: how many prompts and completions were cut to the run's lengths.
  """

  rewards: np.ndarray
  rejected: dict[int, str]
  truncated: dict[str, int]

  @property
  def mean(self) -> np.ndarray:
    """float32 [N]: the mean over the K outputs (the reward the trainer reports)."""
    return np.mean(self.rewards, axis=-1)


@dataclasses.dataclass(frozen=True)
class PairScores:
  """Rewards of preference pairs, tokenized as the trainer tokenizes pairs.

  Attributes:
    chosen, rejected: float32 [M, K] rewards of the pairs kept.
    kept: int [M], the rows of the scored `PreferenceData` they belong to.
    rejects: {row: (field, reason)} of pairs that could not be scored (the field is the
      completion with nothing left after truncation, "chosen" or "rejected").
    truncated: how many prompts and completions were cut to the run's lengths.
    metrics: `evaluate.preference_metrics` of the mean rewards' margins against the
      pairs' labels ("accuracy", "ece", "pairs", "ties"), plus "margin" (mean).
  """

  chosen: np.ndarray
  rejected: np.ndarray
  kept: np.ndarray
  rejects: dict[int, tuple[str, str]]
  truncated: dict[str, int]
  metrics: dict[str, float]

  @property
  def margin(self) -> np.ndarray:
    return np.mean(self.chosen, axis=-1) - np.mean(self.rejected, axis=-1)


class RewardScorer:
  """A reward model loaded once: `scorer(prompts, completions) -> float32 [N]`.

  Build with `load_reward_model`. Attributes: `workdir`, `step` (the checkpoint's),
  `tokenizer`, `max_length`, `max_prompt_length`, `num_outputs` (K), `batch_size`,
  `ece_bins`.
  """

  def __init__(self, *, workdir: Path, step: int, tokenizer: data_lib.Tokenizer, max_length: int,
               max_prompt_length: int, num_outputs: int, batch_size: int, ece_bins: int,
               params: Any, apply: Callable[[Any, dict[str, jax.Array]], jax.Array], mesh: Mesh):
    self.workdir = workdir
    self.step = step
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.max_prompt_length = max_prompt_length
    self.num_outputs = num_outputs
    self.batch_size = batch_size
    self.ece_bins = ece_bins
    self._params = params
    self._apply = apply
    self._mesh = mesh

  def __repr__(self) -> str:
    return (f"RewardScorer({self.workdir}, step {self.step}, {self.num_outputs} output(s), max_length "
            f"{self.max_length}, max_prompt_length {self.max_prompt_length})")

  def score_tokens(self, tokens: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """float32 [N, K] rewards of token rows laid out as the data layer lays them out
    ([bos] prompt completion [eos], right-padded, `attention_mask` True on real tokens)."""
    arrays = {"tokens": np.asarray(tokens, np.int32), "attention_mask": np.asarray(attention_mask, bool)}
    if arrays["tokens"].ndim != 2 or arrays["tokens"].shape != arrays["attention_mask"].shape:
      raise ValueError(f"tokens {arrays['tokens'].shape} and attention_mask {arrays['attention_mask'].shape} "
                       "must be [N, T] arrays of one shape.")
    if len(arrays["tokens"]) == 0:
      return np.zeros((0, self.num_outputs), np.float32)
    parts = []
    for batch, valid in reference_lib.padded_batches(arrays, ["tokens", "attention_mask"], self.batch_size):
      rewards = self._apply(self._params, mesh_lib.shard_batch(batch, self._mesh))
      parts.append(np.asarray(jax.device_get(rewards), np.float32)[:valid])
    return np.concatenate(parts)

  def score(self, prompts: Sequence[str], completions: Sequence[str]) -> CompletionScores:
    """Rewards of every (prompt, completion), with the ones that cannot be scored listed."""
    if len(prompts) != len(completions):
      raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
    if not prompts:
      return CompletionScores(np.zeros((0, self.num_outputs), np.float32), {}, {})
    texts = data_lib.SFTData.from_lists(list(prompts), list(completions))
    try:
      tokenized = data_lib.tokenize_sft(texts, self.tokenizer, max_length=self.max_length,
                                        max_prompt_length=self.max_prompt_length)
    except data_lib.DataError:  # no completion survives: every one is rejected below
      tokenized = None
    rewards = np.full((len(prompts), self.num_outputs), np.nan, np.float32)
    if tokenized is None:
      reason = (f"completion is empty after truncation (max_length {self.max_length}, max_prompt_length "
                f"{self.max_prompt_length})")
      return CompletionScores(rewards, {i: reason for i in range(len(prompts))}, {})
    rewards[tokenized["example_index"]] = self.score_tokens(tokenized["tokens"], tokenized["attention_mask"])
    rejected = {int(r["example_index"]): str(r["reason"]) for r in tokenized.report.rejects}
    return CompletionScores(rewards, rejected, dict(tokenized.report.truncated))

  def per_head(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """float32 [N, K]: every head's (and ensemble member's) reward. Raises `ScoreError`
    when a completion cannot be scored (see `score` to get the others anyway)."""
    scores = self.score(prompts, completions)
    if scores.rejected:
      listed = "; ".join(f"completion {i}: {reason}" for i, reason in sorted(scores.rejected.items())[:3])
      raise ScoreError(f"{len(scores.rejected)} of {len(prompts)} completions cannot be scored ({listed}).")
    return scores.rewards

  def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """float32 [N]: the reward of each completion, the mean over the K outputs."""
    return np.mean(self.per_head(prompts, completions), axis=-1)

  def score_pairs(self, pairs: data_lib.PreferenceData) -> PairScores:
    """Rewards of both completions of every pair (tokenized by `tokenize_pairs`, as the
    trainer does) and the pairwise accuracy against the pairs' labels."""
    try:
      tokenized = data_lib.tokenize_pairs(pairs, self.tokenizer, max_length=self.max_length,
                                          max_prompt_length=self.max_prompt_length)
    except data_lib.DataError as error:
      where = pairs.report.path if pairs.report is not None else "the pairs"
      raise data_lib.DataError(f"{where}: {error}") from None
    chosen = self.score_tokens(tokenized["chosen_tokens"], tokenized["chosen_attention_mask"])
    rejected = self.score_tokens(tokenized["rejected_tokens"], tokenized["rejected_attention_mask"])
    margin = np.mean(chosen, axis=-1) - np.mean(rejected, axis=-1)
    metrics = evaluate_lib.preference_metrics(margin, tokenized["target_prob"], tokenized["is_tie"],
                                              num_bins=self.ece_bins)
    metrics["margin"] = float(np.mean(margin))
    return PairScores(
        chosen=chosen, rejected=rejected, kept=np.asarray(tokenized["example_index"], np.int64),
        rejects={int(r["example_index"]): (str(r["field"]), str(r["reason"])) for r in tokenized.report.rejects},
        truncated=dict(tokenized.report.truncated), metrics=metrics)


def load_reward_model(workdir: str | os.PathLike[str], *, mesh: Mesh | None = None,
                      batch_size: int | None = None) -> RewardScorer:
  """Loads a reward-model run of `scripts/train.py`: config.json, tokenizer, newest checkpoint.

  Args:
    workdir: the run directory (trained on a data file: toy runs have no tokenizer).
    mesh: a device mesh with the axes ("data", "fsdp", "tensor"); default: every device
      on "data" (parameters replicated, batches split).
    batch_size: rows per forward pass (padded); default the run's `eval.batch_size`,
      rounded up to a multiple of the data-parallel size.

  Raises:
    ScoreError: the directory is not a finished-enough reward-model run (no config,
      another objective, toy data, no checkpoint, a tokenizer or checkpoint that does not
      match the config), with what to do.
  """
  workdir = Path(workdir)
  config = _run_config(workdir)
  data, model_settings = config["data"], config_lib.model_settings(config)
  tokenizer = run_tokenizer(workdir, tokenizer_source(config))
  step, step_dir = latest_checkpoint(workdir)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  dp = mesh_lib.data_parallel_size(mesh)
  model = networks.build_model(model_settings, tokenizer.vocab_size, "reward")
  max_length = int(data["max_length"])
  if max_length > model.config.max_len:
    raise ScoreError(f"{workdir}: data.max_length {max_length} exceeds the model's max_len {model.config.max_len}.")
  abstract = abstract_params(model, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  params = restore_params(step_dir, abstract)
  _log.info("reward model of %s, checkpoint step %d", workdir, step)

  def apply(params, batch):
    return networks.apply_reward(model, params, batch["tokens"], batch["attention_mask"])

  jitted = jax.jit(apply, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=mesh_lib.replicated(mesh),
                   compiler_options=components_lib.compiler_options(bool(config["train"].get("fast_compile"))))
  size = int(batch_size or config["eval"]["batch_size"])
  if size < 1:
    raise ScoreError(f"batch size must be a positive int, got {size}.")
  size = math.ceil(size / dp) * dp
  return RewardScorer(
      workdir=workdir, step=step, tokenizer=tokenizer, max_length=max_length,
      max_prompt_length=int(data["max_prompt_length"]),
      num_outputs=int(model_settings.reward_heads) * int(model_settings.ensemble_models), batch_size=size,
      ece_bins=int(config["eval"]["ece_bins"]), params=params,
      apply=components_lib.MeshFunction(jitted, mesh, components_lib.axis_rules(mesh)), mesh=mesh)


# --- files ----------------------------------------------------------------------------


def _detector(kind: str, format_name: str, path: str, chosen: dict[str, str]):
  """A `sources.load_records` format detector that also decides pairs vs completions."""

  def detect(rows):
    resolved = kind
    if resolved == "auto":
      try:
        formats_lib.detect_preference_format(rows, path)
        resolved = "pairs"
      except data_lib.DataError:
        try:
          formats_lib.detect_sft_format(rows, path)
          resolved = "completions"
        except data_lib.DataError:
          record = next((r.record for r in rows if r.record is not None), None) or {}
          raise data_lib.DataError(
              f"{path}: cannot tell what to score from the fields {sorted(record)}; expected preference "
              "pairs (chosen+rejected, prompt+chosen+rejected, or prompt+response_a+response_b+label) or "
              "completions (prompt+completion, text, or messages).") from None
    chosen["kind"] = resolved
    if resolved == "pairs":
      name = format_name if format_name != "auto" else formats_lib.detect_preference_format(rows, path)
      return name, formats_lib.preference_parser(name)
    name = format_name if format_name != "auto" else formats_lib.detect_sft_format(rows, path)
    return name, formats_lib.sft_parser(name)

  return detect


def fresh_file_paths(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
                     rejects_path: str | os.PathLike[str], error: type[Exception]) -> tuple[Path, Path, Path]:
  """The three paths of a file job (score, sample): distinct, with older outputs removed.

  Files of an earlier run would read as this one's if this one fails, so both outputs
  are deleted up front; `error` is raised when two paths name the same file.
  """
  input_path, output_path, rejects_path = Path(input_path), Path(output_path), Path(rejects_path)
  if len({input_path.absolute(), output_path.absolute(), rejects_path.absolute()}) < 3:
    raise error(f"input {input_path}, output {output_path} and rejects {rejects_path} must be three "
                "different files.")
  for path in (output_path, rejects_path):
    if path.exists():
      path.unlink()
  return input_path, output_path, rejects_path


def write_file_job(input_path: Path, output_path: Path, rejects_path: Path, records: list[dict[str, Any]], *,
                   read: int, done: int, rejected: int, done_name: str) -> dict[str, Any]:
  """Writes a file job's output records; checks every read record is done or rejected.

  Returns the summary fields every file job reports first: input, output, rejects (None
  without rejects) and the first reject, described (`sources.describe_first_reject`).
  """
  sources_lib.write_json_lines(output_path, records)
  if read != done + rejected:
    raise AssertionError(f"read {read} != {done_name} {done} + rejected {rejected}")
  return {
      "input": os.fspath(input_path), "output": os.fspath(output_path),
      "rejects": os.fspath(rejects_path) if rejected else None,
      "first_reject": sources_lib.describe_first_reject(rejects_path) if rejected else None,
  }


def _finite(value: float) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def score_file(
    scorer: RewardScorer,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    rejects_path: str | os.PathLike[str],
    kind: str = "auto",
    format: str = "auto",  # pylint: disable=redefined-builtin
) -> dict[str, Any]:
  """Scores every usable record of a data file into a JSON Lines file of scores.

  Args:
    scorer: from `load_reward_model`.
    input_path: a local JSON Lines, Parquet or CSV file (`rlhf_jax.data.sources`).
    output_path: the scores, one JSON object per scored record, in file order (an older
      file there is removed first):
      {"line": n (or "row" for Parquet/CSV), "id", "score"} for completions,
      {"line", "id", "chosen_score", "rejected_score", "margin", "target_prob",
      "is_tie", "correct"} for pairs ("correct" null for ties); with K > 1 outputs also
      the per-head lists "head_scores" (or "chosen_head_scores", "rejected_head_scores").
    rejects_path: where unusable records go (JSON Lines: file, line, field, code,
      reason, record), both those the format rejects and those with nothing of a
      completion left after truncation. An older file there is removed first.
    kind: "pairs", "completions" or "auto" (from the first readable record's fields).
    format: "auto" or a format of that kind (`rlhf_jax.data.PREFERENCE_FORMATS` or
      `SFT_FORMATS`).

  Returns:
    A summary: input, output, rejects, kind, format, read, scored, rejected (read =
    scored + rejected), truncated counts, the run directory and checkpoint step, the
    mean score, and for pairs accuracy, ece, decided pairs, ties and mean margin.

  Raises:
    DataError: the file is unreadable or holds no usable record, or no record survives
      truncation (naming file, line, field and reason).
    ScoreError: bad arguments (unknown kind or format, output = input).
  """
  if kind not in KINDS:
    raise ScoreError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}.")
  valid_formats = {"auto": set(data_lib.PREFERENCE_FORMATS) | set(data_lib.SFT_FORMATS),
                   "pairs": set(data_lib.PREFERENCE_FORMATS), "completions": set(data_lib.SFT_FORMATS)}[kind]
  if format not in valid_formats:
    raise ScoreError(f"unknown format {format!r} for kind {kind!r}; expected one of {', '.join(sorted(valid_formats))}.")
  input_path, output_path, rejects_path = fresh_file_paths(input_path, output_path, rejects_path, ScoreError)
  chosen: dict[str, str] = {}
  accepted, report = sources_lib.load_records(
      input_path, None, format_name=format, detect=_detector(kind, format, os.fspath(input_path), chosen),
      rejects_path=rejects_path)
  kind = chosen["kind"]
  rows = [row for row, _ in accepted]
  examples = [example for _, example in accepted]
  ids = [example.example_id for example in examples]
  multi = scorer.num_outputs > 1
  records: list[dict[str, Any]] = []
  if kind == "pairs":
    pairs = data_lib.PreferenceData.from_examples(examples, report=report)
    scores = scorer.score_pairs(pairs)
    unscored = scores.rejects
    truncated = scores.truncated
    for j, i in enumerate(scores.kept):
      chosen_reward, rejected_reward = scores.chosen[j], scores.rejected[j]
      margin = float(np.mean(chosen_reward) - np.mean(rejected_reward))
      target = float(pairs.target_prob[i])
      tie = bool(pairs.is_tie[i]) or target == 0.5
      record = {rows[i].location: rows[i].number, "id": ids[i], "chosen_score": _finite(np.mean(chosen_reward)),
                "rejected_score": _finite(np.mean(rejected_reward)), "margin": _finite(margin),
                "target_prob": target, "is_tie": bool(pairs.is_tie[i]),
                "correct": None if tie else bool((margin > 0) == (target > 0.5))}
      if multi:
        record["chosen_head_scores"] = [_finite(v) for v in chosen_reward]
        record["rejected_head_scores"] = [_finite(v) for v in rejected_reward]
      records.append(record)
    metrics = {"accuracy": scores.metrics["accuracy"], "ece": scores.metrics["ece"],
               "decided_pairs": int(scores.metrics["pairs"] - scores.metrics["ties"]),
               "ties": int(scores.metrics["ties"]), "mean_margin": scores.metrics["margin"],
               "mean_score": float(np.mean(np.concatenate([np.mean(scores.chosen, -1),
                                                           np.mean(scores.rejected, -1)])))}
  else:
    completions = scorer.score([e.prompt for e in examples], [e.completion for e in examples])
    if len(completions.rejected) == len(examples):
      raise data_lib.DataError(
          f"{input_path}: no completion of the {len(examples)} usable records survives truncation "
          f"(max_length {scorer.max_length}, max_prompt_length {scorer.max_prompt_length}); e.g. "
          f"{rows[0].location} {rows[0].number}: {completions.rejected[0]}.")
    # The record field that holds the completion, per SFT format.
    field = {"text": "text", "prompt_completion": "completion", "messages": "messages"}[report.format]
    unscored = {i: (field, reason) for i, reason in completions.rejected.items()}
    truncated = completions.truncated
    for i, rewards in enumerate(completions.rewards):
      if i in unscored:
        continue
      record = {rows[i].location: rows[i].number, "id": ids[i], "score": _finite(np.mean(rewards))}
      if multi:
        record["head_scores"] = [_finite(v) for v in rewards]
      records.append(record)
    kept = np.array([i for i in range(len(examples)) if i not in unscored], np.int64)
    metrics = {"mean_score": float(np.mean(completions.mean[kept])) if kept.size else float("nan")}
  if unscored:
    # Added to the rejects the loader wrote (if any), in the same layout and file order.
    ingest.append_rejects(rejects_path, [
        sources_lib.Reject(file=os.fspath(input_path), location=rows[i].location, number=rows[i].number,
                           field=field, code="empty_after_truncation", reason=reason, record=rows[i].record)
        for i, (field, reason) in sorted(unscored.items())])
  rejected = report.rejected + len(unscored)
  summary = write_file_job(input_path, output_path, rejects_path, records, read=report.read, done=len(records),
                           rejected=rejected, done_name="scored")
  return {
      **summary, "kind": kind, "format": report.format, "read": report.read, "scored": len(records),
      "rejected": rejected,
      "reject_reasons": {**report.reasons, **({"empty_after_truncation": len(unscored)} if unscored else {})},
      "truncated": truncated, "workdir": os.fspath(scorer.workdir), "checkpoint_step": scorer.step,
      **{k: (_finite(v) if isinstance(v, float) else v) for k, v in metrics.items()},
  }
