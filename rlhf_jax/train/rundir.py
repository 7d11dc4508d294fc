"""The run directory: what was run, on what, and what it measured.

  <workdir>/config.json        the resolved config: what this directory is a run of
  <workdir>/run.json           git revision (+ dirty flag), versions, devices, mesh,
                               data fingerprints and counts, input fingerprints
                               ("inputs"), command line; each resume appends its own
                               record (with the fields it changed) under "resumed"
  <workdir>/metrics.jsonl      one JSON object per logged step: {"step": s, "split": ..., ...}
  <workdir>/tensorboard/       TensorBoard event files (tensorboardX)
  <workdir>/checkpoints/       orbax checkpoints (`checkpoint.py`)
  <workdir>/tokenizer/, cache/, rejects/, reference_cache/   written by the data stage
  <workdir>/samples.jsonl      online runs: rows of rollouts with their rewards
  <workdir>/superseded/<time>/ earlier runs moved aside by `force_new`

A run directory knows what it is. `check_resume` compares the config of a new start
with the stored `config.json` (and the fingerprints of its input files with those in
`run.json`) before any work: a different config is refused with one line listing the
fields that differ (old -> new), except the fields the caller declares free to change on
resume (`may_change`: step counts, cadences, layouts; the trainer's list is
`rlhf_jax.train.loop.MAY_CHANGE_ON_RESUME`). `force_new=True` moves the earlier run's
files into `superseded/<time>/` (a rename: nothing is deleted) and starts afresh.

Metrics hold every step once after any kill and resume: `MetricWriter(resume_from=s)`
drops the records of steps after `s` (written after the checkpoint the run resumes
from) and tells TensorBoard to purge its events of those steps (a `SessionLog.START`
at step s + 1, tensorboardX's `purge_step`; TensorBoard hides older events of steps at
or after it). JSON written here never holds NaN or Infinity as bare tokens (not JSON):
non-finite numbers are written as the strings "nan", "inf", "-inf".

Only process 0 writes; the others get no-op writers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

__all__ = [
    "RUN_ENTRIES",
    "Resume",
    "RunDirError",
    "check_resume",
    "config_differences",
    "describe",
    "dumps",
    "finite",
    "git_revision",
    "MetricWriter",
    "prepare",
    "read_metrics",
    "supersede",
    "truncate_records",
    "write_config",
    "write_run_info",
    "write_start",
]

_log = logging.getLogger(__name__)
_REPO_ROOT = Path(__file__).resolve().parents[2]

# What a training run writes into its workdir (`force_new` moves exactly these aside;
# anything else a user keeps there, such as the data files, stays).
RUN_ENTRIES = ("config.json", "run.json", "metrics.jsonl", "tensorboard", "checkpoints", "tokenizer", "cache",
               "rejects", "reference_cache", "samples.jsonl")
SUPERSEDED = "superseded"


class RunDirError(ValueError):
  """The run directory cannot be used as asked; the message says why and what to do."""


def git_revision(path: str | os.PathLike[str] = _REPO_ROOT) -> dict[str, Any]:
  """{"commit": sha, "dirty": bool} of the checkout holding `path`, or commit "unknown"."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                            timeout=10, check=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                            capture_output=True, text=True, timeout=10, check=True).stdout
    return {"commit": commit, "dirty": bool(status.strip())}
  except (OSError, subprocess.SubprocessError):
    return {"commit": "unknown", "dirty": None}


# ---------------------------------------------------------------------------------------
# JSON without NaN.


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, Path):
    return os.fspath(value)
  return str(value)


def finite(value: Any) -> Any:
  """`value` with every non-finite float (also inside dicts, lists, NumPy scalars and
  arrays) replaced by the string "nan", "inf" or "-inf": JSON has no NaN or Infinity."""
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.tolist()
  if isinstance(value, float):
    return value if math.isfinite(value) else str(value)
  if isinstance(value, Mapping):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(v) for v in value]
  return value


def dumps(payload: Any, **kwargs: Any) -> str:
  """`json.dumps` of `finite(payload)` that fails rather than write a bare NaN."""
  return json.dumps(finite(payload), allow_nan=False, default=_json_default, **kwargs)


def _write_json(path: Path, payload: Any) -> None:
  temporary = path.with_suffix(path.suffix + ".tmp")
  temporary.write_text(dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
  os.replace(temporary, path)


def _read_json(path: Path) -> Any:
  """The JSON content of `path`; a RunDirError when it is not JSON."""
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise RunDirError(f"{path} is not valid JSON ({error}); it is not a run directory this code wrote, "
                      "or the file was damaged. Pass --force_new to start afresh.") from None


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------
# What a run directory is.


def prepare(workdir: str | os.PathLike[str]) -> Path:
  """The absolute path of `workdir`, created when missing.

  Raises:
    RunDirError: `workdir` (or a parent) is a file, or cannot be created.
  """
  path = Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise RunDirError(f"workdir {path} is a file, not a directory; choose a directory (--workdir).")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise RunDirError(f"workdir {path}: a parent folder is a file; choose another --workdir.") from None
  except OSError as error:
    raise RunDirError(f"workdir {path} cannot be created: {error.strerror or error}.") from None
  return path


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
  """A config's plain values (nested dicts) as the JSON that `config.json` holds."""
  return json.loads(dumps(dict(config)))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _matches(name: str, patterns: Iterable[str]) -> bool:
  """`name` is one of `patterns` (dotted field names; "section.*" covers a section)."""
  return any(name == p or (p.endswith(".*") and name.startswith(p[:-1])) for p in patterns)


_ABSENT = "(absent)"


Differences = dict[str, tuple[Any, Any]]


def config_differences(stored: Mapping[str, Any], config: Mapping[str, Any], *, may_change: Sequence[str] = (),
                       ignore: Sequence[str] = ()) -> tuple[Differences, Differences]:
  """The fields of `config` that differ from the `stored` (config.json) config.

  Returns (refused, allowed): {dotted field: (stored value, new value)}, `allowed` the
  differences in fields of `may_change`. A field one side lacks (a field added or
  removed by another version of the code) differs, with the value "(absent)".
  Fields of `ignore` are not compared.
  """
  old, new = _flatten(_plain(stored)), _flatten(_plain(config))
  refused, allowed = {}, {}
  for name in sorted(set(old) | set(new)):
    if _matches(name, ignore):
      continue
    before, after = old.get(name, _ABSENT), new.get(name, _ABSENT)
    if before == after and isinstance(before, bool) == isinstance(after, bool):
      continue  # 1 == 1.0 (JSON keeps no int/float distinction a config relies on)
    (allowed if _matches(name, may_change) else refused)[name] = (before, after)
  return refused, allowed


def _show(value: Any, limit: int = 40) -> str:
  """A value for a one-line message: JSON, long strings (paths, fingerprints) cut inside
  their quotes."""
  if value is _ABSENT:
    return value
  if isinstance(value, str) and len(value) > limit:
    return json.dumps(value[:limit - 3] + "...")
  text = json.dumps(value, default=_json_default)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(differences: Mapping[str, tuple[Any, Any]]) -> str:
  """`field old -> new, ...` of `config_differences`' output, for one-line messages."""
  return ", ".join(f"{name} {_show(old)} -> {_show(new)}" for name, (old, new) in differences.items())


@dataclasses.dataclass(frozen=True)
class Resume:
  """What `check_resume` found in a run directory.

  Attributes:
    workdir: the absolute run directory.
    stored: the stored config (`config.json`), None in a new (or superseded) directory.
    changed: {field: (stored, new)} of the `may_change` fields that differ.
    superseded: where `force_new` moved the earlier run, or None.
  """

  workdir: Path
  stored: dict[str, Any] | None
  changed: dict[str, tuple[Any, Any]]
  superseded: Path | None = None

  @property
  def new(self) -> bool:
    return self.stored is None


def supersede(workdir: str | os.PathLike[str], entries: Sequence[str] = RUN_ENTRIES) -> Path | None:
  """Moves the `entries` of `workdir` that exist into `<workdir>/superseded/<time>/`
  (renames: nothing is copied or deleted); returns that folder, or None when there was
  nothing to move. Process 0 moves; every process waits for it."""
  workdir = Path(workdir)
  present = [name for name in entries if (workdir / name).exists() or (workdir / name).is_symlink()]
  target = None
  if present:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = workdir / SUPERSEDED / stamp
    suffix = 1
    while target.exists():
      suffix += 1
      target = workdir / SUPERSEDED / f"{stamp}-{suffix}"
    if jax.process_index() == 0:
      target.mkdir(parents=True)
      for name in present:
        os.replace(workdir / name, target / name)
      _log.warning("force_new: the earlier run in %s was moved to %s", workdir, target)
  _sync("rundir.supersede")
  return target


def check_resume(
    workdir: str | os.PathLike[str],
    config: Mapping[str, Any],
    *,
    may_change: Sequence[str] = (),
    ignore: Sequence[str] = (),
    inputs: Mapping[str, Any] | None = None,
    force_new: bool = False,
    entries: Sequence[str] = RUN_ENTRIES,
) -> Resume:
  """Decides whether a start in `workdir` with `config` is new, a resume, or refused.

  Call it before any work. A directory without `config.json` is new (refused when it
  holds committed checkpoints: what they were trained with is unknown). One with
  `config.json` is a resume when `config` equals it up to the fields of `may_change`
  (and those of `ignore`, which are not compared: values a later stage fills in) and,
  for each name of `inputs` (file fingerprints), the value in `run.json`'s "inputs"
  (when it has them) is the same.

  Args:
    workdir: the run directory (`prepare` it first).
    config: the new config's plain values (`ConfigDict.to_dict()`).
    may_change: dotted fields free to change on resume ("section.*": a whole section).
    ignore: dotted fields not compared.
    inputs: {name: fingerprint} of the run's input files, compared with `run.json`.
    force_new: move the earlier run aside (`supersede`) and start afresh.
    entries: the names the run writes into `workdir` (`force_new` moves these).

  Raises:
    RunDirError: the directory holds another run; the one-line message lists the
      fields that differ, old -> new, and how to start afresh.
  """
  workdir = Path(workdir)
  if force_new:
    moved = supersede(workdir, entries)
    return Resume(workdir=workdir, stored=None, changed={}, superseded=moved)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    checkpoints = workdir / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
      raise RunDirError(f"workdir {workdir} holds checkpoints but no config.json, so what they were trained "
                        "with is unknown; pass --force_new to start afresh (they are moved to "
                        f"{workdir / SUPERSEDED}/), or choose another --workdir.")
    return Resume(workdir=workdir, stored=None, changed={})
  stored = _read_json(config_path)
  if not isinstance(stored, dict):
    raise RunDirError(f"{config_path} does not hold a config (a JSON object); pass --force_new to start afresh.")
  refused, allowed = config_differences(stored, config, may_change=may_change, ignore=ignore)
  if inputs:
    run_path = workdir / "run.json"
    run_info = _read_json(run_path) if run_path.is_file() else None
    recorded = run_info.get("inputs") if isinstance(run_info, dict) else None
    if isinstance(recorded, dict):
      for name in sorted(inputs):
        if recorded.get(name, _ABSENT) != inputs[name]:
          refused[f"{name} (input)"] = (recorded.get(name, _ABSENT), inputs[name])
  if refused:
    raise RunDirError(
        f"workdir {workdir} holds a run with other settings: {describe(refused)}. Rerun with its "
        "settings to resume, pass --force_new to start afresh (the earlier run is moved to "
        f"{workdir / SUPERSEDED}/), or choose another --workdir.")
  return Resume(workdir=workdir, stored=stored, changed=allowed)


def write_config(workdir: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
  """Writes `config.json`: the resolved config's plain values (nested dicts,
  `ConfigDict.to_dict()`), overrides applied."""
  if jax.process_index() != 0:
    return
  _write_json(Path(workdir) / "config.json", dict(config))


def write_start(workdir: str | os.PathLike[str], config: Mapping[str, Any], resume: Resume, **info: Any) -> None:
  """At a run's start (new or resumed): `write_config`, then `write_run_info` with `info`;
  the fields a resume changed (`Resume.changed`) are logged and recorded as "changed"."""
  write_config(workdir, config)
  changed = {}
  if resume.changed:
    _log.info("resuming %s with changed %s", workdir, describe(resume.changed))
    changed = {"changed": {k: list(v) for k, v in resume.changed.items()}}
  write_run_info(workdir, **info, **changed)


def write_run_info(workdir: str | os.PathLike[str], **info: Any) -> None:
  """Writes `run.json`: git revision, versions, devices, plus the given entries
  (data fingerprints, mesh, ...). A resumed run keeps the first start's record and
  appends its own to the list under "resumed"."""
  if jax.process_index() != 0:
    return
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  payload = {
      "git": git_revision(),
      "command": sys.argv,
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "python": platform.python_version(),
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                   "numpy": np.__version__},
      "devices": {"platform": jax.devices()[0].platform, "count": jax.device_count(),
                  "processes": jax.process_count()},
      **info,
  }
  path = Path(workdir) / "run.json"
  if path.is_file():
    try:
      first = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
      first = None
    if isinstance(first, dict):
      first.setdefault("resumed", []).append(payload)
      payload = first
  _write_json(path, payload)


# ---------------------------------------------------------------------------------------
# Metrics.


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX tries `import torch` at import time (to accept torch tensors), which
  costs seconds when PyTorch happens to be installed; we only log Python floats, so
  the import is made to fail (ImportError, which tensorboardX handles) unless PyTorch
  is already loaded.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _parse_records(path: Path) -> tuple[list[dict[str, Any]], int]:
  """The records of a metrics file, and how many lines could not be read (a run killed
  while writing leaves its last line cut)."""
  records, broken = [], 0
  for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      broken += 1
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
    else:
      broken += 1
  return records, broken


def truncate_records(path: Path, last_step: int) -> list[dict[str, Any]]:
  """Rewrites a JSON Lines file of records with a "step" (metrics.jsonl, an online run's
  samples.jsonl) with only the records of steps <= `last_step`; returns them."""
  records, broken = _parse_records(path)
  kept = [r for r in records if r["step"] <= last_step]
  if len(kept) != len(records) or broken:
    _log.info("%s: kept the %d records up to step %d, dropped %d of later steps (written after the checkpoint "
              "this run resumes from)%s", path.name, len(kept), last_step, len(records) - len(kept),
              f" and {broken} unreadable line(s)" if broken else "")
    temporary = path.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
    os.replace(temporary, path)
  return kept


class MetricWriter:
  """Appends scalar metrics to `metrics.jsonl` and TensorBoard (process 0 only).

  With `resume_from=s` (the step a run starts from: its restored checkpoint, 0 for a
  fresh start) the records of later steps, left by a run killed after its last
  checkpoint, are dropped first, and TensorBoard is told to purge its events of steps
  after `s` (`purge_step=s + 1`), so that each step appears once. `kept` holds the
  records that stay.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True,
               resume_from: int | None = None):
    self._active = jax.process_index() == 0
    self._file = None
    self._tensorboard = None
    self.kept: list[dict[str, Any]] = []
    if not self._active:
      return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "metrics.jsonl"
    if resume_from is not None and path.is_file():
      self.kept = truncate_records(path, int(resume_from))
    self._file = open(path, "a", encoding="utf-8")
    if tensorboard:
      directory = workdir / "tensorboard"
      earlier = directory.is_dir() and any(p.name.startswith("events") for p in directory.iterdir())
      purge_step = int(resume_from) + 1 if resume_from is not None and earlier else None
      # tensorboardX names event files by the second and host only, and truncates an
      # existing file of that name: a session started within the same second as the
      # previous one would erase its events. The suffix (nanoseconds, same width for
      # centuries) keeps the files apart and in start order, which TensorBoard reads in.
      self._tensorboard = _summary_writer_class()(os.fspath(directory), purge_step=purge_step,
                                                  filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
    if not self._active:
      return
    values = {}
    for name, value in metrics.items():
      value = float(np.asarray(value))
      values[name] = value
      if self._tensorboard is not None:
        self._tensorboard.add_scalar(f"{split}/{name}", value, global_step=int(step))
    self._file.write(dumps({"step": int(step), "split": split, **values}, sort_keys=True) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None


def read_metrics(workdir: str | os.PathLike[str], split: str | None = None) -> list[dict[str, Any]]:
  """The records of `metrics.jsonl` (optionally of one split), in order; non-finite
  values come back as floats. A cut last line (a killed run) is skipped."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  records, _ = _parse_records(path)
  return [_numbers(r) for r in records if split is None or r.get("split") == split]


def _numbers(record: Mapping[str, Any]) -> dict[str, Any]:
  return {k: float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v for k, v in record.items()}
