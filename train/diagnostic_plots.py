"""The diagnostics figure of a run: what its optimizer logs, in a bounded number of panels.

``diagnostics.png`` holds at most :data:`MAX_PANELS` panels whatever the depth of the
model. Which signals belong together, their titles and their scales come from each
optimizer's description (:class:`train.methods.Diagnostic`): scalar signals are lines,
related ones in one panel (AngularGrad's φ min/mean/max, SP's damping cases, the range
of B⁻¹); a per-leaf signal (SP's pruned fraction and threshold, INSGD's step scale and
log-power) is one leaves × steps heatmap. Each method's headline signals come first
(AngularGrad's φ, SP's damping case and pruned fraction, INSGD's step scale, GAL's use
of the adjusted output and :math:`|r|`; see each method's paper, summarised in
docs/design.md); a signal no description names is drawn alone, last, under its own name.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Optional, Sequence

import numpy as np

from train.methods import Diagnostic
from train.plots import pyplot, series, smooth, spans_decades

__all__ = [
  "MAX_PANELS",
  "Panel",
  "diagnostic_keys",
  "diagnostic_panels",
  "diagnostics_figure",
  "heatmap_matrix",
]

#: The most panels a diagnostics figure draws, whatever the depth of the model.
MAX_PANELS = 8
_NOT_DIAGNOSTIC = ("train/", "test/")
_UNDESCRIBED = (2, 0)  # the rank of a signal no description names: last


class Panel(NamedTuple):
  """One panel of the diagnostics figure: lines of scalar signals, or a leaves × steps heatmap."""

  title: str
  kind: str  # "lines" or "heatmap"
  keys: tuple[str, ...]
  labels: tuple[str, ...]
  rank: tuple[int, int]  # (0 headline / 1 other / 2 undescribed, place in the method's list)
  scale: str = "auto"


def diagnostic_keys(records: Sequence[dict]) -> list[str]:
  """The diagnostic keys of the records that carry a value somewhere (not all NaN)."""
  keys: dict[str, bool] = {}
  for r in records:
    for k, v in r.items():
      if "/" in k and not k.startswith(_NOT_DIAGNOSTIC):
        keys[k] = keys.get(k, False) or (v is not None and math.isfinite(v))
  return [k for k, informative in keys.items() if informative]


def _natural(text: str) -> list:
  """Sort key that puts ``Conv_2`` before ``Conv_10``."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _split(keys: Sequence[str]) -> dict[str, dict[str, list[str]]]:
  """``{prefix: {signal: [leaf, ...]}}``; a scalar signal has the one leaf ``""``."""
  out: dict[str, dict[str, list[str]]] = {}
  for key in keys:
    prefix, signal, *leaf = key.split("/")
    out.setdefault(prefix, {}).setdefault(signal, []).append("/".join(leaf))
  return out


def _described(diagnostics: Optional[Sequence[Diagnostic]]) -> dict[str, tuple[Diagnostic, int]]:
  """Each described signal's :class:`Diagnostic` and its place in its method's list."""
  if diagnostics is None:
    from train.methods import GAL_DIAGNOSTICS, METHODS

    lists = [m.diagnostics for m in METHODS.values()] + [GAL_DIAGNOSTICS]
  else:
    lists = [diagnostics]
  out: dict[str, tuple[Diagnostic, int]] = {}
  for described in lists:
    for place, d in enumerate(described):
      for signal in d.signals:
        out.setdefault(signal.removesuffix("/*"), (d, place))
  return out


def _prefix_panels(prefix: str, signals: dict[str, list[str]], described) -> list[Panel]:
  """The panels of one prefix's signals (one method instance in the optimizer state)."""
  panels, done = [], set()
  for signal, leaves in signals.items():
    if signal in done:
      continue
    d, place = described.get(signal, (None, 0))
    rank = _UNDESCRIBED if d is None else (0 if d.headline else 1, place)
    title, scale = (signal, "auto") if d is None else (d.title, d.scale)
    if leaves != [""]:  # one value per leaf
      leaves = sorted(leaves, key=_natural)
      keys = tuple(f"{prefix}/{signal}/{leaf}" for leaf in leaves)
      title = f"{prefix}: {title} ({len(leaves)} leaves)"
      panels.append(Panel(title, "heatmap", keys, tuple(leaves), rank, scale))
      continue
    group = [signal] if d is None else [s for s in d.signals if signals.get(s) == [""]]
    done.update(group)
    keys = tuple(f"{prefix}/{s}" for s in group)
    panels.append(Panel(f"{prefix}: {title}", "lines", keys, tuple(group), rank, scale))
  return panels


def diagnostic_panels(
  keys: Sequence[str], diagnostics: Optional[Sequence[Diagnostic]] = None
) -> tuple[list[Panel], list[Panel]]:
  """The panels to draw, headline signals first, at most :data:`MAX_PANELS`; and those left out.

  ``diagnostics`` describes the signals (default: every method's descriptions).
  """
  described = _described(diagnostics)
  panels = [p for m, sig in _split(keys).items() for p in _prefix_panels(m, sig, described)]
  panels.sort(key=lambda p: p.rank)
  return panels[:MAX_PANELS], panels[MAX_PANELS:]


def _log_scale(scale: str, values: np.ndarray) -> bool:
  return scale == "log" or (scale == "auto" and spans_decades(values))


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
  if _log_scale(panel.scale, np.concatenate(values)):
    ax.set_yscale("log")
    return
  ax.ticklabel_format(axis="y", useOffset=False)  # a flat line reads as its value
  if panel.scale == "fraction":
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


def _draw_heatmap(fig, ax, data: _Map, scale: str) -> None:
  """Leaves × steps, the first leaf on top, coloured on the panel's scale."""
  import matplotlib.colors as mcolors

  m, norm = data.values, mcolors.Normalize(0.0, 1.0) if scale == "fraction" else None
  if _log_scale(scale, np.where(m > 0, m, np.nan)) and np.any(m > 0):
    positive = m[m > 0]  # zeros (a leaf left alone) show grey
    norm = mcolors.LogNorm(positive.min(), positive.max())
    m = np.where(m > 0, m, np.nan)
  cmap = pyplot().get_cmap("viridis").with_extremes(bad="0.85")
  mesh = ax.pcolormesh(
    _edges(data.steps), np.arange(len(m) + 1) - 0.5, np.ma.masked_invalid(m), cmap=cmap, norm=norm
  )
  ax.set_ylim(len(m) - 0.5, -0.5)
  fits = int((_map_height(len(m)) - 0.9) * 10)  # about ten 6-point labels per inch
  ticks = np.arange(0, len(m), max(1, math.ceil(len(m) / fits)))
  ax.set_yticks(ticks, [data.labels[i] for i in ticks], fontsize=6)
  fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.03)


def diagnostics_figure(
  name: str, records: Sequence[dict], diagnostics: Optional[Sequence[Diagnostic]] = None
):
  """The figure of one run's diagnostics, or None when the optimizer logs none.

  ``diagnostics``: the optimizer's description of its signals (default: every method's).
  """
  panels, left_out = diagnostic_panels(diagnostic_keys(records), diagnostics)
  if not panels:
    return None
  plt = pyplot()
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
    _draw_heatmap(fig, axes[-1], d, maps[i].scale)
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
