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
import importlib.util
import inspect
import pathlib
import pkgutil
import re
import sys

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


# The site as a reader sees it: docs/check_html.py, run by make docs on the built pages.


def _check_html():
  spec = importlib.util.spec_from_file_location("check_html", ROOT / "docs" / "check_html.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules.setdefault("check_html", module)  # dataclasses look their module up
  spec.loader.exec_module(module)
  return sys.modules["check_html"]


def _page(body: str) -> str:
  return f"<!DOCTYPE html><html><body><article>{body}</article></body></html>"


def test_html_check_passes_a_clean_page():
  page = _page(
    '<p>With <span class="math notranslate nohighlight">\\(\\lambda_1 \\ge 0\\)</span>, see'
    ' <code>$HOME</code>:</p><div class="math notranslate nohighlight">'
    "\\[u_t = -\\alpha_t\\,(d_t + w_t\\,\\theta_t)\\ \\ (\\text{alias; on masked-in leaves})\\]"
    '</div><pre>price = "$5" \\lambda</pre>'
    '<dl class="py function"><dt class="sig">f(wrt=nnx.Param)</dt><dd><p>Doc.</p></dd></dl>'
    '<a href="x.png"><img src="x.png"></a>'
  )
  assert _check_html().check_page(page) == []


@pytest.mark.parametrize(
  "body, problem",
  [
    # What MyST made of design.md's maths when a $$ block followed a text line.
    ("<p>with $0/0 = 0$, $x/0 = \\infty$ (never NaN)</p>", "raw TeX '\\\\infty'"),
    ("<p>the bound $b_{max}$ holds</p>", "a stray '$'"),
    (
      '<p><span class="math notranslate nohighlight">\\(x/0 = \\infty\\) with never NaN\\)</span></p>',
      "prose inside maths",
    ),
    ('<p><span class="math">x^2</span></p>', "maths not in MathJax's delimiters"),
    ('<dl class="py attribute"><dt class="sig">powers</dt><dd></dd></dl>', "no description"),
    (
      '<dl class="py function"><dt class="sig">f(wrt=&lt;class \'flax.nnx.Param\'&gt;)</dt>'
      "<dd><p>Doc.</p></dd></dl>",
      "raw repr in a signature",
    ),
    ('<p><img src="../_images/curves.png"></p>', "does not open full size"),
  ],
)
def test_html_check_finds_what_a_reader_sees_broken(body, problem):
  problems = _check_html().check_page(_page(body))
  assert len(problems) >= 1 and problem in problems[0], problems


def test_cli_help_prints_each_default_once_within_the_page_width(monkeypatch):
  # docs/training.md shows `python -m train --help` at docs/conf.py's HELP_COLUMNS (88).
  from train.cli import build_parser

  monkeypatch.setenv("COLUMNS", "88")
  text = build_parser().format_help()
  assert max(len(line) for line in text.splitlines()) <= 88
  for option in re.split(r"\n  (?=-)", text):
    assert len(re.findall(r"\(default", option)) <= 1, option
    assert "(default: None)" not in option and "(default: False)" not in option, option


def _pyproject():
  import tomllib

  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_one_version_everywhere():
  import optax_ext

  changelog = (ROOT / "CHANGELOG.md").read_text()
  newest = re.search(r"^## (\S+)", changelog, flags=re.M).group(1)
  assert _pyproject()["version"] == optax_ext.__version__ == newest
  assert f"version = {{{optax_ext.__version__}}}" in (ROOT / "docs" / "citing.md").read_text()


def test_the_library_depends_on_the_four_core_packages_only():
  names = [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in _pyproject()["dependencies"]]
  assert sorted(names) == ["chex", "flax", "jax", "optax"]
  assert {"train", "bench", "docs", "dev"} <= set(_pyproject()["optional-dependencies"])


def test_license_is_the_apache_license_pyproject_names():
  assert _pyproject()["license"] == "Apache-2.0"
  text = (ROOT / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text


def test_citing_page_has_an_entry_for_the_library_and_each_paper():
  text = (ROOT / "docs" / "citing.md").read_text()
  entries = re.findall(r"^@(\w+)\{", text, flags=re.M)
  assert len(entries) == 5, entries
  for title in (
    "Spectral Proximal Method and Saliency Matrix for Robust Deep Learning Optimization",
    "A New Optimization Technique for Angular Convergence",
    "Input Normalized Stochastic Gradient Descent Training",
    "Learning to Minimize the Remainder in Supervised Learning",
  ):
    assert title in text, title


def test_one_example_per_method_two_in_linen_two_in_nnx():
  # make docs runs every script of examples/ (docs/_ext/examples_gallery.py).
  scripts = sorted((ROOT / "examples").glob("*.py"))
  methods = [s.stem.split("_")[0] for s in scripts]
  assert sorted(methods) == ["angulargrad", "gal", "insgd", "sp"], methods
  apis = [s.stem.split("_")[1] for s in scripts]
  assert sorted(apis) == ["linen", "linen", "nnx", "nnx"], apis
  for script in scripts:
    text = script.read_text()
    api = "import flax.linen as nn" if "linen" in script.stem else "from flax import nnx"
    assert api in text, f"{script.name}: not written with {api!r}"
    assert "load_digits" in text or "load_diabetes" in text, f"{script.name}: data that ships"
    assert "flax_models" not in text, f"{script.name}: an example defines its own model"
