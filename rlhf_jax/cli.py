"""Command-line helpers shared by the scripts: config-override errors a user can act on,
and the exit codes.

`ml_collections` locked configs reject an unknown `--config.<field>` with a bare
KeyError/AttributeError traceback; `parse_flags` turns that into one line naming the
field, the section it was looked up in and that section's valid fields.

Exit codes (a scheduler must tell a finished run from a stopped one):

  0   EXIT_FINISHED  the run finished
  75  EXIT_STOPPED   stopped early with a checkpoint (SIGTERM, --stop_at_step): rerun the
                     same command to resume (75 is sysexits.h's EX_TEMPFAIL, "temporary
                     failure, retry")
  1   scripts/train.py, 2 scripts/run.py and scripts/aggregate.py: a user mistake,
      one line on stderr (`--traceback` shows the traceback)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from absl import flags

EXIT_FINISHED = 0
EXIT_STOPPED = 75


def load_config_file(path: str | Path, arg: str | None = None) -> Any:
  """Calls `get_config(arg)` of a config file of this repository (trusted Python code)."""
  path = Path(path)
  module_spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  if module_spec is None or module_spec.loader is None or not path.is_file():
    raise FileNotFoundError(f"config file {path} not found")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def _load_config(spec: str) -> Any:
  """`get_config(arg)` of a `path[:arg]` config spec."""
  path, _, arg = spec.partition(":")
  return load_config_file(path, arg or None)


def config_override_error(argv: list[str], config_flag: str = "config") -> str | None:
  """Explains the first `--config.<path>=...` naming a field that does not exist, or None."""
  prefix = f"--{config_flag}"
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(prefix + "=")), None)
  try:
    config = _load_config(spec) if spec is not None else flags.FLAGS[config_flag].default
  except Exception:  # pylint: disable=broad-except
    return None  # The config file itself fails: absl's own message says how.
  if config is None:
    return None
  for item in argv:
    if not item.startswith(prefix + "."):
      continue
    field = item[len(prefix) + 1:].split("=", 1)[0]
    node, walked = config, []
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        where = config_flag + "".join(f".{w}" for w in walked)
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
        return (f"unknown config field {field!r} in {item!r}: {where} has no field {part!r}. "
                f"Valid fields of {where}: {valid}.")
      node = node[part]
      walked.append(part)
  return None


def parse_flags(argv: list[str], *, program: str, exit_code: int) -> list[str]:
  """absl flag parsing that reports a user's mistake in one line and exits with `exit_code`.

  Pass as `app.run(main, flags_parser=functools.partial(parse_flags, program=..., ...))`.
  """
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as error:
    message = config_override_error(argv) or f"invalid config override: {error}"
  except flags.Error as error:
    message = str(error)
    if "Traceback (most recent call last)" in message:
      # A config file's own error: keep the flag and the final exception line.
      lines = [line for line in message.splitlines() if line.strip()]
      message = f"{lines[0]} {lines[-1]}"
    message += " (pass --helpfull to see the flags)"
  print(f"{program}: error: {message}", file=sys.stderr)
  sys.exit(exit_code)


def fail(program: str, message: Any, exit_code: int) -> None:
  """Prints `program: error: message` (one line) to stderr and exits with `exit_code`."""
  text = " ".join(str(message).split("\n")).strip()
  print(f"{program}: error: {text}", file=sys.stderr)
  sys.exit(exit_code)


def flags_parser(program: str, exit_code: int) -> Callable[[list[str]], list[str]]:
  """`parse_flags` bound to a program name and exit code, for `app.run(flags_parser=...)`."""
  return lambda argv: parse_flags(argv, program=program, exit_code=exit_code)


# Where compiled XLA programs are kept between processes (see `enable_compilation_cache`).
COMPILATION_CACHE_ENV = "RLHF_JAX_COMPILATION_CACHE"


def compilation_cache_dir() -> Path | None:
  """The persistent compilation cache folder: $RLHF_JAX_COMPILATION_CACHE if set ("0" or
  "" turns the cache off), else $XDG_CACHE_HOME/rlhf_jax/jax (default ~/.cache/...)."""
  import os  # pylint: disable=g-import-not-at-top
  value = os.environ.get(COMPILATION_CACHE_ENV)
  if value is not None:
    return None if value in ("", "0") else Path(value).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "rlhf_jax" / "jax"


def enable_compilation_cache() -> Path | None:
  """Turns on JAX's persistent compilation cache, so a script's second run loads its
  compiled programs from disk instead of compiling again.

  Sets `jax_compilation_cache_dir` to `compilation_cache_dir()` and caches every program
  that took at least 0.1 s to compile (JAX's default threshold, 1 s, would skip most of
  ours). Call it before the first jitted call. Returns the folder, or None when off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  path = compilation_cache_dir()
  if path is None:
    return None
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
