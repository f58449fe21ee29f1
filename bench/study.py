"""The comparison protocol: the same tuning budget for every optimizer, then fresh seeds.

For each workload (:mod:`bench.workloads`) and optimizer (:mod:`bench.spaces`):

1. ``trials`` configurations are drawn from the optimizer's search space by a scrambled
   Sobol sequence (:class:`scipy.stats.qmc.Sobol`, the same seed for every optimizer, so
   each gets the same quantiles of its ranges); each is trained on the training split less
   the validation split, with seed 0 for all (the same initialisation and batch order), and
   scored on the validation split. The test split is not read.
2. Where the selected learning rate sits in the outer tenth of its log range, the range is
   extended on that side by :attr:`Protocol.widen_factor` and :attr:`Protocol.widen_trials`
   more trials are drawn there (the other hyperparameters kept at the selection's), up to
   :attr:`Protocol.widen_rounds` times, so that no optimizer loses for want of a larger or
   smaller step.
3. The configuration with the best final validation metric is trained again on the whole
   training split with ``seeds`` fresh seeds and scored on the test split.

Every run trains under one learning-rate schedule (:func:`train.registry.make_schedule`,
``warmup_cosine`` or ``constant``), applied to the searched base rate.

Every run goes through the training loop (:func:`train.loop.train_run`), evaluated
``Size.evals`` times; its curve gives the steps to the workload's target (read when the
study is reported, so a target can change without a rerun), and the loop's seconds per
step (compilation and evaluation excluded) the time to it. A run whose loss
becomes non-finite is recorded as diverged.

Every run's record is appended to a JSON-lines file per workload as soon as it ends, so
an interrupted study resumes where it stopped: records of the same run (workload,
optimizer, phase, index, configuration and budget) are read back instead of re-run, and
a line cut short by the interruption is ignored. With ``dry=True`` nothing is trained: the
runs that would run next are listed instead (a plan, and a report of what is stored).

References: Kasimbeg et al., *Accelerating neural network training: an analysis of the
AlgoPerf competition*, ICLR 2025 (tuning budgets, time to target); Schneider, Balles,
Hennig, *DeepOBS*, ICLR 2019 (protocol); Dolan & Moré, *Benchmarking optimization
software with performance profiles*, Math. Program. 91, 2002.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from typing import Any, Iterable, Optional

import numpy as np

from bench.spaces import Candidate, Dim
from bench.workloads import Size, Workload

__all__ = [
  "EDGE",
  "Protocol",
  "Store",
  "TUNING_SEED",
  "best_trial",
  "edge_side",
  "run_key",
  "run_one",
  "run_pair",
  "seed_list",
  "steps_to_target",
  "unit_points",
]

TUNING_SEED = 0
FIRST_SEED = 100  # the re-runs' seeds: 100, 101, ... (never the tuning seed)
EDGE = 0.1  # a selection this close to an end of a log range, as a share of it, sits at its edge


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How much tuning every optimizer gets.

  Attributes:
    trials: Configurations drawn per optimizer.
    seeds: Fresh seeds the selection is re-run with.
    widen_rounds: How many times a learning-rate range whose selection sits at its edge
      is extended (0: never).
    widen_trials: Trials drawn in each extension.
    widen_factor: An extension reaches this factor beyond the range's end.
  """

  trials: int
  seeds: int
  widen_rounds: int = 0
  widen_trials: int = 2
  widen_factor: float = 4.0


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


def run_key(
  workload: str, optimizer: str, phase: str, index: int, config: dict, size: Size, schedule: str
) -> str:
  """The identity of one run: what it trains, on what budget, under which schedule."""
  cfg = ",".join(f"{k}={v:.6g}" for k, v in sorted(config.items()))
  budget = f"e{size.epochs}b{size.batch_size}n{size.train_size}t{size.test_size}v{size.evals}"
  budget += "".join(f"{k}{v}" for k, v in size.model_kw)
  return f"{workload}|{optimizer}|{phase}{index}|{cfg}|{budget}|{schedule}"


def edge_side(value: float, low: float, high: float) -> Optional[str]:
  """``"low"`` or ``"high"`` when ``value`` lies in that outer tenth of the log range."""
  u = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
  return "low" if u < EDGE else "high" if u > 1 - EDGE else None


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


def steps_to_target(curve, workload: Workload, target: float) -> Optional[int]:
  """The first evaluated step of ``curve`` (``[[step, metric], ...]``) at the target, or None."""
  for step, value in curve:
    if workload.reached(value, target):
      return int(step)
  return None


def run_one(
  workload: Workload, cand: Candidate, config: dict, ds, size: Size, seed: int, schedule: str
) -> dict[str, Any]:
  """Trains once through :func:`train.loop.train_run`; the record of the run."""
  from train import data as data_lib
  from train.errors import NonFiniteLossError
  from train.loop import train_run
  from train.registry import make_schedule

  spe = data_lib.steps_per_epoch(len(ds.x_train), size.batch_size)
  steps = size.epochs * spe
  opt = cand.build(config, ds.num_classes, ds.task, seed, make_schedule(schedule, spe, steps))
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
    wall = time.perf_counter() - t0
    return {
      **out,
      "diverged": True,
      "message": str(e),
      "final": None,
      "curve": [],
      "wall_seconds": wall,
    }
  curve = _curve(res.log, workload.metric)
  final = curve[-1][1] if curve else None
  sps = res.seconds_per_step
  return {
    **out,
    "diverged": final is None or not math.isfinite(final),
    "final": final if final is not None and math.isfinite(final) else None,
    "curve": curve,
    "sec_per_step": sps,
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
  protocol: Protocol,
  schedule: str,
  tick=lambda record, cached: None,
  dry: bool = False,
) -> dict[str, Any]:
  """The tuning trials, any widening, and the seed re-runs of one optimizer on one workload.

  ``tick(record, cached)`` is called after every run (for a progress bar). Returns the
  records by phase (``trials``, ``widened``, ``seeds``), the learning-rate range searched
  in the end (``lr_range``), and ``pending``: with ``dry=True`` the runs to do next (those
  whose configuration is already known), otherwise empty.
  """
  tune_ds, final_ds = views
  space = cand.space(workload.lr_band)
  lo, hi = space[0].low, space[0].high
  out: dict[str, Any] = {"trials": [], "widened": [], "seeds": [], "pending": []}

  def run(phase, index, config, ds, seed, extra) -> Optional[dict]:
    key = run_key(workload.name, cand.name, phase, index, config, size, schedule)
    rec = store.get(key)
    if rec is None and dry:
      out["pending"].append({"key": key, "phase": phase, "index": index, "config": config, **extra})
      return None
    cached = rec is not None
    if rec is None:
      rec = {"key": key, "phase": phase, "index": index, **extra}
      rec.update(run_one(workload, cand, config, ds, size, seed, schedule))
      store.add(rec)
    tick(rec, cached)
    return rec

  def runs(into, phase, configs, ds, seeds, first=0, **extra) -> bool:
    """Runs (or reads back) one phase; False when some run is still to do."""
    recs = [run(phase, first + i, c, ds, s, extra) for i, (c, s) in enumerate(zip(configs, seeds))]
    out[into] += [r for r in recs if r is not None]
    return None not in recs

  configs = cand.configs(unit_points(len(space), protocol.trials), workload.lr_band)
  done = runs("trials", "trial", configs, tune_ds, [TUNING_SEED] * len(configs), split="val")
  best = best_trial(out["trials"], workload) if done else None
  k = protocol.widen_trials
  for r in range(protocol.widen_rounds if done else 0):
    side = best and edge_side(best["config"]["learning_rate"], lo, hi)
    if not side:
      break
    f = protocol.widen_factor
    lo, hi = (lo, hi * f) if side == "high" else (lo / f, hi)
    dim = Dim("learning_rate", *((hi / f, hi) if side == "high" else (lo, lo * f)))
    us = unit_points(1, k, seed=1 + r)[:, 0]
    configs = [{**best["config"], "learning_rate": dim.value(float(u))} for u in us]
    extra = {"split": "val", "round": r, "side": side}
    if not runs("widened", "widen", configs, tune_ds, [TUNING_SEED] * k, r * k, **extra):
      done = False
      break
    best = best_trial(out["trials"] + out["widened"], workload)
  out["lr_range"] = [lo, hi]
  if done and best is not None:
    seeds = seed_list(protocol.seeds)
    split = {"split": "test", "trial": best["index"], "from": best["phase"]}
    runs("seeds", "seed", [best["config"]] * len(seeds), final_ds, seeds, **split)
  return out
