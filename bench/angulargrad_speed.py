"""AngularGrad update speed against optax.adam, and its effective bandwidth.

On a parameter tree shaped like ResNet-50 (``bench.trees.named_tree('resnet50')``,
about 25.6M float32 values in 161 leaves) this times, interleaved in one run:
the jitted ``tx.update`` alone and ``tx.update`` + ``optax.apply_updates``, for
``optax.adam``, AngularGrad cos and tan, and a direct transcription of
Algorithm 2 (it stores the angle and calls arctan2, cos or tan and tanh on
every element), AngularGrad with ``optax_ext._fusion.one_pass`` switched off
(each output array then gets a loop of its own from XLA:CPU, which is how
the update compiled before it), plus a jitted copy of the tree. Ratios are
medians to adam's median in the same run. Effective bandwidth is bytes moved /
median time, for two byte counts: the least an update must read and write,
and what the compiled program moves.

Run: ``python -m bench.angulargrad_speed [--quick]`` (writes
``bench/results/angulargrad_speed.{md,json}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import NamedTuple
from unittest import mock

import jax
import jax.numpy as jnp
import optax

import optax_ext
from bench import timing, trees
from optax_ext import _fusion

RESULTS = os.path.join(os.path.dirname(__file__), "results")

# Parameter-sized arrays read + written by one call. "least": a single pass
# (update only: adam reads g, m, v and writes m, v, u; AngularGrad also reads
# g_prev, tan A_{t-1} and writes both). "xla": counted from the compiled CPU
# program. adam: one loop per output array (m' 3, v' 3, u 3); with
# apply_updates its last loop reads the parameters and writes them instead of
# u (10). AngularGrad: one loop reads g, g_prev, tan A, m, v and writes all
# five outputs (10); apply_updates is a loop of its own (reads p and u, writes
# p: 13). Without one_pass: m' 3, v' 3, tan A 3, g_prev' (a copy of g) 2, and
# u reads m', v', tan A_t, tan A_{t-1} and writes 1 (16); with apply_updates
# that last loop also reads p and writes it instead of u (17).
TRAFFIC = {
  "update": {
    "adam": {"least": 6, "xla": 9},
    "angulargrad": {"least": 10, "xla": 10},
    "unfused": {"least": 10, "xla": 16},
  },
  "update+apply": {
    "adam": {"least": 7, "xla": 10},
    "angulargrad": {"least": 11, "xla": 13},
    "unfused": {"least": 11, "xla": 17},
  },
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
    # The same transform compiled with one_pass off (see _compile).
    "unfused_cos": optax_ext.angulargrad(1e-3, method="cos"),
    "naive_cos": naive_angulargrad(1e-3, method="cos"),
    "naive_tan": naive_angulargrad(1e-3, method="tan"),
  }


def _compile(fn, args, fused: bool):
  """``fn`` jitted and compiled for ``args``; ``fused=False`` traces it with
  ``optax_ext._fusion.one_pass`` as the plain identity."""
  off = mock.patch.object(_fusion, "one_pass", lambda *arrays: arrays)
  with contextlib.nullcontext() if fused else off:
    return jax.jit(fn).lower(*args).compile()


def run(reps: int, tree_name: str = "resnet50") -> dict:
  params = trees.named_tree(tree_name)
  n = trees.count(params)
  grads = jax.tree.map(lambda p: p * 0.01 + 0.001, params)
  grads2 = jax.tree.map(lambda g: -0.7 * g + 0.0003, grads)
  fns = {}
  for name, tx in candidates().items():

    def update_apply(g, s, p, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    state0 = tx.init(params)
    fused = not name.startswith("unfused")
    update = _compile(tx.update, (grads, state0, params), fused)
    update_apply = _compile(update_apply, (grads, state0, params), fused)
    # Two steps first, so every timed call runs the steady-state (t > 1) path.
    _, state = update(grads, state0, params)
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
    kind = {"adam": "adam", "unfused_cos": "unfused"}.get(name, "angulargrad")
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
  unfused = rows["unfused_cos | update"]["ratio_to_adam"]
  unfused_apply = rows["unfused_cos | update+apply"]["ratio_to_adam"]
  cos_apply = rows["angulargrad_cos | update+apply"]["ratio_to_adam"]
  verdict = "meets" if max(cos_u, tan_u) <= 1.6 else "does not meet"
  lines += [
    "",
    f"**Target ≤ 1.6× adam (update):** cos {cos_u:.2f}×, tan {tan_u:.2f}× — this run "
    f"{verdict} it. The direct transcription of Algorithm 2 takes {naive:.2f}× adam.",
    "",
    "How: XLA's CPU backend gives every output array a loop of its own (it has no "
    "multi-output fusion by default), so compiled plainly the update writes the new `mu`, "
    "`nu`, `tan_angle` in three loops, copies the gradient into `prev_grad`, and reads "
    "three of them back in the loop that forms the update: 16 parameter-sized arrays "
    "moved where adam's update moves 9. `optax_ext._fusion.one_pass` writes all five "
    "outputs of a leaf from one loop (a variadic reduction over a length-2 axis, which "
    "returns its inputs bit for bit), so the update moves 10, the least it can; "
    "`angulargrad()` also forms the learning-rate step in that loop, where a separate "
    "`scale_by_learning_rate` stage would cost one more pass. The same transform "
    f"compiled without `one_pass` (row `unfused_cos`) takes {unfused:.2f}× adam in this "
    f"run ({unfused_apply:.2f}× with `apply_updates`). That loop runs on one thread; "
    "independent leaves run side by side on the two cores.",
    "",
    f"With `apply_updates` (cos {cos_apply:.2f}×) the gain is smaller: adam forms the new "
    "parameters in the loop that forms its update, while here the update comes out of "
    "the reduction and `apply_updates` is one more loop (13 arrays against adam's 10). "
    "Of the transcendental functions only `tanh` is left (the angle is kept as its "
    "tangent).",
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
