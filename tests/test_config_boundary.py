"""The config stops at the loops: below `train.loop` and `rl.loop` no module imports
ml_collections or takes a ConfigDict; they take plain values and frozen settings
dataclasses that `rlhf_jax.train.config` reads once (an AST scan of the package)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rlhf_jax"

# The modules that read configs, each with its reason.
CONFIG_FACING = {
    "train/config.py": "the config builder, and the readers that turn a config into settings dataclasses",
    "train/loop.py": "the offline loop: reads its config at the top",
    "rl/loop.py": "the online loop: reads its config at the top",
    "train/plan.py": "the planning entry point of scripts/plan.py: reads its config at the top, like a loop",
    "cli.py": "the scripts' flag helpers (config overrides)",
    "ablate/runner.py": "the ablation runner behind scripts/ablate.py: reads an experiment's config at the top",
}
# Parameter names that carried whole configs or config sections.
CONFIG_NAMES = ("config", "cfg", "section")
# Where a parameter so named must say its type (not Any): the trainers' packages.
TYPED_PACKAGES = ("train/", "rl/")


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"), str(path))


def _violations(name: str, tree: ast.AST) -> list[str]:
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "ml_collections"]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ml_collections":
      found.append(f"line {node.lineno}: from {node.module} import ...")
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
      for argument in arguments:
        annotation = ast.unparse(argument.annotation) if argument.annotation is not None else ""
        if "ConfigDict" in annotation:
          found.append(f"line {node.lineno}: {node.name}({argument.arg}: {annotation})")
        elif (argument.arg in CONFIG_NAMES and name.startswith(TYPED_PACKAGES)
              and annotation in ("", "Any", "typing.Any")):
          found.append(f"line {node.lineno}: {node.name}({argument.arg}{': ' + annotation if annotation else ''}) "
                       "takes an untyped config")
  return found


def test_no_module_below_the_loops_takes_a_config():
  offenders = {}
  for name, tree in _modules():
    if name not in CONFIG_FACING:
      problems = _violations(name, tree)
      if problems:
        offenders[name] = problems
  assert not offenders, (
      "modules below the loops must take plain values or settings dataclasses (read the config in "
      f"rlhf_jax/train/config.py and hand the values down): {offenders}")


def test_the_config_facing_list_names_existing_modules():
  names = {name for name, _ in _modules()}
  assert not sorted(set(CONFIG_FACING) - names)


@pytest.mark.parametrize("source, expected", [
    ("import ml_collections\n", 1),
    ("from ml_collections import config_dict\n", 1),
    ("def f(config: 'ml_collections.ConfigDict'): pass\n", 1),
    ("def f(config: Any): pass\n", 1),
    ("def f(config): pass\n", 1),
    ("def f(config: Mapping[str, Any], settings: Any): pass\n", 0),
])
def test_the_scan_catches_each_form(source, expected):
  assert len(_violations("train/example.py", ast.parse(source))) == expected
