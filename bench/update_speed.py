"""Optimizer-update speed: every method against optax baselines, in one run.

For each parameter tree (shaped like the MNIST CNN, ResNet-20, ResNet-18 and
ResNet-50) this times one jitted ``tx.update`` + ``apply_updates`` per method,
interleaved, and reports medians as ratios to ``optax.adam`` measured in the
same run. It also times a jitted copy of the tree (read + write of every
value: the memory roofline's unit) and reports each update in copies, next to
the number of parameter-sized arrays the update must at least read and write.
A scaling sweep from 1M to 25M parameters draws a plot, and the optimizer
state's bytes per parameter are read from each state pytree.

Run: ``python -m bench.update_speed [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_ext
from bench import timing, trees

RESULTS = os.path.join(os.path.dirname(__file__), "results")

# Parameter-sized arrays each update reads and writes at the least (gradient,
# state, update out): its memory traffic in units of one array, for the roofline.
# AngularGrad: read g, m, v, g_prev, tan A; write m, v, g_prev, tan A, u. SP: 13
# with a single counting pass (derived in bench/sp_speed.py, traffic_floor).
TRAFFIC = {
  "sgd": 2,
  "momentum": 4,
  "adam": 6,
  "angulargrad_cos": 10,
  "angulargrad_tan": 10,
  "insgd": 4,
  "sp": 13,
  "sp_exact": 13,
}


def _power_like(params):
  return jax.tree.map(lambda p: jnp.asarray(4.0, p.dtype) if p.ndim >= 2 else None, params)


def candidates(params) -> dict[str, tuple[optax.GradientTransformation, dict]]:
  """The transformations compared, with the extra arguments each update takes."""
  return {
    "sgd": (optax.sgd(0.1), {}),
    "momentum": (optax.sgd(0.1, momentum=0.9), {}),
    "adam": (optax.adam(1e-3), {}),
    "angulargrad_cos": (optax_ext.angulargrad(1e-3, method="cos"), {}),
    "angulargrad_tan": (optax_ext.angulargrad(1e-3, method="tan"), {}),
    "insgd": (optax_ext.insgd(0.1), {"input_power": _power_like(params)}),
    "sp": (optax_ext.sp(0.1), {}),
    "sp_exact": (optax_ext.sp(0.1, quantile="exact"), {}),
  }


def _stepper(tx, extra):
  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


def time_tree(params, reps: int, names=None) -> dict:
  """Times every candidate on ``params``; returns medians, ratios and copies."""
  grads = jax.tree.map(lambda p: p * 0.01 + 0.001, params)
  cands = candidates(params)
  if names:
    cands = {k: v for k, v in cands.items() if k in names or k == "adam"}
  fns = {}
  for name, (tx, extra) in cands.items():
    state = tx.init(params)
    step = _stepper(tx, extra)
    # Two steps first so every method runs its steady-state branch.
    p1, state = step(params, state, grads)
    p2, state = step(p1, state, jax.tree.map(lambda g: g * 0.9, grads))
    fns[name] = lambda step=step, p=p2, s=state: step(p, s, grads)
  copy = jax.jit(lambda t: jax.tree.map(lambda x: x + 0, t))
  fns["copy"] = lambda: copy(params)
  res = timing.time_calls(fns, reps=reps)
  ratio = timing.ratios(res, "adam")
  n = trees.count(params)
  copy_s = res["copy"]["median"]
  out = {"n_params": n, "n_leaves": len(jax.tree.leaves(params)), "methods": {}}
  out["copy_bandwidth_GBps"] = 2 * 4 * n / copy_s / 1e9
  for name in cands:
    out["methods"][name] = {
      "median_ms": 1e3 * res[name]["median"],
      "p25_ms": 1e3 * res[name]["p25"],
      "p75_ms": 1e3 * res[name]["p75"],
      "ratio_to_adam": ratio[name],
      "copies": res[name]["median"] / copy_s,
      "min_traffic_copies": TRAFFIC[name] / 2,
    }
  return out


def state_bytes_per_param(params) -> dict[str, float]:
  n = trees.count(params)
  out = {}
  for name, (tx, _) in candidates(params).items():
    shapes = jax.eval_shape(tx.init, params)
    out[name] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / n
  return out


def scaling(sizes, reps: int, names) -> dict:
  rows = {}
  for n in sizes:
    params = trees.scaled_tree(n)
    rows[n] = time_tree(params, reps, names)
    del params
  return rows


def plot_scaling(rows: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sizes = sorted(rows)
  names = list(rows[sizes[0]]["methods"])
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for name in names:
    ms = [rows[n]["methods"][name]["median_ms"] for n in sizes]
    rt = [rows[n]["methods"][name]["ratio_to_adam"] for n in sizes]
    axes[0].plot(np.array(sizes) / 1e6, ms, marker="o", label=name)
    axes[1].plot(np.array(sizes) / 1e6, rt, marker="o", label=name)
  axes[0].set_xscale("log")
  axes[0].set_yscale("log")
  axes[0].set_ylabel("update time, median (ms)")
  axes[1].set_xscale("log")
  axes[1].set_ylabel("time / optax.adam (same run)")
  axes[1].axhline(1.0, color="k", lw=0.8)
  for ax in axes:
    ax.set_xlabel("parameters (millions, 160 leaves)")
    ax.grid(alpha=0.3, which="both")
  axes[1].legend(fontsize=8)
  fig.suptitle("optimizer update cost vs size")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(result: dict) -> str:
  lines = [f"Machine: {result['machine']}", ""]
  for tree_name, r in result["trees"].items():
    lines.append(
      f"**{tree_name}** ({r['n_params']:,} params, {r['n_leaves']} leaves; "
      f"copy bandwidth {r['copy_bandwidth_GBps']:.1f} GB/s)"
    )
    lines.append("")
    lines.append("| method | median ms (p25–p75) | × adam | × copy | min traffic (copies) |")
    lines.append("|---|---|---|---|---|")
    for name, m in r["methods"].items():
      lines.append(
        f"| {name} | {m['median_ms']:.2f} ({m['p25_ms']:.2f}–{m['p75_ms']:.2f}) | "
        f"{m['ratio_to_adam']:.2f} | {m['copies']:.1f} | {m['min_traffic_copies']:.1f} |"
      )
    lines.append("")
  lines.append("Optimizer-state bytes per parameter (from the state pytree):")
  lines.append("")
  lines.append("| method | bytes/param |")
  lines.append("|---|---|")
  for name, b in result["state_bytes_per_param"].items():
    lines.append(f"| {name} | {b:.2f} |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="fewer trees, sizes and repetitions")
  args = ap.parse_args(argv)
  os.makedirs(RESULTS, exist_ok=True)
  reps = 5 if args.quick else 15
  tree_names = ["mnist_cnn", "resnet20", "resnet50"] if args.quick else list(trees.SHAPES)
  result = {"machine": timing.machine_description(), "reps": reps, "trees": {}}
  for name in tree_names:
    print(f"timing updates on {name} ...", flush=True)
    result["trees"][name] = time_tree(trees.named_tree(name), reps)
  result["state_bytes_per_param"] = state_bytes_per_param(trees.named_tree("mnist_cnn"))
  sizes = (
    [1_000_000, 5_000_000, 25_000_000]
    if args.quick
    else [1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000]
  )
  print("scaling sweep ...", flush=True)
  names = ["adam", "sgd", "angulargrad_cos", "sp", "sp_exact", "insgd"]
  rows = scaling(sizes, max(3, reps // 2), names)
  result["scaling"] = {str(k): v for k, v in rows.items()}
  plot_scaling(rows, os.path.join(RESULTS, "update_scaling.png"))
  tag = "quick" if args.quick else "full"
  with open(os.path.join(RESULTS, f"update_speed_{tag}.json"), "w") as f:
    json.dump(result, f, indent=2)
  md = markdown(result)
  with open(os.path.join(RESULTS, f"update_speed_{tag}.md"), "w") as f:
    f.write(md + "\n")
  print(md)
  return result


if __name__ == "__main__":
  main()
