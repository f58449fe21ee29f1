"""Sphinx configuration of the optax_ext documentation: `make docs` builds it.

The source directory is the repository root, so that the design document, the
generated results (bench/RESULTS.md) and their figures are read where they
live and their relative links work on GitHub and here alike; only ``docs/``
and ``bench/RESULTS.md`` are sources. MathJax is copied from the
``sphinx-mathjax-offline`` package into ``_static``, so the site reads its
maths without a network and opens from the file system.
"""

import importlib.util
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "optax_ext"
author = "optax_ext authors"
copyright = "the optax_ext authors, Apache-2.0"  # noqa: A001 (Sphinx's name)

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
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
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autosummary_generate = False

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


def setup(app):
  _mathjax_source()  # fail at the start, not after the build
  app.connect("build-finished", _copy_mathjax)
  app.connect("build-finished", _write_entry_page)
