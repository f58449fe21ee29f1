"""Flax models that the optax_ext papers train, and a small transformer language model.

Every model is initialised and called as::

  variables = model.init({'params': key, 'dropout': key}, x, train=False)
  logits = model.apply(variables, x, train=False)

Images are NHWC floats of any height and width (8×8×1 digits, 28×28×1
Fashion-MNIST, 32×32×3 CIFAR); the MLP takes ``(batch, features)`` and
flattens anything larger. Outputs are ``(batch, num_classes)`` logits (or
``(batch, out_features)``). Dropout draws from the ``'dropout'`` RNG stream and
acts only when ``train=True``; BatchNorm keeps its running statistics in the
``'batch_stats'`` collection (pass ``mutable=['batch_stats']`` when training)
and uses them when ``train=False``. Every module has a ``dtype`` field, the
computation dtype; parameters stay float32. The transformer LM takes int tokens
``(batch, T)`` and returns logits ``(batch, T, vocab)``.

Flax NNX: :class:`NnxMnistCNN` is the MNIST CNN and :class:`TransformerLMNNX` the
transformer LM as ``nnx.Module`` s (``model(x, train=False)``; :func:`get_nnx_model`
builds those registered by name, holding the weights of the linen model's
initialisation, so that both APIs start from the same point for the same seed);
:func:`load_linen_params` copies a linen model's parameters into the NNX model of the
same layers, :func:`linen_params` reads them back out of a model named as its linen twin.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from flax_models.cnn import InsgdCNN, MnistCNN
from flax_models.mlp import MLP
from flax_models.mobilenet import InvertedResidual, MobileNetV2
from flax_models.nnx_cnn import NnxMnistCNN, load_linen_params
from flax_models.resnet import (
  BasicBlock,
  BottleneckBlock,
  ResNet,
  ResNet1,
  ResNet18,
  ResNet20,
  ResNet50,
)
from flax_models.transformer import TransformerLM, TransformerLMNNX, linen_params

# name -> (constructor, keyword arguments it fixes, keyword naming the output width).
# Keyword arguments given to get_model override the fixed ones.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict, str]] = {
  "mnist_cnn": (MnistCNN, {}, "num_classes"),
  "insgd_cnn": (InsgdCNN, {"use_bn": False}, "num_classes"),
  "insgd_cnn_bn": (InsgdCNN, {"use_bn": True}, "num_classes"),
  "resnet20": (ResNet20, {}, "num_classes"),
  "resnet20_nobn": (ResNet20, {"use_bn": False}, "num_classes"),
  "resnet18": (ResNet18, {}, "num_classes"),
  "resnet18_cifar": (ResNet18, {"cifar_stem": True}, "num_classes"),
  "resnet50": (ResNet50, {}, "num_classes"),
  "resnet50_cifar": (ResNet50, {"cifar_stem": True}, "num_classes"),
  "mobilenetv2": (MobileNetV2, {}, "num_classes"),
  "mobilenetv2_cifar": (MobileNetV2, {"cifar_stem": True}, "num_classes"),
  "mlp": (MLP, {}, "out_features"),
  "transformer_lm": (TransformerLM, {}, "vocab_size"),
}
# The models that also exist in Flax NNX, parameters named as their linen twin's.
_NNX_REGISTRY: dict[str, Callable[..., Any]] = {"transformer_lm": TransformerLMNNX}
#: Every name :func:`get_model` accepts.
MODEL_NAMES = tuple(_REGISTRY)
#: Every name :func:`get_nnx_model` accepts.
NNX_MODEL_NAMES = tuple(_NNX_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a model by name.

  Args:
    name: One of :data:`MODEL_NAMES`: ``mnist_cnn`` (SP paper), ``insgd_cnn``
      / ``insgd_cnn_bn`` (INSGD Table 2 without / with BatchNorm),
      ``resnet20`` / ``resnet20_nobn`` (INSGD Tables 1 and 7),
      ``resnet18``, ``resnet18_cifar``, ``resnet50``, ``resnet50_cifar``,
      ``mobilenetv2``, ``mobilenetv2_cifar``, ``mlp`` (64-32 by default) and
      ``transformer_lm`` (a byte-level decoder-only transformer; ``num_classes`` is
      its vocabulary).
    num_classes: Output width: classes, or 1 for scalar regression (the MLP's
      ``out_features``).
    **kwargs: Further fields of the model (``dtype``, ``dropout_rate``,
      ``features``, ``shortcut``...), overriding the variant's own.

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: For an unknown name (the message lists the known ones) or an
      invalid field value.

  Examples:
    >>> model = get_model('mlp', 1, features=(100, 50))
    >>> model.features, model.out_features
    ((100, 50), 1)
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
  constructor, fixed, width = _REGISTRY[name]
  return constructor(**{**fixed, width: num_classes, **kwargs})


def get_nnx_model(
  name: str, num_classes: int, seed: int = 0, *, params: Any = None, **kwargs
) -> Any:
  """Builds the Flax NNX version of a model by name, holding its linen twin's weights.

  Its parameters are named as the linen model's (:func:`get_model`), and it starts
  from the linen initialisation: ``params``, or by default the parameters
  ``get_model(name, num_classes, **kwargs).init(jax.random.key(seed), x)`` gives
  (they depend on ``x``'s shape only, here a full-length window). The same seed thus
  gives the same model in both APIs, and the same training run where the model
  draws no random numbers while training.

  Args:
    name: One of :data:`NNX_MODEL_NAMES`.
    num_classes: Output width (the vocabulary, for ``transformer_lm``).
    seed: Seed of the linen initialisation when ``params`` is not given.
    params: The linen model's ``variables['params']`` to start from, or a function
      of the linen model (:func:`get_model`'s) that returns them.
    **kwargs: Further fields of the model, as :func:`get_model` takes them.

  Raises:
    ValueError: For a name with no NNX version (the message lists those that have
      one), or ``params`` that do not fit the model.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> cfg = dict(width=16, depth=1, heads=2, context=8)
    >>> x = jnp.zeros((1, 8), jnp.int32)
    >>> linen = get_model('transformer_lm', 256, **cfg)
    >>> want = linen.apply(linen.init(jax.random.key(3), x), x)
    >>> bool(jnp.allclose(get_nnx_model('transformer_lm', 256, seed=3, **cfg)(x), want, atol=1e-5))
    True
  """
  import jax
  from flax import nnx

  if name not in _NNX_REGISTRY:
    raise ValueError(
      f"model {name!r} has no Flax NNX version; with NNX: {', '.join(NNX_MODEL_NAMES)}"
    )
  width = _REGISTRY[name][2]
  model = _NNX_REGISTRY[name](**{width: num_classes, **kwargs}, rngs=nnx.Rngs(seed))
  linen = get_model(name, num_classes, **kwargs)
  if params is None:
    params = linen.init(jax.random.key(seed), _sample_input(model), train=False)["params"]
  elif callable(params):
    params = params(linen)
  return load_linen_params(model, params)


def _sample_input(model: Any):
  """An input of the shape the NNX model ``model`` is built for (one full window)."""
  import jax.numpy as jnp

  return jnp.zeros((1, model.context), jnp.int32)


__all__ = [
  "BasicBlock",
  "BottleneckBlock",
  "InsgdCNN",
  "InvertedResidual",
  "MLP",
  "MODEL_NAMES",
  "MnistCNN",
  "NNX_MODEL_NAMES",
  "MobileNetV2",
  "NnxMnistCNN",
  "ResNet",
  "ResNet1",
  "ResNet18",
  "ResNet20",
  "ResNet50",
  "TransformerLM",
  "TransformerLMNNX",
  "get_model",
  "get_nnx_model",
  "linen_params",
  "load_linen_params",
]
