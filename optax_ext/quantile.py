"""Order statistics of float32 arrays by counting, without sorting.

The saliency threshold of :func:`optax_ext.saliency_proximal` is a quantile of
tens of millions of values per step. Sorting them costs far more than the
optimizer update around it; this module finds the same elements with a few
counting passes instead (docs/design.md, SP — the counting search).

**The domain.** Values live in ``[LOW, HIGH]`` with ``LOW = 2**-100`` and
``HIGH = 2**100`` (:func:`to_domain`): NaN and values above ``HIGH`` become
``HIGH``, values below ``LOW`` (zeros and negatives included) become ``LOW``.
Inside it every value has an integer *key* (:func:`to_key`),
``bits(v) - bits(LOW)``: consecutive integers ordered like the values, 0 for
``LOW``, :data:`KEY_MAX` for ``HIGH``.

**The order.** Within a group of arrays, elements are ordered by their value,
then (when tie values are given) by their tie value, then by their position
(the flat index within the group, arrays taken in order). :func:`select`
finds, per group, the first ``kth + 1`` elements of that order, or with a
tolerance ``allowed`` between ``kth + 1`` and ``kth + 1 + allowed`` of them,
always a prefix of the order. Without tie values, all elements tied at the
last value selected are selected (``jnp.quantile(..., method="lower")``
semantics).

**The search.** Per group it keeps a bracket of keys ``lo < hi`` with
``count(<= lo) < need <= count(<= hi)`` and shrinks it one counting pass at a
time: from a warm start (the previous step's threshold) it steps outward
geometrically until the target is bracketed, then interpolates the count
linearly in key space (keys are a piecewise-linear ``log2`` of the value),
bisecting when the bracket spans many binades or after two passes that moved
the same end. A bracket stuck on one end snaps both ends to the nearest
elements inside it. When the bracket closes on a single value holding more
elements than allowed, the search continues among those tied elements on
their tie values (stage 1), then on their positions (stage 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optax_ext._quantile_order import (
  HIGH,
  KEY_MAX,
  LOW,
  Entries,
  Selection,
  count_at_most,
  from_key,
  positions,
  selected,
  to_domain,
  to_key,
)
from optax_ext._quantile_search import select

__all__ = [
  "HIGH",
  "KEY_MAX",
  "LOW",
  "Entries",
  "Selection",
  "count_at_most",
  "from_key",
  "positions",
  "quantile_lower",
  "select",
  "selected",
  "to_domain",
  "to_key",
]


def quantile_lower(x: jax.Array, q: jax.Array) -> jax.Array:
  """``jnp.quantile(x, q, method="lower")`` of ``to_domain(x)``, by counting.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optax_ext import quantile
    >>> x = jnp.array([3.0, 0.5, 0.0, 7.0, 2.0])
    >>> lower = jax.jit(quantile.quantile_lower)
    >>> float(lower(x, 0.5)), float(jnp.quantile(x, 0.5, method="lower"))
    (2.0, 2.0)
  """
  d = to_domain(x)
  kth = jnp.floor(jnp.asarray(q, jnp.float32) * (d.size - 1)).astype(jnp.int32)
  return from_key(select([[d]], kth[None]).below[0])
