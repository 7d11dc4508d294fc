"""The test tree itself: pytest's default import mode names a test module by its basename
(outside packages), so two `test_x.py` files in different folders break collection."""
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
    if "fixtures" in path.parts or path.name == "__init__.py":
      continue
    names[_module_name(path)].append(str(path.relative_to(TESTS)))
  clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
  # sharded_run.py helpers are scripts run in a subprocess, never imported by pytest.
  clashes.pop("sharded_run", None)
  assert not clashes, f"test modules that share an import name: {clashes}"
