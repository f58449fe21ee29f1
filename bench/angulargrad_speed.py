"""AngularGrad update speed against optax.adam, and its effective bandwidth.

On a parameter tree shaped like ResNet-50 (``bench.trees.named_tree('resnet50')``,
about 25.6M float32 values in 161 leaves) this times, interleaved in one run:
the jitted ``tx.update`` alone and ``tx.update`` + ``optax.apply_updates``, for
``optax.adam``, AngularGrad cos and tan, and a direct transcription of
Algorithm 2 (it stores the angle and calls arctan2, cos or tan and tanh on
every element), plus a jitted copy of the tree. Ratios are medians to adam's
median in the same run. Effective bandwidth is bytes moved / median time, for
two byte counts: the least an update must read and write, and what the
compiled program moves (XLA on CPU gives each output array its own loop, so
intermediates are written and read back).

Run: ``python -m bench.angulargrad_speed [--quick]`` (writes
``bench/results/angulargrad_speed.{md,json}``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import optax_ext
from bench import timing, trees

RESULTS = os.path.join(os.path.dirname(__file__), "results")

# Parameter-sized arrays read + written by one call. "least": a single pass
# (update only: adam reads g, m, v and writes m, v, u; AngularGrad also reads
# g_prev, tan A_{t-1} and writes both). "xla": counted from the compiled CPU
# program, one loop per output array (adam: m' 3, v' 3, u 3; AngularGrad adds
# g_prev' = copy of g 2, tan A 3, and u reads 5 arrays and writes 1).
# With apply_updates the last loop also reads the parameters and writes them
# instead of u.
TRAFFIC = {
  "update": {"adam": {"least": 6, "xla": 9}, "angulargrad": {"least": 10, "xla": 16}},
  "update+apply": {"adam": {"least": 7, "xla": 10}, "angulargrad": {"least": 11, "xla": 17}},
}


class NaiveState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  prev_grad: optax.Updates
  angle: optax.Updates


def naive_angulargrad(learning_rate, method="cos", b1=0.9, b2=0.999, eps=1e-8):
  """Algorithm 2 written as it reads: the angle is stored and every function called."""

  def init(params):
    z = lambda: jax.tree.map(jnp.zeros_like, params)
    return NaiveState(jnp.zeros([], jnp.int32), z(), z(), z(), z())

  def update(grads, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    angle = jax.tree.map(
      lambda g, gp: jnp.arctan2(jnp.abs(g - gp), jnp.abs(1 + g * gp)), grads, state.prev_grad
    )
    trig = jnp.cos if method == "cos" else jnp.tan

    def step(m, v, a, a_prev):
      a_min = jnp.where(count == 1, a, jnp.minimum(a_prev, a))
      phi = jnp.tanh(jnp.abs(trig(a_min))) * 0.5 + 0.5
      m_hat = m / (1 - b1**count)
      v_hat = v / (1 - b2**count)
      return -learning_rate * phi * m_hat / (jnp.sqrt(v_hat) + eps)

    updates = jax.tree.map(step, mu, nu, angle, state.angle)
    return updates, NaiveState(count, mu, nu, grads, angle)

  return optax.GradientTransformation(init, update)


def candidates():
  return {
    "adam": optax.adam(1e-3),
    "angulargrad_cos": optax_ext.angulargrad(1e-3, method="cos"),
    "angulargrad_tan": optax_ext.angulargrad(1e-3, method="tan"),
    "naive_cos": naive_angulargrad(1e-3, method="cos"),
    "naive_tan": naive_angulargrad(1e-3, method="tan"),
  }


def run(reps: int, tree_name: str = "resnet50") -> dict:
  params = trees.named_tree(tree_name)
  n = trees.count(params)
  grads = jax.tree.map(lambda p: p * 0.01 + 0.001, params)
  grads2 = jax.tree.map(lambda g: -0.7 * g + 0.0003, grads)
  fns = {}
  for name, tx in candidates().items():
    update = jax.jit(tx.update)

    @jax.jit
    def update_apply(g, s, p, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    # Two steps first, so every timed call runs the steady-state (t > 1) path.
    _, state = update(grads, tx.init(params), params)
    _, state = update(grads2, state, params)
    fns[f"{name} | update"] = lambda f=update, s=state: f(grads, s, params)
    if not name.startswith("naive"):
      fns[f"{name} | update+apply"] = lambda f=update_apply, s=state: f(grads, s, params)
  copy = jax.jit(lambda t: jax.tree.map(lambda x: x + 0, t))
  fns["copy"] = lambda: copy(params)
  res = timing.time_calls(fns, reps=reps)
  copy_s = res["copy"]["median"]
  array_bytes = 4 * n
  out = {
    "machine": timing.machine_description(),
    "tree": tree_name,
    "n_params": n,
    "n_leaves": len(jax.tree.leaves(params)),
    "reps": reps,
    "copy_ms": 1e3 * copy_s,
    "copy_GBps": 2 * array_bytes / copy_s / 1e9,
    "rows": {},
  }
  for key, r in res.items():
    if key == "copy":
      continue
    name, mode = key.split(" | ")
    base = res[f"adam | {mode}"]["median"]
    kind = "adam" if name == "adam" else "angulargrad"
    row = {
      "median_ms": 1e3 * r["median"],
      "p25_ms": 1e3 * r["p25"],
      "p75_ms": 1e3 * r["p75"],
      "ratio_to_adam": r["median"] / base,
      "copies": r["median"] / copy_s,
    }
    if not name.startswith("naive"):
      least, xla = TRAFFIC[mode][kind]["least"], TRAFFIC[mode][kind]["xla"]
      row["GBps_least"] = least * array_bytes / r["median"] / 1e9
      row["GBps_xla"] = xla * array_bytes / r["median"] / 1e9
      row["traffic_arrays"] = (least, xla)
    out["rows"][key] = row
  return out


def markdown(r: dict) -> str:
  lines = [
    "## Update speed (ResNet-50-sized tree)",
    "",
    f"Command: `python -m bench.angulargrad_speed`. Machine: {r['machine']}; shared with "
    "other jobs while measured, so absolute times are noisy — compare ratios, which come "
    f"from one interleaved run (median of {r['reps']} rounds, each candidate once per round).",
    "",
    f"Tree: `bench.trees.named_tree('{r['tree']}')`, {r['n_params']:,} float32 values in "
    f"{r['n_leaves']} leaves. A jitted copy of the tree took {r['copy_ms']:.1f} ms "
    f"({r['copy_GBps']:.1f} GB/s, read + write).",
    "",
    "| candidate | call | median ms (p25–p75) | × adam | × copy | arrays moved (least / as compiled) "
    "| GB/s (least / as compiled) | % of copy GB/s (as compiled) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for key, row in r["rows"].items():
    name, mode = key.split(" | ")
    if "traffic_arrays" in row:
      least, xla = row["traffic_arrays"]
      traffic = f"{least} / {xla}"
      bw = f"{row['GBps_least']:.1f} / {row['GBps_xla']:.1f}"
      pct = f"{100 * row['GBps_xla'] / r['copy_GBps']:.0f}%"
    else:
      traffic = bw = pct = "–"
    lines.append(
      f"| {name} | {mode} | {row['median_ms']:.1f} ({row['p25_ms']:.1f}–{row['p75_ms']:.1f}) | "
      f"{row['ratio_to_adam']:.2f} | {row['copies']:.1f} | {traffic} | {bw} | {pct} |"
    )
  rows = r["rows"]
  cos_u = rows["angulargrad_cos | update"]["ratio_to_adam"]
  tan_u = rows["angulargrad_tan | update"]["ratio_to_adam"]
  naive = rows["naive_cos | update"]["ratio_to_adam"]
  adam_ms = rows["adam | update"]["median_ms"]
  no_copy = [
    (rows[f"angulargrad_{m} | update"]["median_ms"] - r["copy_ms"]) / adam_ms
    for m in ("cos", "tan")
  ]
  verdict = "meets" if max(cos_u, tan_u) <= 1.6 else "does not meet"
  lines += [
    "",
    f"**Target ≤ 1.6× adam (update):** cos {cos_u:.2f}×, tan {tan_u:.2f}× — this run "
    f"{verdict} it. The direct transcription of Algorithm 2 takes {naive:.2f}× adam.",
    "",
    "Why not lower on this CPU: XLA's CPU backend emits one loop per output array (no "
    "multi-output fusion), so each of the new `mu`, `nu`, `tan_angle` is written by its own "
    "loop and read back by the loop that forms the update, and `prev_grad` is a copy of the "
    "gradient argument. As compiled, an AngularGrad update moves 16 parameter-sized arrays "
    "where adam's moves 9 (17 and 10 with `apply_updates`): 1.7–1.8× is the floor this "
    "compiler allows for the two, while a single fused pass would move 10 against 6 (11 "
    "against 7). Of the transcendental functions only `tanh` is left (the angle is "
    "kept as its tangent); writing φ through `exp` and folding its division into Adam's "
    "measured no faster, so the code keeps `tanh`.",
    "",
    f"The copy of the gradient into `prev_grad` is one tree copy; without it (median minus "
    f"the copy, an estimate for a train step where the gradient is already a buffer of "
    f"its own) the update would take {no_copy[0]:.2f}× (cos) and {no_copy[1]:.2f}× (tan) adam.",
    "",
  ]
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="same protocol (10 rounds)")
  ap.add_argument("--reps", type=int, default=11)
  args = ap.parse_args(argv)
  os.makedirs(RESULTS, exist_ok=True)
  result = run(max(10, args.reps))
  text = markdown(result)
  with open(os.path.join(RESULTS, "angulargrad_speed.json"), "w") as fh:
    json.dump(result, fh, indent=1)
  with open(os.path.join(RESULTS, "angulargrad_speed.md"), "w") as fh:
    fh.write(text)
  print(text)
  return result


if __name__ == "__main__":
  main()
