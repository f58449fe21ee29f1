"""Which optimizer, when: every optimizer with the same tuning budget on every workload.

The protocol is :mod:`bench.study`'s (quasi-random search of the same number of trials per
optimizer, selection on a validation split carved from the training data, the best
configuration re-run on fresh seeds and scored on the test split); the workloads are
:mod:`bench.workloads`' and the optimizers with their search spaces :mod:`bench.spaces`'.
Reported per workload and optimizer: the test metric's mean ± std over seeds, the steps
and seconds to the workload's target (misses as such), and Welch's t-test against the
best baseline (the baseline whose best trial scored best on validation); over workloads,
performance profiles of the time and the steps to target.

Every run's record goes to ``results/compare_<quick|full>/<workload>.jsonl`` as it ends;
rerunning the same command resumes from there.

Sizes: ``--quick`` is 4 trials × 2 seeds with short budgets, for a 2-core CPU; the full
setting is 16 trials × 5 seeds with the workloads' full budgets (the report gives the
measured time per run to plan it).

Run: ``python -m bench.compare [--quick] [--workloads ...] [--optimizers ...]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import numpy as np

from bench import harness, spaces, study, workloads
from bench.compare_render import profile_plot, render

__all__ = ["main", "render", "summarise"]

STEM = "compare"
SETTINGS = {"quick": {"trials": 4, "seeds": 2}, "full": {"trials": 16, "seeds": 5}}
CACHE = os.path.join(os.path.dirname(harness.HERE), "runs", "jax_cache")


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean_std(values) -> tuple[float | None, float | None]:
  v = _finite(values)
  if not v:
    return None, None
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _median_cost(values) -> float | None:
  """Median over seeds, a miss counting as infinite; None when it is infinite."""
  v = [float("inf") if x is None else float(x) for x in values]
  if not v:
    return None
  m = float(np.median(v))
  return m if math.isfinite(m) else None


def _welch(a, b) -> float | None:
  from scipy import stats

  a, b = _finite(a), _finite(b)
  if len(a) < 2 or len(b) < 2:
    return None
  with np.errstate(all="ignore"):
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
  return p if math.isfinite(p) else None


def _summarise_pair(w: workloads.Workload, cand: spaces.Candidate, runs: dict) -> dict:
  best = study.best_trial(runs["trials"], w)
  seeds = runs["seeds"]
  mean, std = _mean_std(r["final"] for r in seeds)
  return {
    "baseline": cand.baseline,
    "paper": cand.paper,
    "space": [d.describe() for d in cand.space(w.lr_band)],
    "trials": len(runs["trials"]),
    "trials_diverged": sum(t["diverged"] for t in runs["trials"]),
    "best_config": best["config"] if best else None,
    "val": best["final"] if best else None,
    "test": [r["final"] for r in seeds],
    "seeds_diverged": sum(r["diverged"] for r in seeds),
    "mean": mean,
    "std": std,
    "steps_to_target": [r.get("steps_to_target") for r in seeds],
    "seconds_to_target": [r.get("seconds_to_target") for r in seeds],
    "median_steps": _median_cost([r.get("steps_to_target") for r in seeds]),
    "median_seconds": _median_cost([r.get("seconds_to_target") for r in seeds]),
    "sec_per_step": _mean_std(r.get("sec_per_step") for r in seeds)[0],
    "wall_per_run": _mean_std(r.get("wall_seconds") for r in runs["trials"] + seeds)[0],
  }


def _against(r: dict, b: dict | None) -> tuple[float | None, float | None]:
  """Difference of the test means, and Welch's p, of row ``r`` against row ``b``."""
  if b is None:
    return None, None
  delta = None if r["mean"] is None or b["mean"] is None else r["mean"] - b["mean"]
  return delta, _welch(r["test"], b["test"])


def summarise(w: workloads.Workload, size: workloads.Size, pairs: dict) -> dict:
  """One workload's table: per optimizer its selection, test spread and time to target."""
  rows = {name: _summarise_pair(w, spaces.get(name), runs) for name, runs in pairs.items()}
  sign = 1.0 if w.higher_is_better else -1.0
  baselines = [n for n, r in rows.items() if r["baseline"] and r["val"] is not None]
  best_base = max(baselines, key=lambda n: sign * rows[n]["val"]) if baselines else None
  for name, r in rows.items():
    r["delta"], r["p_value"] = _against(r, rows.get(best_base) if name != best_base else None)
    own = spaces.get(name).base
    r["base"] = own if own in rows else None
    r["delta_base"], r["p_base"] = _against(r, rows.get(own))
  return {
    "title": w.title,
    "metric": w.metric,
    "higher_is_better": w.higher_is_better,
    "target": size.target,
    "budget": dataclasses.asdict(size),
    "lr_band": w.lr_band,
    "paper": w.paper,
    "best_baseline": best_base,
    "optimizers": rows,
  }


def _bar(total: int, initial: int):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc="compare", unit="run", dynamic_ncols=True)


def _cached_runs(plan, store_of, trials: int, seeds: int) -> int:
  """Runs already in the stores (for the progress bar's start and time left)."""
  n = 0
  for w, size, names in plan:
    store = store_of[w.name]
    for name in names:
      cand = spaces.get(name)
      configs = cand.configs(study.unit_points(len(cand.space(w.lr_band)), trials), w.lr_band)
      keys = [study.run_key(w.name, name, "trial", i, c, size) for i, c in enumerate(configs)]
      found = [store.get(k) for k in keys]
      n += sum(r is not None for r in found)
      if all(r is not None for r in found):
        best = study.best_trial(found, w)
        for j in range(seeds):
          cfg = best["config"] if best else {}
          n += (
            best is None or store.get(study.run_key(w.name, name, "seed", j, cfg, size)) is not None
          )
  return n


def run(plan, out_dir: str, tag: str, trials: int, seeds: int, progress: bool = True) -> dict:
  """Runs (or resumes) the study; ``{workload: {optimizer: {"trials", "seeds"}}}``."""
  store_of = {
    w.name: study.Store(os.path.join(out_dir, f"{STEM}_{tag}", f"{w.name}.jsonl"))
    for w, _, _ in plan
  }
  total = sum(len(names) * (trials + seeds) for _, _, names in plan)
  bar = _bar(total, _cached_runs(plan, store_of, trials, seeds)) if progress else None
  out: dict = {}

  def tick(rec, cached):
    if bar is not None and not cached:
      bar.update(1)

  for w, size, names in plan:
    views = w.views(size)
    out[w.name] = {}
    for name in names:
      if bar is not None:
        bar.set_description(f"{w.name} · {name}")
      out[w.name][name] = study.run_pair(
        w, spaces.get(name), size, views, store_of[w.name], trials, seeds, tick
      )
  if bar is not None:
    bar.close()
  return out


def _plan(args, tag: str):
  names = args.optimizers or list(spaces.CANDIDATES)
  for n in names:
    spaces.get(n)
  plan = []
  for wname in args.workloads or list(workloads.WORKLOADS):
    w = workloads.get(wname)
    size = w.sizes[tag]
    over = {k: v for k, v in (("epochs", args.epochs), ("train_size", args.train_size)) if v}
    plan.append((w, dataclasses.replace(size, **over), names))
  return plan


def _full_steps(w: workloads.Workload) -> int:
  """Steps of one run at the full size (the data set is loaded to count its rows)."""
  from train import data as data_lib

  size = w.sizes["full"]
  tune, final = w.views(size)
  return size.epochs * data_lib.steps_per_epoch(len(final.x_train), size.batch_size)


def _planning(tables: dict) -> dict:
  """Per workload: the measured seconds per run and step here, and the full size's steps
  and batch (the seconds per step of a full run scale with its batch)."""
  out = {}
  for name, t in tables.items():
    rows = t["optimizers"].values()
    sps = _finite(r["sec_per_step"] for r in rows)
    wall = _finite(r["wall_per_run"] for r in rows)
    w = workloads.get(name)
    out[name] = {
      "sec_per_run": float(np.mean(wall)) if wall else None,
      "sec_per_step": float(np.mean(sps)) if sps else None,
      "batch": t["budget"]["batch_size"],
      "full_batch": w.sizes["full"].batch_size,
      "full_steps": _full_steps(w),
    }
  return out


def _run_minutes(runs: dict) -> float:
  """The minutes the study's runs took, summed from their records (resumes included)."""
  return (
    sum(
      r.get("wall_seconds") or 0.0
      for pairs in runs.values()
      for pair in pairs.values()
      for r in pair["trials"] + pair["seeds"]
    )
    / 60
  )


def parse(argv=None):
  ap = harness.parser(__doc__, "4 trials × 2 seeds, short budgets (a 2-core CPU)")
  ap.add_argument("--workloads", nargs="+", choices=sorted(workloads.WORKLOADS), default=None)
  ap.add_argument("--optimizers", nargs="+", choices=sorted(spaces.CANDIDATES), default=None)
  ap.add_argument("--trials", type=int, default=None, help="trials per optimizer")
  ap.add_argument("--seeds", type=int, default=None, help="seeds of the best configuration")
  ap.add_argument("--epochs", type=int, default=None, help="override every workload's epochs")
  ap.add_argument("--train-size", type=int, default=None, help="override the training rows")
  ap.add_argument("--out", default=harness.RESULTS, help="results folder (default bench/results)")
  ap.add_argument("--cache-dir", default=CACHE, help="JAX's persistent compilation cache")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)
  for flag in ("trials", "seeds", "epochs", "train_size"):
    v = getattr(args, flag)
    if v is not None and v < 1:
      ap.error(f"--{flag.replace('_', '-')} must be positive, got {v}")
  return args


def _enable_cache(path: str) -> None:
  import jax

  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv=None) -> dict:
  args = parse(argv)
  _enable_cache(args.cache_dir)
  tag = harness.tag(args.quick)
  trials = args.trials or SETTINGS[tag]["trials"]
  seeds = args.seeds or SETTINGS[tag]["seeds"]
  plan = _plan(args, tag)
  t0 = time.perf_counter()
  runs = run(plan, args.out, tag, trials, seeds, progress=not args.no_progress)
  tables = {w.name: summarise(w, size, runs[w.name]) for w, size, _ in plan}
  argv = sys.argv[1:] if argv is None else list(argv)
  extra = [a for a in argv if a not in ("--quick", "--no-progress")]
  drop = {"--out", "--cache-dir"}
  extra = [a for i, a in enumerate(extra) if a not in drop and (i == 0 or extra[i - 1] not in drop)]
  result = {
    "command": harness.command("bench.compare", args.quick, " ".join(extra)),
    "machine": harness.machine_description(),
    "tag": tag,
    "trials": trials,
    "seeds": seeds,
    "seed_list": study.seed_list(seeds),
    "minutes": _run_minutes(runs),
    "session_minutes": (time.perf_counter() - t0) / 60,
    "claims": {p: c for p, c in spaces.CLAIMS.items()},
    "settings": SETTINGS,
    "planning": _planning(tables),
    "workloads": tables,
    "profile": f"{STEM}_{tag}_profile.png",
  }
  profile_plot(result, os.path.join(args.out, result["profile"]))
  md = harness.write(f"{STEM}_{tag}", result, render, directory=args.out)
  print(md)
  return result


if __name__ == "__main__":
  main()
