"""The run directory: what was run, on what, and what it measured.

  <workdir>/config.json        the resolved config
  <workdir>/run.json           git revision (+ dirty flag), versions, devices, mesh,
                               data fingerprints and counts, command line
  <workdir>/metrics.jsonl      one JSON object per logged step: {"step": s, "split": ..., ...}
  <workdir>/tensorboard/       TensorBoard event files (tensorboardX)
  <workdir>/checkpoints/       orbax checkpoints (`checkpoint.py`)

Only process 0 writes; the others get no-op writers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

__all__ = ["MetricWriter", "git_revision", "read_metrics", "write_config", "write_run_info"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, Path):
    return os.fspath(value)
  return str(value)


def _write_json(path: Path, payload: Any) -> None:
  temporary = path.with_suffix(path.suffix + ".tmp")
  temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n",
                       encoding="utf-8")
  os.replace(temporary, path)


def write_config(workdir: str | os.PathLike[str], config: Any) -> None:
  """Writes `config.json` (the resolved config, overrides applied)."""
  if jax.process_index() != 0:
    return
  payload = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  _write_json(Path(workdir) / "config.json", payload)


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


class MetricWriter:
  """Appends scalar metrics to `metrics.jsonl` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._file = None
    self._tensorboard = None
    if not self._active:
      return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._file = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      self._tensorboard = _summary_writer_class()(os.fspath(workdir / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
    if not self._active:
      return
    values = {}
    for name, value in metrics.items():
      value = float(np.asarray(value))
      values[name] = value if math.isfinite(value) else str(value)  # JSON has no NaN
      if self._tensorboard is not None:
        self._tensorboard.add_scalar(f"{split}/{name}", value, global_step=int(step))
    self._file.write(json.dumps({"step": int(step), "split": split, **values}, sort_keys=True) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None


def read_metrics(workdir: str | os.PathLike[str], split: str | None = None) -> list[dict[str, Any]]:
  """The records of `metrics.jsonl` (optionally of one split), in order."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  return [r for r in records if split is None or r.get("split") == split]
