"""Every public name has a docstring, and the documentation's pages cite what exists.

The API reference of the documentation site (``make docs``) is generated from the
``__all__`` of every public module of the three packages; a name without a
docstring would appear there empty. Functions, classes and modules carry their
own docstring (not the one ``NamedTuple`` or ``dataclass`` writes for them);
constants carry one in the source, as a string right after the assignment or a
``#:`` comment above it, which is where Sphinx reads it.
"""

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("optax_ext", "flax_models", "train")


def public_modules():
  """Names of the importable modules of PACKAGES with no ``_``-prefixed part."""
  names = []
  for package in PACKAGES:
    names.append(package)
    path = [str(ROOT / package)]
    for info in pkgutil.walk_packages(path, prefix=package + "."):
      if not any(part.startswith("_") for part in info.name.split(".")):
        names.append(info.name)
  return sorted(names)


MODULES = public_modules()


def _attribute_docs(source: str) -> set[str]:
  """Names assigned at module level with a docstring after them or a ``#:`` comment above."""
  tree, lines, found = ast.parse(source), source.splitlines(), set()
  body = tree.body
  for index, node in enumerate(body):
    if isinstance(node, ast.Assign):
      targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      targets = [node.target.id]
    else:
      continue
    after = body[index + 1] if index + 1 < len(body) else None
    documented_after = (
      isinstance(after, ast.Expr)
      and isinstance(after.value, ast.Constant)
      and isinstance(after.value.value, str)
      and after.value.value.strip()
    )
    documented_above = node.lineno >= 2 and lines[node.lineno - 2].lstrip().startswith("#:")
    if documented_after or documented_above:
      found.update(targets)
  return found


def _package_attribute_docs(package: str) -> set[str]:
  found = set()
  for path in (ROOT / package).rglob("*.py"):
    found |= _attribute_docs(path.read_text())
  return found


ATTRIBUTE_DOCS = {package: _package_attribute_docs(package) for package in PACKAGES}


def _own_docstring(obj) -> str:
  if inspect.isclass(obj):
    doc = obj.__dict__.get("__doc__") or ""
    return "" if re.match(rf"{re.escape(obj.__name__)}\(", doc) else doc
  return inspect.getdoc(obj) or ""


def _is_documentable(obj) -> bool:
  return inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)


def test_every_package_is_walked():
  assert {"optax_ext", "optax_ext.angulargrad", "optax_ext.published.sp", "train.steps"} <= set(
    MODULES
  )
  assert not any("._" in name for name in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_public_module_has_docstring(name):
  module = importlib.import_module(name)
  assert (module.__doc__ or "").strip(), f"{name} has no module docstring"


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "optax_ext"])
def test_optax_ext_module_declares_all(name):
  assert hasattr(importlib.import_module(name), "__all__"), f"{name} has no __all__"


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_has_a_docstring(name):
  module = importlib.import_module(name)
  missing = []
  for public in getattr(module, "__all__", ()):
    assert hasattr(module, public), f"{name}.__all__ lists {public!r}, which it lacks"
    obj = getattr(module, public)
    if _is_documentable(obj):
      documented = bool(_own_docstring(obj).strip())
    else:
      documented = public in ATTRIBUTE_DOCS[name.split(".")[0]]
    if not documented:
      missing.append(public)
  assert not missing, f"{name}: no docstring for {', '.join(missing)}"


def test_the_checks_see_a_missing_docstring():
  def undocumented():
    pass

  class Bare(tuple):
    pass

  assert not _own_docstring(undocumented) and not _own_docstring(Bare)
  assert _attribute_docs('A = 1\n"""Doc."""\n#: Doc.\nB = 2\nC = 3\n') == {"A", "B"}


def test_method_pages_include_sections_that_exist():
  # The method pages include the design document and the results by these markers.
  design = (ROOT / "docs" / "design.md").read_text()
  results = (ROOT / "bench" / "RESULTS.md").read_text()
  for page in sorted((ROOT / "docs" / "methods").glob("*.md")):
    text = page.read_text()
    for marker in re.findall(r':(?:start-after|end-before): "([^"]+)"', text):
      assert marker in design or marker in results, f"{page.name}: {marker!r} found nowhere"
