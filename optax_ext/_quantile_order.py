"""The order :mod:`optax_ext.quantile` selects in: value keys, counts and positions."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optax_ext import _fusion

__all__: list[str] = []  # re-exported by optax_ext.quantile

#: The smallest value of the domain: zeros, negatives and anything below it count as ``LOW``.
LOW = 2.0**-100
#: The largest value of the domain: NaN and anything above it count as ``HIGH``.
HIGH = 2.0**100
_LOW_BITS = int(np.float32(LOW).view(np.int32))
_HIGH_BITS = int(np.float32(HIGH).view(np.int32))
#: The integer key of ``HIGH`` (0 is the key of ``LOW``): keys run over ``[0, KEY_MAX]``.
KEY_MAX = _HIGH_BITS - _LOW_BITS


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


def _key_of(x: jax.Array) -> jax.Array:
  return to_key(to_domain(x))


def count_at_most(x: Union[jax.Array, Callable[[], jax.Array]], key: jax.Array) -> jax.Array:
  """Exact int32 number of elements of ``to_domain(x)`` at or below ``from_key(key)``.

  ``x`` is an array or a function returning one (called where the count is
  computed, so that the array need not exist in memory). Exact for keys in
  ``[0, KEY_MAX)``: the comparison reads raw values, which order like their
  domain images below ``HIGH`` (NaN is counted above, as its image ``HIGH``).
  """
  make = x if callable(x) else (lambda: x)
  values = make()
  above = jnp.logical_not(values.astype(jnp.float32) <= from_key(key))
  return jnp.int32(values.size) - _fusion.count_true(above)


# ----------------------------------------------------------------------------
# What is searched.


class Entries(NamedTuple):
  """One array of a group: its values and, optionally, its tie values.

  Both are functions returning arrays of ``shape``, so that they can be
  computed inside each counting pass from their own inputs.
  """

  values: Callable[[], jax.Array]
  tie_values: Optional[Callable[[], jax.Array]]
  shape: tuple[int, ...]


def _entries(x) -> Entries:
  if isinstance(x, Entries):
    return x
  make = x if callable(x) else (lambda: x)
  return Entries(make, None, tuple(jax.eval_shape(make).shape))


def _size(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


def positions(shape: tuple[int, ...], offset: int) -> jax.Array:
  """Flat row-major index of every element, plus ``offset``, built without a reshape."""
  pos = jnp.full(shape, offset, jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    pos = pos + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return pos


class Selection(NamedTuple):
  """Per group, which elements :func:`select` selected, and where to start the next search.

  An element is selected when its value key is at or below ``below``, or its
  value key equals ``tied`` and its tie key is at or below ``tie_below``, or
  both keys equal ``tied`` and ``tie_tied`` and its position is at or below
  ``position`` (keys of -1 select nothing); :func:`selected` evaluates it.
  """

  below: jax.Array  # (G,) int32 value key
  tied: jax.Array  # (G,) int32 value key of the tie class, or -1
  tie_below: jax.Array  # (G,) int32 tie key, or -1
  tie_tied: jax.Array  # (G,) int32 tie key of the second tie class, or -1
  position: jax.Array  # (G,) int32 position, or -1
  key: jax.Array  # (G,) int32: the largest value key selected (a warm start for the next call)
  step: jax.Array  # (G,) int32: how far the search moved from its warm start (the next step)
  count: jax.Array  # (G,) int32: the number selected
  leaf_counts: list  # per group, (arrays,) int32: the number selected in each array
  density: jax.Array  # (G,) float32: elements per key near the answer (for a warm start)
  passes: jax.Array  # () int32: counting passes run


def selected(
  sel: Selection,
  group: int,
  values: jax.Array,
  tie_values: Optional[jax.Array] = None,
  positions: Optional[jax.Array] = None,
) -> jax.Array:
  """Boolean mask of the elements of one array of group ``group`` that ``sel`` selects."""
  mask = (to_domain(values) <= from_key(sel.below[group])) & (sel.below[group] >= 0)
  if tie_values is None:
    return mask
  key, tie_key = _key_of(values), _key_of(tie_values)
  in_class = key == sel.tied[group]
  mask |= in_class & (tie_key <= sel.tie_below[group])
  if positions is not None:
    mask |= in_class & (tie_key == sel.tie_tied[group]) & (positions <= sel.position[group])
  return mask
