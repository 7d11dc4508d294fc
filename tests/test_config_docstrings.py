"""Every launch command in a config file's docstring still parses: the script exists and
defines each flag, `--config=configs/<file>.py[:arg]` builds, and each
`--config.<field>=<value>` override applies to the locked config as absl would apply
it (an unknown field or a value of the wrong type fails). Inline overrides in
backticks are checked against the config file's own default config."""

import ast
import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))
# A command: "python scripts/x.py ..." on an indented line, with "\" continuations.
COMMAND = re.compile(r"^[ \t]*(python scripts/\S+\.py(?:[^\n]*\\\n)*[^\n]*)", re.M)
# An inline override in backticks: `--config.a.b=value ...` (several may follow).
INLINE = re.compile(r"`((?:--config\.[\w.]+=[^`\s]+\s*)+)`")


def _docstring(path: pathlib.Path) -> str:
  return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _commands(path: pathlib.Path) -> list[list[str]]:
  return [shlex.split(match.replace("\\\n", " ")) for match in COMMAND.findall(_docstring(path))]


def _script_flags(script: pathlib.Path) -> set[str]:
  """The flag names a script defines (`flags.DEFINE_*("name", ...)`)."""
  return set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", script.read_text(encoding="utf-8")))


def _parse(config_spec: str, overrides: list[str]):
  """The config of `--config=<spec>` with `overrides` applied by absl, locked as the
  scripts lock it."""
  argv = ["launch", f"--config={config_spec}", *overrides]
  values = flags.FlagValues()
  # `sys_argv`: where the config flag finds the overrides to define (default sys.argv).
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def _check_command(tokens: list[str]) -> None:
  assert tokens[0] == "python"
  script = REPO / tokens[1]
  assert script.is_file(), f"{tokens[1]} does not exist"
  defined = _script_flags(script)
  spec, overrides = None, []
  for token in tokens[2:]:
    assert token.startswith("--"), f"{token!r} is not a flag"
    name = token[2:].split("=", 1)[0]
    if name == "config":
      spec = token.split("=", 1)[1]
    elif name.startswith("config."):
      overrides.append(token)
    else:
      assert name in defined or (name.startswith("no") and name[2:] in defined), \
          f"{tokens[1]} defines no flag --{name}"
  if spec is not None or overrides:
    assert "config" in defined, f"{tokens[1]} takes no --config"
    assert spec is not None, "overrides without --config"
    _parse(spec, overrides)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_launch_command_in_the_docstring_parses(path, monkeypatch):
  monkeypatch.chdir(REPO)  # the commands name files relative to the repository
  commands = _commands(path)
  assert commands, f"{path.name}: the docstring holds no launch command"
  assert any(f"--config=configs/{path.name}" in " ".join(c) for c in commands)
  for tokens in commands:
    _check_command(tokens)
  for inline in INLINE.findall(_docstring(path)):
    _parse(f"configs/{path.name}", inline.split())


def test_a_broken_command_fails(monkeypatch):
  monkeypatch.chdir(REPO)
  _check_command(shlex.split("python scripts/train.py --config=configs/dpo.py:preset=tiny --workdir=/tmp/x "
                             "--config.loss.beta=0.2"))
  with pytest.raises(Exception, match="lr"):
    _check_command(shlex.split("python scripts/train.py --config=configs/dpo.py:preset=tiny --config.optim.lr=1"))
  with pytest.raises(AssertionError, match="defines no flag --work_dir"):
    _check_command(shlex.split("python scripts/train.py --config=configs/dpo.py --work_dir=/tmp/x"))
  with pytest.raises(AssertionError, match="does not exist"):
    _check_command(shlex.split("python scripts/build.py --config=configs/dpo.py"))
  with pytest.raises(Exception):
    _check_command(shlex.split("python scripts/train.py --config=configs/dpo.py:preset=tiny "
                               "--config.train.steps=ten"))
