"""Model shapes, parameter counts (papers' and reference implementations'), BN and dropout."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_models
from flax_models import get_model


def _init(model, shape):
  return model.init(
    {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros(shape), train=False
  )


def _count(model, shape):
  variables = jax.eval_shape(lambda: _init(model, shape))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
  "name,classes,shape,expected",
  [
    ("mnist_cnn", 10, (1, 28, 28, 1), 1_199_882),  # PyTorch's MNIST example network
    ("resnet18", 1000, (1, 224, 224, 3), 11_689_512),  # torchvision resnet18
    ("resnet50", 1000, (1, 224, 224, 3), 25_557_032),  # torchvision resnet50
    ("mobilenetv2", 1000, (1, 224, 224, 3), 3_504_872),  # torchvision mobilenet_v2
    ("resnet20", 10, (1, 32, 32, 3), 272_474),  # ~0.27M (He et al. 2016, Table 6)
    # INSGD Table 2: conv 3-8-16-32-64 (3x3, with bias) and a 1024->10 linear layer.
    (
      "insgd_cnn",
      10,
      (1, 32, 32, 3),
      (27 * 8 + 8) + (72 * 16 + 16) + (144 * 32 + 32) + (288 * 64 + 64) + 1024 * 10 + 10,
    ),
    ("mlp", 1, (1, 10), 10 * 64 + 64 + 64 * 32 + 32 + 32 + 1),  # GAL Table V's 64-32 MLP
  ],
)
def test_parameter_counts(name, classes, shape, expected):
  assert _count(get_model(name, classes), shape) == expected


@pytest.mark.parametrize(
  "name,shape",
  [
    ("mnist_cnn", (2, 8, 8, 1)),
    ("mnist_cnn", (2, 28, 28, 1)),
    ("insgd_cnn", (2, 32, 32, 3)),
    ("insgd_cnn_bn", (2, 32, 32, 3)),
    ("mlp", (2, 8, 8, 1)),
  ],
)
def test_small_models_run(name, shape):
  model = get_model(name, 10)
  variables = _init(model, shape)
  out = model.apply(variables, jnp.ones(shape), train=False)
  chex.assert_shape(out, (shape[0], 10))
  chex.assert_tree_all_finite(out)


@pytest.mark.parametrize(
  "name,shape",
  [
    ("resnet20", (2, 32, 32, 3)),
    ("resnet18_cifar", (2, 32, 32, 3)),
    ("resnet50", (2, 64, 64, 3)),
    ("mobilenetv2", (2, 64, 64, 3)),
    ("mobilenetv2_cifar", (2, 32, 32, 3)),
  ],
)
def test_large_models_output_shapes(name, shape):
  model = get_model(name, 10)
  out = jax.eval_shape(lambda: model.apply(_init(model, shape), jnp.ones(shape), train=False))
  assert out.shape == (shape[0], 10)


def test_tiny_resnet_trains_batch_stats():
  model = flax_models.ResNet1(num_classes=3)
  variables = _init(model, (4, 8, 8, 3))
  assert "batch_stats" in variables
  x = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
  _, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(mutated["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_bn_switch_and_dropout():
  assert "batch_stats" not in _init(get_model("insgd_cnn", 10), (1, 32, 32, 3))
  assert "batch_stats" in _init(get_model("insgd_cnn_bn", 10), (1, 32, 32, 3))
  model = get_model("insgd_cnn", 10)
  variables = _init(model, (2, 32, 32, 3))
  x = jnp.ones((2, 32, 32, 3))
  eval1 = model.apply(variables, x, train=False)
  eval2 = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval1, eval2)
  t1 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  t2 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(t1, t2)


def test_registry():
  assert set(flax_models.MODEL_NAMES) >= {
    "mnist_cnn",
    "insgd_cnn",
    "insgd_cnn_bn",
    "resnet20",
    "resnet18",
    "resnet50",
    "mobilenetv2",
    "mlp",
  }
  with pytest.raises(ValueError, match="unknown model 'vgg'.*mnist_cnn"):
    get_model("vgg", 10)
