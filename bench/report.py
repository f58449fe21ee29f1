"""Renders ``bench/RESULTS.md`` from the JSON results under ``bench/results/``.

Every number in RESULTS.md comes from a ``bench/results/*.json`` file, rendered by the
``render`` function of the part that wrote it (the same function that wrote the part's
own ``.md``, rewritten here so the two stay in step), or for a method's speed section by
the function that shows that method's rows. A part with no result yet is listed as not
run; a full run's result is preferred to a quick one's.
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

# (title, module, JSON stems in order of preference, the module's render function); a
# method's speed section renders its rows of the update-speed or train-step result.
SECTIONS = [
  (
    "Which optimizer, when",
    "compare",
    ["compare_full", "compare_medium", "compare_quick"],
    "render",
  ),
  ("Optimizer-update speed", "update_speed", ["update_speed_full", "update_speed_quick"], "render"),
  (
    "Copies added by donating the carried state",
    "update_speed",
    ["update_speed_full", "update_speed_quick"],
    "render_copies",
  ),
  ("Train-step cost", "train_step", ["train_step_full", "train_step_quick"], "render"),
  (
    "Training telemetry: logging overhead",
    "telemetry_overhead",
    ["telemetry_overhead_full", "telemetry_overhead_quick"],
    "render",
  ),
  ("Device mesh", "mesh_step", ["mesh_step_full", "mesh_step_quick"], "render"),
  (
    "Several processes",
    "multihost_step",
    ["multihost_step_full", "multihost_step_quick"],
    "render",
  ),
  ("AngularGrad: paper checks", "angulargrad_toy", ["angulargrad_toy"], "render"),
  (
    "AngularGrad: update speed",
    "update_speed",
    ["update_speed_full", "update_speed_quick"],
    "render_angulargrad",
  ),
  (
    "SP: tie rules and the damping bound",
    "sp_train",
    ["sp_train_full", "sp_train_quick"],
    "render",
  ),
  ("SP: the momentum rule on Rosenbrock", "sp_rosenbrock", ["sp_rosenbrock"], "render"),
  ("SP: speed", "update_speed", ["update_speed_full", "update_speed_quick"], "render_sp"),
  ("INSGD: speed", "train_step", ["train_step_full", "train_step_quick"], "render_insgd"),
  (
    "GAL: diabetes, read from the inside",
    "gal_regression",
    ["gal_regression_full", "gal_regression_quick"],
    "render",
  ),
  ("GAL: speed", "train_step", ["train_step_full", "train_step_quick"], "render_gal"),
  ("Transformer LM: every method", "lm_step", ["lm_step_full", "lm_step_quick"], "render"),
  ("Streamed input", "input_stream", ["input_stream_full", "input_stream_quick"], "render"),
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


def _newest(*stems: str) -> tuple[str, dict | None]:
  """The first of ``stems`` with a result (a full run before a quick one)."""
  for stem in stems:
    result = harness.load(stem)
    if result is not None:
      return stem, result
  return stems[-1], None


def _update_summary() -> list[str]:
  from bench import update_speed as us

  stem, result = _newest("update_speed_full", "update_speed_quick")
  r50 = ((result or {}).get("trees") or {}).get("resnet50", {}).get("methods", {})
  if not r50:
    return ["No update-speed result yet (`python -m bench.update_speed`)."]
  lines = [
    f"**Update + `apply_updates`**, the ResNet-50-sized tree, state carried, not donated, × "
    f"`optax.adam` in the same run; donated and seam off beside, for information. From "
    f"`{stem}.json` (`{result['command']}`):",
    "",
    "| method | target | not donated | status | donated | seam off |",
    "|---|---|---|---|---|---|",
  ]
  for name, target in us.TARGETS.items():
    got, donated, off = (r50.get(name + s, {}).get("ratio") for s in ("", us.DONATED, us.SEAM_OFF))
    lines.append(
      f"| {name} | ≤ {target:g}× | {harness.fmt_ratio(got)} | {harness.verdict(got, target)} "
      f"| {harness.fmt_ratio(donated)} | {harness.fmt_ratio(off)} |"
    )
  return lines


def _step_summary() -> list[str]:
  from bench import train_step as ts
  from train.methods import get

  stem, result = _newest("train_step_full", "train_step_quick")
  if result is None or not all(m in result.get("models", {}) for m in ts.TARGET_MODELS):
    return ["No train-step result yet (`python -m bench.train_step`)."]
  names = [n for n in ts.names() if get(n).family]
  head = " | ".join(ts.TARGET_MODELS)
  lines = [
    f"**Whole train step** ÷ the step of the optimizer the method modifies, batch "
    f"{result['batch']}, state carried, not donated; donated beside, for information. From "
    f"`{stem}.json` (`{result['command']}`):",
    "",
    f"| method | base | target | {head} | status | donated: {head.replace(' | ', ', ')} |",
    "|---|---|---|" + "---|" * len(ts.TARGET_MODELS) + "---|---|",
  ]
  for name in names:
    target = ts.TARGETS[get(name).family]
    got = [ts._ratio(result, m, name) for m in ts.TARGET_MODELS]
    donated = [ts._ratio(result, m, name + ts.DONATED) for m in ts.TARGET_MODELS]
    worst = max((g for g in got if g is not None), default=None)
    lines.append(
      f"| {name} | {get(name).base} | ≤ {target:g} | "
      + " | ".join(harness.fmt_ratio(g) for g in got)
      + f" | {harness.verdict(worst, target)} | "
      + ", ".join(harness.fmt_ratio(d) for d in donated) + " |"
    )  # fmt: skip
  head = " | ".join(ts.COMPILE_MODELS)
  lines += [
    "",
    "**Compile time**: the first compile of the whole train step ÷ AdamW's, same run:",
    "",
    f"| method | target | {head} | status |",
    "|---|---|" + "---|" * len(ts.COMPILE_MODELS) + "---|",
  ]
  for name in names:
    target = ts.compile_target(name)
    got = [ts.compile_ratio(result, m, name) for m in ts.COMPILE_MODELS]
    worst = max((g for g in got if g is not None), default=None)
    cells = " | ".join(harness.fmt_ratio(g) for g in got)
    lines.append(f"| {name} | ≤ {target:g}× | {cells} | {harness.verdict(worst, target)} |")
  return lines


def summary() -> list[str]:
  """The speed targets, each with its status, from the update-speed and train-step results."""
  return [*_update_summary(), "", *_step_summary()]


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


def section(title: str, module: str, stems: list[str], render: str = "render") -> list[str]:
  """A ``##`` section: the newest of ``stems`` rendered by ``bench.<module>.<render>``."""
  out = [f"## {title}", ""]
  fn = getattr(importlib.import_module(f"bench.{module}"), render)
  for stem in stems:
    result = harness.load(stem)
    if result is None:
      continue
    try:
      text = fn(result)
    except Exception:  # a result written by an older version of the part
      detail = traceback.format_exc(limit=1).strip().splitlines()[-1]
      out += [f"`{stem}.json` could not be rendered ({detail}); rerun the part.", ""]
      continue
    if render == "render":  # the part's own view, kept in step
      with open(os.path.join(RESULTS, f"{stem}.md"), "w") as f:
        f.write(text.strip() + "\n")
    out += [f"Source: `results/{stem}.json`.", "", _demote(_relink(text.strip())), ""]
    return out + (_gpu(module) if render == "render" else [])
  return out + [f"Not run yet: `python -m bench --only {module}`.", ""]


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
  for title, module, stems, render in SECTIONS:
    parts += section(title, module, stems, render)
  parts += ["## Fuzz", "", *fuzz(), ""]
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path


if __name__ == "__main__":
  print(build())
