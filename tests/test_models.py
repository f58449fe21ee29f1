"""flax_models: parameter counts, layer shapes, BatchNorm and dropout behaviour, registry.

Expected parameter counts are written out from the layer shapes (or are the
published counts of the reference implementations); they are compared with
counts taken from ``jax.eval_shape(model.init, ...)``, which allocates nothing.
Only the small models are actually run, under ``jax.jit``.
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


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
  """Unoptimised XLA compiles these small networks several times faster."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def _abstract(model, shape, dtype=jnp.float32, train=False):
  """(output, variables) as shapes and dtypes, from one trace and no allocation."""
  x = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(lambda x: model.init_with_output(KEYS, x, train=train), x)


def _abstract_variables(model, shape):
  return _abstract(model, shape)[1]


def _count(variables):
  return sum(p.size for p in jax.tree.leaves(variables["params"]))


def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _dense(cin, cout, bias=True):
  return cin * cout + (cout if bias else 0)


def _resnet20(shortcut="projection", bn=True, classes=10):
  """ResNet-20 written out layer by layer (He et al. Sec. 4.2; INSGD Table 1)."""
  bias = not bn
  n = _conv(3, 3, 16, bias) + (2 * 16 if bn else 0)  # stem + BN
  cin = 16
  for width in (16, 32, 64):
    for _ in range(3):
      n += _conv(3, cin, width, bias) + _conv(3, width, width, bias) + (4 * width if bn else 0)
      if cin != width and shortcut == "projection":
        n += _conv(1, cin, width, bias) + (2 * width if bn else 0)
      cin = width
  return n + _dense(64, classes)


_MNIST_CNN_28 = _conv(3, 1, 32) + _conv(3, 32, 64) + _dense(12 * 12 * 64, 128) + _dense(128, 10)
_MNIST_CNN_8 = _conv(3, 1, 32) + _conv(3, 32, 64) + _dense(2 * 2 * 64, 128) + _dense(128, 10)
_INSGD_CNN = (
  _conv(3, 3, 8) + _conv(3, 8, 16) + _conv(3, 16, 32) + _conv(3, 32, 64) + _dense(1024, 10)
)


@pytest.mark.parametrize(
  "name,classes,shape,kwargs,expected",
  [
    # SP paper's CNN = PyTorch's MNIST example network (1,199,882 there too).
    ("mnist_cnn", 10, (1, 28, 28, 1), {}, _MNIST_CNN_28),
    ("mnist_cnn", 10, (1, 8, 8, 1), {}, _MNIST_CNN_8),
    # INSGD Table 2: conv 3-8-16-32-64, flatten 1,024, linear 10; BN adds scale+bias.
    ("insgd_cnn", 10, (1, 32, 32, 3), {}, _INSGD_CNN),
    ("insgd_cnn_bn", 10, (1, 32, 32, 3), {}, _INSGD_CNN + 2 * (8 + 16 + 32 + 64)),
    ("insgd_cnn", 10, (1, 28, 28, 3), {}, _INSGD_CNN),  # 28 -> 14 -> 7 -> 4: 1,024 too
    ("resnet20", 10, (1, 32, 32, 3), {}, _resnet20()),
    ("resnet20", 10, (1, 32, 32, 3), {"shortcut": "zero_pad"}, _resnet20("zero_pad")),
    ("resnet20_nobn", 10, (1, 32, 32, 3), {}, _resnet20(bn=False)),
    # torchvision's published counts (resnet18, resnet50, mobilenet_v2).
    ("resnet18", 1000, (1, 224, 224, 3), {}, 11_689_512),
    ("resnet50", 1000, (1, 224, 224, 3), {}, 25_557_032),
    ("mobilenetv2", 1000, (1, 224, 224, 3), {}, 3_504_872),
    # The CIFAR variants with 10 classes (derived in the test below).
    ("resnet18_cifar", 10, (1, 32, 32, 3), {}, 11_173_962),
    ("resnet50_cifar", 10, (1, 32, 32, 3), {}, 23_520_842),
    ("mobilenetv2_cifar", 10, (1, 32, 32, 3), {}, 2_236_682),
    # GAL's diabetes regression network (64-32): 10 features -> 64 -> 32 -> 1.
    ("mlp", 1, (1, 10), {}, _dense(10, 64) + _dense(64, 32) + _dense(32, 1)),
  ],
)  # fmt: skip
def test_parameter_counts(name, classes, shape, kwargs, expected):
  out, variables = _abstract(get_model(name, classes, **kwargs), shape)
  assert _count(variables) == expected
  chex.assert_shape(out, (1, classes))


def test_well_known_counts_written_out():
  # The counts above that come from the literature, against the layer arithmetic.
  assert _resnet20() == 272_474  # option B, as the INSGD authors' ResNet20_Flat
  assert _resnet20("zero_pad") == 269_722  # option A: the "0.27M" of He et al.
  assert _MNIST_CNN_28 == 1_199_882  # PyTorch's MNIST example
  # CIFAR stems: 3x3 instead of 7x7 stem convolution; 10 classes instead of 1,000.
  stem = _conv(3, 3, 64, False) - _conv(7, 3, 64, False)
  assert 11_689_512 + stem - _dense(512, 1000) + _dense(512, 10) == 11_173_962
  assert 25_557_032 + stem - _dense(2048, 1000) + _dense(2048, 10) == 23_520_842
  assert 3_504_872 - _dense(1280, 1000) + _dense(1280, 10) == 2_236_682  # strides only


@pytest.mark.parametrize(
  "arch,d_in,d_out,stated_k",
  [
    # GAL paper (Table II and Sec. VI-D): adjustment modules on 100-d features.
    ((256,), 100, 100, 51.2),
    ((256, 64), 100, 100, 48.3),
    ((256, 64, 32), 100, 100, 47.2),
    ((256, 64, 32, 16), 100, 100, 46.1),
  ],
)
def test_gal_adjustment_module_counts(arch, d_in, d_out, stated_k):
  model = flax_models.MLP(features=arch, out_features=d_out, use_bias=False)
  n = _count(_abstract_variables(model, (1, d_in)))
  widths = (d_in, *arch, d_out)
  assert n == sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  assert int(n / 100) / 10 == stated_k  # the paper truncates to one decimal of K


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
