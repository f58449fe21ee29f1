"""SP's momentum rule on Rosenbrock: SP+Nesterov with and without the enlargement cap.

docs/design.md, SP — The bound b_max and the stable learning rate: with momentum the
damping's upper bound on B⁻¹ defaults to 1 (``max_enlargement=1``, it only shrinks
steps). This runs, from (0, 0) for a fixed number of steps at each learning rate,
SP+Nesterov (momentum 0.9) with that default cap and with the cap lifted to ``b_max``
(``max_enlargement=b_max``, the bound without momentum), next to SGD with the same
Nesterov momentum, plain SP and plain SGD, and records the final distance to the
minimum (1, 1), NaN when the run diverged. The parameters are one vector of two
values, which SP's default mask (kernels, ``ndim >= 2``) leaves unpruned: only the
damping and the momentum act.

Run: ``python -m bench.sp_rosenbrock`` (``--quick`` runs the same).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_ext
from bench import harness

STEM = "sp_rosenbrock"
LRS = (1e-3, 3e-3, 1e-2)
STEPS = 30_000
START = (0.0, 0.0)


def rosenbrock(p):
  return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def optimizers(lr: float) -> dict[str, optax.GradientTransformation]:
  b_max = optax_ext.spectral_damping.DEFAULT_B_MAX
  return {
    "sgd+nesterov": optax.sgd(lr, momentum=0.9, nesterov=True),
    "sp+nesterov (cap 1, default)": optax_ext.sp(lr, momentum=0.9, nesterov=True),
    "sp+nesterov (no cap: max_enlargement=b_max)": optax_ext.sp(
      lr, momentum=0.9, nesterov=True, max_enlargement=b_max
    ),
    "sgd": optax.sgd(lr),
    "sp": optax_ext.sp(lr),
  }


def run(tx: optax.GradientTransformation, steps: int) -> dict:
  """Final distance to (1, 1) and the first step whose loss was not finite, if any."""

  def body(carry, i):
    p, s, bad = carry
    u, s = tx.update(jax.grad(rosenbrock)(p), s, p)
    p = optax.apply_updates(p, u)
    bad = jnp.where((bad == steps) & ~jnp.isfinite(rosenbrock(p)), i + 1, bad)
    return (p, s, bad), None

  @jax.jit
  def go(p0):
    (p, _, bad), _ = jax.lax.scan(body, (p0, tx.init(p0), jnp.int32(steps)), jnp.arange(steps))
    return p, bad

  p, bad = go(jnp.asarray(START, jnp.float32))
  p = np.asarray(p, np.float64)
  dist = float(np.hypot(p[0] - 1, p[1] - 1))
  finite = bool(np.all(np.isfinite(p))) and int(bad) == steps
  return {
    "distance": dist if finite else float("nan"),
    "final": p.tolist(),
    "diverged_at": None if finite else int(bad),
  }


def render(result: dict) -> str:
  lrs = [f"{lr:g}" for lr in result["lrs"]]
  lines = [
    f"Command: `{result.get('command', 'python -m bench.sp_rosenbrock')}`. Rosenbrock "
    f"(1 − x)² + 100 (y − x²)² from {tuple(result['start'])}, {result['steps']:,} steps, "
    "float32; momentum 0.9 (Nesterov) where named; SP's default sparsity (the 2-vector is "
    "not a kernel, so nothing is pruned: the damping and the momentum act alone). Final "
    "distance to (1, 1); NaN: the loss became non-finite (first such step in brackets).",
    "",
    "| optimizer | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
    "|---|" + "---|" * len(lrs),
  ]
  for name, per_lr in result["runs"].items():
    cells = []
    for lr in lrs:
      r = per_lr[lr]
      d = r["distance"]
      if d is None or not np.isfinite(d):
        cells.append(f"NaN (step {r['diverged_at']})" if r.get("diverged_at") else "NaN")
      else:
        cells.append(f"{d:.2e}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "the same run (it is already quick)")
  ap.add_argument("--steps", type=int, default=STEPS)
  args = ap.parse_args(argv)
  result = {
    "command": harness.command(
      "bench.sp_rosenbrock", args.quick, f"--steps {args.steps}" if args.steps != STEPS else ""
    ),
    "machine": harness.machine_description(),
    "lrs": list(LRS),
    "steps": args.steps,
    "start": list(START),
    "runs": {},
  }
  for lr in LRS:
    for name, tx in optimizers(lr).items():
      r = run(tx, args.steps)
      result["runs"].setdefault(name, {})[f"{lr:g}"] = r
      print(f"lr {lr:g} {name}: {r['distance']}", flush=True)
  # One file for quick and full: the run is the same.
  md = harness.write(STEM, result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
