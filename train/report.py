"""Results of a comparison: a printed table, JSON and CSV files, and a figure."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Sequence

from train.loop import RunResult

__all__ = ["plot_curves", "plot_diagnostics", "table", "write_run", "write_summary"]


def _fmt(v, pct=False) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def table(results: Sequence[RunResult], task: str) -> str:
  """A plain-text table, one row per optimizer."""
  if task == "language":
    head = ["optimizer", "test bits/byte", "test acc", "test loss", "final train loss", "ms/step"]
    rows = [
      [
        r.name,
        _fmt(r.final.get("test_bits_per_byte")),
        _fmt(r.final.get("test_accuracy"), True),
        _fmt(r.final.get("test_loss")),
        _fmt(r.final.get("train_loss")),
        _fmt(1e3 * r.seconds_per_step),
      ]
      for r in results
    ]
  elif task == "classification":
    head = ["optimizer", "final test acc", "best test acc", "final train loss", "ms/step"]
    rows = [
      [
        r.name,
        _fmt(r.final.get("test_accuracy"), True),
        _fmt(r.final.get("best_test_accuracy"), True),
        _fmt(r.final.get("train_loss")),
        _fmt(1e3 * r.seconds_per_step),
      ]
      for r in results
    ]
  else:
    head = ["optimizer", "test MAE", "test MSE", "test R2", "final train loss", "ms/step"]
    rows = [
      [
        r.name,
        _fmt(r.final.get("test_mae")),
        _fmt(r.final.get("test_mse")),
        _fmt(r.final.get("test_r2")),
        _fmt(r.final.get("train_loss")),
        _fmt(1e3 * r.seconds_per_step),
      ]
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
