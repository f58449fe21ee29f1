"""Optimizer-update speed of every method against optax.adam: donated or not, seam on or off.

For each parameter tree (shaped like the MNIST CNN, ResNet-20 and ResNet-50; ResNet-18 too
in the full run) this times one jitted ``tx.update`` + ``apply_updates`` of every method of
:data:`train.methods.METHODS` (INSGD with a stand-in input power), and SP with the exact
quantile, as a training loop calls it: the step takes the parameters and the optimizer
state and returns them, and the next call gets what the last returned (the state is
carried), after a few warm steps, the gradient cycling through noisy trees. Each
optax_ext method is compiled three times: not donated with the CPU fusion seam on and
off, and donated with the seam on (docs/design.md, Conventions — CPU fusion seam);
optax's baselines not donated and donated. Each of the three settings is timed in one
interleaved run with ``optax.adam`` compiled alike; ratios are medians ÷ adam's median in
that run.

Also: the bandwidth of each update (the parameter-sized arrays it must at least read and
write, and the bytes XLA's cost analysis says the compiled program moves, per second)
next to a jitted copy of the tree; on the ResNet-50 tree SP's parts (the damping stage
alone, the proximal step after Adam with either quantile) and the counting passes of
each SP row; the optimizer state's bytes per parameter; a sweep over sizes
(``bench.trees.scaled_tree``) for the scaling plot.

Run: ``python -m bench.update_speed [--quick] [--no-scaling]``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_ext
from bench import harness, trees
from train import steps
from train.methods import METHODS

STEM = "update_speed"
#: Targets on the ResNet-50 tree, update + apply not donated, × optax.adam.
TARGETS = {"angulargrad_cos": 1.7, "angulargrad_tan": 1.7, "sp": 2.4, "sp_exact": 6.0}
# Parameter-sized arrays an update + apply must read and write at the least: sgd reads g,
# p and writes p; AngularGrad reads g, m, v, g_prev, tan A, p and writes m, v, g_prev,
# tan A, p; SP, see render_sp (momentum adds a read and a write).
LEAST = {"sgd": 3, "momentum": 5, "nesterov": 5, "adam": 7, "adamw": 7, "angulargrad_cos": 11,
         "angulargrad_tan": 11, "insgd_l2": 5, "insgd_l1": 5, "sp": 14, "sp_nesterov": 16,
         "sp_exact": 14}  # fmt: skip
SP_PARTS = ("sp damping only (+ sgd)", "adam + saliency_proximal (fast)",
            "adam + saliency_proximal (exact)")  # fmt: skip
SEAM_OFF, DONATED = " | seam off", " | donated"
N_GRADS, WARM = 3, 6


def stand_in(need: steps.Need, params) -> dict:
  """The extra arguments an update with ``need`` takes, outside a model: INSGD gets an
  input power of 4 for every kernel."""
  if isinstance(need, steps.InputPower):
    power = jax.tree.map(lambda p: jnp.asarray(4.0, p.dtype) if p.ndim >= 2 else None, params)
    return {"input_power": optax_ext.InputPower(power, need.norm_order)}
  return {}


def candidates(params, sp_parts: bool = False) -> dict[str, tuple]:
  """``name -> (tx, extra arguments)``, built afresh (a call under one seam setting traces
  anew)."""
  out = {n: (m.build(m.default_lr), stand_in(m.need, params)) for n, m in METHODS.items()}
  out["sp_exact"] = (METHODS["sp"].build(0.05, quantile="exact"), {})
  if sp_parts:
    damping = optax_ext.scale_by_spectral_damping()
    out[SP_PARTS[0]] = (optax.chain(damping, optax.scale_by_learning_rate(0.05)), {})
    for part, q in zip(SP_PARTS[1:], ("fast", "exact")):
      out[part] = (optax.chain(optax.adam(1e-3), optax_ext.saliency_proximal(0.1, quantile=q)), {})
  return out


def noisy_grads(params, n: int, seed: int = 1) -> list:
  """``n`` gradient trees: a fixed direction times independent noise per entry."""
  leaves, treedef = jax.tree.flatten(jax.tree.map(lambda p: p * 0.01 + 0.001, params))
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
  shapes = re.findall(r"= [a-z0-9]+\[([0-9,]*)\]\{[^}]*\} copy\(", program)
  return sum(int(np.prod([int(d) for d in s.split(",") if d])) >= min_elements for s in shapes)


def _passes(state):
  """The counting passes SP's quantile search took on the last step, if it says."""
  found = [v for k, v in optax_ext.diagnostics(state).items() if k.endswith("/quantile_passes")]
  return int(max(found)) if found else None


def _step(tx, extra, params, grads, donate: bool):
  """``step((params, state), g) -> ((params, state), params)``, compiled; its first carry."""

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p, **extra)
    p = optax.apply_updates(p, u)
    return (p, s), p

  carry = (params, tx.init(params))
  return jax.jit(step, donate_argnums=0 if donate else ()).lower(carry, grads[0]).compile(), carry


def _baseline(name: str) -> bool:
  """An optax optimizer: one program whatever the seam says."""
  return name in METHODS and not METHODS[name].family


def _time_variant(params, grads, reps: int, suffix: str, names, sp_parts: bool) -> dict:
  """One variant's candidates (or ``names``) and adam, timed interleaved with a tree copy."""
  fns, steps_, passes = {}, {}, {}
  with harness.seam(suffix != SEAM_OFF):  # read when traced: build and compile inside
    for name, (tx, extra) in candidates(params, sp_parts).items():
      skip = (names and name not in names) or (suffix == SEAM_OFF and _baseline(name))
      if skip and name != "adam":  # adam: the reference of every variant
        continue
      own = jax.tree.map(jnp.copy, params)  # donated: each candidate its own buffers
      step, carry = _step(tx, extra, own, grads, suffix == DONATED)
      for i in range(WARM):  # the search starts from a realistic previous threshold
        carry, _ = step(carry, grads[i % N_GRADS])
      steps_[name], passes[name] = step, _passes(carry[1])
      fns[name] = harness.carried(step, carry, lambda n: grads[n % N_GRADS])
  copy = jax.jit(lambda t: jax.tree.map(lambda x: x + 0, t))
  fns["copy"] = lambda: copy(params)
  res = harness.time_calls(fns, reps=reps)
  n, copy_s = trees.count(params), res["copy"]["median"]
  rows = {"copy": {"GBps": 8 * n / copy_s / 1e9}}
  for name, step in steps_.items():
    seconds = res[name]["median"]
    r = harness.row(res[name], res["adam"], "ratio")
    r["copies"], r["passes"] = seconds / copy_s, passes[name]
    r["GBps_compiled"] = harness.bytes_accessed(step) / seconds / 1e9
    r["GBps_least"] = LEAST[name] * 4 * n / seconds / 1e9 if name in LEAST else None
    r["copy_instructions"] = large_copies(step.as_text())
    r["program"] = hash(step.as_text())
    rows[name] = r
  return rows


def time_tree(params, reps: int, names=None, variants=("", SEAM_OFF, DONATED), sp_parts=False):
  """Times every candidate (or ``names`` and adam) on ``params``, each variant in its own
  interleaved run against adam compiled alike (so that fewer states are held at once)."""
  grads = noisy_grads(params, N_GRADS)
  out = {"n_params": trees.count(params), "n_leaves": len(jax.tree.leaves(params)), "methods": {}}
  for suffix in variants:
    rows = _time_variant(params, grads, reps, suffix, names, False)
    out.setdefault("copy_GBps", rows.pop("copy")["GBps"])
    for name, r in rows.items():
      if suffix != SEAM_OFF or not _baseline(name):
        out["methods"][name + suffix] = r
  if sp_parts:  # a run of their own, against adam
    rows = _time_variant(params, grads, reps, "", SP_PARTS, True)
    out["methods"].update({k: r for k, r in rows.items() if k in SP_PARTS})
  for key, r in out["methods"].items():
    off = out["methods"].get(key + SEAM_OFF)
    r["seam_changes_program"] = None if off is None else r["program"] != off["program"]
  for r in out["methods"].values():
    del r["program"]
  return out


def state_bytes_per_param(params) -> dict[str, float]:
  """Each method's optimizer-state bytes per parameter, from the state pytree."""
  txs = {n: m.build(m.default_lr) for n, m in METHODS.items()}
  txs["angulargrad_cos (mu bfloat16)"] = METHODS["angulargrad_cos"].build(1e-3, mu_dtype="bfloat16")
  n = trees.count(params)
  sizes = {k: jax.tree.leaves(jax.eval_shape(tx.init, params)) for k, tx in txs.items()}
  return {k: sum(x.size * x.dtype.itemsize for x in leaves) / n for k, leaves in sizes.items()}


def _cell(r: dict, key: str, what: str = "ratio") -> str:
  value = r["methods"].get(key, {}).get(what)
  return str(value) if isinstance(value, int) else harness.fmt_ratio(value)


def ratio_table(result: dict, names) -> list[str]:
  """Ratio × adam per tree: not donated (the targets' protocol), seam off, donated."""
  tree_names = list(result["trees"])
  head = " | ".join(f"{t} | seam off | donated" for t in tree_names)
  lines = [f"| method | target | {head} |", "|---|---|" + "---|---|---|" * len(tree_names)]
  for name in names:
    cells = [_cell(r, name + s) for r in result["trees"].values() for s in ("", SEAM_OFF, DONATED)]
    target = f"≤ {TARGETS[name]:g}×" if name in TARGETS else "-"
    lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")
  return lines


def tree_table(r: dict, keys) -> list[str]:
  """One tree's rows in full: time, ratio, bandwidth, copies."""
  lines = [
    "| update | median ms (p25–p75) | × adam | × copy | GB/s: least / as compiled (% of copy) "
    "| copy instructions ≥ 1,024 values | seam changes the program |",
    "|---|---|---|---|---|---|---|",
  ]
  for key in keys:
    m = r["methods"][key]
    least = "-" if m["GBps_least"] is None else f"{m['GBps_least']:.1f}"
    pct = 100 * m["GBps_compiled"] / r["copy_GBps"]
    changes = {None: "-", True: "yes", False: "no"}[m.get("seam_changes_program")]
    lines.append(
      f"| {key.replace(' | ', ', ')} | {m['median_ms']:.2f} ({m['p25_ms']:.2f}–{m['p75_ms']:.2f})"
      f" | {m['ratio']:.2f} | {m['copies']:.1f} | {least} / {m['GBps_compiled']:.1f} ({pct:.0f}%)"
      f" | {m['copy_instructions']} | {changes} |"
    )
  return lines


def _tree_note(name: str, r: dict) -> str:
  return (
    f"**{name}** ({r['n_params']:,} params, {r['n_leaves']} leaves; a jitted copy of the "
    f"tree moves {r['copy_GBps']:.1f} GB/s)"
  )


def render(result: dict) -> str:
  names = [*METHODS, "sp_exact"]
  lines = [
    f"Command: `{result['command']}`. Machine: {result['machine']}; {result['reps']} "
    "interleaved rounds. The machine is shared: compare ratios, measured in one run.",
    "",
    "Each call is one jitted `tx.update` + `apply_updates` taking the parameters and the "
    "optimizer state and returning them, fed back to the next call as in training. "
    "Ratios: median ÷ `optax.adam`'s median in the same run and donation setting. *Not "
    "donated* (the targets' protocol): every call writes fresh buffers. *Donated*: XLA may "
    "write the outputs into the inputs' buffers, and copies an input first where a loop "
    "reads it after another has overwritten it in place (the copy instructions below). "
    "*Seam off*: the CPU fusion seam "
    "(`optax_ext.config` `cpu_fusion`) off, the methods compiled afresh.",
    "",
    "### Ratio × adam",
    "",
    *ratio_table(result, names),
    "",
  ]
  for name, r in result["trees"].items():
    lines += [_tree_note(name, r), "", *tree_table(r, r["methods"]), ""]
  sb = result["state_bytes_per_param"]
  lines += ["### Optimizer-state bytes per parameter (ResNet-50 tree)", ""]
  lines += ["| method | bytes/param | × adam |", "|---|---|---|"]
  lines += [f"| {k} | {b:.2f} | {b / sb['adam']:.2f} |" for k, b in sb.items()]
  if result.get("scaling"):
    lines += ["", "### Scaling", "", *scaling_table(result["scaling"]), "", f"![scaling]({PNG})"]
  return "\n".join(lines)


def scaling_table(rows: dict) -> list[str]:
  sizes = sorted(rows, key=int)
  names = list(rows[sizes[0]]["methods"])
  lines = ["| params | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for n in sizes:
    cells = [_cell(rows[n], k) for k in names]
    lines.append(f"| {int(n) / 1e6:.1f}M | " + " | ".join(cells) + " |")
  return lines


def render_angulargrad(result: dict) -> str:
  """AngularGrad's rows on ResNet-50: ratios, bandwidth and the target."""
  r = result["trees"]["resnet50"]
  names = ("adam", "angulargrad_cos", "angulargrad_tan")
  keys = [k for k in r["methods"] if k.split(" | ")[0] in names]
  return "\n".join([
    f"From `{result['command']}` ([Optimizer-update speed](#optimizer-update-speed)); "
    f"machine: {result['machine']}.",
    "",
    _tree_note("resnet50", r),
    "",
    *tree_table(r, keys),
    "",
    "The least traffic of an AngularGrad update + apply is 11 parameter-sized arrays (read "
    "g, m, v, the previous gradient, the stored tan A and the parameters; write all but g), "
    "Adam's 7: at the bandwidth Adam reaches, 11/7 = 1.57× Adam's time.",
  ])  # fmt: skip


def render_sp(result: dict) -> str:
  """SP's rows and parts on ResNet-50, the counting passes, scaling and the traffic floor."""
  r = result["trees"]["resnet50"]
  names = ("sgd", "adam", "sp", "sp_nesterov", "sp_exact", *SP_PARTS)
  keys = [k for k in r["methods"] if k.split(" | ")[0] in names]
  passes = [
    f"{k}: {m['passes']}" for k, m in r["methods"].items() if m["passes"] and " | " not in k
  ]
  scaling = result.get("scaling") or {}
  return "\n".join([
    f"From `{result['command']}` ([Optimizer-update speed](#optimizer-update-speed)); "
    f"machine: {result['machine']}.",
    "",
    _tree_note("resnet50", r),
    "",
    *tree_table(r, keys),
    "",
    "Counting passes of the quantile search on the timed steps: " + ("; ".join(passes) or "-") + ".",
    "",
    *(["Scaling (× adam; kernels as rows of 64 values):", "", *scaling_table(scaling), ""]
      if scaling else []),
    "What memory traffic allows: counting each parameter-sized array read or written once, "
    "an SP update + apply needs at least 14 (the secant sums read θ, θ_prev, g, g_prev; the "
    "saliency of every entry, which fixes the threshold, reads θ, θ_prev, g; the pruned step "
    "reads them again and writes θ, θ_prev, g_prev) against Adam's 7: 2× Adam's time at "
    "Adam's bandwidth. The exact quantile writes the saliency once and reads it in each "
    "pass; the fast one recomputes it inside each count, writing nothing parameter-sized.",
  ])  # fmt: skip


def render_copies(result: dict) -> str:
  """The large copy instructions of each update, donated or not, on every tree."""
  tree_names = list(result["trees"])
  head = " | ".join(f"{t}: not donated / donated / seam off" for t in tree_names)
  lines = [
    f"From `{result['command']}` ([Optimizer-update speed](#optimizer-update-speed)). Copy "
    "instructions of at least 1,024 values in each compiled update + `apply_updates`: where "
    "the carried `(params, state)` is donated, XLA copies an input before a loop reads it "
    "once another loop has overwritten its buffer in place; each copy is one more read "
    "and write of the array.",
    "",
    f"| method | {head} |",
    "|---|" + "---|" * len(tree_names),
  ]
  for name in (*METHODS, "sp_exact"):
    cells = [
      " / ".join(_cell(r, name + s, "copy_instructions") for s in ("", DONATED, SEAM_OFF))
      for r in result["trees"].values()
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


PNG = "update_scaling.png"


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
    "trees": {},
  }
  for name in tree_names:
    print(f"timing updates on {name} ...", flush=True)
    params = trees.named_tree(name)
    result["trees"][name] = time_tree(params, reps, sp_parts=name == "resnet50")
  result["state_bytes_per_param"] = state_bytes_per_param(trees.named_tree("resnet50"))
  if not args.no_scaling:
    sizes = [1_000_000, 5_000_000, 25_000_000]
    sizes = sizes if args.quick else sorted(sizes + [2_500_000, 10_000_000])
    names = ["sgd", "adam", "angulargrad_cos", "insgd_l2", "sp", "sp_exact"]
    rows = {}
    for n in sizes:
      print(f"scaling: {n:,} params ...", flush=True)
      rows[str(n)] = time_tree(trees.scaled_tree(n), max(3, reps // 2), names, ("",))
    result["scaling"] = rows
    x = [int(n) / 1e6 for n in rows]
    per = {k: [rows[n]["methods"][k] for n in rows] for k in names}
    panels = {
      "update time, median (ms)": {k: [m["median_ms"] for m in v] for k, v in per.items()},
      "time ÷ optax.adam (same run)": {k: [m["ratio"] for m in v] for k, v in per.items()},
    }
    hlines = {"time ÷ optax.adam (same run)": TARGETS.values()}
    title = "update + apply_updates against size, not donated"
    harness.plot(PNG, x, panels, "parameters (millions, 160 leaves)", title, hlines, log_x=True)
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
