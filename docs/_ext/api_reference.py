"""The API reference: one page per public module, each opening with a summary table.

Before Sphinx reads the sources, :func:`write_pages` writes ``docs/api/<module>.rst``
for every public module of the packages (a module or package with no ``_``-prefixed
part): its title, its docstring, a table of its public names (``__all__``) with the
first paragraph of each docstring, then one autodoc entry per name. A name that a
package re-exports is documented once, at the package (``optax_ext.sp``, as users
write it), and the module's page links there. ``docs/api.md`` gets the table of
modules (:func:`modules_table`). The pages are generated, so ``docs/api/`` is not
kept in git; a page is rewritten only when its text changes.

Signatures are cleaned for reading (:func:`clean_signature`): defaults print as
their name (``wrt=nnx.Param``, ``dtype=jnp.float32``, ``activation=nn.relu``), and
a linen module's ``parent`` and ``name`` fields are left out.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pathlib
import pkgutil

from sphinx.pycode import ModuleAnalyzer
from sphinx.util.nodes import make_refnode

PACKAGES = ("optax_ext", "flax_models", "train")
API_DIR = "docs/api"
MODULES_PLACEHOLDER = "<!-- the reference is generated here by docs/conf.py -->"

# Where a default's class or function is documented, the prefix users write it with.
SHORT_PREFIXES = (
  ("jax.numpy.", "jnp."),
  ("flax.nnx.", "nnx."),
  ("flax.linen.", "nn."),
  ("jax.nn.", "jax.nn."),
  ("optax.", "optax."),
  ("jax.", "jax."),
)
# Public namespaces searched for a default value, to print it by its public name.
PUBLIC_NAMESPACES = ("jax.nn", "jax.numpy", "flax.nnx", "flax.linen", "optax", "jax")
NAMESPACE_PREFIX = {"jax.numpy": "jnp", "flax.nnx": "nnx", "flax.linen": "nn"}


def public_modules(root: pathlib.Path) -> list[str]:
  """The importable modules of PACKAGES with no ``_``-prefixed part, each package first."""
  names = []
  for package in PACKAGES:
    names.append(package)
    for info in pkgutil.walk_packages([str(root / package)], prefix=package + "."):
      if not any(part.startswith("_") for part in info.name.split(".")):
        names.append(info.name)
  return names


def _reexported(package: str, module) -> set[str]:
  """Names of ``module.__all__`` that its package re-exports: documented at the package."""
  top = importlib.import_module(package)
  return {
    name
    for name in getattr(module, "__all__", ())
    if name in getattr(top, "__all__", ()) and getattr(top, name) is getattr(module, name)
  }


def attribute_doc(root: pathlib.Path, package: str, name: str) -> list[str]:
  """The ``#:`` comment or docstring of a module-level ``name`` in any module of ``package``.

  Constants and ``functools.partial`` models are documented where a package
  re-exports them, while their comment sits in the module that defines them.
  """
  modules = [package] + [
    info.name for info in pkgutil.walk_packages([str(root / package)], prefix=package + ".")
  ]
  for module in modules:
    docs = ModuleAnalyzer.for_module(module).find_attr_docs()
    if ("", name) in docs:
      return [line for line in docs["", name] if line is not None]
  raise ValueError(f"{package}: {name} has no docstring (tests/test_docs.py says where)")


def _first_paragraph(lines: list[str]) -> str:
  paragraph = []
  for line in lines:
    if not line.strip():
      if paragraph:
        break
      continue
    paragraph.append(line.strip())
  return " ".join(paragraph)


def summary(root: pathlib.Path, qualified: str, obj) -> str:
  """The first paragraph of a name's documentation: its line in a summary table."""
  if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
    return _first_paragraph((inspect.getdoc(obj) or "").splitlines())
  return _first_paragraph(
    attribute_doc(root, qualified.split(".")[0], qualified.rpartition(".")[2])
  )


def _directive(root: pathlib.Path, qualified: str, obj) -> str:
  """The autodoc directive of one public name; ``py:data`` with its source comment for data."""
  if inspect.isclass(obj):
    linen = any(base.__module__ == "flax.linen.module" for base in obj.__mro__)
    plain = issubclass(obj, tuple) or linen  # fields: in the docstring's Attributes
    return f".. autoclass:: {qualified}" + ("" if plain else "\n   :members:")
  if inspect.isroutine(obj):
    return f".. autofunction:: {qualified}"
  doc = attribute_doc(root, qualified.split(".")[0], qualified.rpartition(".")[2])
  module, _, name = qualified.rpartition(".")
  return "\n".join([f".. py:data:: {name}", f"   :module: {module}", "", *("   " + l for l in doc)])


def _table(rows: list[tuple[str, str]], css_class: str) -> list[str]:
  """An RST list-table of (reference, text) rows."""
  out = [".. list-table::", f"   :class: {css_class}", "   :widths: 30 70", ""]
  for reference, text in rows:
    out += [f"   * - {reference}", f"     - {text or ' '}"]
  return out + [""]


def module_page(root: pathlib.Path, name: str) -> str:
  """The RST page of one public module: title, docstring, summary table, entries."""
  module = importlib.import_module(name)
  package, (parent, _, last) = name.split(".")[0], name.rpartition(".")
  again = _reexported(package, module) if name != package else set()
  public = [n for n in getattr(module, "__all__", ()) if n not in again]
  public = [n for n in public if not inspect.ismodule(getattr(module, n))]
  # A module named like a function of its package (optax_ext.gal) is not indexed, so that
  # the name means the function.
  shadowed = bool(parent) and not inspect.ismodule(getattr(importlib.import_module(parent), last))
  lines = [f"``{name}``", "=" * (len(name) + 4), "", f".. automodule:: {name}", "   :no-members:"]
  lines += ["   :no-index:" if shadowed else "", ""]
  if public:
    rows = [
      (f":py:obj:`{n} <{name}.{n}>`", summary(root, f"{name}.{n}", getattr(module, n)))
      for n in public
    ]
    lines += _table(rows, "api-summary")
  if again:
    names = ", ".join(f":py:obj:`{package}.{n}`" for n in sorted(again))
    lines += [f"Documented under ``{package}``: {names}.", ""]
  for n in public:
    lines += [_directive(root, f"{name}.{n}", getattr(module, n)), ""]
  return "\n".join(lines)


def write_pages(root: pathlib.Path) -> list[str]:
  """Writes the page of every public module into ``docs/api/``; returns their docnames."""
  folder = root / API_DIR
  folder.mkdir(parents=True, exist_ok=True)
  names = public_modules(root)
  wanted = {f"{name}.rst": module_page(root, name) for name in names}
  for stale in folder.glob("*.rst"):
    if stale.name not in wanted:
      stale.unlink()
  for filename, text in wanted.items():
    path = folder / filename
    if not path.exists() or path.read_text() != text:
      path.write_text(text)
  return [f"{API_DIR}/{name}" for name in names]


def modules_table(root: pathlib.Path) -> str:
  """MyST for ``docs/api.md``: per package, a table of its modules, and the hidden toctree."""
  names = public_modules(root)
  out = []
  for package in PACKAGES:
    rows = [
      (f":doc:`{name} <api/{name}>`", summary(root, name, importlib.import_module(name)))
      for name in names
      if name.split(".")[0] == package
    ]
    out += [f"## `{package}`", "", "```{eval-rst}", *_table(rows, "api-modules"), "```", ""]
  out += ["```{toctree}", ":hidden:", "", *(f"api/{name}" for name in names), "```", ""]
  return "\n".join(out)


class _Shown:
  """A default value printed as given (``inspect.Signature`` prints defaults by ``repr``)."""

  def __init__(self, text: str):
    self.text = text

  def __repr__(self) -> str:
    return self.text


def _public_name(value) -> str | None:
  """How users write ``value``: ``jnp.float32``, ``nnx.Param``, ``nn.relu``, or None."""
  for namespace in PUBLIC_NAMESPACES:
    module = importlib.import_module(namespace)
    for attribute in ("__name__", "name"):
      name = getattr(value, attribute, None)
      if isinstance(name, str) and getattr(module, name, None) is value:
        return f"{NAMESPACE_PREFIX.get(namespace, namespace)}.{name}"
  if inspect.isclass(value) or inspect.isroutine(value):
    path = f"{value.__module__}.{value.__qualname__}"
    for long, short in SHORT_PREFIXES:
      if path.startswith(long):
        return short + path[len(long) :]
    return value.__qualname__
  return None


def _shown_default(default):
  if repr(default).startswith("<"):
    name = _public_name(default)
    return _Shown(name if name is not None else "...")
  return default


def _field_defaults(cls) -> dict:
  """Dataclass fields made by a factory: shown as the value the factory makes (``[]``)."""
  if not dataclasses.is_dataclass(cls):
    return {}
  return {
    f.name: _Shown(repr(f.default_factory()))
    for f in dataclasses.fields(cls)
    if f.default_factory is not dataclasses.MISSING and f.default_factory in (list, dict, tuple)
  }


def clean_signature(app, what, name, obj, options, signature, return_annotation):
  """``autodoc-process-signature``: defaults by name, no linen ``parent``/``name``."""
  if what not in ("class", "function") or not signature or "<" not in signature:
    return None
  try:
    sig = inspect.signature(obj)
  except (TypeError, ValueError):
    return None
  linen = inspect.isclass(obj) and any(b.__module__ == "flax.linen.module" for b in obj.__mro__)
  factories = _field_defaults(obj) if inspect.isclass(obj) else {}
  params = []
  for p in sig.parameters.values():
    if linen and p.name in ("parent", "name"):
      continue
    default = factories.get(p.name, p.default)
    if default is not inspect.Parameter.empty:
      default = _shown_default(default)
    params.append(p.replace(annotation=inspect.Parameter.empty, default=default))
  sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
  return str(sig), return_annotation


def package_level(app, env, node, contnode):
  """``missing-reference``: a name cited where it is not documented, resolved to what is.

  ``:func:`sp``` in ``optax_ext.spectral_proximal`` means ``optax_ext.sp``: the
  reference is tried as ``<package>.<name>`` for each package. A method or
  attribute without an entry of its own (``Checkpointer.save``, ``init`` in a
  class's docstring) links to its class, whose docstring describes it.
  """
  if node.get("refdomain") != "py":
    return None
  objects = env.get_domain("py").objects
  target = node["reftarget"]
  module, cls = node.get("py:module"), node.get("py:class")
  candidates = [f"{package}.{target.rpartition('.')[2]}" for package in PACKAGES]
  for prefix in filter(None, [f"{module}.{cls}" if module and cls else None, module]):
    candidates.append(f"{prefix}.{target}")
  if "." in target and node.get("reftype") in ("meth", "attr"):  # Class.member: its class
    owner = target.rpartition(".")[0]
    candidates += [owner] + ([f"{module}.{owner}"] if module else [])
  elif module and cls and node.get("reftype") in ("meth", "attr"):  # a member of this class
    candidates.append(f"{module}.{cls}")
  for name in candidates:
    entry = objects.get(name)
    if entry is not None:
      return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode)
  return None
