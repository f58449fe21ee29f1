"""Small CNNs of the SP and INSGD papers."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def _check_rate(name: str, rate: float) -> None:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {rate}")


def _check_classes(num_classes: int) -> None:
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")


class MnistCNN(nn.Module):
  """The SP paper's MNIST CNN: two convolutions and two dense layers.

  ``conv3x3(32) → ReLU → conv3x3(64) → ReLU → max-pool 2×2 → dropout 0.25 →
  flatten → dense 128 → ReLU → dropout 0.5 → dense num_classes``, with
  unpadded ('VALID') convolutions and biases everywhere. The paper only says
  "two convolutional layers and two fully connected layers" trained for 15
  epochs at batch size 128 with StepLR(γ=0.7) in PyTorch; that is the recipe
  of PyTorch's MNIST example, whose network this is. On 28×28×1 input it has
  1,199,882 parameters (the paper's text says "a mere 1.5 million"); on the
  8×8×1 digits it has 53,002.

  Attributes:
    num_classes: Number of output logits.
    conv_dropout: Dropout rate after the pooling layer.
    dense_dropout: Dropout rate after the hidden dense layer.
    dtype: Computation dtype (parameters stay float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = MnistCNN(num_classes=10)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> variables = model.init({'params': jax.random.key(0)}, x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 10)

  References:
    Yong, Kwan, Ng, Sim, `Spectral Proximal Method and Saliency Matrix for
    Robust Deep Learning Optimization <https://doi.org/10.24138/jcomss-2023-0124>`_,
    JCOMSS 20(1), 2024, Sec. V-B and Table I.
  """

  num_classes: int = 10
  conv_dropout: float = 0.25
  dense_dropout: float = 0.5
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_classes(self.num_classes)
    _check_rate("conv_dropout", self.conv_dropout)
    _check_rate("dense_dropout", self.dense_dropout)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding="VALID", dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
    x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class InsgdCNN(nn.Module):
  """The INSGD paper's custom 4-convolution CNN (its Table 2).

  ``conv3x3(8) → conv3x3(16, stride 2) → conv3x3(32, stride 2) →
  conv3x3(64, stride 2)``, each padded by 1, with bias, and followed by
  BatchNorm (when ``use_bn``) and ReLU; then dropout ``dropout_rate`` (0.2 in
  the paper), flatten (64×4×4 = 1,024 values on 32×32 input, also on 28×28;
  64 on 8×8) and one linear output layer. The paper's main experiments
  (Table 6) use BatchNorm; its robustness experiment (Table 7) removes it,
  which is the default here. 34,778 parameters without BatchNorm and 35,018
  with it (10 classes, 32×32×3 input).

  The paper names no activation and the published code does not include this
  network; ReLU is our assumption.

  Attributes:
    num_classes: Number of output logits.
    use_bn: Insert BatchNorm (statistics in ``'batch_stats'``) after each
      convolution.
    dropout_rate: Dropout rate before the output layer.
    dtype: Computation dtype (parameters stay float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = InsgdCNN(num_classes=10, use_bn=True)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> variables = model.init({'params': jax.random.key(0)}, x, train=False)
    >>> sorted(variables)
    ['batch_stats', 'params']
    >>> model.apply(variables, x, train=False).shape
    (2, 10)

  References:
    Atici, Pan, Cetin, `Input Normalized Stochastic Gradient Descent Training
    for Deep Neural Networks <https://openreview.net/forum?id=5TaBxctwRZ>`_,
    TMLR (earlier version: arXiv:2212.09921), Sec. 3.2, Tables 2, 6 and 7.
  """

  num_classes: int = 10
  use_bn: bool = False
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_classes(self.num_classes)
    _check_rate("dropout_rate", self.dropout_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features, stride in ((8, 1), (16, 2), (32, 2), (64, 2)):
      x = nn.Conv(features, (3, 3), strides=stride, padding=1, dtype=self.dtype)(x)
      if self.use_bn:
        # momentum 0.9 here is PyTorch's BatchNorm momentum 0.1.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
