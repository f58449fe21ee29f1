"""Quantile thresholds of non-negative arrays by counting, without sorting.

For a non-negative float32 ``x``, the int32 bit pattern orders exactly like the
value, so the ``k``-th smallest element is the smallest bit pattern ``b`` with
``count(bits(x) <= b) >= k + 1``. :func:`select_thresholds` finds it by
bracketing: each pass counts the elements below 16 candidate patterns spread
over the current bracket (one read of the data, no sort, no gather) and keeps
the sub-bracket that holds the answer, shrinking it 16-fold; 8 passes reach the
exact pattern from the whole float range.

The *fast* mode stops as soon as the bracket holds so few elements that the
pruned fraction cannot differ from the exact one by more than ``tol``, and
starts from the previous step's threshold (a stateful caller keeps it), whose
neighbourhood usually holds the new one: typically one or two passes.

Several groups (one per leaf, or one for all leaves) are refined together in
one loop; a group that has converged skips its counting.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

N_CANDIDATES = 16
MAX_PASSES = 10
TOP = jnp.iinfo(jnp.int32).max  # above every pattern, NaN's included
WARM_SPACING = 2**20  # 16 candidates span a factor of about 2 each way in value


def to_bits(x: jax.Array) -> jax.Array:
  """The int32 bit pattern of non-negative ``x`` (as float32); orders like ``x``."""
  return lax.bitcast_convert_type(jnp.maximum(x.astype(jnp.float32), 0.0), jnp.int32)


def from_bits(b: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(b, jnp.float32)


def _count(bits_leaves: Sequence[jax.Array], cands: jax.Array) -> jax.Array:
  total = jnp.zeros(cands.shape, jnp.int32)
  for b in bits_leaves:
    flat = b.reshape(-1)
    total = total + jnp.sum(flat[:, None] <= cands[None, :], axis=0, dtype=jnp.int32)
  return total


def select_thresholds(
  groups: Sequence[Sequence[jax.Array]],
  kth: jax.Array,
  *,
  warm_start: jax.Array | None = None,
  tol: float | None = 0.0,
  max_passes: int = MAX_PASSES,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Finds, per group, a bit pattern ``t`` with ``count(bits <= t)`` near ``kth + 1``.

  Args:
    groups: ``G`` groups, each a list of int32 bit-pattern arrays (see
      :func:`to_bits`); a group's elements are all of its arrays together.
    kth: ``(G,)`` int32: the 0-based rank sought in each group.
    warm_start: ``(G,)`` int32 previous thresholds, or None to start from the
      whole range.
    tol: Allowed excess of ``count(bits <= t)`` over the exact
      ``count(bits <= x_(kth))``, as a fraction of the group's size. 0 selects
      exactly the elements at or below the ``kth`` smallest; None returns the
      ``kth`` smallest pattern itself (``jnp.quantile(..., method='lower')``).
    max_passes: Upper bound on counting passes.

  Returns:
    ``(thresholds, counts, passes)``: ``(G,)`` int32 thresholds, the counts of
    elements at or below them, and the number of passes run.
  """
  n_groups = len(groups)
  sizes = jnp.array([sum(b.size for b in g) for g in groups], jnp.int32)
  target = kth.astype(jnp.int32) + 1
  if tol is None:  # the exact pattern itself
    allowed = jnp.full((n_groups,), -1, jnp.int32)
  else:  # the same elements at or below as the exact pattern, up to tol
    allowed = jnp.floor(tol * sizes.astype(jnp.float32)).astype(jnp.int32)
  lo = jnp.full((n_groups,), -1, jnp.int32)
  hi = jnp.full((n_groups,), TOP, jnp.int32)
  c_lo = jnp.zeros((n_groups,), jnp.int32)
  c_hi = sizes
  j = jnp.arange(1, N_CANDIDATES + 1, dtype=jnp.int32)

  def done(lo, hi, c_lo, c_hi):
    return (hi - 1 <= lo) | (c_hi - c_lo - 1 <= allowed)

  def refine(carry, cands):
    lo, hi, c_lo, c_hi = carry
    finished = done(lo, hi, c_lo, c_hi)
    new = []
    for g, bits in enumerate(groups):
      counts = lax.cond(
        finished[g],
        lambda: jnp.zeros((N_CANDIDATES,), jnp.int32),
        lambda bits=bits, g=g: _count(bits, cands[g]),
      )
      below = counts < target[g]
      cand_lo = jnp.max(jnp.where(below, cands[g], -1))
      cnt_lo = jnp.max(jnp.where(below, counts, 0))
      cand_hi = jnp.min(jnp.where(below, TOP, cands[g]))
      cnt_hi = jnp.min(jnp.where(below, sizes[g], counts))
      keep = finished[g]
      take_lo = ~keep & (cand_lo > lo[g])
      take_hi = ~keep & (cand_hi < hi[g])
      new.append(
        (
          jnp.where(take_lo, cand_lo, lo[g]),
          jnp.where(take_hi, cand_hi, hi[g]),
          jnp.where(take_lo, cnt_lo, c_lo[g]),
          jnp.where(take_hi, cnt_hi, c_hi[g]),
        )
      )
    return tuple(jnp.stack([n[i] for n in new]) for i in range(4))

  def linear_cands(lo, hi):
    base = lo + 1  # the smallest pattern not yet known to be below the answer
    step = jnp.maximum((hi - base) // N_CANDIDATES, 1)
    return jnp.minimum(base[:, None] + step[:, None] * (j[None, :] - 1), hi[:, None])

  carry = (lo, hi, c_lo, c_hi)
  passes = jnp.zeros([], jnp.int32)
  if warm_start is not None:
    offsets = (j - N_CANDIDATES // 2 - 1) * WARM_SPACING
    start = jnp.clip(warm_start, 0, TOP - 1)
    cands = jnp.clip(start[:, None] + offsets[None, :], 0, TOP - 1)
    carry = refine(carry, cands)
    passes = passes + 1

  def cond(state):
    (lo, hi, c_lo, c_hi), passes = state
    return jnp.any(~done(lo, hi, c_lo, c_hi)) & (passes < max_passes)

  def body(state):
    carry, passes = state
    lo, hi, _, _ = carry
    return refine(carry, linear_cands(lo, hi)), passes + 1

  (lo, hi, c_lo, c_hi), passes = lax.while_loop(cond, body, (carry, passes))
  return hi, c_hi, passes


def quantile_lower(x: jax.Array, q: jax.Array) -> jax.Array:
  """``jnp.quantile(x, q, method='lower')`` for non-negative ``x``, by counting."""
  bits = to_bits(x)
  kth = jnp.floor(q * (x.size - 1)).astype(jnp.int32)
  t, _, _ = select_thresholds([[bits]], kth[None], tol=None)
  return from_bits(t[0])
