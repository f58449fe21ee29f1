"""Rebuilds ``bench/RESULTS.md`` from the parts under ``bench/results/``."""

from __future__ import annotations

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

SECTIONS = [
  ("Summary", ["summary.md"], None),
  (
    "Optimizer-update speed, every method",
    ["update_speed_full.md", "update_speed_quick.md"],
    "python -m bench.update_speed",
  ),
  (
    "Train-step cost, every method",
    ["train_step_full.md", "train_step_quick.md"],
    "python -m bench.train_step",
  ),
  ("Device mesh", ["mesh_step_full.md", "mesh_step_quick.md"], "python -m bench.mesh_step"),
  ("AngularGrad: paper checks", ["angulargrad.md"], None),
  ("AngularGrad: update speed", ["angulargrad_speed.md"], None),
  ("SP: paper checks", ["sp.md", "sp_train_full.md", "sp_train_quick.md"], None),
  ("SP: speed", ["sp_speed_full.md", "sp_speed_quick.md", "sp_speed.md"], None),
  ("INSGD: paper checks", ["insgd.md", "insgd_train_full.md", "insgd_train_quick.md"], None),
  ("INSGD: speed", ["insgd_speed_full.md", "insgd_speed_quick.md", "insgd_speed.md"], None),
  ("GAL: paper checks", ["gal.md", "gal_regression_full.md", "gal_regression_quick.md"], None),
  ("GAL: speed", ["gal_speed_full.md", "gal_speed_quick.md", "gal_speed.md"], None),
]


def _demote(text: str) -> str:
  """Shifts every markdown heading one level down so parts nest under ours."""
  out = []
  lines = text.splitlines()
  if lines and lines[0].startswith("# "):  # the part's own title: ours replaces it
    lines = lines[1:]
  for line in lines:
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
  used = {f for _, files, _ in SECTIONS for f in files}
  others = sorted(f for f in os.listdir(RESULTS) if f.endswith(".md") and f not in used)
  for name in others:  # any other part, so nothing measured is left out
    with open(os.path.join(RESULTS, name)) as f:
      parts += [f"## {name[:-3]}", "", _demote(_relink(f.read()).strip()), ""]
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path
