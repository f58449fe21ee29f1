"""The optimizer comparison (``python -m bench.compare``) end to end, and its resumption.

One workload (diabetes, the smallest) × two optimizers × one trial × one seed, run as a
user runs it, in a subprocess (tests do not import the benchmarks); then the run is cut
as an interruption leaves it (the first record kept, the next line half written) and
resumed. Checked against independent computations: the configuration is the scrambled
Sobol point scipy gives, mapped log-uniformly onto the stated range; the tables hold the
records' numbers; the resumed study keeps what was saved and repeats the rest exactly.

The medium setting's report is checked on synthetic records: ``--plan`` lists the runs to
do, the test writes their records as a study would, until nothing is left, and
``--report-only`` reports them. Its confidence intervals, Welch p-values and Holm
adjustment are recomputed here with scipy, its learning-rate widening and edge flags
from the stated ranges.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
from scipy.stats import qmc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--quick", "--workloads", "diabetes_mlp", "--optimizers", "momentum", "adamw"]
ARGS += ["--trials", "1", "--seeds", "1", "--epochs", "2", "--no-progress"]
MOMENTUM_LR = (3e-3, 0.3)  # bench/spaces.py, SGD_LR["normal"]


def _run(out: str, args=ARGS) -> str:
  cmd = [sys.executable, "-m", "bench.compare", *args, "--out", out]
  cmd += ["--cache-dir", os.path.join(out, "cache")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _records(path: str) -> list[dict]:
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


def test_compare_end_to_end_and_resume(tmp_path):
  out = str(tmp_path)
  _run(out)
  log = os.path.join(out, "compare_quick", "diabetes_mlp.jsonl")
  first = _records(log)
  assert [(r["phase"], r["split"]) for r in first] == [("trial", "val"), ("seed", "test")] * 2
  with open(os.path.join(out, "compare_quick.json")) as f:
    result = json.load(f)
  table = result["workloads"]["diabetes_mlp"]
  assert list(table["optimizers"]) == ["momentum", "adamw"]

  u = qmc.Sobol(1, scramble=True, seed=0).random(1)[0, 0]
  lo, hi = MOMENTUM_LR
  lr = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
  momentum = [r for r in first if r["key"].split("|")[1] == "momentum"]
  assert np.isclose(momentum[0]["config"]["learning_rate"], lr, rtol=1e-9)
  assert momentum[1]["config"] == momentum[0]["config"]  # the best (only) trial, re-run
  assert momentum[0]["seed"] == 0 and momentum[1]["seed"] != 0
  assert all(r["key"].endswith("|warmup_cosine") for r in first)  # the schedule of every run

  for name, recs in (("momentum", first[:2]), ("adamw", first[2:])):
    row, (trial, seed) = table["optimizers"][name], recs
    assert row["val"] == trial["final"] == trial["curve"][-1][1]
    assert row["mean"] == seed["final"] == seed["curve"][-1][1] and row["ci"] is None
    # 442 rows: 88 test, 354 train of which 71 validation; 2 epochs of full batches of 32
    assert trial["steps"] == 2 * ((354 - 71) // 32)
    hits = [s for s, v in seed["curve"] if v <= table["target"]]
    assert row["steps_to_target"] == [hits[0] if hits else None]
    if hits:
      assert np.isclose(row["seconds_to_target"][0], hits[0] * seed["sec_per_step"])
  assert table["best_baseline"] == min(
    ("momentum", "adamw"), key=lambda n: table["optimizers"][n]["val"]
  )

  # An interruption: the first record saved, the second cut mid-line.
  with open(log) as f:
    lines = f.readlines()
  with open(log, "w") as f:
    f.write(lines[0] + lines[1][: len(lines[1]) // 2])
  _run(out)
  resumed = _records(log)
  assert resumed[0] == first[0]  # read back, not re-run (its wall time is the old one)
  assert len(resumed) == 4
  for old, new in zip(first[1:], resumed[1:]):
    assert new["key"] == old["key"]
    assert new["final"] == old["final"] and new["curve"] == old["curve"]


# Synthetic outcomes: validation MSE a parabola in log lr around each optimizer's optimum
# (momentum's lies below its range, so its selection sits at the edge and is widened), and
# fixed test MSEs of the three seeds (the constant arm's 100 higher).
OPTIMUM = {"momentum": 1.5e-3, "adamw": 1e-3, "angulargrad_cos": 1e-3, "gal+adamw": 1e-3}
FLOOR = {"momentum": 3000.0, "adamw": 3100.0, "angulargrad_cos": 3150.0, "gal+adamw": 3050.0}
TEST = {
  "momentum": [3000.0, 3030.0, 3060.0],
  "adamw": [3100.0, 3120.0, 3140.0],
  "angulargrad_cos": [3050.0, 3200.0, 3350.0],
  "gal+adamw": [2800.0, 2790.0, 2810.0],
}


def _synthetic(p: dict) -> dict:
  opt, lr = p["optimizer"], p["config"]["learning_rate"]
  if p["phase"] == "seed":
    final = TEST[opt][p["index"]] + (100.0 if p["schedule"] == "constant" else 0.0)
  else:
    final = FLOOR[opt] + 500.0 * (math.log(lr) - math.log(OPTIMUM[opt])) ** 2
  planned = {k: v for k, v in p.items() if k not in ("workload", "schedule", "optimizer")}
  return {
    **planned, "seed": 0, "steps": 80, "diverged": False, "final": final, "curve": [[40, 3500.0], [80, final]],
    "sec_per_step": 1e-3, "wall_seconds": 1.0,
  }  # fmt: skip


def _holm(ps: list[float]) -> list[float]:
  order = np.argsort(ps)
  adj = np.minimum(1.0, np.maximum.accumulate([(len(ps) - i) * ps[k] for i, k in enumerate(order)]))
  out = np.empty(len(ps))
  out[order] = adj
  return list(out)


def test_medium_report_from_synthetic_records(tmp_path):
  from scipy import stats

  out = str(tmp_path)
  args = ["--medium", "--workloads", "diabetes_mlp", "--optimizers", *OPTIMUM, "--trials", "3"]
  log = os.path.join(out, "compare_medium", "diabetes_mlp.jsonl")
  os.makedirs(os.path.dirname(log))
  for _ in range(6):  # trials, up to two widenings, seeds
    todo = [json.loads(x) for x in _run(out, args + ["--plan"]).splitlines() if x.startswith("{")]
    if not todo:
      break
    with open(log, "a") as f:
      f.writelines(json.dumps(_synthetic(p)) + "\n" for p in todo)
  assert not todo
  _run(out, args + ["--report-only", "--no-progress"])
  with open(os.path.join(out, "compare_medium.json")) as f:
    result = json.load(f)
  table = result["workloads"]["diabetes_mlp"]
  rows = table["optimizers"]
  assert result["tag"] == "medium" and result["pending"] == 0
  assert table["schedule"] == "warmup_cosine" and table["arms"][0]["schedule"] == "constant"
  assert table["best_baseline"] == "momentum"

  # Widening: momentum's best trial sits at the bottom of [0.003, 0.3]; every widened trial
  # lies below the range it extends, and the range searched in the end covers them all.
  widened = [r for r in _records(log) if r["phase"] == "widen" and "momentum" in r["key"]]
  assert widened and all(r["config"]["learning_rate"] < MOMENTUM_LR[0] for r in widened)
  assert all(r["side"] == "low" for r in widened)
  lo, hi = rows["momentum"]["lr_range"]
  assert hi == MOMENTUM_LR[1] and lo == MOMENTUM_LR[0] / 4 ** len({r["round"] for r in widened})
  assert min(r["config"]["learning_rate"] for r in widened) >= lo
  assert rows["momentum"]["widened"] == len(widened) // 2  # one arm's of the two
  u = math.log(rows["momentum"]["best_config"]["learning_rate"] / lo) / math.log(hi / lo)
  assert ("learning_rate low" in rows["momentum"]["edges"]) == (u < 0.1)

  # Means with 95 % t intervals, Welch's p and Holm's adjustment over the workload's family.
  for name, values in TEST.items():
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert np.isclose(rows[name]["mean"], np.mean(values)) and np.isclose(rows[name]["ci"], half)
  pairs = [(m, b) for m in ("angulargrad_cos", "gal+adamw") for b in ("momentum", "adamw")]
  ps = [stats.ttest_ind(TEST[m], TEST[b], equal_var=False).pvalue for m, b in pairs]
  assert table["comparisons"] == 4
  for (m, b), p, adj in zip(pairs, ps, _holm(ps)):
    test = rows[m]["best" if b == "momentum" else "base"]
    assert test["against"] == b and np.isclose(test["p"], p) and np.isclose(test["p_holm"], adj)
  assert rows["gal+adamw"]["best"]["p_holm"] < 0.05 < rows["angulargrad_cos"]["best"]["p_holm"]

  with open(os.path.join(out, "compare_medium.md")) as f:
    md = f.read()
  assert "Setting: **medium**" in md and "Second arm, a constant learning rate" in md
  assert "| gal+adamw |" in md and "-230, " in md and "helped" in md
  assert "no clear difference: angulargrad_cos (+170)" in md
  for fig in result["figures"].values():
    assert os.path.getsize(os.path.join(out, fig)) > 0
