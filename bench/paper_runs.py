"""Shared driver of the paper training checks: several optimizers × seeds through
the project's own training loop (``train.loop.train_run``)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import optax

from flax_models import get_model
from train import data as data_lib
from train.errors import NonFiniteLossError
from train.loop import train_run
from train.registry import Optimizer


def optimizer(name: str, tx: optax.GradientTransformation, lr: float, needs=(), norm_order=None):
  return Optimizer(name, tx, lr, frozenset(needs), norm_order)


def compare(
  model_name: str,
  ds: data_lib.Dataset,
  builders: dict[str, Callable[[int], Optimizer]],
  seeds,
  epochs: int,
  batch_size: int,
  metric_fns: dict[str, Callable] | None = None,
):
  """Trains every optimizer with every seed; returns ``{name: [run dicts]}``.

  A run whose loss becomes non-finite is recorded as diverged (accuracy 0.1,
  chance) with the step it stopped at, rather than aborting the comparison.
  """
  out: dict[str, list[dict]] = {}
  steps_per_epoch = data_lib.steps_per_epoch(len(ds.x_train), batch_size)
  for name, build in builders.items():
    for seed in seeds:
      opt = build(steps_per_epoch)
      model = get_model(model_name, ds.num_classes)
      try:
        res = train_run(
          model, opt, ds, epochs=epochs, batch_size=batch_size, seed=seed, progress=False
        )
        row = {
          "seed": seed,
          "diverged": False,
          "history": res.history,
          "test_accuracy": res.final["test_accuracy"],
          "best_test_accuracy": res.final["best_test_accuracy"],
          "train_loss": res.final["train_loss"],
          "sec_per_step": res.seconds_per_step,
        }
        for key, fn in (metric_fns or {}).items():
          row[key] = fn(res)
      except NonFiniteLossError as e:
        row = {
          "seed": seed,
          "diverged": True,
          "message": str(e),
          "test_accuracy": 0.1,
          "best_test_accuracy": float("nan"),
          "train_loss": float("nan"),
        }
      out.setdefault(name, []).append(row)
      print(
        f"{name} seed {seed}: "
        + ("diverged" if row["diverged"] else f"test acc {row['test_accuracy']:.4f}"),
        flush=True,
      )
  return out


def mean_std(rows, key):
  vals = [
    r[key]
    for r in rows
    if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))
  ]
  if not vals:
    return float("nan"), float("nan")
  return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
