"""ResNets: ImageNet ResNet-18/50 (with an optional CIFAR stem) and CIFAR ResNet-20."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

_SHORTCUTS = ("projection", "zero_pad")


def _norm(use_bn: bool, train: bool, dtype: Any) -> Callable:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there, 0.9 here; eps 1e-5), or identity."""
  if not use_bn:
    return lambda x: x
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


def _zero_pad_shortcut(x, out_channels: int, strides: int):
  """He et al.'s option A: subsample spatially, pad new channels with zeros."""
  x = x[:, ::strides, ::strides, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise ValueError(
      f"a zero-padding shortcut cannot reduce {x.shape[-1]} to {out_channels} channels"
    )
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class _Block(nn.Module):
  """Fields shared by the residual blocks."""

  filters: int
  strides: int = 1
  use_bn: bool = True
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  def _conv(self, features, kernel, strides=1):
    # Convolutions feeding BatchNorm carry no bias; without BatchNorm they do.
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=strides,
      padding=kernel // 2,
      use_bias=not self.use_bn,
      dtype=self.dtype,
    )

  def _norm(self, train):
    return _norm(self.use_bn, train, self.dtype)

  def _shortcut(self, x, out_channels, train):
    if x.shape[-1] == out_channels and self.strides == 1:
      return x
    if self.shortcut == "zero_pad":
      return _zero_pad_shortcut(x, out_channels, self.strides)
    return self._norm(train)(self._conv(out_channels, 1, self.strides)(x))


class BasicBlock(_Block):
  """Two 3×3 convolutions, each with BatchNorm; ReLU after the residual sum.

  Attributes:
    filters: Output channels.
    strides: Stride of the first convolution (and of the shortcut).
    use_bn: BatchNorm after each convolution; without it convolutions get biases.
    shortcut: ``'projection'`` (a 1×1 convolution + BatchNorm when the shape
      changes: He et al.'s option B) or ``'zero_pad'`` (option A: strided
      identity with zero-filled extra channels, no parameters).
    dtype: Computation dtype.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(self._norm(train)(self._conv(self.filters, 3, self.strides)(x)))
    y = self._norm(train)(self._conv(self.filters, 3)(y))
    return nn.relu(self._shortcut(x, self.filters, train) + y)


class BottleneckBlock(_Block):
  """1×1 reduce → 3×3 (carrying the stride, as in torchvision) → 1×1 expand ×4.

  Attributes are those of :class:`BasicBlock`; the output has ``4 * filters``
  channels.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(self._norm(train)(self._conv(self.filters, 1)(x)))
    y = nn.relu(self._norm(train)(self._conv(self.filters, 3, self.strides)(y)))
    y = self._norm(train)(self._conv(4 * self.filters, 1)(y))
    return nn.relu(self._shortcut(x, 4 * self.filters, train) + y)


class ResNet(nn.Module):
  """A ResNet of ``len(stage_sizes)`` stages whose widths double from ``num_filters``.

  Every stage after the first halves the resolution in its first block. The
  head is global average pooling and one dense layer.

  Attributes:
    stage_sizes: Blocks per stage.
    block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
    num_classes: Width of the final linear layer.
    num_filters: Width of the first stage.
    cifar_stem: A 3×3 stride-1 stem without max-pooling (for 32×32 inputs)
      instead of the ImageNet 7×7 stride-2 stem with 3×3 stride-2 max-pooling.
    use_bn: BatchNorm after every convolution (statistics in ``'batch_stats'``);
      ``False`` gives the INSGD paper's "no batch normalization" ResNet-20
      (its Table 7), with biased convolutions.
    shortcut: ``'projection'`` (option B) or ``'zero_pad'`` (option A); see
      :class:`BasicBlock`.
    dtype: Computation dtype (parameters stay float32).

  Variants: :data:`ResNet18` (11,689,512 parameters at 1,000 classes; with
  ``cifar_stem`` and 10 classes 11,173,962), :data:`ResNet50` (25,557,032;
  CIFAR stem, 10 classes: 23,520,842), :data:`ResNet20` (272,474 with
  projection shortcuts, 269,722 with zero-padding ones) and the one-block
  :data:`ResNet1` for tests.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet20(num_classes=10)
    >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    >>> variables = jax.eval_shape(
    ...     lambda x: model.init({'params': jax.random.key(0)}, x, train=False), x)
    >>> sum(p.size for p in jax.tree.leaves(variables['params']))
    272474
    >>> jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).shape
    (2, 10)

  References:
    He, Zhang, Ren, Sun, `Deep Residual Learning for Image Recognition
    <https://arxiv.org/abs/1512.03385>`_, CVPR 2016 (Table 1; Sec. 4.2 for CIFAR).
  """

  stage_sizes: Sequence[int]
  block_cls: Callable[..., nn.Module]
  num_classes: int = 1000
  num_filters: int = 64
  cifar_stem: bool = False
  use_bn: bool = True
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    if self.shortcut not in _SHORTCUTS:
      raise ValueError(f"shortcut must be one of {_SHORTCUTS}, got {self.shortcut!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    size, stride = (3, 1) if self.cifar_stem else (7, 2)
    x = nn.Conv(
      self.num_filters,
      (size, size),
      strides=stride,
      padding=size // 2,
      use_bias=not self.use_bn,
      dtype=self.dtype,
    )(x)
    x = nn.relu(_norm(self.use_bn, train, self.dtype)(x))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        x = self.block_cls(
          self.num_filters * 2**i,
          strides=2 if i > 0 and j == 0 else 1,
          use_bn=self.use_bn,
          shortcut=self.shortcut,
          dtype=self.dtype,
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


#: ResNet-18 (torchvision's layout); ``cifar_stem=True`` for 32×32 inputs.
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
#: ResNet-50 (torchvision's v1.5 layout: stride on the 3×3 convolution).
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
#: CIFAR ResNet-20 (He et al. Sec. 4.2; the INSGD paper's Table 1): 3 stages of
#: 3 basic blocks, widths 16/32/64, 3×3 stem. Projection shortcuts (option B) by
#: default, as in the INSGD authors' published ``ResNet20_Flat`` (272,474
#: parameters for 10 classes); He et al.'s own CIFAR runs use option A,
#: ``shortcut='zero_pad'`` (269,722, the "0.27M" of their Table 6).
ResNet20 = functools.partial(
  ResNet, stage_sizes=(3, 3, 3), block_cls=BasicBlock, num_filters=16, cifar_stem=True
)
#: A one-block network with the same code paths, for fast tests.
ResNet1 = functools.partial(
  ResNet, stage_sizes=(1,), block_cls=BasicBlock, num_filters=8, cifar_stem=True
)
