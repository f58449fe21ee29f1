"""Which optimizer, when: every optimizer with the same tuning budget on every workload.

The protocol is :mod:`bench.study`'s (quasi-random search of the same number of trials per
optimizer, a selection at the edge of its learning-rate range widened, selection on a
validation split carved from the training data, the best configuration re-run on fresh
seeds and scored on the test split); the workloads are :mod:`bench.workloads`' and the
optimizers with their search spaces :mod:`bench.spaces`'. Every run trains under linear
warm-up then cosine decay; where a size lists it, the constant rate is a second arm.
Reported per workload and optimizer: the test metric's mean with a 95 % confidence
interval over seeds, the steps and seconds to the workload's target (misses as such),
Welch's t-test against the best baseline (the baseline whose best trial scored best on
validation), against the method's own base and in the comparisons its paper made, with
Holm's correction over all the comparisons of a workload; the validation metric of every
trial against its learning rate; over workloads, performance profiles of the time and the
steps to target.

Every run's record goes to ``results/compare_<setting>/<workload>.jsonl`` as it ends;
rerunning the same command resumes from there (``--report-only`` reports what is stored,
``--plan`` lists the runs to do next, as JSON lines, without training).

Settings: ``--quick`` (4 trials × 2 seeds, short budgets: a smoke run of minutes on a
2-core CPU), ``--medium`` (8 trials × 3 seeds, edges widened, sizes chosen so that the whole
study takes about three hours on that CPU), and the full setting (16 trials × 5 seeds at
the workloads' full budgets, for a GPU).

Run: ``python -m bench.compare [--quick | --medium] [--workloads ...] [--optimizers ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings

import numpy as np

from bench import harness, spaces, study, workloads
from bench.compare_render import plots, render

__all__ = ["SETTINGS", "holm", "main", "render", "summarise"]

STEM = "compare"
SETTINGS = {
  "quick": study.Protocol(trials=4, seeds=2),
  "medium": study.Protocol(trials=8, seeds=3, widen_rounds=2),
  "full": study.Protocol(trials=16, seeds=5, widen_rounds=2),
}
CACHE = os.path.join(os.path.dirname(harness.HERE), "runs", "jax_cache")
CONFIDENCE = 0.95


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values) -> float | None:
  v = _finite(values)
  return float(np.mean(v)) if v else None


def _spread(values) -> tuple[float | None, float | None, float | None]:
  """Mean, sample standard deviation and the half-width of the t confidence interval."""
  from scipy import stats

  v = _finite(values)
  if not v:
    return None, None, None
  if len(v) == 1:
    return v[0], 0.0, None
  sd = float(np.std(v, ddof=1))
  half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(v) - 1) * sd / math.sqrt(len(v)))
  return float(np.mean(v)), sd, half


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
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # seeds that agree to the last digit
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
  return p if math.isfinite(p) else None


def holm(pvalues: dict) -> dict:
  """Holm-Bonferroni adjusted p-values (Holm 1979) of a family; None values stay None.

  The k-th smallest of m p-values is multiplied by m - k + 1, and the adjusted values
  made non-decreasing; rejecting where the adjusted p < α controls the family-wise
  error rate at α.
  """
  known = sorted((p, k) for k, p in pvalues.items() if p is not None)
  m, out, run = len(known), dict.fromkeys(pvalues), 0.0
  for i, (p, k) in enumerate(known):
    run = max(run, min(1.0, (m - i) * p))
    out[k] = run
  return out


def _lr_sweep(runs: list[dict]) -> list:
  """``[learning rate, validation metric or None]`` of every tuning run (sensitivity)."""
  return [[r["config"]["learning_rate"], None if r["diverged"] else r["final"]] for r in runs]


def _edges(cand: spaces.Candidate, band: str, config: dict | None, lr_range) -> list[str]:
  """The log-range hyperparameters whose selected value lies in the outer tenth of its range."""
  if not config:
    return []
  dims = [spaces.Dim("learning_rate", *lr_range)] + list(cand.space(band)[1:])
  return [
    f"{d.name} {side}"
    for d in dims
    if d.log and (side := study.edge_side(config[d.name], d.low, d.high))
  ]


def _reach(w: workloads.Workload, target: float, rec: dict) -> tuple:
  """Steps and seconds to the target of one run (None, None for a miss)."""
  steps = study.steps_to_target(rec["curve"], w, target)
  sps = rec.get("sec_per_step")
  ok = steps is not None and sps is not None and math.isfinite(sps)
  return steps, steps * sps if ok else None


def _summarise_pair(
  w: workloads.Workload, target: float, cand: spaces.Candidate, runs: dict
) -> dict:
  tuning = runs["trials"] + runs["widened"]
  best = study.best_trial(tuning, w) if tuning else None
  seeds = runs["seeds"]
  steps, seconds = zip(*[_reach(w, target, r) for r in seeds]) if seeds else ((), ())
  mean, std, ci = _spread(r["final"] for r in seeds)
  return {
    "baseline": cand.baseline,
    "paper": cand.paper,
    "space": [d.describe() for d in cand.space(w.lr_band)],
    "lr_range": runs["lr_range"],
    "trials": len(tuning),
    "widened": len(runs["widened"]),
    "trials_diverged": sum(t["diverged"] for t in tuning),
    "pending": len(runs["pending"]),
    "best_config": best["config"] if best else None,
    "edges": _edges(cand, w.lr_band, best and best["config"], runs["lr_range"]),
    "val": best["final"] if best else None,
    "sweep": _lr_sweep(tuning),
    "test": [r["final"] for r in seeds],
    "seeds_diverged": sum(r["diverged"] for r in seeds),
    "mean": mean,
    "std": std,
    "ci": ci,
    "steps_to_target": list(steps),
    "seconds_to_target": list(seconds),
    "median_steps": _median_cost(steps),
    "median_seconds": _median_cost(seconds),
    "sec_per_step": _mean(r.get("sec_per_step") for r in seeds),
    "wall_per_run": _mean(r.get("wall_seconds") for r in tuning + seeds),
  }


def _test(rows: dict, a: str, b: str | None) -> dict | None:
  """The difference of the test means of ``a`` and ``b``, and Welch's p."""
  if b is None or a == b or a not in rows or b not in rows:
    return None
  ra, rb = rows[a], rows[b]
  delta = None if ra["mean"] is None or rb["mean"] is None else ra["mean"] - rb["mean"]
  return {"method": a, "against": b, "delta": delta, "p": _welch(ra["test"], rb["test"])}


def summarise(w: workloads.Workload, size: workloads.Size, pairs: dict, schedule: str) -> dict:
  """One workload's table under one schedule: per optimizer its selection, test spread,
  time to target and tests; the tests' p-values Holm-adjusted over the workload."""
  rows = {n: _summarise_pair(w, size.target, spaces.get(n), runs) for n, runs in pairs.items()}
  sign = 1.0 if w.higher_is_better else -1.0
  baselines = [n for n, r in rows.items() if r["baseline"] and r["val"] is not None]
  best_base = max(baselines, key=lambda n: sign * rows[n]["val"]) if baselines else None
  tests: dict[tuple, dict] = {}
  for name, r in rows.items():
    if r["baseline"]:
      continue
    for kind, against in (("best", best_base), ("base", spaces.get(name).base or None)):
      t = _test(rows, name, against)
      r[kind] = t and tests.setdefault((name, against), t)
  claimed = [
    (paper, tests.setdefault((a, b), t))
    for paper, claim in spaces.CLAIMS.items()
    if w.name in claim.workloads
    for a, b in claim.pairs
    if (t := _test(rows, a, b)) is not None
  ]
  adjusted = holm({k: t["p"] for k, t in tests.items()})
  for k, t in tests.items():
    t["p_holm"] = adjusted[k]
  claims = [{"paper": paper, **t} for paper, t in claimed]
  return {
    "title": w.title,
    "metric": w.metric,
    "higher_is_better": w.higher_is_better,
    "target": size.target,
    "budget": dataclasses.asdict(size),
    "schedule": schedule,
    "lr_band": w.lr_band,
    "paper": w.paper,
    "best_baseline": best_base,
    "comparisons": sum(t["p"] is not None for t in tests.values()),
    "claims": claims,
    "optimizers": rows,
  }


def _bar(total: int, initial: int):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc="compare", unit="run", dynamic_ncols=True)


def run(plan, out_dir: str, tag: str, protocol, progress: bool = True, dry: bool = False) -> dict:
  """Runs (or resumes, or with ``dry`` only reads) the study;
  ``{workload: {schedule: {optimizer: study.run_pair's result}}}``, in the plan's order."""
  stores = {
    w.name: study.Store(os.path.join(out_dir, f"{STEM}_{tag}", f"{w.name}.jsonl"))
    for w, _, _ in plan
  }
  bar = None
  if progress and not dry:  # a dry pass first counts what is stored and what is to do
    seen = run(plan, out_dir, tag, protocol, progress=False, dry=True)
    pairs = [p for arms in seen.values() for pair in arms.values() for p in pair.values()]
    stored = sum(len(p["trials"]) + len(p["widened"]) + len(p["seeds"]) for p in pairs)
    per_pair = protocol.trials + protocol.seeds
    bar = _bar(max(stored, len(pairs) * per_pair), stored)
  out: dict = {}

  def tick(rec, cached):
    if bar is not None and not cached:
      bar.total = max(bar.total, bar.n + 1)
      bar.update(1)

  for w, size, names in plan:
    views = w.views(size)
    out[w.name] = {}
    for schedule in size.schedules:
      out[w.name][schedule] = {}
      for name in names:
        if bar is not None:
          bar.set_description(f"{w.name} · {schedule} · {name}")
        out[w.name][schedule][name] = study.run_pair(
          w, spaces.get(name), size, views, stores[w.name], protocol, schedule, tick, dry
        )
  if bar is not None:
    bar.close()
  return out


def _plan(args, tag: str):
  """``[(workload, size, optimizers)]``, in the order they run (the LM last)."""
  names = args.optimizers or list(spaces.CANDIDATES)
  for n in names:
    spaces.get(n)
  plan = []
  for wname in args.workloads or list(workloads.WORKLOADS):
    w = workloads.get(wname)
    size = w.sizes[tag]
    over = {k: v for k, v in (("epochs", args.epochs), ("train_size", args.train_size)) if v}
    plan.append((w, dataclasses.replace(size, **over), names))
  order = list(workloads.WORKLOADS)
  return sorted(plan, key=lambda p: order.index(p[0].name))


def _run_minutes(runs: dict) -> float:
  """The minutes the study's runs took, summed from their records (resumes included)."""
  return (
    sum(
      r.get("wall_seconds") or 0.0
      for arms in runs.values()
      for pairs in arms.values()
      for pair in pairs.values()
      for r in pair["trials"] + pair["widened"] + pair["seeds"]
    )
    / 60
  )


def parse(argv=None):
  ap = harness.parser(__doc__, "4 trials × 2 seeds, short budgets (a smoke run)")
  ap.add_argument("--medium", action="store_true", help="8 trials × 3 seeds, ~3 h on 2 cores")
  ap.add_argument("--workloads", nargs="+", choices=sorted(workloads.WORKLOADS), default=None)
  ap.add_argument("--optimizers", nargs="+", choices=sorted(spaces.CANDIDATES), default=None)
  ap.add_argument("--trials", type=int, default=None, help="trials per optimizer")
  ap.add_argument("--seeds", type=int, default=None, help="seeds of the best configuration")
  ap.add_argument("--epochs", type=int, default=None, help="override every workload's epochs")
  ap.add_argument("--train-size", type=int, default=None, help="override the training rows")
  ap.add_argument("--out", default=harness.RESULTS, help="results folder (default bench/results)")
  ap.add_argument("--cache-dir", default=CACHE, help="JAX's persistent compilation cache")
  ap.add_argument("--report-only", action="store_true", help="report the stored runs; train none")
  ap.add_argument("--plan", action="store_true", help="print the runs to do next; train none")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)
  if args.quick and args.medium:
    ap.error("--quick and --medium exclude each other")
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


def _kept(out: str, tag: str) -> dict | None:
  """The result last written at this setting."""
  return harness.load(f"{STEM}_{tag}", out)


def _command(argv, tag: str) -> str:
  """The command line that reproduces the study (the folders and progress left out)."""
  extra = [a for a in argv if a not in ("--quick", "--medium", "--no-progress", "--report-only")]
  drop = {"--out", "--cache-dir"}
  extra = [a for i, a in enumerate(extra) if a not in drop and (i == 0 or extra[i - 1] not in drop)]
  setting = "" if tag == "full" else f"--{tag}"
  return harness.command("bench.compare", False, " ".join([setting] + extra).strip())


def main(argv=None) -> dict:
  args = parse(argv)
  _enable_cache(args.cache_dir)
  tag = "quick" if args.quick else "medium" if args.medium else "full"
  protocol = dataclasses.replace(
    SETTINGS[tag],
    trials=args.trials or SETTINGS[tag].trials,
    seeds=args.seeds or SETTINGS[tag].seeds,
  )
  plan = _plan(args, tag)
  dry = args.report_only or args.plan
  t0, load = time.perf_counter(), os.getloadavg()[0]
  runs = run(plan, args.out, tag, protocol, progress=not (args.no_progress or dry), dry=dry)
  if args.plan:
    for w, arms in runs.items():
      for schedule, pairs in arms.items():
        for name, pair in pairs.items():
          for p in pair["pending"]:
            print(json.dumps({"workload": w, "schedule": schedule, "optimizer": name, **p}))
    return {}
  kept = (_kept(args.out, tag) or {}) if dry else {}  # a report keeps its sitting's machine
  arms = {
    w.name: [summarise(w, size, runs[w.name][s], s) for s in size.schedules] for w, size, _ in plan
  }
  tables = {name: {**t[0], "arms": t[1:]} for name, t in arms.items()}
  result = {
    "command": _command(sys.argv[1:] if argv is None else list(argv), tag),
    "machine": kept.get("machine") or harness.machine_description(),
    "tag": tag,
    "protocol": dataclasses.asdict(protocol),
    "edge": study.EDGE,
    "confidence": CONFIDENCE,
    "seed_list": study.seed_list(protocol.seeds),
    "minutes": _run_minutes(runs),
    "session_minutes": (time.perf_counter() - t0) / 60,
    "load": kept.get("load") if dry else [load, os.getloadavg()[0]],  # the machine is shared
    "pending": sum(
      len(p["pending"]) for a in runs.values() for pairs in a.values() for p in pairs.values()
    ),
    "claims": {p: dataclasses.asdict(c) for p, c in spaces.CLAIMS.items()},
    "workloads": tables,
    "figures": {k: f"{STEM}_{tag}_{k}.png" for k in ("profile", "sensitivity")},
  }
  plots(result, args.out)
  md = harness.write(f"{STEM}_{tag}", result, render, directory=args.out)
  print(md)
  return result


if __name__ == "__main__":
  main()
