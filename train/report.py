"""Results of a comparison: a printed table, JSON and CSV files, and a figure."""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
from typing import Sequence

from train import telemetry
from train.loop import RunResult

__all__ = [
  "RUN_FILES",
  "SUMMARY_FILES",
  "TRAIN_LOSS_COLUMN",
  "claim_outputs",
  "discard_outputs",
  "files_in",
  "plot_curves",
  "plot_diagnostics",
  "table",
  "write_run",
  "write_summary",
]

#: What a run writes in its optimizer's folder besides ``checkpoints/``: the metrics
#: (:func:`write_run`), the telemetry (:class:`train.telemetry.RunWriter`) and the
#: diagnostics figure; patterns as :mod:`fnmatch` reads them.
RUN_FILES = (
  "metrics.json",
  "metrics.csv",
  telemetry.JSONL,
  telemetry.CSV,
  "events.out.tfevents.*",
  "diagnostics.png",
)
#: What a command writes in its output folder: the summary (:func:`write_summary`) and
#: the curves (:func:`plot_curves`).
SUMMARY_FILES = ("results.json", "results.csv", "curves.png")


def _fmt(v, pct=False) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def files_in(directory: str, patterns: Sequence[str]) -> list[str]:
  """The files of ``directory`` whose names match one of ``patterns``, sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(
    n
    for n in os.listdir(directory)
    if os.path.isfile(os.path.join(directory, n)) and any(fnmatch.fnmatch(n, p) for p in patterns)
  )


def claim_outputs(out: str, run_dirs: Sequence[str], args) -> list[str]:
  """Readies ``out`` for a command's runs (``run_dirs``) as its options ``args`` say:
  refuses to mix new runs with old checkpoints unless ``--resume`` or ``--overwrite``;
  with ``--overwrite`` (and not ``--resume``), process 0 removes what earlier runs
  wrote (:func:`discard_outputs`) and the lines saying so are returned.

  Raises:
    UsageError: a run folder holds checkpoints and neither option was given.
  """
  from train import checkpoint, distributed
  from train.errors import UsageError

  for run in run_dirs:
    steps = checkpoint.steps_in(os.path.join(run, "checkpoints"))
    if steps and not (args.resume or args.overwrite):
      raise UsageError(
        f"{os.path.join(run, 'checkpoints')} holds checkpoints (steps "
        f"{', '.join(map(str, steps))}): pass --resume to continue or --overwrite to discard them"
      )
  notes = []
  if args.overwrite and not args.resume and distributed.is_primary():
    notes = [f"--overwrite: {note}" for note in discard_outputs(out, run_dirs)]
  distributed.barrier("claim-outputs")
  return notes


def discard_outputs(out: str, run_dirs: Sequence[str]) -> list[str]:
  """Removes what a command wrote: in each of ``run_dirs`` its checkpoint steps
  (:func:`train.checkpoint.discard`) and :data:`RUN_FILES`, in ``out`` the
  :data:`SUMMARY_FILES`; nothing else. Returns one line per folder saying what went."""
  from train import checkpoint

  notes = []
  for run in run_dirs:
    steps, kept = checkpoint.discard(os.path.join(run, "checkpoints"))
    files = files_in(run, RUN_FILES)
    for name in files:
      os.remove(os.path.join(run, name))
    events = sum(n.startswith("events.out.tfevents.") for n in files)
    parts = [", ".join(n for n in files if not n.startswith("events.out.tfevents."))]
    parts.append(f"{events} TensorBoard event file{'s' * (events != 1)}" if events else "")
    if steps:
      parts.insert(0, "checkpoints of steps " + ", ".join(map(str, steps)))
    if any(parts):
      left = f" (left {', '.join(kept)} in checkpoints/)" if kept else ""
      notes.append(f"removed {'; '.join(filter(None, parts))} from {run}{left}")
  summary = files_in(out, SUMMARY_FILES)
  for name in summary:
    os.remove(os.path.join(out, name))
  if summary:
    notes.append(f"removed {', '.join(summary)} from {out}")
  return notes


#: The table's header for ``train_loss``: the mean of the training loss over the
#: last epoch's steps (the history's per-epoch mean), not the loss of the last step.
TRAIN_LOSS_COLUMN = "train loss (last epoch mean)"

# Per task: (header, key in RunResult.final, as a percentage).
_COLUMNS = {
  "language": [
    ("test bits/byte", "test_bits_per_byte", False),
    ("test acc", "test_accuracy", True),
    ("test loss", "test_loss", False),
  ],
  "classification": [
    ("final test acc", "test_accuracy", True),
    ("best test acc", "best_test_accuracy", True),
  ],
  "regression": [
    ("test MAE", "test_mae", False),
    ("test MSE", "test_mse", False),
    ("test R2", "test_r2", False),
  ],
}


def table(results: Sequence[RunResult], task: str) -> str:
  """A plain-text table, one row per optimizer: the final evaluation on the test split,
  the training loss as :data:`TRAIN_LOSS_COLUMN` says, and milliseconds per step."""
  columns = _COLUMNS.get(task, _COLUMNS["regression"]) + [(TRAIN_LOSS_COLUMN, "train_loss", False)]
  head = ["optimizer"] + [c[0] for c in columns] + ["ms/step"]
  rows = [
    [r.name]
    + [_fmt(r.final.get(key), pct) for _, key, pct in columns]
    + [_fmt(1e3 * r.seconds_per_step)]
    for r in results
  ]
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_run(result: RunResult, directory: str) -> None:
  """Writes one run's per-epoch metrics as ``metrics.json`` and ``metrics.csv``."""
  os.makedirs(directory, exist_ok=True)
  payload = {
    "optimizer": result.name,
    "final": result.final,
    "seconds_per_step": result.seconds_per_step,
    "steps": result.steps,
    "history": result.history,
  }
  with open(os.path.join(directory, "metrics.json"), "w") as f:
    json.dump(payload, f, indent=2)
  if result.history:
    keys = sorted({k for h in result.history for k in h}, key=lambda k: (k != "epoch", k))
    with open(os.path.join(directory, "metrics.csv"), "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=keys)
      w.writeheader()
      w.writerows(result.history)


def write_summary(results: Sequence[RunResult], directory: str, config: dict) -> None:
  """Writes ``results.json`` and ``results.csv`` with one row per optimizer."""
  os.makedirs(directory, exist_ok=True)
  rows = [{"optimizer": r.name, "seconds_per_step": r.seconds_per_step, **r.final} for r in results]
  with open(os.path.join(directory, "results.json"), "w") as f:
    json.dump({"config": config, "results": rows}, f, indent=2)
  keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "optimizer", k))
  with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)


def plot_curves(results: Sequence[RunResult], task: str, path: str, title: str = "") -> str:
  """``curves.png``: loss, test metric and learning rate against steps (:mod:`train.curves`)."""
  from train import curves, plots

  return plots.save(curves.curves_figure(results, task, title), path, dpi=110)


def plot_diagnostics(result: RunResult, path: str, diagnostics=None) -> str | None:
  """``diagnostics.png``: at most eight panels of the optimizer's signals, as its
  ``diagnostics`` describe them (:mod:`train.diagnostic_plots`); None if it logs none."""
  from train import diagnostic_plots, plots

  fig = diagnostic_plots.diagnostics_figure(result.name, plots.records_of(result), diagnostics)
  return None if fig is None else plots.save(fig, path, dpi=100)
