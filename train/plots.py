"""What the figures of a comparison share: the records they read, smoothing, and files.

Every figure reads telemetry records (:mod:`train.telemetry`): one per logged window
of training steps (window means) and one per evaluation. A run without records is
drawn from its epoch history, converted to the same keys (:func:`records_of`). The
figures themselves are :mod:`train.curves` (loss, metric and learning rate) and
:mod:`train.diagnostic_plots` (what each optimizer logs).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["epoch_axis", "pyplot", "records_of", "save", "series", "smooth", "spans_decades"]


def records_of(result) -> list[dict]:
  """A run's telemetry records, or its epoch history under the same keys."""
  if result.log:
    return result.log
  out = []
  for h in result.history:
    r = {"step": h["step"], "epoch": h["epoch"]}
    for k, v in h.items():
      if k.startswith("train_diag_"):
        r[k[len("train_diag_") :]] = v
      elif k.startswith(("train_", "test_")):
        r[k.replace("_", "/", 1)] = v
    out.append(r)
  return out


def series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """The steps and values of ``key`` over the records that hold it."""
  pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pts)
  return np.asarray(steps, float), np.asarray(values, float)


def smooth(values: np.ndarray, span: float) -> np.ndarray:
  """Debiased exponential moving average with weight ``1 - 1/span``; NaNs are skipped.

  ``out[t] = Σ_{s≤t} w^{t-s} v_s / Σ_{s≤t} w^{t-s}`` over the finite ``v_s``.
  """
  if span <= 1:
    return np.asarray(values, float).copy()
  w = 1.0 - 1.0 / span
  out = np.empty(len(values))
  acc = norm = 0.0
  for i, v in enumerate(values):
    if math.isfinite(v):
      acc, norm = w * acc + v, w * norm + 1.0
    out[i] = acc / norm if norm else math.nan
  return out


def spans_decades(values: np.ndarray) -> bool:
  """Whether positive values span more than two decades (a log scale reads better)."""
  v = values[np.isfinite(values)]
  return v.size > 0 and v.min() > 0 and v.max() / v.min() > 100


def _steps_per_epoch(records: Sequence[dict]) -> Optional[float]:
  for r in records:
    if r.get("epoch"):
      return r["step"] / r["epoch"]
  return None


def epoch_axis(ax, records: Sequence[dict]) -> None:
  """Epochs on the top axis of a panel whose x axis is the step."""
  spe = _steps_per_epoch(records)
  if spe:
    top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
    top.set_xlabel("epoch", fontsize=8)
    top.tick_params(labelsize=7)


def pyplot():
  """matplotlib's pyplot, drawing to files only."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig, path: str, dpi: int = 100) -> str:
  """Writes ``fig`` to ``path`` and closes it."""
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)
  return path
