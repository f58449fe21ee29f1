"""Multilayer perceptrons for regression and small classification tasks."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Dense layers of widths ``features`` with ``activation``, then a linear output.

  In the GAL paper's notation an architecture ``(64-32)`` is
  ``MLP(features=(64, 32))``: input → 64 → 32 → output. Its regression models
  are (100-50) on Boston housing, (64-32) on diabetes and (256-64) on
  California housing, each with one output (Sec. V-B, Table V). The
  parameter counts it quotes for its gradient adjustment modules (same
  notation) are those of bias-free MLPs, ``use_bias=False``: e.g. (256-64-32)
  from 100 features to 100 outputs has 47,232 ("47.2K", Table II and
  Sec. VI-D). Inputs of rank > 2 are flattened per example.

  Attributes:
    features: Hidden layer widths (may be empty: a linear model).
    out_features: Output width (1 for scalar regression, classes for logits).
    activation: Applied after each hidden layer.
    use_bias: Whether every dense layer has a bias.
    dtype: Computation dtype (parameters stay float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(features=(64, 32), out_features=1)
    >>> x = jnp.zeros((5, 10))  # the diabetes data set has 10 features
    >>> variables = model.init({'params': jax.random.key(0)}, x, train=False)
    >>> sum(p.size for p in jax.tree.leaves(variables))
    2817
    >>> model.apply(variables, x, train=False).shape
    (5, 1)

  References:
    Luo, Wong, Kankanhalli, Zhao, *Learning to Minimize the Remainder in
    Supervised Learning*, IEEE Transactions on Multimedia, 2022; code:
    `gradient_adjustment <https://github.com/luoyan407/gradient_adjustment>`_.
  """

  features: Sequence[int] = (64, 32)
  out_features: int = 1
  activation: Callable = nn.relu
  use_bias: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self):
    if any(w < 1 for w in self.features):
      raise ValueError(f"features must all be >= 1, got {tuple(self.features)}")
    if self.out_features < 1:
      raise ValueError(f"out_features must be >= 1, got {self.out_features}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for width in self.features:
      x = self.activation(nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype)(x))
    return nn.Dense(self.out_features, use_bias=self.use_bias, dtype=self.dtype)(x)
