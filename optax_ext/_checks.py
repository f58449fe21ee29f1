"""Validation of hyperparameters when a transformation is built.

A value that is a schedule or is traced (``optax.inject_hyperparams`` under
``jit``) cannot be checked then, and is skipped: the check only ever refuses
values that are known to be wrong.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import numpy as np


def _concrete(value: Any):
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    return None
  return arr


def check_range(
  name: str,
  value: Any,
  low: float = -math.inf,
  high: float = math.inf,
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``value`` lies in the interval."""
  arr = _concrete(value)
  if arr is None:
    return
  lo_ok = np.all(arr > low) if low_open else np.all(arr >= low)
  hi_ok = np.all(arr < high) if high_open else np.all(arr <= high)
  if not (lo_ok and hi_ok):  # NaN fails both comparisons
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
  check_range(name, value, 0.0)


def check_positive(name: str, value: Any) -> None:
  check_range(name, value, 0.0, low_open=True)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_learning_rate(value: Any) -> None:
  """A learning rate is a non-negative number or a schedule."""
  check_nonnegative("learning_rate", value)


def mask_leaves(mask: Any, params: Any) -> list:
  """Per leaf of ``params``, the leaf of ``mask`` that covers it (``optax.masked`` rules).

  ``mask`` is a tree of flags or a function of ``params`` returning one; it may
  be a prefix of the parameter tree, each of its leaves covering a subtree.
  """
  tree = mask(params) if callable(mask) else mask
  full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), tree, params)
  return jax.tree.structure(params).flatten_up_to(full)
