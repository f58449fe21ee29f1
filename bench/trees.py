"""Parameter trees shaped like the networks the benchmarks name.

The shapes are those of the real models' kernels, biases and normalisation
scales, built without initialising any model, so an optimizer update can be
timed on a tree of a realistic size and leaf count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _bn(c):
  return [(c,), (c,)]


def resnet_shapes(depth: int) -> list[tuple[int, ...]]:
  """Leaf shapes of an ImageNet ResNet-18/34/50/101 (HWIO kernels, BN pairs)."""
  bottleneck = depth >= 50
  blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
  shapes: list[tuple[int, ...]] = [(7, 7, 3, 64), *_bn(64)]
  cin = 64
  for stage, n in enumerate(blocks):
    width = 64 * 2**stage
    cout = width * 4 if bottleneck else width
    for b in range(n):
      if bottleneck:
        shapes += [(1, 1, cin, width), *_bn(width), (3, 3, width, width), *_bn(width)]
        shapes += [(1, 1, width, cout), *_bn(cout)]
      else:
        shapes += [(3, 3, cin, width), *_bn(width), (3, 3, width, width), *_bn(width)]
      if b == 0 and cin != cout:
        shapes += [(1, 1, cin, cout), *_bn(cout)]
      cin = cout
  shapes += [(cin, 1000), (1000,)]
  return shapes


def resnet20_shapes() -> list[tuple[int, ...]]:
  """Leaf shapes of the CIFAR ResNet-20 (3 stages of 3 basic blocks, 16-32-64)."""
  shapes: list[tuple[int, ...]] = [(3, 3, 3, 16), *_bn(16)]
  cin = 16
  for width in (16, 32, 64):
    for b in range(3):
      shapes += [(3, 3, cin, width), *_bn(width), (3, 3, width, width), *_bn(width)]
      if b == 0 and cin != width:
        shapes += [(1, 1, cin, width), *_bn(width)]
      cin = width
  shapes += [(64, 10), (10,)]
  return shapes


def mnist_cnn_shapes() -> list[tuple[int, ...]]:
  """Leaf shapes of the SP paper's MNIST CNN (2 conv + 2 dense)."""
  return [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (9216, 128), (128,), (128, 10), (10,)]


SHAPES = {
  "mnist_cnn": mnist_cnn_shapes,
  "resnet20": resnet20_shapes,
  "resnet18": lambda: resnet_shapes(18),
  "resnet50": lambda: resnet_shapes(50),
}


def make_tree(shapes, seed: int = 0, dtype=jnp.float32) -> dict[str, jax.Array]:
  """A dict of random arrays with the given shapes, keys ordered like the model."""
  key = jax.random.key(seed)
  keys = jax.random.split(key, len(shapes))
  return {
    f"p{i:03d}": (jax.random.normal(k, s, dtype) * 0.05).astype(dtype)
    for i, (k, s) in enumerate(zip(keys, shapes))
  }


def named_tree(name: str, seed: int = 0) -> dict[str, jax.Array]:
  return make_tree(SHAPES[name](), seed)


def scaled_tree(n_params: int, n_leaves: int = 160, seed: int = 0) -> dict[str, jax.Array]:
  """A tree of ``n_leaves`` leaves holding about ``n_params`` values, ResNet-like mix."""
  base = resnet_shapes(50)[:n_leaves]
  sizes = np.array([int(np.prod(s)) for s in base], dtype=np.float64)
  scale = n_params / sizes.sum()
  shapes = []
  for base_shape, sz in zip(base, sizes):
    n = max(1, int(round(sz * scale)))
    # Kernels stay 2-D (so methods that treat matrices differently, e.g. SP's
    # pruning mask, see them as kernels); vectors stay 1-D.
    shapes.append((max(1, n // 64), 64) if len(base_shape) >= 2 else (n,))
  return make_tree(shapes, seed)


def count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
