"""Streamed input (grain) against the train step's demand, and host memory as the data grows.

*Supply*: the streamed path (:mod:`train.stream`) reading an ArrayRecord folder of
CIFAR-shaped records (32×32×3 PNG images of random pixels, one label each), decoding,
standardising and augmenting them (random crop with padding, flip) and batching, with
0, 1 and 2 worker processes; examples per second over a run of batches after the
first (the first, which starts the workers, is timed apart). *Demand*: examples per
second the jitted ResNet-20 train step (SGD with momentum, :func:`train.loop.make_train_step`)
consumes at the same batch size on this machine. Both are measured alone, one after the
other; in training they share the cores.

*Memory*: peak resident memory of a fresh process that opens the data set and reads a
fixed number of batches, for N and 10·N records, streamed (0 workers) and, for
contrast, held in memory (``--input memory``). Both N lie past the statistics' sample
(:data:`train.sources.STATS_BYTES`), so the streamed reads are the same work at both sizes.

Run: ``python -m bench.input_stream [--quick]``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import harness

STEM = "input_stream"
RECORDS = 3000  # N; the memory check also reads 10·N
WORKERS = (0, 1, 2)


def write_folder(folder: str, n: int, seed: int = 0) -> None:
  """``n`` training records and 500 test records of random 32×32×3 images."""
  from train import images

  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for split, count in (("train", n), ("test", 500)):
    x = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    images.write_arrayrecord(
      os.path.join(folder, f"{split}.array_record"), x, rng.integers(0, 10, count)
    )


def _open(folder: str, workers: int = 0, prefetch: int = 2, mode: str = "stream"):
  from train import stream

  options = stream.StreamOptions(workers=workers, prefetch=prefetch, num_classes=10)
  return stream.open_data(f"arrayrecord:{folder}", mode=mode, options=options)


def supply(folder: str, batch: int, batches: int, workers: int) -> dict:
  """Examples per second of the streamed path after its first batch, and that first wait."""
  st = _open(folder, workers)
  feed = st.train_batches(batch, seed=0, stop=batches + 1)
  t0 = time.perf_counter()
  next(feed)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  n = sum(len(y) for _, _, y in feed)
  seconds = time.perf_counter() - t0
  return {"examples_per_s": n / seconds, "first_batch_s": first, "batches": batches}


def demand(batch: int, reps: int) -> dict:
  """Examples per second the ResNet-20 train step consumes (median step time)."""
  from flax_models import get_model
  from train import registry
  from train.loop import init_state, make_train_step

  model = get_model("resnet20", 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  opt = registry.make_optimizer("momentum", registry.make_schedule("constant", 1, 1))
  state = init_state(model, opt.tx, x[:1], 0)
  step = make_train_step(model, opt, "classification").lower(state, x, y).compile()
  t = harness.time_calls({"step": harness.carried(step, state, x, y)}, reps=reps, warmup=2)
  return {"examples_per_s": batch / t["step"]["median"], "step_ms": 1e3 * t["step"]["median"]}


def _child(folder: str, mode: str, batch: int, batches: int) -> None:
  """Run in a fresh process: reads ``batches`` batches and prints the peak RSS in MiB."""
  ds = _open(folder, mode=mode)
  for _, _, _ in ds.train_batches(batch, seed=0, stop=batches):
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
  print(json.dumps({"peak_rss_mib": peak, "records": ds.num_train}))


def peak_rss(folder: str, mode: str, batch: int, batches: int) -> dict:
  code = "import sys; from bench.input_stream import _child; _child(*sys.argv[1:3], *map(int, sys.argv[3:]))"
  out = subprocess.run(
    [sys.executable, "-c", code, folder, mode, str(batch), str(batches)],
    check=True,
    capture_output=True,
    text=True,
    cwd=os.path.dirname(harness.HERE),
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def render(result: dict) -> str:
  d = result["demand"]
  lines = [
    f"Command: `{result['command']}`. Machine: {result['machine']}; grain {result['grain']}, "
    f"batch {result['batch']}, {result['records']} CIFAR-shaped ArrayRecord records (PNG).",
    "",
    f"Demand: the ResNet-20 train step (SGD with momentum) takes {d['step_ms']:.0f} ms a "
    f"batch here, {d['examples_per_s']:.0f} examples/s. Supply: the streamed path alone "
    "(decode, standardise, crop and flip, batch), after its first batch:",
    "",
    "| workers | examples/s | ÷ step demand | first batch, s |",
    "|---|---|---|---|",
  ]
  for w, s in result["supply"].items():
    ratio = s["examples_per_s"] / d["examples_per_s"]
    lines.append(f"| {w} | {s['examples_per_s']:.0f} | {ratio:.1f}× | {s['first_batch_s']:.1f} |")
  lines += [
    "",
    "Workers pay off where a host has cores to spare for them (ImageNet's JPEG decoding on "
    "a GPU host); on a machine of few cores, shared with other jobs, they compete with "
    "the main process, and the first batch waits for them to start.",
    "",
    f"Peak resident memory (MiB) of a fresh process reading {result['rss_batches']} batches:",
    "",
    "| records | streamed | held in memory |",
    "|---|---|---|",
  ]
  for n, r in result["rss"].items():
    lines.append(f"| {n} | {r['stream']['peak_rss_mib']:.0f} | {r['memory']['peak_rss_mib']:.0f} |")
  small, large = (result["rss"][k] for k in sorted(result["rss"], key=int))
  growth = {m: large[m]["peak_rss_mib"] / small[m]["peak_rss_mib"] for m in ("stream", "memory")}
  lines += [
    "",
    f"10× the records: streamed peak × {growth['stream']:.2f}, held in memory × "
    f"{growth['memory']:.2f}.",
  ]
  return "\n".join(lines)


def main(argv=None) -> dict:
  from importlib.metadata import version

  ap = harness.parser(__doc__, "batch 64, fewer batches and timing rounds")
  args = ap.parse_args(argv)
  batch, batches, reps = (64, 20, 5) if args.quick else (128, 40, 10)
  result = {
    "command": harness.command("bench.input_stream", args.quick),
    "machine": harness.machine_description(),
    "grain": version("grain"),
    "batch": batch,
    "records": RECORDS,
    "rss_batches": batches,
    "supply": {},
    "rss": {},
  }
  with tempfile.TemporaryDirectory() as tmp:
    folders = {n: os.path.join(tmp, str(n)) for n in (RECORDS, 10 * RECORDS)}
    for n, folder in folders.items():
      print(f"writing {n} records ...", flush=True)
      write_folder(folder, n)
    print("timing the ResNet-20 train step ...", flush=True)
    result["demand"] = demand(batch, reps)
    for w in WORKERS:
      print(f"streaming with {w} workers ...", flush=True)
      result["supply"][str(w)] = supply(folders[RECORDS], batch, batches, w)
    for n, folder in folders.items():
      print(f"peak memory with {n} records ...", flush=True)
      result["rss"][str(n)] = {m: peak_rss(folder, m, batch, batches) for m in ("stream", "memory")}
  print(harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render))
  return result


if __name__ == "__main__":
  main()
