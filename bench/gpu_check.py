"""What a GPU changes, measured in one go: ``make gpu-check``.

On a machine whose JAX backend is a GPU this runs, within about eight minutes:

1. the optimizer-update speed of every method against ``optax.adam``
   (:func:`bench.update_speed.time_tree`) on the ResNet-20 and ResNet-50 trees, not donated
   and donated;
2. the whole train step of every optimizer against its base optimizer's on ResNet-20
   (:func:`bench.train_step.time_model`), not donated and donated, and its first compile;
3. the transformer LM's step table (every optimizer of the comparison against AdamW, 4
   blocks, width 256, context 128, batch 32, three seeds) and GAL against the vocabulary
   (:func:`bench.lm_step.time_steps`, :func:`bench.lm_step.time_vocab`);
4. one workload of the comparison at its quick size (``python -m bench.compare --quick
   --workloads digits_cnn``).

Donated and not: ``train.loop.DONATE_STATE`` chooses per backend whether the training loop
donates its state (docs/design.md, Conventions — Donation), and a GPU is not listed yet, so
both are timed. The CPU fusion seam stays at its default: a program compiled for a GPU holds
only the plain branch of each of its constructs whatever the seam says
(``optax_ext/_fusion.py``, ``tests/test_fusion.py``), so seam on and off are one program there.

Each part writes ``results/<part>_gpu.json``, which ``bench/report.py`` renders beside the
CPU result of the same part, the device named. JAX must see the GPU: a CUDA build of
jaxlib (``pip install "jax[cuda12]"`` of the same version as the CPU one). Parts run in that order; a part that would
start after the time budget is skipped and recorded as such.

``--dry-run`` runs the same script on the CPU at a tiny size (one method and its baselines
per part, small models, one trial), into a temporary folder unless ``--out`` says otherwise: the test
suite runs it so that the script cannot rot.

Run: ``python -m bench.gpu_check [--dry-run] [--out DIR] [--budget SECONDS]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax

from bench import compare, harness, lm_step, train_step, trees, update_speed

__all__ = ["SIZES", "main", "render"]

#: Per part, its size on a GPU and in the dry run.
SIZES = {
  "gpu": {
    "update_speed": dict(trees=("resnet20", "resnet50"), reps=15, names=None),
    "train_step": dict(model="resnet20", batch=128, reps=15, only=None),
    "lm_step": dict(
      step=lm_step.CONFIGS["step"][0],
      vocab=lm_step.CONFIGS["vocab"][0],
      methods=lm_step.METHODS,
      vocabs=lm_step.VOCABS,
    ),
    "compare": ["--quick", "--workloads", "digits_cnn"],
  },
  "dry": {
    "update_speed": dict(trees=("mnist_cnn",), reps=1, names=("insgd_l2",)),
    "train_step": dict(model="mnist_cnn", batch=2, reps=1, only=("gal+sgd",)),
    "lm_step": dict(
      step=dict(depth=1, width=16, heads=2, context=8, batch=2, reps=1, seeds=2),
      vocab=dict(depth=1, width=16, heads=2, context=8, batch=2, reps=1),
      methods=("adamw", "gal+adamw"),
      vocabs=(256,),
    ),
    "compare": ["--quick", "--workloads", "diabetes_mlp", "--optimizers", "momentum", "adamw"]
    + ["--trials", "1", "--seeds", "1", "--epochs", "1"],
  },
}


#: update_speed's variants timed: not donated and donated (see the module's docstring).
VARIANTS = ("", update_speed.DONATED)


def _update_speed(size: dict, out: str) -> dict:
  timed = {
    name: update_speed.time_tree(trees.named_tree(name), size["reps"], size["names"], VARIANTS)
    for name in size["trees"]
  }
  return {"reps": size["reps"], "trees": timed}


def _train_step(size: dict, out: str) -> dict:
  timed = train_step.time_model(
    size["model"], size["batch"], size["reps"], quick=False, only=size["only"]
  )
  return {"batch": size["batch"], "reps": size["reps"], "models": {size["model"]: timed}}


def _lm_step(size: dict, out: str) -> dict:
  result = {
    "config": {"step": size["step"], "vocab": size["vocab"]},
    "step": lm_step.time_steps(size["step"], size["methods"]),
    "vocab": lm_step.time_vocab(size["vocab"], size["vocabs"]),
    "plot": "lm_gal_vocab_gpu.png",
  }
  lm_step.plot(result["vocab"], result["plot"], directory=out)
  return result


def _compare(size: list, out: str) -> dict:
  """The comparison's own result, its runs and figures kept in ``out/compare_gpu/``."""
  sub = os.path.join(out, "compare_gpu")
  cache = os.path.join(sub, "cache")
  result = compare.main(size + ["--out", sub, "--cache-dir", cache, "--no-progress"])
  result["figures"] = {k: f"compare_gpu/{v}" for k, v in result["figures"].items()}
  return result


PARTS = {
  "update_speed": _update_speed,
  "train_step": _train_step,
  "lm_step": _lm_step,
  "compare": _compare,
}


def _render_update_speed(result: dict) -> list[str]:
  lines = [
    f"{result['reps']} interleaved rounds; × adam: the median ÷ `optax.adam`'s median in the "
    "same run and donation setting.",
    "",
  ]
  for name, r in result["trees"].items():
    lines += [f"**{name}** ({r['n_params']:,} params, {r['n_leaves']} leaves):", ""]
    lines += [*update_speed.tree_table(r, r["methods"]), ""]
  return lines


def _render_train_step(result: dict) -> list[str]:
  rows = next(iter(result["models"].values()))["rows"]
  keys = [k for k in rows if not k.endswith(train_step.DONATED)]
  return [
    f"Batch {result['batch']}, {result['reps']} interleaved rounds after 3 warm-up calls. "
    "Whole train step ÷ the base optimizer's step, not donated (donated):",
    "",
    *train_step.step_table(result, keys),
    "",
    *train_step.donation_table(result),
    "",
    "First compile (trace, lower, compile), not donated:",
    "",
    *train_step.compile_table(result),
  ]


def render(result: dict) -> str:
  """One part's GPU result, in the part's own tables."""
  part = result["part"]
  if part == "compare":
    body = compare.render(result)
  elif part == "lm_step":
    body = lm_step.render(result)
  elif part == "update_speed":
    body = "\n".join(_render_update_speed(result))
  else:
    body = "\n".join(_render_train_step(result))
  head = f"Device: {result['device']}. Command: `{result['command']}`; {result['seconds']:.0f} s."
  return head + "\n\n" + body


def _device() -> str:
  d = jax.devices()[0]
  return f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s))"


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dry-run", action="store_true", help="the tiny CPU version (the tests)")
  ap.add_argument("--out", default=None, help="results folder (default bench/results)")
  ap.add_argument("--budget", type=float, default=480.0, help="seconds; later parts skipped")
  ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
  args = ap.parse_args(argv)
  backend = jax.default_backend()
  if backend != "gpu" and not args.dry_run:
    ap.error(f"the default JAX backend is {backend!r}, not a GPU; --dry-run runs the CPU check")
  out = args.out or (tempfile.mkdtemp(prefix="gpu_check_") if args.dry_run else harness.RESULTS)
  sizes = SIZES["dry" if args.dry_run else "gpu"]
  t0 = time.perf_counter()
  done = {}
  for part in args.parts:
    if time.perf_counter() - t0 > args.budget:
      print(f"{part}: skipped, the {args.budget:.0f} s budget is spent", file=sys.stderr)
      continue
    start, cpu = time.perf_counter(), time.process_time()
    print(f"=== {part}", flush=True)
    result = PARTS[part](sizes[part], out)
    result.update(
      part=part,
      device=_device(),
      machine=harness.machine_description(),
      command="python -m bench.gpu_check" + (" --dry-run" if args.dry_run else ""),
      seconds=time.perf_counter() - start,
      cpu_seconds=time.process_time() - cpu,
    )
    harness.write(f"{part}_gpu", result, render, directory=out)
    done[part] = result["seconds"]
  print(f"gpu check: {time.perf_counter() - t0:.0f} s ({done}); results in {out}")
  return done


if __name__ == "__main__":
  main()
