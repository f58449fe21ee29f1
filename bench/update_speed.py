"""Optimizer-update speed: every method against optax.adam, CPU fusion seam on and off.

For each parameter tree (shaped like the MNIST CNN, ResNet-20 and ResNet-50, ResNet-18
too in the full run) this times one jitted ``tx.update`` + ``apply_updates`` per method
as a training loop calls it: the step takes the parameters and the optimizer state and
returns them, donated, and the next call gets what the last returned (the state is
carried), with the gradient cycling through a few noisy trees. Every method of
``optax_ext`` is compiled twice in the same run, with the CPU fusion seam on and off
(fresh transformations and jitted functions per setting; docs/design.md, Conventions —
CPU fusion seam), and all are timed interleaved with the optax baselines. Ratios are
medians to ``optax.adam``'s median in the same run. A jitted copy of the tree (read +
write of every value) gives each update in copies, next to the parameter-sized arrays the
update must at least read and write. A scaling sweep (seam on) draws a plot, and the
optimizer state's bytes per parameter are read from each state pytree.

Run: ``python -m bench.update_speed [--quick]``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_ext
from bench import harness, trees

STEM = "update_speed"
# Parameter-sized arrays each update reads and writes at the least (gradient, state,
# parameters in and out), for the roofline: sgd reads g, p and writes p; AngularGrad
# reads g, m, v, g_prev, tan A, p and writes m, v, g_prev, tan A, p; SP's count is
# derived in bench/sp_speed.py (traffic_floor), plus the parameters.
TRAFFIC = {
  "sgd": 3,
  "momentum": 5,
  "adam": 7,
  "angulargrad_cos": 11,
  "angulargrad_tan": 11,
  "insgd": 5,
  "sp": 14,
  "sp_exact": 14,
}
BASELINES = ("sgd", "momentum", "adam")
# Targets on the ResNet-50-sized tree with the seam on (× optax.adam, update + apply).
TARGETS = {"angulargrad_cos": 1.6, "angulargrad_tan": 1.6, "sp": 2.0, "sp_exact": 5.0}
N_GRADS = 3


def _power_like(params):
  return jax.tree.map(lambda p: jnp.asarray(4.0, p.dtype) if p.ndim >= 2 else None, params)


def candidates(params) -> dict[str, tuple[optax.GradientTransformation, dict]]:
  """The transformations compared, with the extra arguments each update takes.

  Built afresh on each call, so that a call under one seam setting traces anew.
  """
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


def state_candidates() -> dict[str, optax.GradientTransformation]:
  """Transformations whose state size is reported (Adam keeps 8 bytes per float32 value)."""
  return {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.1, momentum=0.9),
    "adam": optax.adam(1e-3),
    "angulargrad_cos": optax_ext.angulargrad(1e-3, method="cos"),
    "angulargrad_cos (mu bfloat16)": optax_ext.angulargrad(
      1e-3, method="cos", mu_dtype=jnp.bfloat16
    ),
    "insgd": optax_ext.insgd(0.1),
    "sp": optax_ext.sp(0.1),
    "sp_nesterov": optax_ext.sp(0.1, momentum=0.9, nesterov=True),
  }


def noisy_grads(params, n: int, seed: int = 1) -> list:
  """``n`` gradient trees: a fixed direction times independent noise per entry."""
  base = jax.tree.map(lambda p: p * 0.01 + 0.001, params)
  leaves, treedef = jax.tree.flatten(base)
  out, key = [], jax.random.key(seed)
  for _ in range(n):
    key, sub = jax.random.split(key)
    ks = jax.random.split(sub, len(leaves))
    noisy = [g * (1.0 + 0.3 * jax.random.normal(k, g.shape, g.dtype)) for g, k in zip(leaves, ks)]
    out.append(jax.tree.unflatten(treedef, noisy))
  return out


def large_copies(program: str, min_elements: int = 1024) -> int:
  """Copy instructions of at least ``min_elements`` values in a compiled program's text.

  With the carry donated, XLA may copy a state array before a loop that reads it
  writes its aliased output; each such copy is one more read and write of the array.
  """
  count = 0
  for shape in re.findall(r"= [a-z0-9]+\[([0-9,]*)\]\{[^}]*\} copy\(", program):
    if int(np.prod([int(d) for d in shape.split(",") if d])) >= min_elements:
      count += 1
  return count


def _compiled_step(tx, extra, params, grads, donate=True):
  """``step((params, state), grads) -> ((params, state), params)``, compiled now.

  Donated (``donate=True``) as a training loop that keeps one copy of its state calls
  it; not donated, every call writes fresh buffers and XLA adds no copy to keep an
  input readable after its buffer is overwritten (bench/donation_copies.py).
  """

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p, **extra)
    p = optax.apply_updates(p, u)
    return (p, s), p

  carry = (params, tx.init(params))
  compiled = jax.jit(step, donate_argnums=0 if donate else ()).lower(carry, grads).compile()
  return compiled, compiled.as_text()


NOT_DONATED = " | seam on, not donated"


def _variants(params, seams, names, undonated):
  """``key -> (tx, extra, donate)``: every candidate under each seam setting, donated,
  and the ``undonated`` ones (with Adam as their baseline) once more, seam on, not donated."""
  out = {}
  for on in seams:
    with harness.seam(on):
      for name, (tx, extra) in candidates(params).items():
        if names and name not in names and name != "adam":
          continue
        if name in BASELINES and on != seams[0]:
          continue  # optax's own programs do not depend on the seam
        key = name if name in BASELINES else f"{name} | {harness.seam_label(on)}"
        out[key] = (tx, extra, True)
        if on and (name in undonated or (name == "adam" and undonated)):
          out[name + NOT_DONATED] = (tx, extra, False)
  return out


def time_tree(params, reps: int, names=None, seams=(True, False), undonated=()) -> dict:
  """Times every candidate on ``params`` under each seam setting, the state carried."""
  grads = noisy_grads(params, N_GRADS)
  fns, programs = {}, {}
  for key, (tx, extra, donate) in _variants(params, seams, names, undonated).items():
    # The seam is read when the update is traced: inside the setting it was built under.
    with harness.seam(not key.endswith("seam off")):
      own = jax.tree.map(jnp.copy, params)  # donated: each candidate its own buffers
      step, text = _compiled_step(tx, extra, own, grads[0], donate)
      carry = (own, tx.init(own))
      for i in range(2):  # two steps first: every method on its steady-state branch
        carry, _ = step(carry, grads[i % N_GRADS])
    fns[key] = harness.carried(step, carry, lambda n: grads[n % N_GRADS])
    programs[key] = text
  copy = jax.jit(lambda t: jax.tree.map(lambda x: x + 0, t))
  fns["copy"] = lambda: copy(params)
  res = harness.time_calls(fns, reps=reps)
  n = trees.count(params)
  copy_s = res["copy"]["median"]
  out = {
    "n_params": n,
    "n_leaves": len(jax.tree.leaves(params)),
    "copy_bandwidth_GBps": 2 * 4 * n / copy_s / 1e9,
    "methods": {},
  }
  for key in fns:
    if key == "copy":
      continue
    name = key.split(" | ")[0]
    base = res["adam" + NOT_DONATED] if key.endswith(NOT_DONATED) else res["adam"]
    r = harness.row(res[key], base, "ratio_to_adam")
    r["copies"] = res[key]["median"] / copy_s
    r["min_traffic_copies"] = TRAFFIC[name] / 2
    r["copy_instructions"] = large_copies(programs[key])
    r["donated"] = not key.endswith(NOT_DONATED)
    if " | " in key and r["donated"]:
      r["method"], r["seam"] = name, key.endswith("seam on")
      other = key.replace("seam on", "seam off") if r["seam"] else None
      if other in programs:
        r["seam_changes_program"] = programs[key] != programs[other]
    out["methods"][key] = r
  return out


def state_bytes_per_param(params) -> dict[str, float]:
  n = trees.count(params)
  out = {}
  for name, tx in state_candidates().items():
    shapes = jax.eval_shape(tx.init, params)
    out[name] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / n
  return out


def plot_scaling(rows: dict, path: str) -> None:
  plt = harness.pyplot()
  sizes = sorted(rows, key=int)
  names = list(rows[sizes[0]]["methods"])
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.array([int(s) for s in sizes]) / 1e6
  for name in names:
    ms = [rows[n]["methods"][name]["median_ms"] for n in sizes]
    rt = [rows[n]["methods"][name]["ratio_to_adam"] for n in sizes]
    axes[0].plot(x, ms, marker="o", label=name)
    axes[1].plot(x, rt, marker="o", label=name)
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
  fig.suptitle("optimizer update cost vs size (seam on, state carried)")
  harness.savefig(fig, path)


def seam_table(result: dict) -> list[str]:
  """Ratio × adam per method and tree, seam on and off, with the targets marked."""
  trees_ = result["trees"]
  methods = []
  for r in trees_.values():
    for m in r["methods"].values():
      if "method" in m and m["method"] not in methods:
        methods.append(m["method"])
  head = "| method | " + " | ".join(f"{t} on | {t} off" for t in trees_)
  lines = [
    head + " | resnet50 on, not donated | target (resnet50, on) | met |",
    "|---|" + "---|---|" * len(trees_) + "---|---|---|",
  ]
  for name in methods:
    cells = []
    for r in trees_.values():
      for on in ("on", "off"):
        m = r["methods"].get(f"{name} | seam {on}")
        cells.append(harness.fmt_ratio(m["ratio_to_adam"] if m else None))
    undonated = trees_.get("resnet50", {}).get("methods", {}).get(name + NOT_DONATED)
    cells.append(harness.fmt_ratio(undonated["ratio_to_adam"] if undonated else None))
    target = TARGETS.get(name)
    r50 = trees_.get("resnet50", {}).get("methods", {}).get(f"{name} | seam on")
    got = r50["ratio_to_adam"] if r50 else None
    mark = harness.verdict(got, target) if target else "–"
    lines.append(
      f"| {name} | " + " | ".join(cells) + f" | {f'≤ {target:g}×' if target else '–'} | {mark} |"
    )
  return lines


def render(result: dict) -> str:
  lines = [
    f"Command: `{result.get('command', 'python -m bench.update_speed')}`. "
    f"Machine: {result['machine']}; {result['reps']} interleaved rounds.",
    "",
    "Each call is one jitted `tx.update` + `apply_updates` that takes the parameters and "
    "the optimizer state and returns them (donated), fed back to the next call as in "
    "training; gradients cycle through "
    f"{result.get('n_grads', N_GRADS)} noisy trees. Ratios: median / `optax.adam`'s median "
    "in the same run. *Seam on/off*: the CPU fusion seam (`optax_ext.config` "
    "`cpu_fusion`), the methods compiled afresh under each setting. *Not donated*: the "
    "same step, seam on, compiled without donating its inputs, against Adam compiled so "
    "too: each call writes fresh buffers, so XLA adds no copy to keep an input readable "
    "after an in-place write (the copy instructions in the tables below; "
    "`python -m bench.donation_copies`). XLA on CPU writes the outputs of a multi-output "
    "loop (the seam's one-pass update) into fresh buffers, never into a donated input's, "
    "so under donation each state array that loop writes costs one more copy.",
    "",
    "### Ratio × adam, seam on and off",
    "",
    *seam_table(result),
    "",
  ]
  for tree_name, r in result["trees"].items():
    lines += [
      f"**{tree_name}** ({r['n_params']:,} params, {r['n_leaves']} leaves; "
      f"copy bandwidth {r['copy_bandwidth_GBps']:.1f} GB/s)",
      "",
      "| method | median ms (p25–p75) | × adam | × copy | min traffic (copies) "
      "| seam changes the program | copy instructions (≥ 1,024 values) |",
      "|---|---|---|---|---|---|---|",
    ]
    for name, m in r["methods"].items():
      changes = m.get("seam_changes_program")
      lines.append(
        f"| {name.replace(' | ', ', ')} | {m['median_ms']:.2f} ({m['p25_ms']:.2f}–{m['p75_ms']:.2f}) | "
        f"{m['ratio_to_adam']:.2f} | {m['copies']:.1f} | {m['min_traffic_copies']:.1f} | "
        f"{'-' if changes is None else ('yes' if changes else 'no')} | "
        f"{m.get('copy_instructions', '-')} |"
      )
    lines.append("")
  tree = result.get("state_bytes_tree", "mnist_cnn")
  lines += [
    f"### Optimizer-state bytes per parameter ({tree} tree, from the state pytree)",
    "",
    "| method | bytes/param | × adam |",
    "|---|---|---|",
  ]
  sb = result["state_bytes_per_param"]
  for name, b in sb.items():
    lines.append(f"| {name} | {b:.2f} | {b / sb['adam']:.2f} |")
  if result.get("scaling"):
    lines += ["", "Scaling sweep (seam on): ![scaling](update_scaling.png)"]
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "three trees, fewer sizes and repetitions")
  ap.add_argument("--no-scaling", action="store_true", help="skip the size sweep")
  args = ap.parse_args(argv)
  reps = 5 if args.quick else 15
  tree_names = ["mnist_cnn", "resnet20", "resnet50"] if args.quick else list(trees.SHAPES)
  result = {
    "command": harness.command("bench.update_speed", args.quick),
    "machine": harness.machine_description(),
    "reps": reps,
    "n_grads": N_GRADS,
    "targets": TARGETS,
    "trees": {},
  }
  for name in tree_names:
    print(f"timing updates on {name} ...", flush=True)
    undonated = tuple(TARGETS) if name == "resnet50" else ()
    result["trees"][name] = time_tree(trees.named_tree(name), reps, undonated=undonated)
  result["state_bytes_tree"] = "resnet50"
  result["state_bytes_per_param"] = state_bytes_per_param(trees.named_tree("resnet50"))
  if not args.no_scaling:
    sizes = (
      [1_000_000, 5_000_000, 25_000_000]
      if args.quick
      else [1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000]
    )
    print("scaling sweep ...", flush=True)
    names = ["adam", "sgd", "angulargrad_cos", "sp", "sp_exact", "insgd"]
    rows = {
      str(n): time_tree(trees.scaled_tree(n), max(3, reps // 2), names, seams=(True,))
      for n in sizes
    }
    result["scaling"] = rows
    plot_scaling(rows, "update_scaling.png")
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
