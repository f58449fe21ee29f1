"""One entry point for every benchmark and paper check.

``python -m bench --quick`` runs everything in reduced form; ``python -m bench``
runs the full versions; ``--only``
picks some parts. Each part writes its JSON result (and a markdown rendering of it
and its figures) under ``bench/results/``; ``bench/RESULTS.md`` is then rendered from
the JSON by ``bench/report.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench import report

PARTS = {
  "update_speed": "optimizer-update speed of every method against optax.adam, donated and not",
  "train_step": "whole train step of every method against its base, donated and not; compile time",
  "telemetry_overhead": "train step with per-step logging on against off",
  "mesh_step": "train step on 1-8 simulated devices, with the collectives it holds",
  "multihost_step": "train step as 1 process x 8 devices and 2 processes x 4, cross-process collectives",
  "angulargrad_toy": "AngularGrad paper: toy functions F1-F3 and Rosenbrock",
  "sp_train": "SP paper: what each tie rule prunes per leaf, and the damping bound",
  "sp_rosenbrock": "SP's momentum rule on Rosenbrock: the enlargement cap on and off",
  "gal_regression": "GAL paper: diabetes, a linear reference and GAL's remainder",
  "lm_step": "every method on the transformer LM: step cost, GAL against the vocabulary, bits/byte",
  "input_stream": "streamed input (grain) against the train step's demand, and memory as data grows",
  "compare": "which optimizer, when: every optimizer tuned alike on five workloads",
}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="reduced versions of every part")
  ap.add_argument(
    "--only",
    nargs="+",
    default=[],
    help=f"run only these parts (spaces or commas): {', '.join(PARTS)}",
  )
  ap.add_argument("--report-only", action="store_true", help="only rebuild bench/RESULTS.md")
  args = ap.parse_args(argv)
  failed = []
  only = [p for a in args.only for p in a.split(",") if p]
  unknown = [p for p in only if p not in PARTS]
  if unknown:
    ap.error(f"unknown part {unknown[0]!r}; known: {', '.join(PARTS)}")
  if not args.report_only:
    for part in only or PARTS:
      cmd = [sys.executable, "-m", f"bench.{part}"] + (["--quick"] if args.quick else [])
      print(f"\n=== {part}: {PARTS[part]}\n$ {' '.join(cmd[1:])}", flush=True)
      t0 = time.perf_counter()
      rc = subprocess.call(cmd)
      print(f"=== {part}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
      if rc:
        failed.append(part)
  path = report.build()
  print(f"\nreport: {path}")
  if failed:
    print(f"failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
