"""The figures of a comparison: learning curves in steps, and diagnostics that scale with depth.

Both read telemetry records (:mod:`train.telemetry`): one per logged window of
training steps (window means) and one per evaluation. A run without records is
drawn from its epoch history, converted to the same keys.

``curves.png``: the training loss per logged window, faint, under its
exponential moving average (debiased as TensorBoard's smoothing is), with the
evaluations marked on it; the test metric next to it; the learning rate when a
schedule changes it. The x axis is the step, with epochs on top, so a one-epoch
run and a hundred-epoch run read alike.

``diagnostics.png``: at most :data:`MAX_PANELS` panels whatever the depth of the
model. Scalar signals are lines, related ones in one panel (AngularGrad's φ
min/mean/max, SP's damping cases, the range of B⁻¹); a per-leaf signal (SP's
pruned fraction and threshold, INSGD's step scale and log-power) is one
leaves × steps heatmap, on a log colour scale where its values span decades. The
headline signals of each method come first: AngularGrad's φ, SP's damping case
and pruned fraction, INSGD's step scale, GAL's use of the adjusted output and
:math:`|r|` (see each method's paper, summarised in docs/design.md).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
  "MAX_PANELS",
  "Panel",
  "curves_figure",
  "diagnostic_keys",
  "diagnostic_panels",
  "diagnostics_figure",
  "heatmap_matrix",
  "records_of",
  "save",
  "series",
  "smooth",
]

#: The most panels a diagnostics figure draws, whatever the depth of the model.
MAX_PANELS = 8
_NOT_DIAGNOSTIC = ("train/", "test/")
_GROUPS = (  # scalar signals of one method drawn in one panel
  (("phi_min", "phi_mean", "phi_max"), "φ over coordinates: min, mean, max"),
  (("diagonal_fraction", "scalar_fraction"), "damping case: fraction of leaves"),
  (("binv_min", "binv_max"), "range of B⁻¹ over the tree"),
)
_FRACTIONS = {"phi_at_floor", "diagonal_fraction", "scalar_fraction", "used_adjusted"}
_TITLES = {
  "phi_at_floor": "fraction of φ at its floor",
  "pruned_total": "pruned fraction, whole model",
  "quantile_passes": "quantile search: counting passes",
  "pruned": "pruned fraction per leaf",
  "threshold": "saliency threshold per leaf",
  "step_scale": "step scale 1/max(log P, ε) per leaf",
  "log_power": "input log-power per leaf",
  "used_adjusted": "adjusted output used (fraction of steps)",
  "remainder": "|r|",
  "cosine": "cosine(adjustment, output gradient)",
  "tentative_loss": "tentative loss",
}
# Headline signals first, then the rest in this order; unknown signals last.
_RANK = {
  s: i
  for i, s in enumerate(
    "phi_mean diagonal_fraction pruned_total step_scale used_adjusted remainder pruned binv_min "
    "threshold log_power phi_at_floor cosine tentative_loss quantile_passes".split()
  )
}


# --------------------------------------------------------------------------- data


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


def _spans_decades(values: np.ndarray) -> bool:
  """Whether positive values span more than two decades (a log scale reads better)."""
  v = values[np.isfinite(values)]
  return v.size > 0 and v.min() > 0 and v.max() / v.min() > 100


def _natural(text: str) -> list:
  """Sort key that puts ``Conv_2`` before ``Conv_10``."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _steps_per_epoch(records: Sequence[dict]) -> Optional[float]:
  for r in records:
    if r.get("epoch"):
      return r["step"] / r["epoch"]
  return None


def _epoch_axis(ax, records: Sequence[dict]) -> None:
  spe = _steps_per_epoch(records)
  if spe:
    top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
    top.set_xlabel("epoch", fontsize=8)
    top.tick_params(labelsize=7)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig, path: str, dpi: int = 100) -> str:
  """Writes ``fig`` to ``path`` and closes it."""
  fig.savefig(path, dpi=dpi)
  _pyplot().close(fig)
  return path


# --------------------------------------------------------------------------- curves


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
  plt = _pyplot()
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
    _epoch_axis(ax, every)
  fig.legend(loc="lower center", ncol=min(len(runs), 5), fontsize=8, frameon=False)
  if title:
    fig.suptitle(title)
  rows = -(-len(runs) // 5)
  fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
  return fig


# --------------------------------------------------------------------------- diagnostics


class Panel(NamedTuple):
  """One panel of the diagnostics figure: lines of scalar signals, or a leaves × steps heatmap."""

  title: str
  kind: str  # "lines" or "heatmap"
  keys: tuple[str, ...]
  labels: tuple[str, ...]
  rank: int


def diagnostic_keys(records: Sequence[dict]) -> list[str]:
  """The diagnostic keys of the records that carry a value somewhere (not all NaN)."""
  keys: dict[str, bool] = {}
  for r in records:
    for k, v in r.items():
      if "/" in k and not k.startswith(_NOT_DIAGNOSTIC):
        keys[k] = keys.get(k, False) or (v is not None and math.isfinite(v))
  return [k for k, informative in keys.items() if informative]


def _split(keys: Sequence[str]) -> dict[str, dict[str, list[str]]]:
  """``{method: {signal: [leaf, ...]}}``; a scalar signal has the one leaf ``""``."""
  out: dict[str, dict[str, list[str]]] = {}
  for key in keys:
    method, signal, *leaf = key.split("/")
    out.setdefault(method, {}).setdefault(signal, []).append("/".join(leaf))
  return out


def _method_panels(method: str, signals: dict[str, list[str]]) -> list[Panel]:
  scalars = [s for s, leaves in signals.items() if leaves == [""]]
  panels = []
  for members, title in _GROUPS:
    if all(m in scalars for m in members):
      keys = tuple(f"{method}/{m}" for m in members)
      rank = min(_RANK.get(m, len(_RANK)) for m in members)
      panels.append(Panel(f"{method}: {title}", "lines", keys, members, rank))
      scalars = [s for s in scalars if s not in members]
  for s in scalars:
    title = f"{method}: {_TITLES.get(s, s)}"
    panels.append(Panel(title, "lines", (f"{method}/{s}",), (s,), _RANK.get(s, len(_RANK))))
  for s, leaves in signals.items():
    if leaves != [""]:
      leaves = sorted(leaves, key=_natural)
      keys = tuple(f"{method}/{s}/{leaf}" for leaf in leaves)
      title = f"{method}: {_TITLES.get(s, s)} ({len(leaves)} leaves)"
      panels.append(Panel(title, "heatmap", keys, tuple(leaves), _RANK.get(s, len(_RANK))))
  return panels


def diagnostic_panels(keys: Sequence[str]) -> tuple[list[Panel], list[Panel]]:
  """The panels to draw, headline signals first, at most :data:`MAX_PANELS`; and those left out."""
  panels = [p for m, sig in _split(keys).items() for p in _method_panels(m, sig)]
  panels.sort(key=lambda p: p.rank)
  return panels[:MAX_PANELS], panels[MAX_PANELS:]


def _draw_lines(ax, records, panel: Panel) -> None:
  """One line per signal; past 50 points the raw values faint under their moving average."""
  values = []
  for key, label in zip(panel.keys, panel.labels):
    s, v = series(records, key)
    if len(v) > 50:
      (raw,) = ax.plot(s, v, linewidth=0.7, alpha=0.3)
      ax.plot(s, smooth(v, len(v) / 25), label=label, linewidth=1.4, color=raw.get_color())
    else:
      ax.plot(s, v, label=label, linewidth=1.2, marker="o" if len(v) <= 30 else None, markersize=3)
    values.append(v)
  if len(panel.keys) > 1:
    ax.legend(fontsize=7, loc="best")
  if _spans_decades(np.concatenate(values)):
    ax.set_yscale("log")
    return
  ax.ticklabel_format(axis="y", useOffset=False)  # a flat line reads as its value
  if set(panel.labels) <= _FRACTIONS:
    ax.set_ylim(-0.03, 1.03)


def _edges(centres: np.ndarray) -> np.ndarray:
  """Cell edges around sorted centres (half-way between neighbours)."""
  if centres.size == 1:
    return np.array([centres[0] - 0.5, centres[0] + 0.5])
  mid = (centres[1:] + centres[:-1]) / 2
  return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def heatmap_matrix(records: Sequence[dict], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """The steps holding ``keys`` and the leaves × steps matrix of their values (NaN if absent)."""
  rows = [r for r in records if any(k in r for k in keys)]
  steps = np.asarray([r["step"] for r in rows], float)
  m = np.asarray([[r.get(k, math.nan) for r in rows] for k in keys], float)
  return steps, m.reshape(len(keys), len(rows))


class _Map(NamedTuple):
  """A heatmap panel's data: the leaves that are ever nonzero, × steps."""

  steps: np.ndarray
  values: np.ndarray
  labels: list[str]
  dropped: int


def _map_of(records, panel: Panel) -> _Map:
  steps, m = heatmap_matrix(records, panel.keys)
  keep = np.flatnonzero(np.any(np.isfinite(m) & (m != 0), axis=1))
  keep = keep if keep.size else np.arange(len(m))
  return _Map(steps, m[keep], [panel.labels[i] for i in keep], len(m) - len(keep))


def _map_height(rows: int) -> float:
  return min(5.0, 1.4 + 0.11 * rows)


def _draw_heatmap(fig, ax, data: _Map) -> None:
  """Leaves × steps, the first leaf on top; log colours where positive values span decades."""
  import matplotlib.colors as mcolors

  m, norm = data.values, None
  if _spans_decades(np.where(m > 0, m, np.nan)):  # zeros (a leaf left alone) show grey
    positive = m[m > 0]
    norm = mcolors.LogNorm(positive.min(), positive.max())
    m = np.where(m > 0, m, np.nan)
  cmap = _pyplot().get_cmap("viridis").with_extremes(bad="0.85")
  mesh = ax.pcolormesh(
    _edges(data.steps), np.arange(len(m) + 1) - 0.5, np.ma.masked_invalid(m), cmap=cmap, norm=norm
  )
  ax.set_ylim(len(m) - 0.5, -0.5)
  fits = int((_map_height(len(m)) - 0.9) * 10)  # about ten 6-point labels per inch
  ticks = np.arange(0, len(m), max(1, math.ceil(len(m) / fits)))
  ax.set_yticks(ticks, [data.labels[i] for i in ticks], fontsize=6)
  fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.03)


def diagnostics_figure(name: str, records: Sequence[dict]):
  """The figure of one run's diagnostics, or None when the optimizer logs none."""
  panels, left_out = diagnostic_panels(diagnostic_keys(records))
  if not panels:
    return None
  plt = _pyplot()
  lines = [p for p in panels if p.kind == "lines"]
  maps = [p for p in panels if p.kind == "heatmap"]
  line_rows = -(-len(lines) // 2)
  data = [_map_of(records, p) for p in maps]
  heights = [2.4] * line_rows + [_map_height(len(d.labels)) for d in data]
  fig = plt.figure(figsize=(12, sum(heights) + 0.5))
  grid = fig.add_gridspec(len(heights), 2, height_ratios=heights)
  axes = []
  for i, p in enumerate(lines):
    axes.append(fig.add_subplot(grid[i // 2, i % 2]))
    _draw_lines(axes[-1], records, p)
  notes = [""] * len(lines)
  for i, d in enumerate(data):
    axes.append(fig.add_subplot(grid[line_rows + i, :]))
    _draw_heatmap(fig, axes[-1], d)
    notes.append(f"; {d.dropped} always 0 left out" if d.dropped else "")
  steps = series(records, "train/loss")[0]
  for ax, p, note in zip(axes, lines + maps, notes):
    ax.set_title(p.title.replace(" leaves)", f" leaves{note})"), fontsize=9)
    if p.kind == "lines":
      ax.grid(alpha=0.3)
    ax.tick_params(axis="x", labelsize=7)
    if steps.size:
      ax.set_xlim(*_edges(np.unique(steps))[[0, -1]])
  axes[-1].set_xlabel("step", fontsize=8)
  more = f"; {len(left_out)} more signals in steps.jsonl and TensorBoard" if left_out else ""
  fig.suptitle(f"{name}: optimizer diagnostics, means over each logged window{more}", fontsize=11)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
  return fig
