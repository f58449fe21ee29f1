"""SP update speed: the fast and exact quantile modes against optax.adam, in one run.

On a parameter tree shaped like ResNet-50 this times one jitted ``tx.update`` + ``apply_updates`` of ``optax.adam``,
``optax.sgd``, ``sp()`` in its default (fast) quantile mode, ``sp()`` with the
exact quantile, the damping stage alone and ``saliency_proximal`` after adam,
interleaved, and reports medians as ratios to adam measured in the same run.
SP's two modes are also compiled with the CPU fusion seam off (fresh
transformations per setting; docs/design.md, Conventions — CPU fusion seam).
The optimizer state is first advanced through a few steps with noisy
gradients, so the timed step starts its threshold search from a realistic
previous threshold, and is then carried from call to call (each call takes
the parameters and state and returns them, donated), the gradients cycling
through the noisy trees; the counting passes each mode took are reported. A sweep
over ``bench.trees.scaled_tree`` from 1M to 25M parameters draws the scaling
plot, with the naive SP (``jnp.quantile``, a sort) at the smallest size.

Run: ``python -m bench.sp_speed [--quick]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_ext
from bench import harness, trees

STEM = "sp_speed"
SEAM_OFF = ("sp (fast, default)", "sp (exact)")


def _naive_sp(lr: float, sparsity: float) -> optax.GradientTransformationExtraArgs:
  """SP with the saliency threshold from ``jnp.quantile`` (a sort): the slow reference."""
  damping = optax_ext.scale_by_spectral_damping()

  def update_fn(updates, state, params=None, **extra):
    del extra
    d, state = damping.update(updates, state, params)
    out = {}
    for k, g in d.items():
      u = -lr * g
      if u.ndim < 2:
        out[k] = u
        continue
      binv = jnp.where(updates[k] != 0, g / jnp.where(updates[k] != 0, updates[k], 1.0), 1.0)
      c = params[k] + u
      s = (u * u / 2) * (c * c / 2) / binv
      q = jnp.quantile(s, sparsity, method="lower")
      out[k] = jnp.where(s <= q, -params[k], u)
    return out, state

  return optax.GradientTransformationExtraArgs(damping.init, update_fn)


def candidates(with_naive: bool = False) -> dict[str, optax.GradientTransformation]:
  out = {
    "adam": optax.adam(1e-3),
    "sgd": optax.sgd(0.1),
    "sp (fast, default)": optax_ext.sp(0.05),
    "sp (exact)": optax_ext.sp(0.05, quantile="exact"),
    "damping only (+sgd)": optax.chain(
      optax_ext.scale_by_spectral_damping(), optax.scale_by_learning_rate(0.05)
    ),
    "adam + saliency_proximal (fast)": optax.chain(
      optax.adam(1e-3), optax_ext.saliency_proximal(0.1)
    ),
    "adam + saliency_proximal (exact)": optax.chain(
      optax.adam(1e-3), optax_ext.saliency_proximal(0.1, quantile="exact")
    ),
  }
  if with_naive:
    out["sp, naive jnp.quantile"] = _naive_sp(0.05, 0.1)
  return out


def _passes(state) -> int | None:
  found = []

  def visit(x):
    if isinstance(x, optax_ext.SaliencyProximalState):
      found.append(int(x.passes))
      return True
    return False

  jax.tree.map(lambda x: None, state, is_leaf=visit)
  return found[0] if found else None


def time_tree(
  params, reps: int, names=None, with_naive=False, warm_steps: int = 6, seam_off=()
) -> dict:
  """Times each candidate on ``params`` after ``warm_steps`` noisy steps, the state carried.

  Candidates named in ``seam_off`` are compiled a second time with the CPU fusion seam
  off, under the name ``"<name>, seam off"``.
  """
  base = jax.tree.map(lambda p: p * 0.01 + 0.001, params)
  key = jax.random.key(1)
  noisy = []
  for _ in range(warm_steps + 1):
    key, sub = jax.random.split(key)
    ks = jax.random.split(sub, len(jax.tree.leaves(base)))
    leaves, treedef = jax.tree.flatten(base)
    noisy.append(
      jax.tree.unflatten(
        treedef,
        [g * (1.0 + 0.3 * jax.random.normal(k, g.shape)) for g, k in zip(leaves, ks)],
      )
    )
  fns, passes = {}, {}
  for on in (True, False):
    with harness.seam(on):
      for name, tx in candidates(with_naive).items():
        if names is not None and name not in names:
          continue
        if not on and name not in seam_off:
          continue
        label = name if on else f"{name}, seam off"

        def step(carry, g, tx=tx):
          p, s = carry
          u, s = tx.update(g, s, p)
          p = optax.apply_updates(p, u)
          return (p, s), p

        own = jax.tree.map(jnp.copy, params)
        carry = (own, tx.init(own))
        compiled = jax.jit(step, donate_argnums=0).lower(carry, noisy[0]).compile()
        history = []
        for g in noisy:
          carry, _ = compiled(carry, g)
          history.append(_passes(carry[1]))
        passes[label] = {"timed_step": history[-1], "warm_steps": history[:-1]}
        fns[label] = harness.carried(compiled, carry, lambda n: noisy[n % len(noisy)])
  res = harness.time_calls(fns, reps=reps)
  out = {"n_params": trees.count(params), "n_leaves": len(jax.tree.leaves(params)), "methods": {}}
  for name in fns:
    out["methods"][name] = harness.row(res[name], res["adam"], "ratio_to_adam")
    out["methods"][name]["passes"] = passes[name]
  return out


def plot_scaling(rows: dict, path: str) -> None:
  plt = harness.pyplot()
  sizes = sorted(rows, key=int)
  names = [n for n in rows[sizes[-1]]["methods"]]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.array([int(n) for n in sizes]) / 1e6
  for name in names:
    ms = [rows[n]["methods"].get(name, {}).get("median_ms", np.nan) for n in sizes]
    rt = [rows[n]["methods"].get(name, {}).get("ratio_to_adam", np.nan) for n in sizes]
    axes[0].plot(x, ms, marker="o", label=name)
    axes[1].plot(x, rt, marker="o", label=name)
  naive = [rows[n]["methods"].get("sp, naive jnp.quantile") for n in sizes]
  for xi, m in zip(x, naive):
    if m:
      axes[0].plot([xi], [m["median_ms"]], "kx", ms=10, label="sp, naive jnp.quantile")
      axes[1].plot([xi], [m["ratio_to_adam"]], "kx", ms=10)
  axes[0].set_xscale("log")
  axes[0].set_yscale("log")
  axes[0].set_ylabel("update time, median (ms)")
  axes[1].set_xscale("log")
  axes[1].set_yscale("log")
  axes[1].set_ylabel("time / optax.adam (same run)")
  for y, style in ((1.0, "-"), (2.0, "--"), (5.0, ":")):
    axes[1].axhline(y, color="k", lw=0.8, ls=style)
  for ax in axes:
    ax.set_xlabel("parameters (millions, 160 leaves)")
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=7)
  fig.suptitle("SP update cost vs size (dashed: 2x adam target, dotted: 5x)")
  harness.savefig(fig, path)


def traffic_floor(resnet50: dict) -> str:
  """What memory traffic allows SP, with this run's ResNet-50 figures."""
  m = resnet50["methods"]
  fast, exact = m["sp (fast, default)"], m["sp (exact)"]
  damping = m["damping only (+sgd)"]["ratio_to_adam"]
  n_fast, n_exact = fast["passes"]["timed_step"], exact["passes"]["timed_step"]
  per_pass = (exact["ratio_to_adam"] - damping) / max(n_exact, 1)
  return f"""\
### What memory traffic allows

Counting each parameter-sized array read or written once as one unit, Adam's
update needs at least 6 (read g, m, v; write m, v, u); as XLA compiles it on
this CPU, one loop per output array, it moves 9. SP needs at least 13 with a
single counting pass: the secant sums need θ, θ_prev, g and g_prev before any
direction exists (4 reads); the threshold depends on the saliency of every
entry of the leaf, which needs θ, θ_prev and g (3 reads, the count fused in);
only then can the pruned step be written, from θ, θ_prev and g once more
(3 reads), together with the new θ_prev and g_prev (3 writes). Floor against
floor that is 13/6 = 2.2× Adam. Against Adam as compiled here the bound is
weaker (a hand-fused kernel could reach 13/9 = 1.4×), but for jitted JAX on
this backend the damping stage alone measured {damping:.2f}× in this run.
The exact mode writes the saliency once (the step inside it computed apart
from the final select's, so the step itself is not written too) and reads it
in each of its {n_exact} passes: about {per_pass:.2f}× per pass above the
damping ({exact["ratio_to_adam"]:.2f}× in all). The fast mode recomputes the
saliency inside each count from θ, θ_prev and g, so nothing parameter-sized
is written but the new parameters and state: {fast["ratio_to_adam"]:.2f}×.
Each count is an int32 sum of a comparison, which the backend compiles into
one vectorised loop together with the saliency; the first pass, after which
most leaves are done, runs before the search loop, where the leaves are
counted side by side on all cores (inside the loop, one after another);
{n_fast} passes is the most any leaf took. The largest remaining cost is in
the damping stage: its four secant sums over four inputs are float sums,
which the backend compiles into a scalar loop (a float sum cannot be split
across vector lanes without changing its rounding)."""


def render(result: dict) -> str:
  cmd = result.get("command", "python -m bench.sp_speed")
  lines = [
    "## Update speed",
    "",
    f"Command: `{cmd}`. Machine: {result['machine']} — shared with other jobs while it "
    "ran, so absolute times are noisy; the ratios come from interleaved calls in one run.",
    "",
  ]
  r = result["resnet50"]
  lines += [
    f"**ResNet-50-shaped tree** ({r['n_params']:,} params, {r['n_leaves']} leaves), "
    f"{result['reps']} interleaved repetitions after {result['warm_steps']} noisy steps:",
    "",
    "| update | median ms (p25–p75) | × adam | counting passes (timed step) |",
    "|---|---|---|---|",
  ]
  for name, m in r["methods"].items():
    ps = m["passes"]["timed_step"]
    lines.append(
      f"| {name} | {m['median_ms']:.1f} ({m['p25_ms']:.1f}–{m['p75_ms']:.1f}) | "
      f"{m['ratio_to_adam']:.2f} | {'-' if ps is None else ps} |"
    )
  lines += [
    "",
    "Scaling (× adam, same run per size; a synthetic tree whose kernels are rows of 64 "
    "values, where reductions cost more per value than over ResNet-50's longer rows):",
    "",
  ]
  sizes = sorted(result["scaling"], key=int)
  names = list(result["scaling"][sizes[-1]]["methods"])
  lines.append("| params | " + " | ".join(names) + " |")
  lines.append("|---" * (len(names) + 1) + "|")
  for n in sizes:
    row = result["scaling"][n]["methods"]
    cells = [f"{row[k]['ratio_to_adam']:.2f}" if k in row else "-" for k in names]
    lines.append(f"| {int(n) / 1e6:.1f}M | " + " | ".join(cells) + " |")
  naive = result["scaling"][sizes[0]]["methods"].get("sp, naive jnp.quantile")
  if naive:
    lines += [
      "",
      f"The naive SP (threshold from `jnp.quantile`, a sort) at {int(sizes[0]) / 1e6:.1f}M: "
      f"{naive['median_ms']:.0f} ms, {naive['ratio_to_adam']:.1f}× adam.",
    ]
  lines += ["", "![scaling](sp_scaling.png)", "", traffic_floor(r)]
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "fewer sizes and repetitions")
  args = ap.parse_args(argv)
  reps = 5 if args.quick else 9
  result = {
    "command": harness.command("bench.sp_speed", args.quick),
    "machine": harness.machine_description(),
    "reps": reps,
    "warm_steps": 6,
    "state": "carried",
  }
  print("timing on the ResNet-50 tree ...", flush=True)
  result["resnet50"] = time_tree(trees.named_tree("resnet50"), reps, seam_off=SEAM_OFF)
  sizes = (
    [1_000_000, 5_000_000, 25_000_000]
    if args.quick
    else [1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000]
  )
  names = ["adam", "sgd", "sp (fast, default)", "sp (exact)"]
  result["scaling"] = {}
  for n in sizes:
    print(f"scaling: {n:,} params ...", flush=True)
    naive = n == sizes[0]
    result["scaling"][str(n)] = time_tree(
      trees.scaled_tree(n),
      max(3, reps // 2),
      names + (["sp, naive jnp.quantile"] if naive else []),
      with_naive=naive,
    )
  plot_scaling(result["scaling"], "sp_scaling.png")
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
