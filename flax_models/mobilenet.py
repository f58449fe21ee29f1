"""MobileNetV2: inverted residual blocks with depthwise convolutions."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
_SETTINGS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def _divisible(v: float, divisor: int = 8) -> int:
  """Rounds a width to a multiple of ``divisor``, never below 90% of ``v``."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
  """1×1 expand → 3×3 depthwise (stride) → 1×1 linear projection; residual if shapes match."""

  out_channels: int
  strides: int
  expansion: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.relu6(norm()(conv(hidden, (1, 1))(y)))
    y = conv(hidden, (3, 3), strides=self.strides, padding=1, feature_group_count=hidden)(y)
    y = nn.relu6(norm()(y))
    y = norm()(conv(self.out_channels, (1, 1))(y))
    if self.strides == 1 and x.shape[-1] == self.out_channels:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 (3,504,872 parameters for 1,000 classes at width 1.0).

  ``cifar_stem=True`` makes the first convolution stride 1, for 32×32 inputs.

  References:
    Sandler et al., *MobileNetV2: Inverted Residuals and Linear Bottlenecks*, CVPR 2018.
  """

  num_classes: int = 1000
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    width = _divisible(32 * self.width_multiplier)
    x = conv(width, (3, 3), strides=1 if self.cifar_stem else 2, padding=1)(x)
    x = nn.relu6(norm()(x))
    for t, c, n, s in _SETTINGS:
      out = _divisible(c * self.width_multiplier)
      for i in range(n):
        x = InvertedResidual(out, s if i == 0 else 1, t, dtype=self.dtype)(x, train)
    last = _divisible(1280 * max(1.0, self.width_multiplier))
    x = nn.relu6(norm()(conv(last, (1, 1))(x)))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
