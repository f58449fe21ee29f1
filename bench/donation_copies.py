"""Copies XLA adds to each update when the carried state is donated, seam on and off.

A training loop donates its state (``train.loop.make_train_step``), so the compiled
update may write its outputs into the buffers of its inputs. Where a loop reads an
input whose buffer an earlier loop of the same program has already overwritten, XLA
copies the input first: one more read and write of a parameter-sized array. This
compiles ``tx.update`` + ``apply_updates`` over a tree of one kernel and one bias, with
and without donating ``(params, state)``, under each setting of the CPU fusion seam,
and counts the kernel-sized copy instructions in the compiled program. Nothing is
timed.

Run: ``python -m bench.donation_copies`` (``--quick`` runs the same).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bench import harness
from bench.update_speed import candidates, large_copies

STEM = "donation_copies"
KERNEL = (512, 1024)


def count(seam_on: bool) -> dict[str, dict[str, int]]:
  params = {"kernel": jnp.ones(KERNEL, jnp.float32), "bias": jnp.ones(KERNEL[-1:], jnp.float32)}
  grads = jax.tree.map(lambda p: 0.01 * p, params)
  out = {}
  with harness.seam(seam_on):
    for name, (tx, extra) in candidates(params).items():

      def step(carry, g, tx=tx, extra=extra):
        p, s = carry
        u, s = tx.update(g, s, p, **extra)
        return optax.apply_updates(p, u), s

      carry = (params, tx.init(params))
      out[name] = {}
      for donated in (True, False):
        jitted = jax.jit(step, donate_argnums=0 if donated else ())
        text = jitted.lower(carry, grads).compile().as_text()
        out[name]["donated" if donated else "not donated"] = large_copies(
          text, KERNEL[0] * KERNEL[1]
        )
  return out


def render(result: dict) -> str:
  on, off = result["seam on"], result["seam off"]
  lines = [
    f"Command: `{result['command']}`. Machine: {result['machine']}. Kernel-sized "
    f"({result['kernel'][0]}×{result['kernel'][1]}) copy instructions in the compiled "
    "`tx.update` + `apply_updates` of a one-kernel, one-bias tree, with the carried "
    "`(params, state)` donated as in training and not donated. Each copy is one more read "
    "and write of a kernel-sized array.",
    "",
    "| method | seam on, donated | seam on, not donated | seam off, donated "
    "| seam off, not donated |",
    "|---|---|---|---|---|",
  ]
  for name in on:
    lines.append(
      f"| {name} | {on[name]['donated']} | {on[name]['not donated']} | "
      f"{off[name]['donated']} | {off[name]['not donated']} |"
    )
  return "\n".join(lines)


def main(argv=None) -> dict:
  args = harness.parser(__doc__, "the same run (nothing is timed)").parse_args(argv)
  result = {
    "command": harness.command("bench.donation_copies", args.quick),
    "machine": harness.machine_description(),
    "kernel": list(KERNEL),
    "seam on": count(True),
    "seam off": count(False),
  }
  print(harness.write(STEM, result, render))
  return result


if __name__ == "__main__":
  main()
