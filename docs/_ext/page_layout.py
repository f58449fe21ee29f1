"""How included results and figures are laid out in the pages.

- A section that a page includes from ``bench/RESULTS.md`` (a method page's "The
  paper's claims beside ours") becomes a heading that is not a section
  (:func:`results_headings`): it reads as a heading of the same level, but adds
  nothing to the page's table of contents, which stays the page's own.
- Every figure opens full size on click (:func:`link_images`): Sphinx links only
  the images given a size, so the others are linked here the same way.
"""

from __future__ import annotations

import posixpath

from docutils import nodes

RESULTS_SOURCE = "bench/RESULTS.md"


def _depth(node: nodes.Node) -> int:
  depth, parent = 0, node.parent
  while parent is not None:
    depth += isinstance(parent, nodes.section)
    parent = parent.parent
  return depth


def results_headings(app, doctree) -> None:
  """``doctree-read``, before the table of contents is collected: included results sections
  become rubrics of their heading level, their content kept in place."""
  if app.env.docname == RESULTS_SOURCE.removesuffix(".md"):
    return
  included = [
    (section, _depth(section) + 1)
    for section in doctree.findall(nodes.section)
    if (section.source or "").replace("\\", "/").endswith(RESULTS_SOURCE)
  ]
  for section, level in included:
    title = section[0]
    rubric = nodes.rubric(title.rawsource, "", *title.children, ids=section["ids"])
    rubric["heading-level"] = min(level, 6)
    section.replace_self([rubric, *section.children[1:]])


def link_images(builder) -> None:
  """Wraps the HTML builder's image handling: images not in a link get one to themselves."""
  original = builder.post_process_images

  def post_process_images(doctree) -> None:
    original(doctree)
    for image in list(doctree.findall(nodes.image)):
      if isinstance(image.parent, nodes.reference):
        continue
      uri = image["uri"]
      target = (
        posixpath.join(builder.imgpath, builder.images[uri]) if uri in builder.images else uri
      )
      reference = nodes.reference("", "", internal=True, refuri=target)
      image.replace_self(reference)
      reference.append(image)

  builder.post_process_images = post_process_images
