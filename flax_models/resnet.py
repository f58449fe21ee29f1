"""ResNets: ImageNet ResNet-18/50 (with an optional CIFAR stem) and CIFAR ResNet-20."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock(nn.Module):
  """Two 3×3 convolutions with BatchNorm; a 1×1 projection when the shape changes."""

  filters: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.filters, (3, 3), strides=self.strides, padding=1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.filters, (3, 3), padding=1)(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.filters or self.strides != 1:
      x = norm()(conv(self.filters, (1, 1), strides=self.strides)(x))
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4; projection shortcut."""

  filters: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
    y = nn.relu(norm()(conv(self.filters, (3, 3), strides=self.strides, padding=1)(y)))
    y = norm(scale_init=nn.initializers.zeros)(conv(4 * self.filters, (1, 1))(y))
    if x.shape[-1] != 4 * self.filters or self.strides != 1:
      x = norm()(conv(4 * self.filters, (1, 1), strides=self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet of ``len(stage_sizes)`` stages whose widths double from ``num_filters``.

  Args:
    stage_sizes: Blocks per stage.
    block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
    num_classes: Width of the final linear layer.
    num_filters: Width of the first stage.
    cifar_stem: A 3×3 stride-1 stem without max-pooling (for 32×32 inputs)
      instead of the ImageNet 7×7 stride-2 stem with 3×3 max-pooling.

  References:
    He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016.
  """

  stage_sizes: Sequence[int]
  block_cls: Callable[..., nn.Module]
  num_classes: int = 1000
  num_filters: int = 64
  cifar_stem: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    if self.cifar_stem:
      x = nn.Conv(self.num_filters, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(norm()(x))
    else:
      x = nn.Conv(self.num_filters, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype)(
        x
      )
      x = nn.relu(norm()(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2**i, strides=strides, dtype=self.dtype)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
# CIFAR ResNet-20 (He et al. 2016, Section 4.2; the INSGD paper's Table 1): 3 stages
# of 3 basic blocks, widths 16-32-64, 3×3 stem; shortcuts that change shape use a
# 1×1 projection ("option B"), 272,474 parameters for 10 classes.
ResNet20 = functools.partial(
  ResNet, stage_sizes=(3, 3, 3), block_cls=BasicBlock, num_filters=16, cifar_stem=True
)
# A one-block network with the same code paths, for fast tests.
ResNet1 = functools.partial(
  ResNet, stage_sizes=(1,), block_cls=BasicBlock, num_filters=8, cifar_stem=True
)
