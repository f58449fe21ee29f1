"""How the row length of a leaf changes the cost of SP's counting pass.

SP's quantile counts are full reductions over each leaf, taken over the
leaf's own axes (no reshape, so that sharded leaves stay in place). On XLA's
CPU backend such a loop costs more per value when the innermost axis is
short. This times one counting pass of
``optax_ext.quantile.count_above`` over the same 24M values (48 leaves) laid
out as rows of 64, 256 and 2048 values and as one row per leaf.

Run: ``python -m bench.count_rows``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench import harness
from optax_ext import quantile


def main() -> dict[str, float]:
  n_leaves, per_leaf = 48, 2**19
  rng = np.random.default_rng(0)
  flat = [jnp.asarray(rng.standard_normal(per_leaf, dtype=np.float32)) for _ in range(n_leaves)]
  key = quantile.to_key(jnp.float32(0.5))

  @jax.jit
  def counts(leaves, key):
    # A saliency-like expression computed inside the count, as SP does.
    return jnp.stack([quantile.count_above(lambda x=x: x * x * 0.5 + x, key) for x in leaves])

  layouts = {f"rows of {c}": [x.reshape(-1, c) for x in flat] for c in (64, 256, 2048)}
  layouts["one row per leaf"] = flat
  res = harness.time_calls({k: (lambda v=v: counts(v, key)) for k, v in layouts.items()}, reps=9)
  ratio = harness.ratios(res, "one row per leaf")
  print(f"Machine: {harness.machine_description()}")
  print(f"One counting pass over {n_leaves * per_leaf:,} values in {n_leaves} leaves:")
  for name, r in res.items():
    print(f"  {name:18s} {1e3 * r['median']:6.1f} ms  ({ratio[name]:.2f}x one row)")
  return {k: v["median"] for k, v in res.items()}


if __name__ == "__main__":
  main()
