"""Order statistics of non-negative float32 arrays by counting, without sorting.

The saliency threshold of :func:`optax_ext.saliency_proximal` is a quantile of
tens of millions of values per step. Sorting them (``jnp.quantile``) costs
about a hundred optimizer updates on a CPU; this module finds the same
threshold with a few counting passes instead.

**The domain.** Values live in ``[LOW, HIGH]`` with ``LOW = 2**-100`` and
``HIGH = 2**100`` (:func:`to_domain`): NaN and values above ``HIGH`` become
``HIGH``, values below ``LOW`` (zeros and negatives included) become ``LOW``.
Inside it every value has an integer *key* (:func:`to_key`),
``bits(v) - bits(LOW)``: consecutive integers ordered like the values, 0 for
``LOW``.

**Counting.** The number of elements above the value ``a`` of a key is the
sum of ``not (x <= a)`` as int32, taken by a two-output reduction (the sum
and the max of the same indicator): the CPU backend compiles that into one
vectorised loop fused with whatever computes ``x`` (counting a saliency over
a ResNet-50-sized tree, a float sum measured six times slower and a
one-output integer sum 2.7 times). Since
``a >= LOW``, the count is the same on the raw values as on their domain
images (for every key below that of ``HIGH``; NaN is counted above, as its
image ``HIGH`` is), so ``x`` need not be mapped first.

**Selection.** :func:`select` keeps, per group, a bracket of keys
``lo < hi`` with ``count(<= lo) < T <= count(<= hi)`` (``T = kth + 1``) and
shrinks it one counting pass at a time: from a warm start (the previous step's
threshold) it steps outward geometrically until the target is bracketed, then
interpolates the count linearly in key space (keys are a piecewise-linear
``log2`` of the value, where saliency distributions are smooth), falling back
to bisection whenever two passes in a row move the same end. A group stops
when ``count(<= hi) - T <= allowed``: ``allowed = 0`` prunes exactly the
elements at or below the ``kth`` smallest (``jnp.quantile(..., method="lower")``
semantics), ``allowed = floor(tol * n)`` is the *fast* mode.

The first pass (from a warm start, often the only one) runs outside the
loop: there the CPU backend counts independent groups side by side on all
cores, while the conditionals inside a loop body run one after another.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optax_ext import _fusion

LOW = 2.0**-100
HIGH = 2.0**100
_LOW_BITS = int(np.float32(LOW).view(np.int32))
_HIGH_BITS = int(np.float32(HIGH).view(np.int32))
KEY_MAX = _HIGH_BITS - _LOW_BITS  # the key of HIGH; 0 is the key of LOW
CHUNK = 2**30  # int32 counts are exact up to here (larger arrays are counted in pieces)
MAX_PASSES = 64
DEFAULT_STEP = 2**20  # first outward step from a warm start: 1/8 of a binade (~9%)
MIN_STEP = 2**12


def to_domain(x: jax.Array) -> jax.Array:
  """Maps ``x`` to float32 values in ``[LOW, HIGH]``; NaN goes to ``HIGH``."""
  x = x.astype(jnp.float32)
  return jnp.where(x >= LOW, jnp.where(x <= HIGH, x, HIGH), jnp.where(x <= HIGH, LOW, HIGH))


def to_key(v: jax.Array) -> jax.Array:
  """The int32 key of a domain value (0 for ``LOW`` and below, consecutive above)."""
  bits = lax.bitcast_convert_type(v.astype(jnp.float32), jnp.int32)
  return jnp.where(v < LOW, 0, bits - _LOW_BITS).astype(jnp.int32)


def from_key(k: jax.Array) -> jax.Array:
  """The float32 domain value of a key (keys below 0 give ``LOW``)."""
  k = jnp.asarray(k, jnp.int32)
  return lax.bitcast_convert_type(jnp.maximum(k, 0) + _LOW_BITS, jnp.float32)


def count_above(x, key: jax.Array) -> jax.Array:
  """Exact int32 number of elements of ``to_domain(x)`` above ``from_key(key)``.

  ``x`` is an array or a function returning one (called where the count is
  computed, so that the array need not exist in memory). Exact for keys
  below :data:`KEY_MAX` (the search never counts there).
  """
  make = x if callable(x) else (lambda: x)
  a = from_key(key)
  total = jnp.zeros([], jnp.int32)
  for cut in _chunks(jax.eval_shape(make).shape):
    # "not at or below a" counts NaN as above (its domain image is HIGH),
    # and whatever lies below LOW as not (a >= LOW): no mapping needed.
    above = jnp.logical_not(cut(make()).astype(jnp.float32) <= a).astype(jnp.int32)
    total = total + _int_sum(above)
  return total


def _int_sum(v: jax.Array) -> jax.Array:
  """The sum of an int32 array, as a two-output reduction (sum and max).

  The CPU backend compiles a two-output reduction into one vectorised loop
  fused with whatever computes ``v``; a plain ``jnp.sum`` of the same
  comparison was written to memory first and summed in a second loop (2.7x
  slower measured). The max only guards the result, which it cannot change:
  with the max unused, XLA drops it and falls back to the one-output form.
  """
  z = jnp.zeros([], jnp.int32)
  total, largest = lax.reduce(
    (v, v), (z, z), lambda p, q: (p[0] + q[0], jnp.maximum(p[1], q[1])), tuple(range(v.ndim))
  )
  return jnp.where(largest > 0, total, 0)  # the same value (no element above: both 0)


def _chunks(shape) -> list:
  """Functions cutting an array of ``shape`` into pieces of at most ``CHUNK`` elements.

  Pieces are cut along the leading axis. Arrays are never flattened unless a
  single row exceeds ``CHUNK``: a reshape of an array sharded over devices
  would gather it onto every device.
  """
  size = int(np.prod(shape))
  if size <= CHUNK:
    return [lambda x: x]
  row = size // shape[0] if len(shape) and shape[0] else size
  if len(shape) and row <= CHUNK:
    rows = CHUNK // row
    return [lambda x, i=i: x[i : i + rows] for i in range(0, shape[0], rows)]
  return [lambda x, i=i: x.reshape(-1)[i : i + CHUNK] for i in range(0, size, CHUNK)]


def _above_unit(x, key):
  """``(x > from_key(key))`` as exact 0.0/1.0, with min and subtraction only."""
  a, b = from_key(key), from_key(key + 1)
  return (jnp.minimum(x, b) - jnp.minimum(x, a)) / (b - a)


def next_above(x: jax.Array, key: jax.Array) -> jax.Array:
  """The smallest element of ``to_domain(x)`` above ``from_key(key)`` (> HIGH if none)."""
  x = to_domain(x)
  return jnp.min(x + (1.0 - _above_unit(x, key)) * (4.0 * HIGH))


def last_at_most(x: jax.Array, key: jax.Array) -> jax.Array:
  """The largest element of ``to_domain(x)`` at or below ``from_key(key)`` (< 0 if none)."""
  x = to_domain(x)
  return jnp.max(x - _above_unit(x, key) * (4.0 * HIGH))


def count_at_most(x, key: jax.Array) -> jax.Array:
  """Exact int32 number of elements of ``to_domain(x)`` at or below ``from_key(key)``.

  ``x``: an array or a function returning one, as for :func:`count_above`.
  """
  return jnp.int32(_size(x)) - count_above(x, key)


def _size(x) -> int:
  """The number of elements of an array, or of the array a function returns."""
  return int(np.prod(jax.eval_shape(x).shape)) if callable(x) else int(x.size)


def _lazy(x):
  """``(function returning the array, its size)`` for an array or a function."""
  return (x if callable(x) else (lambda: x)), _size(x)


def select(
  groups: Sequence[Sequence[jax.Array]],
  kth: jax.Array,
  allowed: jax.Array | None,
  *,
  warm: jax.Array | None = None,
  step: jax.Array | None = None,
  density: jax.Array | None = None,
  max_passes: int = MAX_PASSES,
):
  """Per group, a key ``t`` with ``count(<= t)`` just at or above ``kth + 1``.

  Args:
    groups: ``G`` groups, each a list of arrays or of functions returning
      one; a group's elements are the domain images (:func:`to_domain`) of
      all its arrays. A function is called inside each counting pass, so
      that the array is computed within the pass from its own inputs and
      never written to memory.
    kth: ``(G,)`` int32, the 0-based rank sought in each group.
    allowed: ``(G,)`` int32: a group is done once ``count(<= t) - (kth + 1)``
      is at most this (0: the same elements as the exact ``kth`` smallest).
      None: the ``kth`` smallest key itself.
    warm: ``(G,)`` int32 keys to start from (the previous thresholds), or None.
    step: ``(G,)`` int32 first outward steps from ``warm`` (default 2**20).
    density: ``(G,)`` float32 elements per key near the answer (a previous
      call's), for one Newton step after the warm pass; 0 or None: unknown.
    max_passes: Upper bound on counting passes.

  Returns:
    ``(keys, counts, leaf_counts, density, passes)``: ``(G,)`` int32 keys and
    the counts of elements at or below them, a list with each array's own
    count (in the order of ``groups``), the elements per key of the last
    bracket at least ``2**12`` keys wide (for the next call), and the number
    of counting passes run.
  """
  n_groups = len(groups)
  groups = [[_lazy(x) for x in g] for g in groups]
  sizes_py = [sum(size for _, size in g) for g in groups]
  sizes = jnp.asarray(sizes_py, jnp.int32)
  target = kth.astype(jnp.int32) + 1
  if allowed is None:
    allowed = jnp.full((n_groups,), -1, jnp.int32)
    aim_extra = jnp.zeros((n_groups,), jnp.float32)
  else:
    allowed = jnp.asarray(allowed, jnp.int32)
    aim_extra = 0.5 * allowed.astype(jnp.float32) + 0.5
  leaf_sizes = [jnp.asarray([size for _, size in g], jnp.int32) for g in groups]

  def done(c):
    lo, hi, c_hi = c["lo"], c["hi"], c["c_hi"]
    return (hi - lo <= 1) | (c_hi - target <= allowed)

  def propose(c):
    lo, hi, c_lo, c_hi = c["lo"], c["hi"], c["c_lo"], c["c_hi"]
    span = (hi - lo).astype(jnp.float32)
    bisect = lo + (hi - lo) // 2
    aim = target.astype(jnp.float32) + aim_extra
    frac = (aim - c_lo.astype(jnp.float32)) / jnp.maximum(c_hi - c_lo, 1).astype(jnp.float32)
    interp = lo + jnp.floor(span * jnp.clip(frac, 0.0, 1.0)).astype(jnp.int32)
    # Interpolate within a bracket of a few binades; bisect wider ones, and
    # after two passes that moved the same end.
    use_interp = (span <= 2.0**25) & (c["streak"] < 2)
    cand = jnp.where(use_interp, interp, bisect)
    # From a warm start: the warm key, then outward steps that grow 4x.
    has_lo, has_hi = c["seen_lo"], c["seen_hi"]
    gap = jnp.maximum(hi - lo - 1, 0)
    up = lo + jnp.minimum(c["step"], gap)
    down = hi - jnp.minimum(c["step"], gap)
    one_sided = jnp.where(has_lo, up, down)
    # One Newton step on the count, with the density the previous call saw.
    anchor, c_anchor = jnp.where(has_lo, lo, hi), jnp.where(has_lo, c_lo, c_hi)
    move = (aim - c_anchor.astype(jnp.float32)) / jnp.maximum(c["density"], 1e-30)
    newton_f = anchor.astype(jnp.float32) + jnp.clip(move, -(2.0**31), 2.0**31)
    newton = jnp.clip(newton_f, -1.0, float(KEY_MAX)).astype(jnp.int32)
    use_newton = (c["density"] > 0) & ~c["newton_done"]
    one_sided = jnp.where(use_newton, newton, one_sided)
    cand = jnp.where(has_lo ^ has_hi, one_sided, cand)
    cand = jnp.where(c["use_warm"], c["warm"], cand)
    return jnp.clip(cand, lo + 1, hi - 1)

  def refine(c, first=False):
    cand = propose(c)
    fin = done(c)
    # A pass stuck on one end (ties, or a gap in the data) snaps both ends to
    # the nearest elements instead: lo just below the smallest element above
    # it, hi onto the largest element at or below it. Counts do not change,
    # and a bracket holding one distinct value closes at once.
    snap = ~fin & (c["streak"] >= 2) & (c["passes"] % 2 == 0) & c["seen_lo"] & c["seen_hi"]
    if first:
      snap = jnp.zeros_like(snap)  # no streak yet
    counts, leaf_counts, succ, pred = [], [], [], []
    zero_i, big = jnp.zeros([], jnp.int32), jnp.float32(4.0 * HIGH)
    for g, arrays in enumerate(groups):

      def count_group(arrays=arrays, g=g):
        per = jnp.stack([count_at_most(x, cand[g]) for x, _ in arrays])
        return jnp.sum(per, dtype=jnp.int32), per, big, -big

      def snap_group(arrays=arrays, g=g):
        nxt = jnp.min(jnp.stack([next_above(x(), c["lo"][g]) for x, _ in arrays]))
        last = jnp.max(jnp.stack([last_at_most(x(), c["hi"][g]) for x, _ in arrays]))
        return zero_i, jnp.zeros((len(arrays),), jnp.int32), nxt, last

      def skip(arrays=arrays):
        return zero_i, jnp.zeros((len(arrays),), jnp.int32), big, -big

      if first:
        # Unconditionally, at the top level of the program: the groups'
        # counts run side by side (a group already done is counted, unused).
        tot, per, nxt, last = count_group([(_fusion.detached(x), n) for x, n in arrays])
      else:
        branch = jnp.where(fin[g], 0, jnp.where(snap[g], 2, 1))
        tot, per, nxt, last = lax.switch(branch, [skip, count_group, snap_group])
      counts.append(tot)
      leaf_counts.append(per)
      succ.append(nxt)
      pred.append(last)
    counts = jnp.stack(counts)
    succ, pred = jnp.stack(succ), jnp.stack(pred)
    below = counts < target
    move_lo = ~fin & ~snap & below
    move_hi = ~fin & ~snap & ~below
    side = jnp.where(move_lo, 1, jnp.where(move_hi, 2, 0)).astype(jnp.int32)
    out = dict(c)
    out["lo"] = jnp.where(move_lo, cand, c["lo"])
    out["c_lo"] = jnp.where(move_lo, counts, c["c_lo"])
    out["hi"] = jnp.where(move_hi, cand, c["hi"])
    out["c_hi"] = jnp.where(move_hi, counts, c["c_hi"])
    out["leaf_hi"] = [
      jnp.where(move_hi[g], per, old) for g, (per, old) in enumerate(zip(leaf_counts, c["leaf_hi"]))
    ]
    snap_lo = snap & (c["lo"] >= 0)
    out["lo"] = jnp.where(snap_lo, to_key(jnp.minimum(succ, HIGH)) - 1, out["lo"]).astype(jnp.int32)
    out["hi"] = jnp.where(snap, to_key(jnp.maximum(pred, 0.0)), out["hi"])
    out["streak"] = jnp.where(snap, 0, jnp.where(side == c["side"], c["streak"] + 1, 1)).astype(
      jnp.int32
    )
    out["side"] = side
    out["seen_lo"] = c["seen_lo"] | move_lo
    out["seen_hi"] = c["seen_hi"] | move_hi
    one_sided = ~c["use_warm"] & (c["seen_lo"] ^ c["seen_hi"])
    stepping = one_sided & ((c["density"] <= 0) | c["newton_done"])
    out["step"] = jnp.where(stepping, jnp.minimum(c["step"], 2**28) * 4, c["step"]).astype(
      jnp.int32
    )
    out["newton_done"] = c["newton_done"] | one_sided
    span = out["hi"] - out["lo"]
    wide = out["seen_lo"] & out["seen_hi"] & (span >= 2**12) & ~fin
    dens = (out["c_hi"] - out["c_lo"]).astype(jnp.float32) / span.astype(jnp.float32)
    out["new_density"] = jnp.where(wide, dens, c["new_density"])
    out["use_warm"] = jnp.zeros_like(c["use_warm"])
    out["passes"] = c["passes"] + jnp.any(~fin).astype(jnp.int32)
    return out

  have_warm = warm is not None
  carry = {
    "lo": jnp.full((n_groups,), -1, jnp.int32),
    "hi": jnp.full((n_groups,), KEY_MAX, jnp.int32),
    "c_lo": jnp.zeros((n_groups,), jnp.int32),
    "c_hi": sizes,
    "leaf_hi": leaf_sizes,
    "streak": jnp.zeros((n_groups,), jnp.int32),
    "side": jnp.zeros((n_groups,), jnp.int32),
    "seen_lo": jnp.zeros((n_groups,), bool),
    "seen_hi": jnp.zeros((n_groups,), bool),
    "use_warm": jnp.full((n_groups,), have_warm),
    "warm": (
      jnp.clip(jnp.asarray(warm, jnp.int32), 0, KEY_MAX - 1)
      if have_warm
      else jnp.zeros((n_groups,), jnp.int32)
    ),
    "step": (
      jnp.clip(jnp.asarray(step, jnp.int32), 1, 2**28)
      if step is not None
      else jnp.full((n_groups,), DEFAULT_STEP, jnp.int32)
    ),
    "density": (
      jnp.asarray(density, jnp.float32)
      if density is not None
      else jnp.zeros((n_groups,), jnp.float32)
    ),
    "new_density": (
      jnp.asarray(density, jnp.float32)
      if density is not None
      else jnp.zeros((n_groups,), jnp.float32)
    ),
    "newton_done": jnp.zeros((n_groups,), bool),
    "passes": jnp.zeros([], jnp.int32),
  }
  if not have_warm:  # the outward stepping only follows a warm start
    carry["seen_lo"] = jnp.ones((n_groups,), bool)
    carry["seen_hi"] = jnp.ones((n_groups,), bool)

  def cond(c):
    return jnp.any(~done(c)) & (c["passes"] < max_passes)

  if max_passes > 0:  # the first pass outside the loop, where XLA runs groups concurrently
    carry = refine(carry, first=True)
  carry = lax.while_loop(cond, refine, carry)
  return carry["hi"], carry["c_hi"], carry["leaf_hi"], carry["new_density"], carry["passes"]


def quantile_lower(x: jax.Array, q: jax.Array) -> jax.Array:
  """``jnp.quantile(x, q, method="lower")`` of ``to_domain(x)``, by counting.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_ext import quantile
    >>> x = jnp.array([3.0, 0.5, 0.0, 7.0, 2.0])
    >>> float(quantile.quantile_lower(x, 0.5)), float(jnp.quantile(x, 0.5, method="lower"))
    (2.0, 2.0)
  """
  d = to_domain(x)
  kth = jnp.floor(jnp.asarray(q, jnp.float32) * (d.size - 1)).astype(jnp.int32)
  keys, _, _, _, _ = select([[d]], kth[None], None)
  return from_key(keys[0])
