"""Renders ``bench/RESULTS.md`` from the JSON results under ``bench/results/``.

Every number in RESULTS.md comes from a ``bench/results/*.json`` file, rendered by the
``render`` function of the part that wrote it (the same function that wrote the part's
own ``.md``, rewritten here so the two stay in step). A part with no result yet is listed as not run; a full run's result is
preferred to a quick one's.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import traceback

from bench import harness

HERE = harness.HERE
RESULTS = harness.RESULTS

# (title, module that renders, JSON stems in order of preference)
SECTIONS = [
  ("Which optimizer, when", "compare", ["compare_full", "compare_medium", "compare_quick"]),
  (
    "Optimizer-update speed, seam on and off",
    "update_speed",
    ["update_speed_full", "update_speed_quick"],
  ),
  ("Copies added by donating the carried state", "donation_copies", ["donation_copies"]),
  ("Train-step cost, seam on and off", "train_step", ["train_step_full", "train_step_quick"]),
  (
    "Training telemetry: logging overhead",
    "telemetry_overhead",
    ["telemetry_overhead_full", "telemetry_overhead_quick"],
  ),
  ("Device mesh", "mesh_step", ["mesh_step_full", "mesh_step_quick"]),
  ("Several processes", "multihost_step", ["multihost_step_full", "multihost_step_quick"]),
  ("AngularGrad: paper checks", "angulargrad_toy", ["angulargrad_toy"]),
  ("AngularGrad: update speed", "angulargrad_speed", ["angulargrad_speed"]),
  ("SP: tie rules and the damping bound", "sp_train", ["sp_train_full", "sp_train_quick"]),
  ("SP: the momentum rule on Rosenbrock", "sp_rosenbrock", ["sp_rosenbrock"]),
  ("SP: speed", "sp_speed", ["sp_speed_full", "sp_speed_quick"]),
  ("INSGD: speed", "insgd_speed", ["insgd_speed_full", "insgd_speed_quick"]),
  (
    "GAL: diabetes, read from the inside",
    "gal_regression",
    ["gal_regression_full", "gal_regression_quick"],
  ),
  ("GAL: speed", "gal_speed", ["gal_speed_full", "gal_speed_quick"]),
  ("Transformer LM: every method", "lm_step", ["lm_step_full", "lm_step_quick"]),
]


def _demote(text: str) -> str:
  """Nests a part's markdown headings under our ``##`` section heading.

  Every heading moves one level down, and none lies more than one level below
  the heading before it (a part may start at ``###``): the documentation site
  renders RESULTS.md and refuses headings that skip a level.
  """
  lines, above = [], 2
  for line in text.splitlines():
    match = re.match(r"(#+) ", line)
    if match:
      level = min(len(match.group(1)) + 1, above + 1)
      line, above = "#" * level + line[len(match.group(1)) :], level
    lines.append(line)
  return "\n".join(lines)


def _relink(text: str) -> str:
  """Links written relative to ``results/`` made relative to ``bench/``."""
  return re.sub(
    r"\]\((?!https?:|/|results/)(?:\./)?([^)]+\.(?:png|svg|json|md))\)", r"](results/\1)", text
  )


def summary() -> list[str]:
  """The speed targets with a pass/fail mark, from the update-speed result."""
  for stem in ("update_speed_full", "update_speed_quick"):
    result = harness.load(stem)
    if result is not None and "targets" in result:
      break
  else:
    return ["No update-speed result with seam on/off yet (`python -m bench.update_speed`)."]
  r50 = result["trees"].get("resnet50", {}).get("methods", {})
  lines = [
    f"From `{stem}.json` ({result.get('command', '')}): the ResNet-50-sized tree, update + "
    "`apply_updates` with the state carried, × `optax.adam` in the same run.",
    "",
    "| method | target | seam on | met | seam off |",
    "|---|---|---|---|---|",
  ]
  for name, target in result["targets"].items():
    on = r50.get(f"{name} | seam on", {}).get("ratio_to_adam")
    off = r50.get(f"{name} | seam off", {}).get("ratio_to_adam")
    lines.append(
      f"| {name} | ≤ {target:g}× | {harness.fmt_ratio(on)} | {harness.verdict(on, target)} "
      f"| {harness.fmt_ratio(off)} |"
    )
  return lines


def fuzz() -> list[str]:
  """The property-based fuzz run (``make fuzz``), from ``results/fuzz.json`` if present."""
  r = harness.load("fuzz")
  if r is None:
    return ["No fuzz result yet: `make fuzz` writes `bench/results/fuzz.json`."]
  seconds = r.get("seconds")
  lines = [
    f"Command: `{r.get('command', 'make fuzz')}`"
    + (f". Machine: {r['machine']}" if r.get("machine") else "")
    + ". Random (pytree × transform × valid hyperparameters × dtype) cases from "
    "tests/_strategies.py, shrinking on, three jitted steps each.",
    "",
    f"Cases: {r.get('cases', '?')}, failures: {r.get('failures', '?')}"
    + (f", {seconds:.0f} s" if isinstance(seconds, (int, float)) and math.isfinite(seconds) else "")
    + ".",
  ]
  per = r.get("per_transform") or {}
  if per:
    keys: list[str] = []
    for v in per.values():
      for k in v if isinstance(v, dict) else ():
        if k not in keys:
          keys.append(k)
    lines += ["", "| transform | " + " | ".join(keys or ["cases"]) + " |"]
    lines.append("|---|" + "---|" * max(1, len(keys)))
    for name, v in per.items():
      cells = [str(v.get(k, "-")) for k in keys] if isinstance(v, dict) else [str(v)]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  findings = r.get("findings") or []
  if findings:
    lines += ["", "Findings:", ""]
    for f in findings:
      lines.append(f"- {f if isinstance(f, str) else _one_line(f)}")
  else:
    lines += ["", "Findings: none."]
  return lines


def _one_line(obj) -> str:
  if isinstance(obj, dict):
    return "; ".join(f"{k}: {v}" for k, v in obj.items())
  return str(obj)


def section(title: str, module: str, stems: list[str]) -> list[str]:
  out = [f"## {title}", ""]
  mod = importlib.import_module(f"bench.{module}")
  for stem in stems:
    result = harness.load(stem)
    if result is None:
      continue
    try:
      text = mod.render(result)
    except Exception:  # a result written by an older version of the part
      detail = traceback.format_exc(limit=1).strip().splitlines()[-1]
      out += [f"`{stem}.json` could not be rendered ({detail}); rerun the part.", ""]
      continue
    with open(os.path.join(RESULTS, f"{stem}.md"), "w") as f:  # the part's own view, in step
      f.write(text.strip() + "\n")
    out += [f"Source: `results/{stem}.json`.", "", _demote(_relink(text.strip())), ""]
    return out + _gpu(module)
  return out + [f"Not run yet: `python -m bench --only {module}`.", ""] + _gpu(module)


def _gpu(module: str) -> list[str]:
  """The part's result from ``make gpu-check`` (``results/<module>_gpu.json``), if any."""
  result = harness.load(f"{module}_gpu")
  if result is None:
    return []
  from bench import gpu_check

  text = f"## On a GPU: {result['device']}\n\n" + _demote(gpu_check.render(result).strip())
  return [f"Source: `results/{module}_gpu.json`.", "", _demote(_relink(text)), ""]


def build(path: str = os.path.join(HERE, "RESULTS.md")) -> str:
  parts = [
    "# Results",
    "",
    "Generated by `python -m bench.report` from `bench/results/*.json`; edit the parts, "
    "not this file. Speed is always a ratio to an optax baseline timed in the same run, "
    "because the machines are shared and absolute times drift. `python -m bench --quick` "
    "re-runs every part in reduced form, `python -m bench` in full.",
    "",
    "## Summary: speed targets",
    "",
    *summary(),
    "",
  ]
  for title, module, stems in SECTIONS:
    parts += section(title, module, stems)
  parts += ["## Fuzz", "", *fuzz(), ""]
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path


if __name__ == "__main__":
  print(build())
