"""Rebuilds ``bench/RESULTS.md`` from the parts under ``bench/results/``."""

from __future__ import annotations

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

SECTIONS = [
    ("Summary", ["summary.md"], None),
    (
        "Optimizer-update speed",
        ["update_speed_full.md", "update_speed_quick.md"],
        "python -m bench.update_speed",
    ),
    ("Train-step cost", ["train_step_full.md", "train_step_quick.md"], "python -m bench.train_step"),
    ("AngularGrad", ["angulargrad.md"], None),
    ("SP", ["sp_train_full.md", "sp_train_quick.md"], None),
    ("INSGD", ["insgd_train_full.md", "insgd_train_quick.md"], None),
    ("GAL", ["gal_regression_full.md", "gal_regression_quick.md"], None),
]


def _demote(text: str) -> str:
  """Shifts every markdown heading one level down so parts nest under ours."""
  out = []
  for line in text.splitlines():
    out.append("#" + line if line.startswith("#") else line)
  return "\n".join(out)


def _relink(text: str) -> str:
  """Image links written relative to ``results/`` made relative to ``bench/``."""
  return re.sub(
    r"\]\((?!https?:|/|results/)(?:\./)?([^)]+\.(?:png|svg|json|md))\)", r"](results/\1)", text
  )


def build(path: str = os.path.join(HERE, "RESULTS.md")) -> str:
  parts = [
    "# Results",
    "",
    "Every number here was measured by the command named beside it; speed is "
    "always a ratio to an optax baseline timed in the same run, because the "
    "machines are shared and absolute times drift. `python -m bench --quick` "
    "re-runs every part in reduced form, `python -m bench` in full.",
    "",
  ]
  for title, files, command in SECTIONS:
    present = [f for f in files if os.path.exists(os.path.join(RESULTS, f))]
    if not present:
      continue
    parts += [f"## {title}", ""]
    if command:
      variant = "" if present[0].endswith("_full.md") else " --quick"
      parts += [f"Command: `{command}{variant}`", ""]
    with open(os.path.join(RESULTS, present[0])) as f:
      text = _relink(f.read())
    parts += [_demote(text.strip()), ""]
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path
