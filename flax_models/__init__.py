"""Flax (linen) models that the optax_ext papers train.

Every model is called as ``model.apply(variables, x, train=False)``; dropout
draws from the ``'dropout'`` RNG stream when ``train=True``; BatchNorm keeps
its statistics in the ``'batch_stats'`` collection.
"""

from __future__ import annotations

from flax_models.cnn import InsgdCNN, MnistCNN
from flax_models.mlp import MLP
from flax_models.mobilenet import InvertedResidual, MobileNetV2
from flax_models.resnet import (
  BasicBlock,
  BottleneckBlock,
  ResNet,
  ResNet1,
  ResNet18,
  ResNet20,
  ResNet50,
)

_FACTORIES = {
  "mnist_cnn": lambda n, **kw: MnistCNN(num_classes=n, **kw),
  "insgd_cnn": lambda n, **kw: InsgdCNN(num_classes=n, use_bn=False, **kw),
  "insgd_cnn_bn": lambda n, **kw: InsgdCNN(num_classes=n, use_bn=True, **kw),
  "resnet20": lambda n, **kw: ResNet20(num_classes=n, **kw),
  "resnet18": lambda n, **kw: ResNet18(num_classes=n, **kw),
  "resnet18_cifar": lambda n, **kw: ResNet18(num_classes=n, cifar_stem=True, **kw),
  "resnet50": lambda n, **kw: ResNet50(num_classes=n, **kw),
  "resnet50_cifar": lambda n, **kw: ResNet50(num_classes=n, cifar_stem=True, **kw),
  "mobilenetv2": lambda n, **kw: MobileNetV2(num_classes=n, **kw),
  "mobilenetv2_cifar": lambda n, **kw: MobileNetV2(num_classes=n, cifar_stem=True, **kw),
  "mlp": lambda n, **kw: MLP(out_features=n, **kw),
}
MODEL_NAMES = tuple(_FACTORIES)


def get_model(name: str, num_classes: int, **kwargs):
  """Builds a model by name; ``num_classes`` is the output width (1 for regression).

  Raises:
    ValueError: for an unknown name (the message lists the known ones).
  """
  if name not in _FACTORIES:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
  return _FACTORIES[name](num_classes, **kwargs)


__all__ = [
  "BasicBlock",
  "BottleneckBlock",
  "InsgdCNN",
  "InvertedResidual",
  "MLP",
  "MODEL_NAMES",
  "MnistCNN",
  "MobileNetV2",
  "ResNet",
  "ResNet1",
  "ResNet18",
  "ResNet20",
  "ResNet50",
  "get_model",
]
