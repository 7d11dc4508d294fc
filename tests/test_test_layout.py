"""The test tree itself: pytest's default import mode names a test module by its basename
(outside packages), so two `test_x.py` files in different folders break collection; every
module of rlhf_jax has a test module at the mirrored path; no test skips itself when an
attribute is missing (that hides a broken API instead of failing)."""
import ast
import collections
import pathlib

TESTS = pathlib.Path(__file__).parent


def _module_name(path: pathlib.Path) -> str:
  # Inside a package (a folder with __init__.py) pytest prefixes the package names.
  parts = [path.stem]
  folder = path.parent
  while (folder / "__init__.py").exists():
    parts.insert(0, folder.name)
    folder = folder.parent
  return ".".join(parts)


def test_test_modules_have_unique_import_names():
  names = collections.defaultdict(list)
  for path in TESTS.rglob("*.py"):
    # conftest.py files are imported by pytest itself, one per folder, without a clash.
    if "fixtures" in path.parts or path.name in ("__init__.py", "conftest.py"):
      continue
    names[_module_name(path)].append(str(path.relative_to(TESTS)))
  clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
  # sharded_run.py helpers are scripts run in a subprocess, never imported by pytest.
  clashes.pop("sharded_run", None)
  assert not clashes, f"test modules that share an import name: {clashes}"


# --- every module has a test module at the mirrored path --------------------------------

PACKAGE = TESTS.parent / "rlhf_jax"

# Modules without a mirror of their own, each with its reason. Package-private helpers
# only; everything else is tested where it lives.
NO_MIRROR = {
    "_checks.py": "package-private argument checks, tested through every loss and feedback model that raises them",
    "feedback/models/_arrays.py": "package-private argument check of the annotator models, tested through the "
                                  "bad-input tests of every model in tests/feedback/models",
}

# Not mirrored yet (issue 17): tested today inside the test modules named here, to be
# split out. The test below fails when one of these gains its mirror (take it off the
# list) and when any other module lacks one. (Empty: models/hf/peft.py, the last one,
# has tests/models/hf/test_peft.py.)
NOT_YET_MIRRORED: dict[str, str] = {}


def mirrors(module: pathlib.Path) -> list[pathlib.Path]:
  """The test modules of `module` (a path inside rlhf_jax/): tests/<dir>/test_<name>.py,
  or tests/<dir>/test_<dir name>_<name>.py where the plain basename is taken by another
  folder's test (basenames must be unique), or test_*.py in a folder tests/<dir>/<name>/."""
  folder = TESTS / module.parent
  names = [f"test_{module.stem}.py"]
  if module.parent.name:
    names.append(f"test_{module.parent.name}_{module.stem}.py")
  found = [folder / name for name in names if (folder / name).is_file()]
  found += sorted((folder / module.stem).glob("test_*.py"))
  return found


def _modules() -> list[pathlib.Path]:
  return [path.relative_to(PACKAGE) for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__init__.py"]


def test_every_module_has_a_mirrored_test_module():
  missing = [m.as_posix() for m in _modules()
             if not mirrors(m) and m.as_posix() not in NO_MIRROR and m.as_posix() not in NOT_YET_MIRRORED]
  assert not missing, f"modules without tests/<same path>/test_<module>.py: {missing}"


def test_the_exception_lists_are_current():
  modules = {m.as_posix(): m for m in _modules()}
  listed = {**NO_MIRROR, **NOT_YET_MIRRORED}
  assert not sorted(set(listed) - set(modules)), "listed modules that no longer exist"
  mirrored = sorted(name for name in listed if mirrors(modules[name]))
  assert not mirrored, f"these have a mirrored test now; take them off the lists: {mirrored}"


# --- no test hides a broken API by skipping itself --------------------------------------

# Known exceptions (none: the last one, in tests/feedback/test_simulate.py, went with the
# feedback restructuring).
_HASATTR_SKIPS_PENDING: set[str] = set()


def _skips_over_hasattr(tree: ast.AST) -> bool:
  """An `if` on hasattr(...) whose body calls pytest.skip / pytest.xfail."""
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and any(
        isinstance(n, ast.Call) and getattr(n.func, "id", None) == "hasattr" for n in ast.walk(node.test)):
      for call in ast.walk(ast.Module(body=node.body, type_ignores=[])):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) in ("skip", "xfail"):
          return True
  return False


def test_no_test_skips_itself_over_a_missing_attribute():
  found = {path.relative_to(TESTS).as_posix() for path in TESTS.rglob("*.py")
           if _skips_over_hasattr(ast.parse(path.read_text(encoding="utf-8")))}
  assert found == _HASATTR_SKIPS_PENDING, (
      f"tests that skip over a missing attribute (let them fail instead): {sorted(found)}")
  assert _skips_over_hasattr(ast.parse("if not hasattr(m, 'f'):\n  pytest.skip('later')\n"))
  assert not _skips_over_hasattr(ast.parse("if not hasattr(m, 'f'):\n  x = 1\n"))


def test_tests_marked_slow_by_measured_time_exist():
  # tests/conftest.py marks slow by node id; a renamed test would silently fall back into
  # `make test` and past its time budget.
  # Read by path: the module name `conftest` may already be another folder's conftest.
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("tests_root_conftest", TESTS / "conftest.py")
  root_conftest = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(root_conftest)
  missing = []
  for node_id in root_conftest.SLOW_BY_MEASURED_TIME:
    path, _, name = node_id.partition("::")
    name = name.split("[")[0]
    file = TESTS.parent / path
    if not file.is_file() or name not in {
        node.name for node in ast.walk(ast.parse(file.read_text())) if isinstance(node, ast.FunctionDef)}:
      missing.append(node_id)
  assert not missing, f"tests/conftest.py lists tests that do not exist: {missing}"
