"""The comparison protocol: the same tuning budget for every optimizer, then fresh seeds.

For each workload (:mod:`bench.workloads`) and optimizer (:mod:`bench.spaces`):

1. ``trials`` configurations are drawn from the optimizer's search space by a scrambled
   Sobol sequence (:class:`scipy.stats.qmc.Sobol`, the same seed for every optimizer, so
   each gets the same quantiles of its ranges); each is trained on the training split less
   the validation split, with seed 0 for all (the same initialisation and batch order), and
   scored on the validation split. The test split is not read.
2. The configuration with the best final validation metric is trained again on the whole
   training split with ``seeds`` fresh seeds and scored on the test split.

Every run goes through the training loop (:func:`train.loop.train_run`), evaluated
``Size.evals`` times; its curve gives the steps to the workload's target, and the loop's
seconds per step (compilation and evaluation excluded) the time to it. A run whose loss
becomes non-finite is recorded as diverged.

Every run's record is appended to a JSON-lines file per workload as soon as it ends, so
an interrupted study resumes where it stopped: records of the same run (workload,
optimizer, phase, index, configuration and budget) are read back instead of re-run, and
a line cut short by the interruption is ignored.

References: Kasimbeg et al., *Accelerating neural network training: an analysis of the
AlgoPerf competition*, ICLR 2025 (tuning budgets, time to target); Schneider, Balles,
Hennig, *DeepOBS*, ICLR 2019 (protocol); Dolan & Moré, *Benchmarking optimization
software with performance profiles*, Math. Program. 91, 2002.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Iterable, Optional

import numpy as np

from bench.spaces import Candidate
from bench.workloads import Size, Workload

__all__ = [
  "Store",
  "TUNING_SEED",
  "best_trial",
  "run_key",
  "run_one",
  "run_pair",
  "seed_list",
  "unit_points",
]

TUNING_SEED = 0
FIRST_SEED = 100  # the re-runs' seeds: 100, 101, ... (never the tuning seed)


def unit_points(dims: int, n: int, seed: int = 0) -> np.ndarray:
  """``n`` points of a scrambled Sobol sequence in [0, 1)^dims (the first n of it)."""
  from scipy.stats import qmc

  with (
    warnings.catch_warnings()
  ):  # balance properties need n = 2^m; any prefix is still low-discrepancy
    warnings.simplefilter("ignore", UserWarning)
    return qmc.Sobol(dims, scramble=True, seed=seed).random(n)


def seed_list(k: int) -> list[int]:
  return list(range(FIRST_SEED, FIRST_SEED + k))


def run_key(workload: str, optimizer: str, phase: str, index: int, config: dict, size: Size) -> str:
  """The identity of one run: what it trains and on what budget."""
  cfg = ",".join(f"{k}={v:.6g}" for k, v in sorted(config.items()))
  budget = f"e{size.epochs}b{size.batch_size}n{size.train_size}t{size.test_size}v{size.evals}"
  budget += "".join(f"{k}{v}" for k, v in size.model_kw)
  return f"{workload}|{optimizer}|{phase}{index}|{cfg}|{budget}"


class Store:
  """One workload's run records, as JSON lines appended as runs end."""

  def __init__(self, path: str):
    self.path = path
    self.records: dict[str, dict] = {}
    if not os.path.exists(path):
      return
    with open(path, "rb") as f:
      raw = f.read()
    keep = raw.rfind(b"\n") + 1
    if keep < len(raw):  # a line cut short by an interruption: drop it before appending
      with open(path, "r+b") as f:
        f.truncate(keep)
    for line in raw[:keep].decode().splitlines():
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(r, dict) and "key" in r:
        self.records[r["key"]] = r

  def get(self, key: str) -> Optional[dict]:
    return self.records.get(key)

  def add(self, record: dict) -> None:
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    with open(self.path, "a") as f:
      f.write(json.dumps(record, default=float) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.records[record["key"]] = record


def _curve(log: Iterable[dict], metric: str) -> list[list[float]]:
  key = f"test/{metric}"
  return [[int(r["step"]), float(r[key])] for r in log if key in r]


def _first_reached(curve, workload: Workload, target: float) -> Optional[int]:
  for step, value in curve:
    if workload.reached(value, target):
      return int(step)
  return None


def run_one(
  workload: Workload, cand: Candidate, config: dict, ds, size: Size, seed: int
) -> dict[str, Any]:
  """Trains once through :func:`train.loop.train_run`; the record of the run."""
  from train import data as data_lib
  from train.errors import NonFiniteLossError
  from train.loop import train_run

  opt = cand.build(config, ds.num_classes, ds.task, seed=seed)
  steps = size.epochs * data_lib.steps_per_epoch(len(ds.x_train), size.batch_size)
  t0 = time.perf_counter()
  out: dict[str, Any] = {"config": config, "seed": seed, "steps": steps}
  try:
    res = train_run(
      workload.build_model(ds.num_classes, size),
      opt,
      ds,
      epochs=size.epochs,
      batch_size=size.batch_size,
      seed=seed,
      progress=False,
      eval_every=max(1, steps // size.evals),
    )
  except NonFiniteLossError as e:
    return {**out, "diverged": True, "message": str(e), "final": None, "curve": []}
  curve = _curve(res.log, workload.metric)
  final = curve[-1][1] if curve else None
  reach = _first_reached(curve, workload, size.target)
  sps = res.seconds_per_step
  return {
    **out,
    "diverged": final is None or not math.isfinite(final),
    "final": final if final is not None and math.isfinite(final) else None,
    "curve": curve,
    "steps_to_target": reach,
    "sec_per_step": sps,
    "seconds_to_target": reach * sps if reach is not None and math.isfinite(sps) else None,
    "wall_seconds": time.perf_counter() - t0,
    "train_loss": res.final.get("train_loss"),
  }


def best_trial(trials: list[dict], workload: Workload) -> Optional[dict]:
  """The trial with the best final validation metric (None when every trial diverged)."""
  finite = [t for t in trials if not t["diverged"]]
  if not finite:
    return None
  sign = -1.0 if workload.higher_is_better else 1.0
  return min(finite, key=lambda t: (sign * t["final"], t["index"]))


def run_pair(
  workload: Workload,
  cand: Candidate,
  size: Size,
  views,
  store: Store,
  trials: int,
  seeds: int,
  tick=lambda record, cached: None,
) -> dict[str, list[dict]]:
  """The tuning trials and the seed re-runs of one optimizer on one workload.

  ``tick(record, cached)`` is called after every run (for a progress bar).
  """
  tune_ds, final_ds = views
  units = unit_points(len(cand.space(workload.lr_band)), trials)
  configs = cand.configs(units, workload.lr_band)
  done: dict[str, list[dict]] = {"trials": [], "seeds": []}
  all_cached = True
  for i, config in enumerate(configs):
    key = run_key(workload.name, cand.name, "trial", i, config, size)
    rec = store.get(key)
    cached = rec is not None
    if rec is None:
      rec = {"key": key, "phase": "trial", "index": i, "split": "val"}
      rec.update(run_one(workload, cand, config, tune_ds, size, TUNING_SEED))
      store.add(rec)
    all_cached = all_cached and cached
    done["trials"].append(rec)
    tick(rec, cached)
  best = best_trial(done["trials"], workload)
  for j, seed in enumerate(seed_list(seeds)):
    if best is None:
      tick(None, all_cached)  # no seed runs: every trial diverged
      continue
    key = run_key(workload.name, cand.name, "seed", j, best["config"], size)
    rec = store.get(key)
    cached = rec is not None
    if rec is None:
      rec = {"key": key, "phase": "seed", "index": j, "split": "test", "trial": best["index"]}
      rec.update(run_one(workload, cand, best["config"], final_ds, size, seed))
      store.add(rec)
    done["seeds"].append(rec)
    tick(rec, cached)
  return done
