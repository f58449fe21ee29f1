"""The examples gallery: every script of ``examples/`` is run by the build and shown with its output.

When the build starts (:func:`start`), each ``examples/*.py`` is started in its own
process with a figure path under ``docs/examples/``; the processes run while Sphinx
reads the other pages, and the first example page read waits for them
(:func:`wait`). A script that fails fails the build with its error. Each example
gets a page (``docs/examples/<name>.md``: the script's docstring, the code, the
printed output and the figure) and the gallery ``docs/examples/index.md`` a row
with the figure. The pages and outputs are generated, so ``docs/examples/`` is
not kept in git.

A script's output is kept and the script not rerun while neither the script nor
the library's sources (``optax_ext/``) have changed since it ran (``<name>.key``);
a fresh clone, as in CI, runs every example.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pathlib
import subprocess
import sys
import time

from sphinx.errors import ExtensionError

EXAMPLES_DIR = "examples"
PAGES_DIR = "docs/examples"
_RUNNING: dict[str, tuple[subprocess.Popen, float]] = {}


def scripts(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted((root / EXAMPLES_DIR).glob("*.py"))


def _docstring(script: pathlib.Path) -> tuple[str, int]:
  """The script's docstring and the line after it."""
  tree = ast.parse(script.read_text())
  doc = ast.get_docstring(tree)
  if not doc:
    raise ExtensionError(f"{script.name}: an example opens with a docstring (its page's text)")
  return doc, tree.body[0].end_lineno + 1


def _key(root: pathlib.Path, script: pathlib.Path) -> str:
  digest = hashlib.sha256(script.read_bytes())
  for path in sorted((root / "optax_ext").rglob("*.py")):
    digest.update(path.read_bytes())
  return digest.hexdigest()


def start(root: pathlib.Path) -> None:
  """Writes the pages and starts every example whose output is missing or out of date."""
  out = root / PAGES_DIR
  out.mkdir(parents=True, exist_ok=True)
  found = scripts(root)
  for stale in out.iterdir():
    if stale.stem not in {s.stem for s in found} and stale.stem != "index":
      stale.unlink()
  env = dict(os.environ, MPLBACKEND="Agg")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
  for script in found:
    _write_if_changed(out / f"{script.stem}.md", _page(script))
    key = _key(root, script)
    outputs = [out / f"{script.stem}.{suffix}" for suffix in ("out", "png", "key")]
    if all(p.exists() for p in outputs) and outputs[2].read_text() == key:
      continue
    (out / f"{script.stem}.key").unlink(missing_ok=True)
    log = open(out / f"{script.stem}.out", "w")  # noqa: SIM115 (closed when the process ends)
    process = subprocess.Popen(  # run as a reader would, the figure written beside the page
      [sys.executable, str(script), f"{script.stem}.png"],
      cwd=out,
      env=env,
      stdout=log,
      stderr=subprocess.PIPE,
      text=True,
    )
    _RUNNING[script.stem] = (process, time.perf_counter())
    log.close()
  _write_if_changed(out / "index.md", _gallery(found))


def wait(root: pathlib.Path) -> None:
  """Waits for the examples still running; raises with the error of any that failed."""
  failed = []
  for stem, (process, started) in list(_RUNNING.items()):
    _, stderr = process.communicate()
    del _RUNNING[stem]
    if process.returncode != 0:
      failed.append(f"examples/{stem}.py failed ({process.returncode}):\n{stderr[-3000:]}")
      continue
    (root / PAGES_DIR / f"{stem}.key").write_text(_key(root, root / EXAMPLES_DIR / f"{stem}.py"))
    print(f"examples/{stem}.py ran in {time.perf_counter() - started:.1f} s")
  if failed:
    raise ExtensionError("\n".join(failed))


def _title(doc: str) -> str:
  return doc.splitlines()[0].rstrip(".")


def _page(script: pathlib.Path) -> str:
  doc, code_start = _docstring(script)
  title, _, body = doc.partition("\n")
  source = f"../../{EXAMPLES_DIR}/{script.name}"
  return "\n".join(
    [
      f"# {_title(title)}",
      "",
      body.strip(),
      "",
      f"The script, {{download}}`{script.name} <{source}>`:",
      "",
      f"```{{literalinclude}} {source}",
      ":language: python",
      f":lines: {code_start}-",
      "```",
      "",
      "## What it printed",
      "",
      "Run by `make docs` when this page was built:",
      "",
      f"```{{literalinclude}} {script.stem}.out",
      ":language: text",
      "```",
      "",
      f"![The figure {script.name} drew]({script.stem}.png)",
      "",
    ]
  )


def _gallery(found: list[pathlib.Path]) -> str:
  lines = [
    "# Examples",
    "",
    "```{include} ../../examples/README.md",
    ":start-line: 2",
    ':end-before: "| script |"',
    "```",
    "",
    "| | |",
    "|---|---|",
  ]
  for script in found:
    doc, _ = _docstring(script)
    thumbnail = f"[![{script.stem}]({script.stem}.png)]({script.stem}.md)"
    lines.append(f"| {thumbnail} | [{_title(doc)}]({script.stem}.md) (`{script.name}`) |")
  toctree = ["```{toctree}", ":hidden:", "", *(s.stem for s in found), "```"]
  return "\n".join(lines + ["", *toctree, ""])


def _write_if_changed(path: pathlib.Path, text: str) -> None:
  if not path.exists() or path.read_text() != text:
    path.write_text(text)
