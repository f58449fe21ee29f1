"""The library every benchmark shares.

- Timing: medians of repeated jitted calls, the candidates interleaved round-robin so that
  drift on a shared machine hits all alike; ratios to a baseline of the same run.
- Carried state: a timed call that takes the state and returns it, fed back as a training
  loop feeds it (:func:`carried`).
- The CPU fusion seam switched for a block of code (:func:`seam`; docs/design.md,
  Conventions — CPU fusion seam).
- Results: each part writes ``bench/results/<stem>.json`` and a markdown rendering of that
  JSON (:func:`write`); ``bench/report.py`` renders ``bench/RESULTS.md`` from the JSON alone.
- Command lines: one parser with ``--quick`` for every part (:func:`parser`).
- The machine description written into every result, and a matplotlib set up for files.
- The one figure of the speed parts: lines of measurements over sizes or models (:func:`plot`).
- Small helpers of the training checks: an optimizer built outside :mod:`train.methods`, one
  method of each family, and the mean ± std of a column. The optimizer comparison itself is
  ``bench/compare.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# --------------------------------------------------------------------------- timing


def block(tree: Any) -> Any:
  """Waits for every array in ``tree``."""
  return jax.block_until_ready(tree)


def sample_calls(
  fns: dict[str, Callable[[], Any]], reps: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
  """The seconds of every timed call, per name, in round order (see :func:`time_calls`)."""
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  samples: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      block(fn())
      samples[name].append(time.perf_counter() - t0)
  return samples


def summarise(samples: list[float]) -> dict[str, float]:
  """Median, 25th and 75th percentiles and minimum of a list of samples."""
  a = np.asarray(samples)
  return {
    "median": float(statistics.median(samples)),
    "p25": float(np.percentile(a, 25)),
    "p75": float(np.percentile(a, 75)),
    "min": float(a.min()),
  }


def time_calls(
  fns: dict[str, Callable[[], Any]], reps: int = 10, warmup: int = 2
) -> dict[str, dict[str, float]]:
  """Times zero-argument callables, interleaved round-robin.

  Each callable is called ``warmup`` times (compilation), then ``reps`` rounds
  call each once. Returns, per name, the median, the 25th and 75th percentiles
  and the minimum, in seconds.
  """
  return {k: summarise(s) for k, s in sample_calls(fns, reps, warmup).items()}


def paired_ratios(samples: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
  """Per name, the summary of its time ÷ the baseline's time *in the same round*.

  The calls of one round run back to back, so a drift in machine load that
  spans rounds cancels out of each round's ratio; the median of those ratios
  resolves smaller differences than the ratio of the two medians.
  """
  base = np.asarray(samples[baseline])
  return {k: summarise(list(np.asarray(s) / base)) for k, s in samples.items()}


def row(times: dict[str, float], base: dict[str, float] | None = None, key: str = "ratio"):
  """One result row in milliseconds, with the ratio of medians to ``base`` if given."""
  out = {
    "median_ms": 1e3 * times["median"],
    "p25_ms": 1e3 * times["p25"],
    "p75_ms": 1e3 * times["p75"],
    "min_ms": 1e3 * times["min"],
  }
  if base is not None:
    out[key] = times["median"] / base["median"]
  return out


def carried(step: Callable[..., Any], carry: Any, *args: Any) -> Callable[[], Any]:
  """A zero-argument call of ``step(carry, *args) -> (carry, out)`` that feeds the carry back.

  This is how a training loop calls its step: the optimizer state (and parameters) the
  step returns are the ones the next call takes, so a step that donates its inputs, or
  whose speed depends on the state it starts from, is timed as it runs in training.
  ``args`` may hold a callable of the call count, for inputs that change per step.
  """
  holder = {"carry": carry, "n": 0}

  def call():
    xs = [a(holder["n"]) if callable(a) else a for a in args]
    holder["carry"], out = step(holder["carry"], *xs)
    holder["n"] += 1
    return out

  return call


# --------------------------------------------------------------------------- the seam


@contextlib.contextmanager
def seam(on: bool) -> Iterator[None]:
  """The CPU fusion seam set to ``on`` for functions traced inside the block.

  ``jax.jit`` keeps the programs it has traced, so build fresh transformations and
  jitted functions inside the block and compile them there (docs/design.md,
  Conventions — CPU fusion seam).
  """
  from optax_ext import config

  before = config.read("cpu_fusion")
  config.update("cpu_fusion", bool(on))
  try:
    yield
  finally:
    config.update("cpu_fusion", before)


def bytes_accessed(compiled) -> float:
  """The bytes a compiled program reads and writes, by XLA's cost analysis (NaN if none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("bytes accessed", float("nan")))


# --------------------------------------------------------------------------- machine


def machine_description() -> str:
  """One line naming the processor, cores, JAX backend and malloc settings."""
  import platform

  dev = jax.devices()[0]
  kept = "MALLOC_TRIM_THRESHOLD_" in os.environ
  return (
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}); malloc "
    + ("keeps freed memory (make bench's settings)" if kept else "default settings")
  )


# --------------------------------------------------------------------------- command lines


def parser(doc: str | None, quick_help: str = "the reduced version") -> argparse.ArgumentParser:
  """The argument parser every part starts from: its docstring's first line and ``--quick``."""
  ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
  ap.add_argument("--quick", action="store_true", help=quick_help)
  return ap


def tag(quick: bool) -> str:
  return "quick" if quick else "full"


def command(module: str, quick: bool, extra: str = "") -> str:
  """The command line that reproduces a result, written into it."""
  return f"python -m {module}" + (" --quick" if quick else "") + (f" {extra}" if extra else "")


# --------------------------------------------------------------------------- results


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if hasattr(x, "item"):
    return x.item()
  return float(x)


def write(
  stem: str,
  result: dict,
  render: Callable[[dict], str] | None = None,
  directory: str = RESULTS,
) -> str:
  """Writes ``results/<stem>.json`` and, with ``render``, ``results/<stem>.md``.

  The markdown is ``render`` applied to the JSON as read back, the same function
  ``bench/report.py`` applies, so the two never disagree. Returns the markdown.
  ``directory`` replaces ``results/`` (tests write elsewhere).
  """
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{stem}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1, default=_json_default)
  if render is None:
    return ""
  text = render(load(stem, directory)).strip() + "\n"
  with open(os.path.join(directory, f"{stem}.md"), "w") as f:
    f.write(text)
  return text


def load(stem: str, directory: str = RESULTS) -> dict | None:
  """``results/<stem>.json`` as written, or None when absent."""
  path = os.path.join(directory, f"{stem}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def pyplot():
  """matplotlib's pyplot, drawing to files only."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def savefig(fig, name: str, dpi: int = 110, directory: str = RESULTS) -> str:
  """Saves ``fig`` as ``results/<name>`` and closes it; returns the name for a link."""
  os.makedirs(directory, exist_ok=True)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, name), dpi=dpi)
  pyplot().close(fig)
  return name


def fmt_ratio(x: float | None, digits: int = 2) -> str:
  return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def verdict(value: float | None, target: float) -> str:
  """``met`` when ``value <= target``, else ``missed`` (``-`` without a value)."""
  if value is None or not math.isfinite(value):
    return "-"
  return "met" if value <= target else "missed"


def plot(name: str, x, panels: dict, xlabel: str, title: str, hlines=None, log_x=False) -> str:
  """The figure of the speed parts: one panel per ``{ylabel: {label: values over x}}``,
  a line per label; ``x`` holds numbers (sizes) or names (models); ``hlines`` maps a
  panel's ylabel to levels drawn dashed (targets). Saved as ``results/<name>``."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
  pos = np.arange(len(x)) if isinstance(x[0], str) else np.asarray(x, float)
  for ax, (ylabel, lines) in zip(axes[0], panels.items()):
    for label, values in lines.items():
      ax.plot(pos, [np.nan if v is None else v for v in values], marker="o", label=label)
    for level in sorted(set((hlines or {}).get(ylabel, ()))):
      ax.axhline(level, color="k", lw=0.8, ls="--")
    if isinstance(x[0], str):
      ax.set_xticks(pos, x)
    elif log_x:
      ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(title)
  return savefig(fig, name)


# --------------------------------------------------------------------------- training checks


def optimizer(name: str, tx, lr: float, need=None):
  """An optimizer for ``train.loop.train_run``, built outside :mod:`train.methods`;
  ``need``: what its update takes (:mod:`train.steps`; default: a plain gradient)."""
  from train import steps
  from train.registry import Optimizer

  return Optimizer(name, tx, lr, need or steps.Gradient())


def one_per_family() -> list[str]:
  """SGD, the first method of each paper's family, and GAL in front of SGD."""
  from train.methods import METHODS

  firsts = {}
  for name, m in METHODS.items():
    firsts.setdefault(m.family, name)
  return [*firsts.values(), "gal+sgd"]


def mean_std(rows, key) -> tuple[float, float]:
  """Mean and sample standard deviation of ``key`` over rows where it is finite."""
  vals = [
    r[key]
    for r in rows
    if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))
  ]
  if not vals:
    return float("nan"), float("nan")
  return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
