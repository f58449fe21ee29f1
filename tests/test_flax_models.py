"""flax_models: parameter counts, layer shapes, BatchNorm and dropout behaviour, registry.

Expected parameters are written out layer by layer from the architectures the
papers define (He et al. Table 1 and Sec. 4.2, Sandler et al. Table 2, the SP
and INSGD papers' layer lists), as the size of every parameter array, and
compared exactly with the arrays of ``jax.eval_shape(model.init, ...)``, which
allocates nothing. Only the small models are actually run, under ``jax.jit``.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_models
from flax_models import get_model

KEYS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


pytestmark = pytest.mark.usefixtures("fast_compile")


def _abstract(model, shape, dtype=jnp.float32, train=False):
  """(output, variables) as shapes and dtypes, from one trace and no allocation."""
  x = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(lambda x: model.init_with_output(KEYS, x, train=train), x)


def _abstract_variables(model, shape):
  return _abstract(model, shape)[1]


def _sizes(variables):
  """The sizes of the model's parameter arrays, sorted (a multiset)."""
  return sorted(p.size for p in jax.tree.leaves(variables["params"]))


# Each helper lists the sizes of the parameter arrays one layer holds.
def _conv(k, cin, cout, bias=True):
  return [k * k * cin * cout] + ([cout] if bias else [])


def _depthwise(k, channels):  # one k x k filter per channel, no bias
  return [k * k * channels]


def _dense(cin, cout, bias=True):
  return [cin * cout] + ([cout] if bias else [])


def _bn(channels):  # scale and bias; the running statistics are not parameters
  return [channels, channels]


def _resnet20(shortcut="projection", bn=True, classes=10):
  """ResNet-20 (He et al. Sec. 4.2; INSGD Table 1): 3x3 stem, 3 stages of 3 basic blocks."""
  norm = _bn if bn else (lambda c: [])
  n = _conv(3, 3, 16, not bn) + norm(16)
  cin = 16
  for width in (16, 32, 64):
    for _ in range(3):
      n += _conv(3, cin, width, not bn) + norm(width) + _conv(3, width, width, not bn) + norm(width)
      if cin != width and shortcut == "projection":  # option B; option A has no parameters
        n += _conv(1, cin, width, not bn) + norm(width)
      cin = width
  return n + _dense(64, classes)


def _resnet(blocks, bottleneck, classes, cifar_stem=False):
  """He et al. Table 1 in torchvision's layout: bias-free convolutions each followed by
  BatchNorm; a 1x1 projection shortcut (+ BatchNorm) wherever the shape changes; stages of
  widths 64, 128, 256, 512 (x4 at a bottleneck's output); the 7x7 stem (3x3 for CIFAR)."""
  n = _conv(3 if cifar_stem else 7, 3, 64, False) + _bn(64)
  cin = 64
  for stage, count in enumerate(blocks):
    width = 64 * 2**stage
    out = 4 * width if bottleneck else width
    for b in range(count):
      if bottleneck:  # 1x1 reduce, 3x3, 1x1 expand
        n += _conv(1, cin, width, False) + _bn(width) + _conv(3, width, width, False) + _bn(width)
        n += _conv(1, width, out, False) + _bn(out)
      else:  # two 3x3
        n += _conv(3, cin, width, False) + _bn(width) + _conv(3, width, width, False) + _bn(width)
      if cin != out or (stage > 0 and b == 0):
        n += _conv(1, cin, out, False) + _bn(out)
      cin = out
  return n + _dense(cin, classes)


# Sandler et al. Table 2: (expansion t, output channels c, repeats n).
_MOBILENETV2_TABLE = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3),
                      (6, 320, 1))  # fmt: skip


def _mobilenetv2(classes):
  """Sandler et al. Table 2 at width 1: conv3x3(32), inverted residual blocks (1x1 expand
  when t > 1, 3x3 depthwise, 1x1 linear projection, BatchNorm after each, no biases),
  conv1x1(1280), dense. Strides do not change the parameters."""
  n = _conv(3, 3, 32, False) + _bn(32)
  cin = 32
  for t, c, repeats in _MOBILENETV2_TABLE:
    for _ in range(repeats):
      hidden = t * cin
      if t != 1:
        n += _conv(1, cin, hidden, False) + _bn(hidden)
      n += _depthwise(3, hidden) + _bn(hidden) + _conv(1, hidden, c, False) + _bn(c)
      cin = c
  return n + _conv(1, cin, 1280, False) + _bn(1280) + _dense(1280, classes)


# SP paper's CNN (PyTorch's MNIST example network): conv3x3(32), conv3x3(64), both VALID,
# 2x2 max-pool, dense 128, dense classes; the flattened size follows the input.
_MNIST_CNN_28 = _conv(3, 1, 32) + _conv(3, 32, 64) + _dense(12 * 12 * 64, 128) + _dense(128, 10)
_MNIST_CNN_8 = _conv(3, 1, 32) + _conv(3, 32, 64) + _dense(2 * 2 * 64, 128) + _dense(128, 10)
# INSGD Table 2: 3x3 convolutions 3-8-16-32-64 (the last three stride 2), flatten 1,024,
# linear 10.
_INSGD_CNN = (
  _conv(3, 3, 8) + _conv(3, 8, 16) + _conv(3, 16, 32) + _conv(3, 32, 64) + _dense(1024, 10)
)


@pytest.mark.parametrize(
  "name,classes,shape,kwargs,expected",
  [
    ("mnist_cnn", 10, (1, 28, 28, 1), {}, _MNIST_CNN_28),
    ("mnist_cnn", 10, (1, 8, 8, 1), {}, _MNIST_CNN_8),
    ("insgd_cnn", 10, (1, 32, 32, 3), {}, _INSGD_CNN),
    ("insgd_cnn_bn", 10, (1, 32, 32, 3), {}, _INSGD_CNN + _bn(8) + _bn(16) + _bn(32) + _bn(64)),
    ("insgd_cnn", 10, (1, 28, 28, 3), {}, _INSGD_CNN),  # 28 -> 14 -> 7 -> 4: 1,024 too
    ("resnet20", 10, (1, 32, 32, 3), {}, _resnet20()),
    ("resnet20", 10, (1, 32, 32, 3), {"shortcut": "zero_pad"}, _resnet20("zero_pad")),
    ("resnet20_nobn", 10, (1, 32, 32, 3), {}, _resnet20(bn=False)),
    ("resnet18", 1000, (1, 224, 224, 3), {}, _resnet((2, 2, 2, 2), False, 1000)),
    ("resnet50", 1000, (1, 224, 224, 3), {}, _resnet((3, 4, 6, 3), True, 1000)),
    ("mobilenetv2", 1000, (1, 224, 224, 3), {}, _mobilenetv2(1000)),
    ("resnet18_cifar", 10, (1, 32, 32, 3), {}, _resnet((2, 2, 2, 2), False, 10, True)),
    ("resnet50_cifar", 10, (1, 32, 32, 3), {}, _resnet((3, 4, 6, 3), True, 10, True)),
    ("mobilenetv2_cifar", 10, (1, 32, 32, 3), {}, _mobilenetv2(10)),
    # GAL's diabetes regression network (64-32): 10 features -> 64 -> 32 -> 1.
    ("mlp", 1, (1, 10), {}, _dense(10, 64) + _dense(64, 32) + _dense(32, 1)),
  ],
)  # fmt: skip
def test_parameter_counts(name, classes, shape, kwargs, expected):
  out, variables = _abstract(get_model(name, classes, **kwargs), shape)
  assert _sizes(variables) == sorted(expected)
  chex.assert_shape(out, (1, classes))


@pytest.mark.parametrize("arch", [(256,), (256, 64), (256, 64, 32), (256, 64, 32, 16)])
def test_gal_adjustment_module_counts(arch):
  # GAL paper (Table II and Sec. VI-D): bias-free adjustment modules on 100-d features.
  model = flax_models.MLP(features=arch, out_features=100, use_bias=False)
  widths = (100, *arch, 100)
  expected = [a * b for a, b in zip(widths[:-1], widths[1:])]
  assert _sizes(_abstract_variables(model, (1, 100))) == sorted(expected)


def _intermediate_shapes(model, shape, filter_fn):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)

  def run(x):
    _, state = model.init_with_output(
      KEYS,
      x,
      train=False,
      capture_intermediates=lambda mdl, method: method == "__call__" and filter_fn(mdl),
      mutable=True,
    )
    return state["intermediates"]

  flat = jax.tree_util.tree_flatten_with_path(jax.eval_shape(run, x))[0]

  def creation_order(path):  # 'Conv_10' after 'Conv_9', as the modules were built
    names = [str(getattr(k, "key", k)) for k in path]
    return [(n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1])) if n[-1].isdigit() else (n, 0)
            for n in names]  # fmt: skip

  return [leaf.shape for path, leaf in sorted(flat, key=lambda kv: creation_order(kv[0]))]


def test_insgd_cnn_layer_shapes_match_table_2():
  is_conv = lambda mdl: isinstance(mdl, nn.Conv)
  shapes = _intermediate_shapes(get_model("insgd_cnn", 10), (2, 32, 32, 3), is_conv)
  assert shapes == [(2, 32, 32, 8), (2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64)]


def test_resnet20_block_shapes_match_table_1():
  is_block = lambda mdl: isinstance(mdl, flax_models.BasicBlock)
  shapes = _intermediate_shapes(get_model("resnet20", 10), (2, 32, 32, 3), is_block)
  assert shapes == [(2, 32, 32, 16)] * 3 + [(2, 16, 16, 32)] * 3 + [(2, 8, 8, 64)] * 3


@pytest.mark.parametrize(
  "name,shape,final",
  [
    ("mobilenetv2", (1, 224, 224, 3), (7, 7, 1280)),
    ("mobilenetv2_cifar", (1, 32, 32, 3), (4, 4, 1280)),
    ("resnet18", (1, 224, 224, 3), (7, 7, 512)),
    ("resnet18_cifar", (1, 32, 32, 3), (4, 4, 512)),
    ("resnet50_cifar", (1, 32, 32, 3), (4, 4, 2048)),
  ],
)
def test_final_feature_map(name, shape, final):
  # The feature map entering global pooling: the last block's (ResNet) or the
  # last convolution's (MobileNetV2) output.
  blocks = (flax_models.BasicBlock, flax_models.BottleneckBlock)
  last = lambda mdl: isinstance(mdl, blocks) or (isinstance(mdl, nn.Conv) and mdl.features == 1280)
  assert _intermediate_shapes(get_model(name, 10), shape, last)[-1] == (1, *final)


@pytest.mark.parametrize(
  "name,shape",
  [
    ("mnist_cnn", (3, 28, 28, 1)),
    ("mnist_cnn", (3, 8, 8, 1)),
    ("insgd_cnn", (3, 8, 8, 1)),
    ("insgd_cnn_bn", (3, 28, 28, 1)),
    ("resnet20", (3, 32, 32, 3)),
    ("resnet20_nobn", (3, 8, 8, 1)),
    ("resnet18", (3, 64, 64, 3)),
    ("resnet18_cifar", (3, 32, 32, 3)),
    ("resnet50", (3, 64, 64, 3)),
    ("resnet50_cifar", (3, 32, 32, 3)),
    ("mobilenetv2", (3, 64, 64, 3)),
    ("mobilenetv2_cifar", (3, 32, 32, 3)),
    ("mlp", (3, 10)),
    ("mlp", (3, 8, 8, 1)),
  ],
)
def test_output_shapes_in_training(name, shape):
  # Evaluation-mode outputs are checked with the parameter counts.
  out, variables = _abstract(get_model(name, 7), shape, train=True)
  chex.assert_shape(out, (shape[0], 7))


@pytest.mark.parametrize(
  "name,shape",
  [("mnist_cnn", (3, 8, 8, 1)), ("insgd_cnn_bn", (3, 8, 8, 1)), ("resnet20", (3, 8, 8, 3)),
   ("mobilenetv2_cifar", (3, 8, 8, 3)), ("mlp", (3, 10))],
)  # fmt: skip
def test_computation_dtype(name, shape):
  out, variables = _abstract(get_model(name, 7, dtype=jnp.bfloat16), shape, jnp.bfloat16)
  chex.assert_shape(out, (shape[0], 7))
  assert out.dtype == jnp.bfloat16
  # Parameters stay float32 whatever the computation dtype.
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}


def _np_conv(x, kernel, bias, stride, pad):
  """Direct NHWC/HWIO cross-correlation, one output position at a time."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = kernel.shape[0]
  rows = (x.shape[1] - k) // stride + 1
  cols = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], rows, cols, kernel.shape[-1]))
  for i in range(rows):
    for j in range(cols):
      patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
      out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel)
  return out + bias


@functools.partial(jax.jit, static_argnums=0)
def _init_eval(model, x):
  """Initial variables and the evaluation-mode output, in one compiled call."""
  out, variables = model.init_with_output(KEYS, x, train=False)
  return out, variables


def test_small_models_match_numpy_forward_pass():
  # Evaluation-mode forward passes written out from the papers' layer lists.
  relu = lambda a: np.maximum(a, 0)
  x = jax.random.normal(jax.random.key(6), (2, 8, 8, 1))
  xn = np.asarray(x, np.float64)
  as_np = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)

  out, variables = _init_eval(get_model("mnist_cnn", 10), x)
  p = as_np(variables["params"])
  h = relu(_np_conv(xn, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], 1, 0))
  h = relu(_np_conv(h, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], 1, 0))  # (2, 4, 4, 64)
  h = h.reshape(2, 2, 2, 2, 2, 64).max(axis=(2, 4))  # 2x2 max-pool
  h = relu(h.reshape(2, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  expected = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)

  out, variables = _init_eval(get_model("insgd_cnn", 10), x)
  p = as_np(variables["params"])
  h = xn
  for i, stride in enumerate((1, 2, 2, 2)):  # 8x8 -> 8 -> 4 -> 2 -> 1
    h = relu(_np_conv(h, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"], stride, 1))
  expected = h.reshape(2, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)

  out, variables = _init_eval(get_model("mlp", 3, features=(5, 4)), x)  # flattens 8x8x1
  p = as_np(variables["params"])
  h = relu(xn.reshape(2, 64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  h = relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
  expected = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_batchnorm_switch_and_collections():
  assert "batch_stats" not in _abstract_variables(get_model("insgd_cnn", 10), (1, 8, 8, 1))
  assert "batch_stats" in _abstract_variables(get_model("insgd_cnn_bn", 10), (1, 8, 8, 1))
  assert "batch_stats" in _abstract_variables(get_model("resnet20", 10), (1, 8, 8, 3))
  assert "batch_stats" not in _abstract_variables(get_model("resnet20_nobn", 10), (1, 8, 8, 3))


def test_batchnorm_train_updates_stats_and_eval_uses_them():
  model = flax_models.ResNet1(num_classes=3)
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(2), (4, 6, 6, 3))

  @jax.jit
  def run(x):
    variables = model.init(KEYS, x, train=False)
    train_out, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    trained = {**variables, "batch_stats": new["batch_stats"]}
    outs = {
      "eval_all": model.apply(trained, x, train=False),
      "eval_first": model.apply(trained, x[:1], train=False),
      "train_all": model.apply(trained, x, train=True, mutable=["batch_stats"])[0],
      "train_pair": model.apply(trained, x[:2], train=True, mutable=["batch_stats"])[0],
    }
    return variables, new["batch_stats"], outs

  variables, stats, outs = run(x)
  # Training: statistics move toward the batch's (momentum 0.9: 10% of the way).
  conv = jax.lax.conv_general_dilated(
    x, variables["params"]["Conv_0"]["kernel"], (1, 1), ((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )  # fmt: skip
  expected = 0.1 * np.mean(np.asarray(conv, np.float64), axis=(0, 1, 2))
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], expected, rtol=1e-4, atol=1e-6)
  assert "var" in stats["BatchNorm_0"] and "BasicBlock_0" in stats
  # Evaluation: running statistics, so each example's logits ignore the rest of the batch...
  np.testing.assert_allclose(outs["eval_all"][:1], outs["eval_first"], rtol=1e-5, atol=1e-6)
  # ...whereas in training mode they depend on the batch.
  assert not np.allclose(outs["train_all"][:1], outs["train_pair"][:1], atol=1e-4)


def test_dropout_only_in_training():
  x = jax.random.normal(jax.random.key(4), (4, 8, 8, 1))
  model = get_model("mnist_cnn", 10)
  no_drop = get_model("mnist_cnn", 10, conv_dropout=0.0, dense_dropout=0.0)

  @jax.jit
  def run(x, k1, k2):
    variables = model.init(KEYS, x, train=False)
    return {
      "eval_k1": model.apply(variables, x, train=False, rngs={"dropout": k1}),
      "eval_k2": model.apply(variables, x, train=False, rngs={"dropout": k2}),
      "eval_no_key": model.apply(variables, x),  # no dropout key needed in evaluation
      "train_k1": model.apply(variables, x, train=True, rngs={"dropout": k1}),
      "train_k1_again": model.apply(variables, x, train=True, rngs={"dropout": k1}),
      "train_k2": model.apply(variables, x, train=True, rngs={"dropout": k2}),
      "train_no_dropout": no_drop.apply(variables, x, train=True, rngs={"dropout": k1}),
    }

  o = run(x, jax.random.key(10), jax.random.key(11))
  np.testing.assert_array_equal(o["eval_k1"], o["eval_k2"])
  np.testing.assert_array_equal(o["eval_k1"], o["eval_no_key"])
  np.testing.assert_array_equal(o["train_k1"], o["train_k1_again"])
  assert not np.allclose(o["train_k1"], o["train_k2"])
  assert not np.allclose(o["train_k1"], o["eval_k1"])
  # With both rates 0 and no BatchNorm, training and evaluation coincide.
  np.testing.assert_allclose(o["train_no_dropout"], o["eval_k1"], rtol=1e-6)


def test_zero_pad_shortcut_is_option_a():
  # With the residual branch zeroed, a downsampling block returns relu(shortcut(x)).
  block = flax_models.BasicBlock(filters=8, strides=2, use_bn=False, shortcut="zero_pad")
  x = jax.random.normal(jax.random.key(5), (2, 6, 6, 4))

  @jax.jit
  def run(x):
    variables = jax.tree.map(jnp.zeros_like, block.init(KEYS, x))
    return variables, block.apply(variables, x)

  variables, out = run(x)
  assert "Conv_2" not in variables["params"]  # no projection parameters
  expected = np.zeros((2, 3, 3, 8), np.float32)
  expected[..., 2:6] = np.maximum(np.asarray(x)[:, ::2, ::2, :], 0)
  np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize(
  "build,match",
  [
    (lambda: flax_models.MnistCNN(conv_dropout=1.0), "conv_dropout"),
    (lambda: flax_models.InsgdCNN(dropout_rate=-0.1), "dropout_rate"),
    (lambda: flax_models.InsgdCNN(num_classes=0), "num_classes"),
    (lambda: flax_models.ResNet20(num_classes=10, shortcut="option_c"), "shortcut"),
    (lambda: flax_models.MobileNetV2(width_multiplier=0.0), "width_multiplier"),
    (lambda: flax_models.MLP(features=(64, 0)), "features"),
    (lambda: get_model("mlp", 0), "out_features"),
  ],
)
def test_invalid_fields_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_registry():
  assert isinstance(flax_models.MODEL_NAMES, tuple)
  assert set(flax_models.MODEL_NAMES) >= {
    "mnist_cnn", "insgd_cnn", "insgd_cnn_bn", "resnet20", "resnet18", "resnet18_cifar",
    "resnet50", "resnet50_cifar", "mobilenetv2", "mlp",
  }  # fmt: skip
  for name in flax_models.MODEL_NAMES:
    assert isinstance(get_model(name, 3), nn.Module)
  assert isinstance(get_model("mnist_cnn", 10), flax_models.MnistCNN)
  assert get_model("insgd_cnn", 10).use_bn is False
  assert get_model("insgd_cnn_bn", 10).use_bn is True
  assert get_model("resnet18_cifar", 10).cifar_stem is True
  assert get_model("mlp", 1).out_features == 1
  assert get_model("mlp", 4, features=(100, 50)).features == (100, 50)
  assert get_model("insgd_cnn", 5, dropout_rate=0.0).num_classes == 5
  assert get_model("resnet20", 10, shortcut="zero_pad").shortcut == "zero_pad"
  with pytest.raises(ValueError, match="unknown model 'vgg'.*mnist_cnn.*mlp"):
    get_model("vgg", 10)
