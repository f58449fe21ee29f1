"""Multilayer perceptrons for regression and small classification tasks."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Dense layers of widths ``features`` with ``activation``, then a linear output.

  ``MLP(features=(64, 32), out_features=1)`` is the regression network of the
  GAL paper's Table V. Inputs of rank > 2 are flattened per example.
  """

  features: Sequence[int] = (64, 32)
  out_features: int = 1
  activation: Callable = nn.relu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for width in self.features:
      x = self.activation(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.out_features, dtype=self.dtype)(x)
