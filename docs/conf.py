"""Sphinx configuration of the optax_ext documentation: `make docs` builds it.

The source directory is the repository root, so that the design document, the
generated results (bench/RESULTS.md) and their figures are read where they
live and their relative links work on GitHub and here alike; only ``docs/``,
``CHANGELOG.md`` and ``bench/RESULTS.md`` are sources. MathJax is copied from
the ``sphinx-mathjax-offline`` package into ``_static``, so the site reads its
maths without a network and opens from the file system.

Generated at build time (not kept in git): the page of each public module
(``docs/api/``, by ``docs/_ext/api_reference.py``), the examples gallery with
each example's output and figure (``docs/examples/``, by
``docs/_ext/examples_gallery.py``, which runs every script of ``examples/``),
and the command line's ``--help`` in docs/training.md. After the build,
``docs/check_html.py`` reads every page for raw TeX and other breakage.
"""

import importlib.util
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import api_reference  # noqa: E402
import examples_gallery  # noqa: E402
import page_layout  # noqa: E402

import optax_ext  # noqa: E402

project = "optax_ext"
author = "optax_ext authors"
copyright = "the optax_ext authors, Apache-2.0"  # noqa: A001 (Sphinx's name)
version = release = optax_ext.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.intersphinx",
  "sphinx_copybutton",
  "myst_parser",
]

root_doc = "docs/index"
include_patterns = [
  "docs/**",
  "bench/RESULTS.md",
  "bench/results/*.png",
  "CHANGELOG.md",
]
exclude_patterns = [
  ".venv",
  ".git",
  "runs",
  "out",
  "docs/_build",
  "docs/_inventories",
  "**/__pycache__",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4

# Links into other projects' documentation come from inventories kept in the repository
# (docs/_inventories/README.md says where each comes from), so the build reads no network.
# Only Python's ships in a package (Debian's python3.11-doc); names of jax, optax, flax and
# the rest are printed as text.
intersphinx_mapping = {
  "python": ("https://docs.python.org/3.11/", str(ROOT / "docs" / "_inventories" / "python.inv")),
}

# Python objects: the documented names resolve (nitpicky, make docs passes -n);
# names of other libraries without an inventory are left as text.
nitpick_ignore_regex = [
  (
    "py:.*",
    r"(jax|jaxlib|optax|flax|chex|numpy|np|jnp|nn|nnx|typing|collections|pathlib|matplotlib|tensorboardX|orbax|tqdm|concurrent|grain|tensorflow_datasets|tfds)\..*",
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
# A class's Attributes section gives one entry per attribute (autodoc adds no undocumented
# member, so each is listed once).
napoleon_use_ivar = False
napoleon_attr_annotations = False  # no types in entries, as in signatures (autodoc_typehints)

html_theme = "furo"
html_title = f"optax_ext {release}"
html_static_path = ["_static"]  # relative to docs/, the configuration directory
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_copy_source = False

# The copy button copies the commands of a doctest without its prompts and output.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

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


HELP_PLACEHOLDER = "<!-- python -m train --help is written here by docs/conf.py -->"
HELP_COLUMNS = 88  # what a code block of the page shows without scrolling


def cli_help():
  """``python -m train --help``, as the parser prints it, in a code block."""
  from train.cli import build_parser

  os.environ["COLUMNS"] = str(HELP_COLUMNS)  # argparse wraps to the terminal's width
  return "```text\n" + build_parser().format_help().rstrip() + "\n```"


def _generate(app):
  """Before reading: the API pages, the example pages, and the examples started."""
  api_reference.write_pages(ROOT)
  examples_gallery.start(ROOT)
  if app.builder.format == "html":
    page_layout.link_images(app.builder)


def _fill_generated(app, docname, source):
  """Writes the generated parts into the pages that hold their placeholders."""
  if docname == "docs/api":
    source[0] = source[0].replace(
      api_reference.MODULES_PLACEHOLDER, api_reference.modules_table(ROOT)
    )
  if docname == "docs/training":
    source[0] = source[0].replace(HELP_PLACEHOLDER, cli_help())
  if docname.startswith(examples_gallery.PAGES_DIR + "/"):
    examples_gallery.wait(ROOT)


def _always_regenerate(app, env, added, changed, removed):
  """The pages whose source is the code are read again on every build."""
  return [
    "docs/api",
    "docs/training",
    *(f"{api_reference.API_DIR}/{n}" for n in api_reference.public_modules(ROOT)),
  ]


def _finish_examples(app, exc):
  """No example is left running when a build stops early."""
  examples_gallery.wait(ROOT)


def setup(app):
  _mathjax_source()  # fail at the start, not after the build
  app.connect("builder-inited", _generate)
  app.connect("source-read", _fill_generated)
  app.connect("env-get-outdated", _always_regenerate)
  app.connect("doctree-read", page_layout.results_headings, priority=100)
  app.connect("missing-reference", api_reference.package_level)
  app.connect("autodoc-process-signature", api_reference.clean_signature)
  app.connect("build-finished", _copy_mathjax)
  app.connect("build-finished", _write_entry_page)
  app.connect("build-finished", _finish_examples)
