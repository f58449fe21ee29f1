"""Small CNNs of the SP and INSGD papers."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MnistCNN(nn.Module):
  """The SP paper's MNIST CNN: two convolutions and two dense layers.

  conv3x3(32) → ReLU → conv3x3(64) → ReLU → max-pool 2 → dropout 0.25 →
  flatten → dense 128 → ReLU → dropout 0.5 → dense ``num_classes``; with
  'VALID' convolutions, as in PyTorch's MNIST example that the paper's "custom
  CNN (convolutional layer ×2, fully-connected layer ×2)" follows. On 28×28×1
  input it has 1,199,882 parameters.

  References:
    Yong et al., *Spectral Proximal Method and Saliency Matrix for Robust Deep
    Learning Optimization*, JCOMSS 20(1), 2024, Table I.
  """

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding="VALID", dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(0.25, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class InsgdCNN(nn.Module):
  """The INSGD paper's custom 4-convolution CNN (its Table 2).

  conv3x3(8) → conv3x3(16, stride 2) → conv3x3(32, stride 2) → conv3x3(64,
  stride 2), each followed by BatchNorm (when ``use_bn``) and ReLU; dropout
  ``dropout_rate`` (0.2 in the paper); flatten (1,024 values on 32×32 input);
  a linear output layer. ``use_bn=False`` is the variant of the paper's
  robustness experiments (its Tables 6 and 7).

  References:
    Atici, Pan, Cetin, *Input Normalized Stochastic Gradient Descent Training
    for Deep Neural Networks*, Table 2.
  """

  num_classes: int = 10
  use_bn: bool = True
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features, stride in ((8, 1), (16, 2), (32, 2), (64, 2)):
      x = nn.Conv(features, (3, 3), strides=stride, padding=1, dtype=self.dtype)(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
