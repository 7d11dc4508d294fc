"""Reward sources of an online run: reward-model checkpoints (one or an ensemble) or a Python function.

    source = make_reward_source(RewardSettings(checkpoints=("runs/rm",)))
    members = source(prompt_texts, completion_texts)     # float32 [N, K], one column per member
    scores = combine(members, "mean_minus_std", std_coef=1.0)   # float32 [N]

- Reward models (`reward.checkpoints=DIR` or `DIR1,DIR2,...`): runs of
  `scripts/train.py --config=configs/reward_model.py` on a data file, loaded with
  `rlhf_jax.train.score.load_reward_model`, so every model sees a completion tokenized
  the way it was trained: its own tokenizer, `data.max_length` and
  `data.max_prompt_length`, [bos] prompt completion [eos] (`data.tokenize_sft`), the
  reward read at the last token. A completion the policy ended at once (no text) is
  scored as [bos] prompt [eos], the row the data layer would make of it. Every head of
  every model is a member of the ensemble (a run with `model.reward_heads=K` adds K).
- A function (`reward.function=module:function`), called with the lists of prompt texts
  and completion texts and returning one finite float per completion: rule-based or
  verifiable rewards. The module is imported from the current directory or the Python
  path.

`combine` reduces the members (`reward.combine`): "mean"; "min", the worst-case
optimisation of Coste et al. 2023 (arXiv 2310.02743); "mean_minus_std", their
uncertainty-weighted form with the standard deviation, mean - `reward.std_coef` * std
(population std over the members). One member gives its own score for any method.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rlhf_jax.data import tokenization

__all__ = [
    "COMBINES",
    "FunctionReward",
    "ModelReward",
    "RewardSettings",
    "RewardSource",
    "combine",
    "make_reward_source",
]

COMBINES = ("mean", "min", "mean_minus_std")


@dataclasses.dataclass(frozen=True)
class RewardSettings:
  """Plain values of `config.reward` (see `rlhf_jax/train/config.py`).

  Attributes:
    checkpoints: reward-model run directories (one, or several for an ensemble).
    combine: how the members' scores become one, one of `COMBINES`.
    std_coef: the weight of the std for "mean_minus_std".
    function: "module:function", used when `checkpoints` is empty.
    batch_size: rows per reward-model forward pass (0: each run's eval.batch_size).
  """

  checkpoints: tuple[str, ...] = ()
  combine: str = "mean"
  std_coef: float = 1.0
  function: str = ""
  batch_size: int = 0

  def __post_init__(self):
    if self.combine not in COMBINES:
      raise ValueError(f"config reward.combine must be one of {', '.join(map(repr, COMBINES))}; got "
                       f"{self.combine!r}.")
    if not math.isfinite(self.std_coef) or self.std_coef < 0:
      raise ValueError(f"config reward.std_coef must be a finite number >= 0, got {self.std_coef}.")
    if bool(self.checkpoints) == bool(self.function):
      raise ValueError("give exactly one reward source: reward.checkpoints=DIR[,DIR2,...] (reward-model runs) or "
                       "reward.function=module:function" + (", not both." if self.function else "."))
    if self.batch_size < 0:
      raise ValueError(f"config reward.batch_size must be >= 0, got {self.batch_size}.")


def combine(members: np.ndarray, method: str, std_coef: float = 1.0) -> np.ndarray:
  """float32 [N]: the members' scores [N, K] combined by `method` (see the module docstring)."""
  members = np.asarray(members, np.float64)
  if members.ndim != 2 or members.shape[1] < 1:
    raise ValueError(f"member scores must be [N, K >= 1], got shape {members.shape}.")
  if method == "mean":
    combined = members.mean(axis=1)
  elif method == "min":
    combined = members.min(axis=1)
  elif method == "mean_minus_std":
    combined = members.mean(axis=1) - std_coef * members.std(axis=1)
  else:
    raise ValueError(f"unknown reward.combine {method!r}; expected one of {', '.join(COMBINES)}.")
  return combined.astype(np.float32)


class RewardSource:
  """Scores completions: `source(prompts, completions) -> float32 [N, num_members]`."""

  num_members: int = 1

  def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    raise NotImplementedError

  def describe(self) -> dict[str, Any]:
    """What the source is, for run.json."""
    raise NotImplementedError


class FunctionReward(RewardSource):
  """A Python function `f(prompts: list[str], completions: list[str]) -> N floats`."""

  def __init__(self, spec: str):
    self.spec = spec
    self.function = _import_function(spec)

  def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    result = self.function(list(prompts), list(completions))
    try:
      values = np.asarray(result, np.float64)
    except (TypeError, ValueError):
      raise ValueError(f"reward.function {self.spec} returned {type(result).__name__}, not a sequence of "
                       "floats.") from None
    if values.shape != (len(completions),):
      raise ValueError(f"reward.function {self.spec} returned shape {values.shape} for {len(completions)} "
                       f"completions; it must return one float per completion.")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise ValueError(f"reward.function {self.spec} returned non-finite rewards for {bad.size} completions, "
                       f"the first at index {bad[0]} ({values[bad[0]]}); completion: "
                       f"{completions[bad[0]][:200]!r}.")
    return values.astype(np.float32)[:, None]

  def describe(self) -> dict[str, Any]:
    module = sys.modules.get(self.function.__module__)
    path = getattr(module, "__file__", None)
    return {"function": self.spec, "file": path}


def _import_function(spec: str) -> Callable[..., Any]:
  module_name, sep, name = spec.partition(":")
  if not sep or not module_name or not name:
    raise ValueError(f"reward.function must be 'module:function' (e.g. my_rewards:length_penalty), got {spec!r}.")
  cwd = os.getcwd()
  if cwd not in sys.path:
    # Like `python -m`, a module in the current directory is found.
    sys.path.insert(0, cwd)
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ValueError(f"reward.function {spec}: cannot import module {module_name!r} ({error}); it must be "
                     "importable from the current directory or PYTHONPATH.") from None
  function = getattr(module, name, None)
  if not callable(function):
    raise ValueError(f"reward.function {spec}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                     f"function {name!r}.")
  return function


class ModelReward(RewardSource):
  """Reward-model runs (`train.score.RewardScorer`), every head a member."""

  def __init__(self, checkpoints: Sequence[str], *, mesh: Any = None, batch_size: int = 0):
    from rlhf_jax.train import score  # pylint: disable=g-import-not-at-top
    self.scorers = [score.load_reward_model(path, mesh=mesh, batch_size=batch_size or None) for path in checkpoints]
    self.num_members = sum(s.num_outputs for s in self.scorers)

  def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    return np.concatenate([_score(scorer, prompts, completions) for scorer in self.scorers], axis=1)

  def describe(self) -> dict[str, Any]:
    return {"checkpoints": [{"workdir": os.fspath(s.workdir), "step": s.step, "outputs": s.num_outputs,
                             "tokenizer": s.tokenizer.fingerprint} for s in self.scorers]}


def _score(scorer: Any, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
  """float32 [N, K] of one reward model; rows the data layer cannot make (an empty
  completion) are scored as [bos] prompt [eos]."""
  scores = scorer.score(list(prompts), list(completions))
  rewards = np.array(scores.rewards, np.float32)
  if scores.rejected:
    rows = sorted(scores.rejected)
    tokenizer = scorer.tokenizer
    encoded = []
    for i in rows:
      ids, _, _, _ = tokenization.encode_example(
          tokenizer.encode(prompts[i]), tokenizer.encode(completions[i]), bos_id=tokenizer.bos_id,
          eos_id=tokenizer.eos_id, max_length=scorer.max_length, max_prompt_length=scorer.max_prompt_length)
      encoded.append(ids)
    width = scorer.max_length
    tokens = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for j, ids in enumerate(encoded):
      tokens[j, :len(ids)] = ids
      mask[j, :len(ids)] = True
    rewards[rows] = scorer.score_tokens(tokens, mask)
  return rewards


def make_reward_source(settings: RewardSettings, *, mesh: Any = None) -> RewardSource:
  """The reward source `settings` name (reward-model runs on `mesh`, or a function)."""
  if settings.checkpoints:
    for path in settings.checkpoints:
      if not Path(path).is_dir():
        raise FileNotFoundError(f"reward.checkpoints: {path} is not a directory (expected the --workdir of a "
                                "reward-model run of scripts/train.py).")
    return ModelReward(settings.checkpoints, mesh=mesh, batch_size=settings.batch_size)
  return FunctionReward(settings.function)
