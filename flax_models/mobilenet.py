"""MobileNetV2: inverted residual blocks with depthwise convolutions."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (expansion t, output channels c, repeats n, first stride s), the paper's Table 2.
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
  """Rounds a width to the nearest multiple of ``divisor``, never below 90% of ``v``."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
  """1×1 expand → ReLU6 → 3×3 depthwise (stride) → ReLU6 → 1×1 linear projection.

  The expansion convolution is skipped when ``expansion == 1``; the input is
  added back when stride is 1 and the channel count is unchanged. Every
  convolution is bias-free and followed by BatchNorm.

  Attributes:
    out_channels: Channels after the linear projection.
    strides: Stride of the depthwise convolution.
    expansion: Hidden width as a multiple of the input channels (``t``).
    dtype: Computation dtype.
  """

  out_channels: int
  strides: int
  expansion: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
    )
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.relu6(norm()(conv(hidden, (1, 1))(y)))
    # Depthwise: one 3×3 filter per channel (feature_group_count = channels).
    y = conv(hidden, (3, 3), strides=self.strides, padding=1, feature_group_count=hidden)(y)
    y = nn.relu6(norm()(y))
    y = norm()(conv(self.out_channels, (1, 1))(y))
    if self.strides == 1 and x.shape[-1] == self.out_channels:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 with the layout of the paper's Table 2 (and torchvision).

  ``conv3x3(32, stride 2) → 17 inverted residual blocks → conv1x1(1280) →
  global average pool → dropout → dense``, ReLU6 activations. Widths scale
  with ``width_multiplier`` and are rounded to multiples of 8; the last
  convolution never shrinks below 1,280. 3,504,872 parameters for 1,000
  classes at width 1.0 (torchvision's ``mobilenet_v2``); 2,236,682 for 10.

  ``cifar_stem=True`` adapts it to 32×32 inputs as the common PyTorch CIFAR
  versions do: stride 1 in the first convolution and in the first block of
  the 24-channel stage, so the total downsampling is 8 (a 4×4 final map)
  instead of 32. The parameter count does not change. (Some CIFAR versions
  also add 1×1 projection shortcuts to blocks; this one keeps the paper's
  blocks.) The SP paper trains MobileNetV2 on CIFAR-10 without saying which
  adaptation it uses.

  Attributes:
    num_classes: Number of output logits.
    width_multiplier: Channel multiplier (``α`` in the paper).
    cifar_stem: Reduce the two early strides for 32×32 inputs (see above).
    dropout_rate: Dropout before the classifier (0.2, as torchvision).
    dtype: Computation dtype (parameters stay float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = MobileNetV2(num_classes=1000)
    >>> x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    >>> variables = jax.eval_shape(
    ...     lambda x: model.init({'params': jax.random.key(0)}, x, train=False), x)
    >>> sum(p.size for p in jax.tree.leaves(variables['params']))
    3504872

  References:
    Sandler, Howard, Zhu, Zhmoginov, Chen, `MobileNetV2: Inverted Residuals and
    Linear Bottlenecks <https://arxiv.org/abs/1801.04381>`_, CVPR 2018.
  """

  num_classes: int = 1000
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    if not self.width_multiplier > 0:
      raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
    )
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    width = _divisible(32 * self.width_multiplier)
    x = conv(width, (3, 3), strides=1 if self.cifar_stem else 2, padding=1)(x)
    x = nn.relu6(norm()(x))
    for stage, (t, c, n, s) in enumerate(_SETTINGS):
      if self.cifar_stem and stage == 1:
        s = 1
      out = _divisible(c * self.width_multiplier)
      for i in range(n):
        x = InvertedResidual(out, s if i == 0 else 1, t, dtype=self.dtype)(x, train)
    last = _divisible(1280 * max(1.0, self.width_multiplier))
    x = nn.relu6(norm()(conv(last, (1, 1))(x)))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
