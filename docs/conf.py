"""Sphinx configuration of the optax_ext documentation: `make docs` builds it.

The source directory is the repository root, so that the design document, the
generated results (bench/RESULTS.md) and their figures are read where they
live and their relative links work on GitHub and here alike; only ``docs/``
and ``bench/RESULTS.md`` are sources. MathJax is copied from the
``sphinx-mathjax-offline`` package into ``_static``, so the site reads its
maths without a network and opens from the file system.
"""

import importlib
import importlib.util
import inspect
import os
import pathlib
import pkgutil
import shutil
import sys

from sphinx.pycode import ModuleAnalyzer
from sphinx.util.nodes import make_refnode

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "optax_ext"
author = "optax_ext authors"
copyright = "the optax_ext authors, Apache-2.0"  # noqa: A001 (Sphinx's name)

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "myst_parser",
]

root_doc = "docs/index"
include_patterns = ["docs/**", "bench/RESULTS.md", "bench/results/*.png"]
exclude_patterns = [".venv", ".git", "runs", "out", "docs/_build", "**/__pycache__"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4

# Python objects: the documented names resolve (nitpicky, make docs passes -n);
# names of other libraries are left as text, as no inventory is fetched.
nitpick_ignore_regex = [
  (
    "py:.*",
    r"(jax|jaxlib|optax|flax|chex|numpy|np|jnp|nn|nnx|typing|collections|pathlib|matplotlib|tensorboardX|orbax|tqdm|concurrent)\..*",
  ),
  (
    "py:.*",
    r"(Any|Callable|Sequence|Mapping|Iterable|Iterator|NamedTuple|Union|Optional|ArrayTree|PyTree|Array|Params|Updates|Schedule|ScalarOrSchedule|Literal|Self)",
  ),
  (
    "py:.*",
    r"(int|float|str|bool|bytes|dict|list|tuple|object|None|type|callable|optional|array|array-like|pytree)",
  ),
]
autodoc_typehints = "none"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes sections as fields: dataclass members stay single

html_theme = "furo"
html_title = "optax_ext"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False

MATHJAX_FILES = ("tex-svg-full.js", "ui", "a11y", "sre", "input", "output/svg.js", "output/svg")
mathjax_path = "mathjax/tex-svg-full.js"
mathjax3_config = {"tex": {"tags": "ams"}}


def _mathjax_source() -> pathlib.Path:
  spec = importlib.util.find_spec("sphinx-mathjax-offline")
  if spec is None or spec.origin is None:
    raise RuntimeError("the docs need the sphinx-mathjax-offline package: pip install -e '.[docs]'")
  return pathlib.Path(spec.origin).parent / "static" / "mathjax"


def _copy_mathjax(app, exc):
  """Copies the MathJax files the pages load into the site's _static folder."""
  if exc is not None or app.builder.format != "html":
    return
  source, target = _mathjax_source(), pathlib.Path(app.outdir) / "_static" / "mathjax"
  for name in MATHJAX_FILES:
    src, dst = source / name, target / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      shutil.copy2(src, dst)


def _write_entry_page(app, exc):
  """index.html at the site's root, forwarding to docs/index.html (opens from the file system)."""
  if exc is not None or app.builder.format != "html":
    return
  page = '<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=docs/index.html">'
  page += '<a href="docs/index.html">optax_ext documentation</a>\n'
  (pathlib.Path(app.outdir) / "index.html").write_text(page)


PACKAGES = ("optax_ext", "flax_models", "train")
API_PLACEHOLDER = "<!-- the reference is generated here by docs/conf.py -->"


def public_modules():
  """The importable modules of PACKAGES with no ``_``-prefixed part, packages first."""
  names = []
  for package in PACKAGES:
    names.append(package)
    for info in pkgutil.walk_packages([str(ROOT / package)], prefix=package + "."):
      if not any(part.startswith("_") for part in info.name.split(".")):
        names.append(info.name)
  return names


def _reexported(package, module):
  """Names of ``module.__all__`` that its package re-exports: documented at the package."""
  top = importlib.import_module(package)
  return {
    name
    for name in getattr(module, "__all__", ())
    if name in getattr(top, "__all__", ()) and getattr(top, name) is getattr(module, name)
  }


def _attribute_doc(package, name):
  """The ``#:`` comment or docstring of a module-level ``name`` in any module of ``package``.

  Constants and ``functools.partial`` models are documented where a package
  re-exports them, while their comment sits in the module that defines them.
  """
  modules = [package] + [
    info.name for info in pkgutil.walk_packages([str(ROOT / package)], prefix=package + ".")
  ]
  for module in modules:
    docs = ModuleAnalyzer.for_module(module).find_attr_docs()
    if ("", name) in docs:
      return [line for line in docs["", name] if line is not None]
  raise ValueError(f"{package}: {name} has no docstring (tests/test_docs.py says where)")


def _directive(qualified, obj):
  """The directive for one public object: autodoc's, or ``py:data`` with its source comment."""
  if inspect.isclass(obj):
    linen = any(base.__module__ == "flax.linen.module" for base in obj.__mro__)
    plain = issubclass(obj, tuple) or linen  # fields: in the docstring's Attributes
    return f".. autoclass:: {qualified}" + ("" if plain else "\n   :members:\n   :undoc-members:")
  if inspect.isroutine(obj):
    return f".. autofunction:: {qualified}"
  doc = _attribute_doc(qualified.split(".")[0], qualified.rpartition(".")[2])
  module, _, name = qualified.rpartition(".")
  return "\n".join(
    [f".. py:data:: {name}", f"   :module: {module}", "", *("   " + line for line in doc)]
  )


def api_reference():
  """MyST for every public module: its docstring and each name of its ``__all__``.

  A name that the package re-exports is documented once, under the package
  (``optax_ext.sp``, as users write it). Modules without ``__all__`` (the
  command line's internals) show their docstring only. A module that shares
  its name with a function of the package (``optax_ext.sp``) is not indexed,
  so that ``optax_ext.sp`` names the function.
  """
  out = []
  for name in public_modules():
    module = importlib.import_module(name)
    package, (parent, _, last) = name.split(".")[0], name.rpartition(".")
    again = _reexported(package, module) if name != package else set()
    public = [n for n in getattr(module, "__all__", ()) if n not in again]
    public = [n for n in public if not inspect.ismodule(getattr(module, n))]
    shadowed = bool(parent) and not inspect.ismodule(getattr(importlib.import_module(parent), last))
    lines = [f".. automodule:: {name}\n   :no-members:" + ("\n   :no-index:" if shadowed else "")]
    lines += [_directive(f"{name}.{n}", getattr(module, n)) for n in public]
    out += [f"## `{name}`", "", "```{eval-rst}", "\n\n".join(lines), "```", ""]
    if again:
      names = ", ".join(f"{{obj}}`{package}.{n}`" for n in sorted(again))
      out += [f"Documented under `{package}`: {names}.", ""]
  return "\n".join(out)


def _package_level(app, env, node, contnode):
  """Resolves a name that a module's docstring cites as its own but its package documents.

  ``:func:`sp``` in ``optax_ext.spectral_proximal`` means ``optax_ext.sp``: the
  reference is tried as ``<package>.<name>`` for each package.
  """
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"].rpartition(".")[2]
  objects = env.get_domain("py").objects
  for package in PACKAGES:
    entry = objects.get(f"{package}.{target}")
    if entry is not None:
      return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode)
  return None


HELP_PLACEHOLDER = "<!-- python -m train --help is written here by docs/conf.py -->"


def cli_help():
  """``python -m train --help``, as the parser prints it, in a code block."""
  from train.cli import build_parser

  os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
  return "```text\n" + build_parser().format_help().rstrip() + "\n```"


def _fill_generated(app, docname, source):
  """Writes the generated parts into the pages that hold their placeholders."""
  if docname == "docs/api":
    source[0] = source[0].replace(API_PLACEHOLDER, api_reference())
  if docname == "docs/training":
    source[0] = source[0].replace(HELP_PLACEHOLDER, cli_help())


def _always_regenerate(app, env, added, changed, removed):
  """The generated pages are read again on every build: their source is the code."""
  return ["docs/api", "docs/training"]


def setup(app):
  _mathjax_source()  # fail at the start, not after the build
  app.connect("build-finished", _copy_mathjax)
  app.connect("build-finished", _write_entry_page)
  app.connect("source-read", _fill_generated)
  app.connect("env-get-outdated", _always_regenerate)
  app.connect("missing-reference", _package_level)
