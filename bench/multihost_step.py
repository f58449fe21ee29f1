"""MNIST CNN train step on 8 CPU devices as one process (1 x 8) and as two (2 x 4).

Two processes run the program as several hosts do: ``jax.distributed.initialize``,
one mesh over both processes' devices, each process feeding its own rows of every
batch, and cross-process collectives through Gloo over local TCP. Per method and
mesh this measures the step time of both layouts, interleaved round-robin within
each layout (the two layouts run one after the other), and, from the compiled 2 x 4
program, every collective whose device group spans both processes: what each method
adds to the traffic between hosts over SGD's gradient reduction. It also times
assembling one process's part of a batch (gather its rows, hand them to
``jax.make_array_from_process_local_data``): the input cost per step.

All 8 devices are simulated on the same cores, so the 2 x 4 times price Gloo's
local-TCP collectives against XLA's in-process ones, not a network.

Run: ``python -m bench.multihost_step [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

STEM = "multihost_step"
MESHES = ("data=8", "data=2,fsdp=4")
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(KINDS) + r")(?:-start)?\(")


# --------------------------------------------------------------------------- HLO


def _groups(line: str, n: int) -> list[list[int]]:
  """The device groups of one collective: ``replica_groups`` (listed, or the iota form
  ``[G,S]<=[dims]T(perm)``) or a permute's ``source_target_pairs``; empty means all."""
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if m:
    dims = [int(d) for d in m.group(3).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(4):
      ids = ids.transpose([int(p) for p in m.group(4).split(",")])
    return ids.reshape(int(m.group(1)), int(m.group(2))).tolist()
  m = re.search(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}", line)
  if m and m.group(1):
    return [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
  return [list(range(n))]


def cross_process(hlo: str, process_of: list[int]) -> dict[str, list[int]]:
  """Per kind, the result element counts of the collectives whose group spans
  several processes; ``process_of[i]`` is the process of the program's device ``i``."""
  out: dict[str, list[int]] = {k: [] for k in KINDS}
  for line in hlo.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    groups = _groups(line, len(process_of))
    if not any(len({process_of[i] for i in g}) > 1 for g in groups):
      continue
    shapes = re.findall(r"\w+\[([\d,]*)\]", m.group(1))
    out[m.group(2)].append(sum(math.prod(int(d) for d in s.split(",") if d) for s in shapes))
  return out


# --------------------------------------------------------------------------- one process


def _worker(args) -> None:
  """One process of a layout: compiles and times every method on every mesh."""
  import jax

  from bench import harness
  from flax_models import get_model
  from train import distributed, registry, sharding
  from train.loop import init_state, make_train_step

  if args.processes > 1:
    launch = distributed.Launch(args.coordinator, args.processes, args.process_id, 30)
    distributed.initialize(launch)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4 * args.batch, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, 4 * args.batch).astype(np.int32)
  model, const = get_model("mnist_cnn", 10), registry.make_schedule("constant", 1, 1)
  calls, collectives, feeds = {}, {}, {}
  for spec in MESHES:
    mesh = sharding.make_mesh(sharding.parse_mesh(spec))
    b_sh = sharding.batch_sharding(mesh)
    rows = distributed.process_rows(b_sh, args.batch)
    idx = np.random.default_rng(1).permutation(len(x))[: args.batch]

    def feed(b_sh=b_sh, rows=rows, idx=idx):
      mine = idx[rows]
      return [distributed.put_rows(b_sh, a[mine], args.batch) for a in (x, y)]

    xs, ys = feed()
    feeds[spec] = feed
    process_of = [d.process_index for d in mesh.devices.flat]
    for name in harness.one_per_family():
      opt = registry.make_optimizer(name, const)
      state = init_state(model, opt.tx, x[:1], 0)
      st_sh = sharding.state_shardings(mesh, state)
      state = distributed.put_replicas(state, st_sh)
      step = make_train_step(
        model, opt, "classification", state_sharding=st_sh, batch_sharding=b_sh
      )
      hlo = step.lower(state, xs, ys).compile().as_text()
      collectives[f"{name} | {spec}"] = cross_process(hlo, process_of)
      calls[f"{name} | {spec}"] = harness.carried(step, state, xs, ys)
      if jax.process_index() == 0:
        print(f"{args.processes} x {args.devices}: {name} | {spec} compiled", flush=True)
  times = harness.time_calls(calls, reps=args.reps, warmup=2)
  feed_times = harness.time_calls(feeds, reps=20, warmup=2)
  if jax.process_index() == 0:
    with open(args.out, "w") as f:
      json.dump({"times": times, "feed": feed_times, "collectives": collectives}, f)


# --------------------------------------------------------------------------- driver


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _layout(processes: int, devices: int, batch: int, reps: int, timeout: float) -> dict:
  """Runs one layout's worker processes (killed at ``timeout`` s) and returns process 0's
  result."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    port = _free_port()
    cmd = [sys.executable, "-m", "bench.multihost_step", "--worker", "--out", out]
    cmd += ["--devices", str(devices), "--processes", str(processes), "--batch", str(batch)]
    cmd += ["--reps", str(reps), "--coordinator", f"127.0.0.1:{port}"]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env) for i in range(processes)]
    try:
      end = time.monotonic() + timeout
      for p in procs:
        if p.wait(timeout=max(1.0, end - time.monotonic())):
          raise RuntimeError(f"{processes} x {devices}: a worker exited with {p.returncode}")
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    with open(out) as f:
      return json.load(f)


def _table(result: dict) -> list[str]:
  one, two = result["layouts"]["1x8"], result["layouts"]["2x4"]
  lines = [
    "| optimizer | mesh | 1 × 8 step ms | 2 × 4 step ms | 2 × 4 / 1 × 8 | cross-process "
    "collectives (2 × 4) | their elements | added over SGD: collectives | elements |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for spec in result["meshes"]:
    base = two["collectives"][f"sgd | {spec}"]
    base_n = sum(len(v) for v in base.values())
    base_e = sum(sum(v) for v in base.values())
    for name in result["methods"]:
      key = f"{name} | {spec}"
      t1, t2 = one["times"][key]["median"], two["times"][key]["median"]
      c = two["collectives"][key]
      kinds = ", ".join(f"{len(v)} {k}" for k, v in c.items() if v) or "none"
      n = sum(len(v) for v in c.values())
      elems = sum(sum(v) for v in c.values())
      lines.append(
        f"| {name} | {spec} | {1e3 * t1:.1f} | {1e3 * t2:.1f} | {t2 / t1:.2f}× | {kinds} | "
        f"{elems:,} | {n - base_n:+d} | {elems - base_e:+,} |"
      )
  return lines


def render(result: dict) -> str:
  one, two = result["layouts"]["1x8"], result["layouts"]["2x4"]
  feed = ", ".join(
    f"{spec}: 1 × 8 {1e3 * one['feed'][spec]['median']:.2f} ms, "
    f"2 × 4 {1e3 * two['feed'][spec]['median']:.2f} ms"
    for spec in result["meshes"]
  )
  return "\n".join(
    [
      "## Several processes: 1 process × 8 devices against 2 processes × 4 devices",
      "",
      f"Command: `{result['command']}`. MNIST CNN, batch {result['batch']}, "
      f"{result['machine']}. Both layouts run the same program on 8 simulated CPU devices "
      "sharing the same cores; 2 × 4 is two processes joined by `jax.distributed` whose "
      "collectives go through Gloo over local TCP, so its column prices Gloo against XLA's "
      "in-process collectives, not a network. Medians over interleaved rounds within each "
      "layout. Cross-process collectives are read from the compiled 2 × 4 program: every "
      "collective whose device group holds devices of both processes, with the total "
      "element count of their results; 'added over SGD' is what the method holds beyond "
      "SGD's own (the gradient reduction) on the same mesh. XLA combines reductions into "
      "one tuple all-reduce where it can, so a method's scalars may travel inside SGD's "
      "collective: then only the element count grows.",
      "",
      *_table(result),
      "",
      f"Input per step (one process gathers its rows of a batch and places them with "
      f"`jax.make_array_from_process_local_data`, median): {feed}.",
    ]
  )


def main(argv=None) -> dict:
  ap = harness_parser()
  args = ap.parse_args(argv)
  if args.worker:
    _worker(args)
    return {}
  from bench import harness

  batch, reps = (64, 3) if args.quick else (128, 8)
  layouts = {
    "1x8": _layout(1, 8, batch, reps, timeout=900),
    "2x4": _layout(2, 4, batch, reps, timeout=900),
  }
  result = {
    "command": harness.command("bench.multihost_step", args.quick),
    "machine": harness.machine_description(),
    "batch": batch,
    "methods": harness.one_per_family(),
    "meshes": list(MESHES),
    "layouts": layouts,
  }
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


def harness_parser() -> argparse.ArgumentParser:
  """``--quick``, and the internal options one worker process of a layout takes."""
  from bench import harness

  ap = harness.parser(__doc__, "batch 64, fewer repetitions")
  for flag in ("--devices", "--processes", "--process-id"):
    ap.add_argument(flag, type=int, default=0, help=argparse.SUPPRESS)
  for flag in ("--coordinator", "--out"):
    ap.add_argument(flag, default=None, help=argparse.SUPPRESS)
  ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
  ap.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return ap


if __name__ == "__main__":
  main()
