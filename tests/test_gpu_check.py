"""``make gpu-check``'s script (``python -m bench.gpu_check``), dry-run on the CPU.

The dry run is the GPU check at a tiny size: every part runs, each writes its
``<part>_gpu.json`` and its markdown, the device named. Checked here, from the JSON alone:
each ratio is the method's time over its baseline's (the median ratio of paired rounds for
the LM, their mean over seeds), the comparison's table holds its records, and without a GPU
the real check refuses to start, in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "bench.gpu_check", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _load(out: str, part: str) -> dict:
  with open(os.path.join(out, f"{part}_gpu.json")) as f:
    result = json.load(f)
  assert result["part"] == part and result["device"].startswith("cpu")
  with open(os.path.join(out, f"{part}_gpu.md")) as f:
    assert f.read().startswith(f"Device: {result['device']}")
  return result


def test_dry_run_writes_every_part(tmp_path):
  out = str(tmp_path)
  proc = _run("--dry-run", "--out", out)
  assert proc.returncode == 0, proc.stderr[-3000:]

  upd = _load(out, "update_speed")["trees"]["mnist_cnn"]["methods"]
  # Not donated and donated, each against adam compiled alike.
  assert set(upd) == {"adam", "insgd_l2", "adam | donated", "insgd_l2 | donated"}
  for key, r in upd.items():
    adam = upd["adam | donated" if key.endswith("donated") else "adam"]
    assert np.isclose(r["ratio"], r["median_ms"] / adam["median_ms"])

  timed = _load(out, "train_step")["models"]["mnist_cnn"]
  steps = timed["rows"]
  assert set(steps) == {"sgd", "gal+sgd", "sgd | donated", "gal+sgd | donated"}
  for key, r in steps.items():
    sgd = steps["sgd | donated" if key.endswith("donated") else "sgd"]
    assert r["base"] == "sgd" and np.isclose(r["ratio"], r["median_ms"] / sgd["median_ms"])
  assert steps["gal+sgd | donated"]["identical"]  # donated or not, the same steps
  assert set(timed["compile_s"]) == {"sgd", "gal+sgd"}

  lm = _load(out, "lm_step")
  assert list(lm["step"]) == ["adamw", "gal+adamw"] and list(lm["vocab"]) == ["256"]
  for r in lm["step"].values():
    assert len(r["ratio_per_seed"]) == 2
    assert np.isclose(r["ratio_to_adamw"], np.mean(r["ratio_per_seed"]))
  assert lm["step"]["adamw"]["ratio_per_seed"] == [1.0, 1.0]
  assert os.path.exists(os.path.join(out, lm["plot"]))

  cmp = _load(out, "compare")
  rows = cmp["workloads"]["diabetes_mlp"]["optimizers"]
  with open(os.path.join(out, "compare_gpu", "compare_quick", "diabetes_mlp.jsonl")) as f:
    records = [json.loads(line) for line in f]
  seeds = [r["final"] for r in records if r["phase"] == "seed" and "|momentum|" in r["key"]]
  assert rows["momentum"]["test"] == seeds and len(seeds) == 1
  for fig in cmp["figures"].values():
    assert os.path.exists(os.path.join(out, fig))


def test_refuses_without_a_gpu(tmp_path):
  proc = _run("--out", str(tmp_path))
  assert proc.returncode == 2
  assert "not a GPU" in proc.stderr.strip().splitlines()[-1]
  assert not os.listdir(tmp_path)
