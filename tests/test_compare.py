"""The optimizer comparison (``python -m bench.compare``) end to end, and its resumption.

One workload (diabetes, the smallest) × two optimizers × one trial × one seed, run as a
user runs it, in a subprocess (tests do not import the benchmarks); then the run is cut
as an interruption leaves it (the first record kept, the next line half written) and
resumed. Checked against independent computations: the configuration is the scrambled
Sobol point scipy gives, mapped log-uniformly onto the stated range; the tables hold the
records' numbers; the resumed study keeps what was saved and repeats the rest exactly.
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


def _run(out: str) -> None:
  cmd = [sys.executable, "-m", "bench.compare", *ARGS, "--out", out]
  cmd += ["--cache-dir", os.path.join(out, "cache")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


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

  for name, recs in (("momentum", first[:2]), ("adamw", first[2:])):
    row, (trial, seed) = table["optimizers"][name], recs
    assert row["val"] == trial["final"] == trial["curve"][-1][1]
    assert row["mean"] == seed["final"] == seed["curve"][-1][1]
    # 442 rows: 88 test, 354 train of which 71 validation; 2 epochs of full batches of 32
    assert trial["steps"] == 2 * ((354 - 71) // 32)
    target = table["target"]
    hits = [s for s, v in seed["curve"] if v <= target]
    assert seed["steps_to_target"] == (hits[0] if hits else None)
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
