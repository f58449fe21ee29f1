"""Results of a comparison: a printed table, JSON and CSV files, and a figure."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Sequence

import numpy as np

from train.loop import RunResult


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
  """One PNG: training loss and the test metric per epoch, one line per optimizer."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  metric, label = {
    "classification": ("test_accuracy", "test accuracy"),
    "language": ("test_bits_per_byte", "test bits per byte"),
  }.get(task, ("test_mae", "test MAE"))
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  cmap = plt.get_cmap("tab20" if len(results) > 10 else "tab10")
  styles = ["-", "--", "-.", ":"]
  for i, r in enumerate(results):
    if not r.history:
      continue
    ep = [h["epoch"] for h in r.history]
    kw = dict(color=cmap(i % cmap.N), linestyle=styles[(i // 10) % 4], marker="o", markersize=3)
    axes[0].plot(ep, [h["train_loss"] for h in r.history], label=r.name, **kw)
    axes[1].plot(ep, [h[metric] for h in r.history], label=r.name, **kw)
  axes[0].set_yscale("log")
  axes[0].set_title("training loss (epoch mean)")
  axes[1].set_title(label)
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8, loc="best", ncol=2 if len(results) > 6 else 1)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def diagnostic_keys(result: RunResult) -> list[str]:
  """The optimizer-diagnostic columns recorded in a run's history."""
  return sorted({k for h in result.history for k in h if k.startswith("train_diag_")})


def plot_diagnostics(result: RunResult, path: str) -> str | None:
  """One PNG of the optimizer's own signals per epoch (epoch means); None if none."""

  def informative(key):  # drop leaves a method leaves alone (all 0, or all NaN)
    vals = np.array([h.get(key, np.nan) for h in result.history], dtype=float)
    return not (np.all(np.isnan(vals)) or np.all(vals == 0))

  keys = [k for k in diagnostic_keys(result) if informative(k)]
  if not keys:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cols = min(4, len(keys))
  rows = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
  ep = [h["epoch"] for h in result.history]
  for ax, key in zip(axes.flat, keys):
    ax.plot(ep, [h.get(key, float("nan")) for h in result.history], marker="o", markersize=3)
    ax.set_title(key[len("train_diag_") :], fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys) :]:
    ax.axis("off")
  fig.suptitle(f"{result.name}: optimizer diagnostics (epoch means)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
