"""Fuzzing at scale: random (pytree × transform × valid hyperparameters × dtype) cases.

Runs ``--cases`` cases split over the families of tests/_strategies.py (the same
strategies and checks as the CI run in tests/test_fuzz.py), with hypothesis
shrinking on, so a failure is reported as a minimal reproducible example. Each
family stops at its first failure (after shrinking); the run goes on with the
next. Writes bench/results/fuzz.json: cases, failures, seconds, per-family
counts and findings.

  python -m bench.fuzz [--cases 10000] [--families sp,insgd]
"""

import argparse
import collections
import json
import os
import time
import traceback

from hypothesis import HealthCheck, given, settings

from bench import harness
from tests import _strategies as strategies

FAMILIES = ["angulargrad", "insgd", "sp", "saliency_proximal", "gal"]
OUT = os.path.join(os.path.dirname(__file__), "results", "fuzz.json")


def run_family(family, examples, counts, findings):
  strategy = strategies.gal_cases() if family == "gal" else strategies.cases(family)
  last = {}

  @settings(
    max_examples=examples,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    print_blob=True,
  )
  @given(case=strategy)
  def check(case):
    last["case"] = case
    strategies.run_case(case)
    counts[family] += 1

  try:
    check()
  except Exception as e:  # noqa: BLE001 - a finding, reported with its shrunk example
    findings.append(
      {
        "family": family,
        "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        "example": repr(last.get("case")),
        "traceback": traceback.format_exc(limit=3),
      }
    )
    print(f"{family}: FAILED on {last.get('case')!r}\n{findings[-1]['error']}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=int, default=10_000)
  parser.add_argument("--families", default=",".join(FAMILIES))
  args = parser.parse_args()
  families = args.families.split(",")
  counts, findings = collections.Counter(), []
  start = time.perf_counter()
  for family in families:
    t0 = time.perf_counter()
    run_family(family, args.cases // len(families), counts, findings)
    print(f"{family}: {counts[family]} cases in {time.perf_counter() - t0:.0f}s", flush=True)
  seconds = time.perf_counter() - start
  result = {
    "command": f"python -m bench.fuzz --cases {args.cases}"
    + ("" if args.families == ",".join(FAMILIES) else f" --families {args.families}"),
    "machine": harness.machine_description(),
    "cases": sum(counts.values()),
    "failures": len(findings),
    "seconds": round(seconds, 1),
    "per_transform": dict(counts),
    "findings": findings,
  }
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT, "w") as f:
    json.dump(result, f, indent=2)
  print(f"fuzz: {result['cases']} cases, {result['failures']} failures, {seconds:.0f}s -> {OUT}")


if __name__ == "__main__":
  main()
