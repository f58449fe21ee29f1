"""The SP paper's MNIST CNN in Flax NNX, and loading linen parameters into NNX models.

Same layers, initialisers and maths as :class:`flax_models.cnn.MnistCNN`, so for
the same weights (:func:`load_linen_params`) both give the same outputs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from flax_models.cnn import _check_classes, _check_rate

__all__ = ["NnxMnistCNN", "load_linen_params"]


class NnxMnistCNN(nnx.Module):
  """The SP paper's MNIST CNN (:class:`flax_models.MnistCNN`) as an NNX module.

  ``conv3x3(32) → ReLU → conv3x3(64) → ReLU → max-pool 2×2 → dropout 0.25 →
  flatten → dense 128 → ReLU → dropout 0.5 → dense num_classes``, unpadded
  convolutions, biases everywhere. NNX builds its parameters eagerly, so the
  input's shape is given up front (``image_shape``: 28×28×1 for MNIST,
  8×8×1 for scikit-learn's digits). Call it as the linen model is applied:
  ``model(x, train=False)``; dropout acts only with ``train=True`` and draws
  from the ``rngs`` given at construction (its ``'dropout'`` stream, else
  ``'default'``).

  Its layers are ``conv1``, ``conv2``, ``dense1`` and ``dense2``;
  :attr:`LINEN_NAMES` maps them to the linen model's ``Conv_0``, ``Conv_1``,
  ``Dense_0`` and ``Dense_1``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = NnxMnistCNN(10, image_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)

  References:
    Yong, Kwan, Ng, Sim, `Spectral Proximal Method and Saliency Matrix for
    Robust Deep Learning Optimization <https://doi.org/10.24138/jcomss-2023-0124>`_,
    JCOMSS 20(1), 2024, Sec. V-B and Table I.
  """

  #: NNX layer -> the linen module of the same place, for :func:`load_linen_params`.
  LINEN_NAMES = {"conv1": "Conv_0", "conv2": "Conv_1", "dense1": "Dense_0", "dense2": "Dense_1"}

  def __init__(
    self,
    num_classes: int = 10,
    *,
    image_shape: Sequence[int] = (28, 28, 1),
    conv_dropout: float = 0.25,
    dense_dropout: float = 0.5,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    _check_classes(num_classes)
    _check_rate("conv_dropout", conv_dropout)
    _check_rate("dense_dropout", dense_dropout)
    height, width, channels = image_shape
    if min(height, width) < 6:
      raise ValueError(f"image_shape must be at least 6x6, got {tuple(image_shape)}")
    conv = dict(kernel_size=(3, 3), padding="VALID", dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(channels, 32, **conv)
    self.conv2 = nnx.Conv(32, 64, **conv)
    flat = ((height - 4) // 2) * ((width - 4) // 2) * 64
    self.dense1 = nnx.Linear(flat, 128, dtype=dtype, rngs=rngs)
    self.dense2 = nnx.Linear(128, num_classes, dtype=dtype, rngs=rngs)
    self.conv_dropout = nnx.Dropout(conv_dropout, rngs=rngs)
    self.dense_dropout = nnx.Dropout(dense_dropout, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = self.conv_dropout(x, deterministic=not train)
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dense1(x))
    x = self.dense_dropout(x, deterministic=not train)
    return self.dense2(x)


def load_linen_params(
  model: nnx.Module, params: Mapping, names: Mapping[str, str] | None = None
) -> nnx.Module:
  """Copies linen parameters into an NNX model of the same layers, in place.

  Linen and NNX lay out the kernels of ``Dense``/``Linear``, ``Conv``,
  ``DenseGeneral``/``LinearGeneral``, ``Einsum`` and attention alike, so each
  NNX parameter at ``(layer, *rest)`` takes the linen parameter at
  ``(names.get(layer, layer), *rest)`` unchanged.

  Args:
    model: The NNX model, its parameters already built.
    params: The linen ``variables['params']``.
    names: The NNX top-level attribute -> linen top-level module name, where
      they differ (e.g. :attr:`NnxMnistCNN.LINEN_NAMES`).

  Returns:
    ``model``, with every ``nnx.Param`` replaced.

  Raises:
    ValueError: naming the first NNX parameter with no linen counterpart of
      its shape.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from flax import nnx
    >>> params = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))['params']
    >>> model = load_linen_params(nnx.Linear(2, 3, rngs=nnx.Rngs(1)), params)
    >>> bool(jnp.all(model.kernel[...] == params['kernel']))
    True
  """
  names = dict(names or {})
  linen = traverse_util.flatten_dict(params)
  new = []
  for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    path = tuple(path)
    key = (names.get(path[0], path[0]), *path[1:]) if path else path
    source = linen.get(tuple(str(k) for k in key))
    if source is None or jnp.shape(source) != jnp.shape(value[...]):
      raise ValueError(
        f"NNX parameter {'/'.join(map(str, path))} of shape {jnp.shape(value[...])} has no linen "
        f"counterpart at {'/'.join(map(str, key))} (found "
        f"{None if source is None else jnp.shape(source)})"
      )
    new.append((path, jnp.asarray(source, value[...].dtype)))
  nnx.update(model, nnx.from_flat_state(new))
  return model
