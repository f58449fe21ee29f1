"""Checks the built site for what a reader would see broken: `python docs/check_html.py DIR`.

Sphinx builds without a warning a page whose maths MyST paired wrongly (a `$$`
block glued to a text line): the reader then sees raw ``\\lambda`` and stray
dollars, and prose set as italic maths. This reads every HTML page of the built
site (``make docs`` runs it on ``docs/_build/html``) and reports, one line each:

- raw TeX: a TeX command (``\\name``) or a ``$`` in the text a reader sees,
  outside the maths containers and outside code;
- prose inside maths: a word of four letters or more in a maths container, once
  commands and the arguments of ``\\text``-like commands are removed (``with``,
  ``never`` set as maths);
- a maths container that is not MathJax's ``\\(...\\)`` or ``\\[...\\]``;
- an empty entry in the API reference (a name with no description), or a
  signature showing a raw ``repr`` (``<class 'flax.nnx.variablelib.Param'>``,
  ``<... object>``) instead of a name;
- an image in a page's body that does not open full size on click (not inside a
  link).

Exits 1 when anything is found, so ``make docs`` fails.
"""

from __future__ import annotations

import html.parser
import pathlib
import re
import sys
from dataclasses import dataclass, field

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
# Text in these is code or machinery, not prose: TeX commands and dollars may stand there.
CODE = {"script", "style", "pre", "code", "kbd", "samp", "textarea", "svg"}

TEX_COMMAND = re.compile(r"\\[A-Za-z]+")
# Commands whose argument is text, not maths; their argument is removed before looking for prose.
TEXT_ARGUMENT = re.compile(
  r"\\(?:text|texttt|textrm|textit|textbf|mathrm|mathit|mathbf|mathsf|mathtt|operatorname|mbox"
  r"|begin|end)\s*\{[^{}]*\}"
)
WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass
class Node:
  """One element of a parsed page: its tag, attributes, children and direct text."""

  tag: str
  attrs: dict
  parent: Node | None = None
  children: list = field(default_factory=list)  # Node or str, in document order

  def classes(self) -> set[str]:
    return set((self.attrs.get("class") or "").split())

  def text(self) -> str:
    return "".join(c if isinstance(c, str) else c.text() for c in self.children)

  def walk(self):
    yield self
    for child in self.children:
      if isinstance(child, Node):
        yield from child.walk()

  def ancestors(self):
    node = self.parent
    while node is not None:
      yield node
      node = node.parent


class _TreeBuilder(html.parser.HTMLParser):
  """A small DOM of an HTML page (Sphinx writes well-nested HTML5)."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.root = Node("#document", {})
    self.current = self.root

  def handle_starttag(self, tag, attrs):
    node = Node(tag, dict(attrs), self.current)
    self.current.children.append(node)
    if tag not in VOID:
      self.current = node

  def handle_startendtag(self, tag, attrs):
    self.current.children.append(Node(tag, dict(attrs), self.current))

  def handle_endtag(self, tag):
    node = self.current
    while node is not self.root and node.tag != tag:
      node = node.parent
    if node is not self.root:
      self.current = node.parent

  def handle_data(self, data):
    self.current.children.append(data)


def parse(text: str) -> Node:
  builder = _TreeBuilder()
  builder.feed(text)
  builder.close()
  return builder.root


def _is_math(node: Node) -> bool:
  return "math" in node.classes() and node.tag in ("span", "div")


def _visible_text(node: Node, out: list[str]) -> None:
  """The text a reader sees as prose: everything outside maths and code."""
  for child in node.children:
    if isinstance(child, str):
      out.append(child)
    elif child.tag not in CODE and not _is_math(child) and "highlight" not in child.classes():
      _visible_text(child, out)


def _snippet(text: str, start: int, end: int) -> str:
  return " ".join(text[max(0, start - 40) : end + 40].split())


def _raw_tex(text: str) -> list[str]:
  problems = [
    f"raw TeX {m.group(0)!r}: ...{_snippet(text, m.start(), m.end())}..."
    for m in TEX_COMMAND.finditer(text)
  ]
  problems += [
    f"a stray '$': ...{_snippet(text, m.start(), m.end())}..." for m in re.finditer(r"\$", text)
  ]
  return problems


def _math_problems(node: Node) -> list[str]:
  tex = node.text().strip()
  display = node.tag == "div"
  opening, closing = (r"\[", r"\]") if display else (r"\(", r"\)")
  if not (tex.startswith(opening) and tex.endswith(closing)):
    return [f"maths not in MathJax's delimiters: {' '.join(tex.split())[:80]!r}"]
  body = TEX_COMMAND.sub(" ", TEXT_ARGUMENT.sub(" ", tex[2:-2]))
  words = WORD.findall(body)
  if words:
    return [f"prose inside maths ({', '.join(words[:3])}): {' '.join(tex.split())[:100]!r}"]
  return []


def _empty_api_entries(root: Node) -> list[str]:
  """Descriptions (``dl.py > dd``) of the API reference that say nothing."""
  problems = []
  for node in root.walk():
    if node.tag != "dl" or "py" not in node.classes():
      continue
    terms = [c for c in node.children if isinstance(c, Node) and c.tag == "dt"]
    bodies = [c for c in node.children if isinstance(c, Node) and c.tag == "dd"]
    for term, body in zip(terms, bodies):
      if not body.text().strip():
        name = " ".join(term.text().split()).replace("¶", "").replace("#", "").strip()
        problems.append(f"API entry with no description: {name[:80]}")
  return problems


def _raw_signatures(root: Node) -> list[str]:
  """Signatures that print a default as Python's ``repr`` of it, not as its name."""
  problems = []
  for node in root.walk():
    if node.tag == "dt" and "sig" in node.classes():
      text = " ".join(node.text().split())
      if "<" in text or re.search(r"\bobject\b", text):
        problems.append(f"raw repr in a signature: {text[:100]}")
  return problems


def _unlinked_images(root: Node) -> list[str]:
  problems = []
  for node in root.walk():
    if node.tag != "img" or "_static/" in node.attrs.get("src", ""):
      continue  # the theme's icons
    if not any(a.tag == "a" and a.attrs.get("href") for a in node.ancestors()):
      problems.append(f"image does not open full size (not in a link): {node.attrs.get('src')}")
  return problems


def check_page(text: str) -> list[str]:
  """Every problem a reader would see on one page, one line each."""
  root = parse(text)
  body = next((n for n in root.walk() if n.tag == "article"), None)
  if body is None:  # pages of the theme (search, index of names) have no article
    return []
  seen: list[str] = []
  _visible_text(body, seen)
  problems = _raw_tex("".join(seen))
  for node in body.walk():
    if _is_math(node):
      problems += _math_problems(node)
  return problems + _empty_api_entries(body) + _raw_signatures(body) + _unlinked_images(body)


def check_site(outdir: pathlib.Path) -> list[str]:
  pages = sorted(outdir.rglob("*.html"))
  if not pages:
    return [f"{outdir}: no HTML page (build the site first)"]
  problems = []
  for page in pages:
    if "_static" in page.parts or "_sources" in page.parts:
      continue
    for problem in check_page(page.read_text(encoding="utf-8")):
      problems.append(f"{page.relative_to(outdir)}: {problem}")
  return problems


def main(argv: list[str]) -> int:
  outdir = pathlib.Path(argv[1] if len(argv) > 1 else "docs/_build/html")
  problems = check_site(outdir)
  for problem in problems:
    print(problem)
  pages = sum(1 for p in outdir.rglob("*.html") if "_static" not in p.parts)
  print(f"docs/check_html.py: {len(problems)} problem(s) in {pages} pages of {outdir}")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
