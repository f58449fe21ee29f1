"""The learning curves of a comparison: loss, test metric and learning rate against steps.

``curves.png``: the training loss per logged window, faint, under its exponential
moving average (debiased as TensorBoard's smoothing is), with the evaluations marked
on it; the test metric next to it; the learning rate when a schedule changes it. The
x axis is the step, with epochs on top, so a one-epoch run and a hundred-epoch run
read alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from train.plots import epoch_axis, pyplot, records_of, series, smooth

__all__ = ["curves_figure"]


def _draw_loss(ax, records, color, name: str) -> None:
  s, v = series(records, "train/loss")
  span = len(v) / 25
  if span > 1.5:
    ax.plot(s, v, color=color, alpha=0.22, linewidth=0.8)
  ax.plot(s, smooth(v, span), color=color, linewidth=1.6, label=name)
  es, ev = series(records, "test/loss")
  ax.plot(es, ev, "o", color=color, markersize=4, markerfacecolor="white")


def _draw_metric(ax, records, color, key: str) -> None:
  s, v = series(records, key.replace("test/", "train/"))
  if v.size:
    ax.plot(s, smooth(v, len(v) / 25), color=color, linewidth=1.0, linestyle="--", alpha=0.6)
  es, ev = series(records, key)
  ax.plot(es, ev, "-o", color=color, markersize=4, linewidth=1.4)


_METRIC = {  # task -> (record key, title) of the curves' second panel
  "classification": ("test/accuracy", "accuracy"),
  "language": ("test/bits_per_byte", "bits per byte"),
}


def curves_figure(results: Sequence, task: str, title: str = ""):
  """Training loss, test metric and (when it changes) learning rate against steps."""
  plt = pyplot()
  runs = [(r.name, records_of(r)) for r in results]
  lr_moves = any(np.ptp(series(rec, "train/lr")[1]) > 0 for _, rec in runs if rec)
  metric, what = _METRIC.get(task, ("test/mae", "MAE"))
  n = 3 if lr_moves else 2
  fig, axes = plt.subplots(1, n, figsize=(5.4 * n, 4.4), squeeze=False)
  axes = axes[0]
  cmap = plt.get_cmap("tab20" if len(runs) > 10 else "tab10")
  for i, (name, rec) in enumerate(runs):
    color = cmap(i % cmap.N)
    _draw_loss(axes[0], rec, color, name)
    _draw_metric(axes[1], rec, color, metric)
    if lr_moves:
      axes[2].plot(*series(rec, "train/lr"), color=color, linewidth=1.4)
  losses = np.concatenate([series(rec, "train/loss")[1] for _, rec in runs] or [np.zeros(0)])
  if losses.size and np.nanmin(losses) > 0:
    axes[0].set_yscale("log")
  axes[0].set_title("training loss: smoothed, raw faint; ○ test loss", fontsize=10)
  axes[1].set_title(f"{what}: ● test, -- training (smoothed)", fontsize=10)
  if lr_moves:
    axes[2].set_title("learning rate", fontsize=10)
    axes[2].set_yscale("log")
  every = runs[0][1] if runs else []
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    epoch_axis(ax, every)
  fig.legend(loc="lower center", ncol=min(len(runs), 5), fontsize=8, frameon=False)
  if title:
    fig.suptitle(title)
  rows = -(-len(runs) // 5)
  fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
  return fig
