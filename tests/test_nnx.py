"""Flax NNX: INSGD and GAL give linen's numbers for the same network and weights.

A small transformer-like network (convolution, LayerNorm, self-attention,
Einsum, a two-axis DenseGeneral, dense head) is built in both APIs, linen's
weights are loaded into the NNX one, and every quantity is compared: outputs,
captured input powers, INSGD and GAL parameters after two steps (NNX through
``nnx.Optimizer``), GAL's diagnostics. Also: the NNX MNIST CNN equals linen's.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

import optax_ext
from flax_models import MnistCNN, NnxMnistCNN, load_linen_params
from train import data as data_lib
from train import registry
from train.loop import init_state, train_run

pytestmark = pytest.mark.usefixtures("fast_compile")


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), padding="VALID", name="conv")(x))  # (b, 4, 4, 4)
    h = nn.LayerNorm(name="norm")(h.reshape(h.shape[0], 16, 4))
    h = h + nn.MultiHeadDotProductAttention(2, qkv_features=4, out_features=4, name="attention")(h)
    h = nn.relu(nn.Einsum((4, 6), "btd,dh->bth", name="mix")(h))
    h = nn.DenseGeneral((2, 3), axis=(-2, -1), name="pool")(h)
    return nn.Dense(3, name="head")(h.reshape(h.shape[0], 6))


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), padding="VALID", rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(2, 4, 4, 4, decode=False, rngs=rngs)
    self.mix = nnx.Einsum("btd,dh->bth", (4, 6), (6,), rngs=rngs)
    self.pool = nnx.LinearGeneral((16, 6), (2, 3), axis=(-2, -1), rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.conv(x))
    h = self.norm(h.reshape(h.shape[0], 16, 4))
    h = h + self.attention(h)
    h = nnx.relu(self.mix(h))
    h = self.pool(h)
    return self.head(h.reshape(h.shape[0], 6))


X = jax.random.normal(jax.random.key(1), (5, 6, 6, 2))
Y = jnp.array([0, 1, 2, 0, 1])


def xent(z):
  return optax.softmax_cross_entropy_with_integer_labels(z, Y).mean()


@pytest.fixture(scope="module")
def nets():
  linen = LinenNet()
  params = linen.init(jax.random.key(0), X)["params"]
  return linen, params


def _nnx_twin(params):
  return load_linen_params(NnxNet(nnx.Rngs(3)), params)


def _flat_linen(tree):
  return {k: v for k, v in traverse_util.flatten_dict(tree).items()}


def _flat_nnx(state):
  return {tuple(map(str, k)): v for k, v in nnx.to_flat_state(state)}


def _assert_same_trees(linen_tree, nnx_state, rtol=1e-5, atol=1e-7):
  a, b = _flat_linen(linen_tree), _flat_nnx(nnx_state)
  assert set(a) == set(b)
  for key in a:
    if a[key] is None or b[key] is None:
      assert a[key] is None and b[key] is None, key
    else:
      np.testing.assert_allclose(np.asarray(b[key]), a[key], rtol=rtol, atol=atol, err_msg=key)


def test_outputs_and_input_powers_are_equal(nets):
  linen, params = nets
  model = _nnx_twin(params)
  z, power = optax_ext.capture_input_power(linen.apply, {"params": params}, X)
  z_nnx, power_nnx = optax_ext.capture_input_power(model, X)
  np.testing.assert_allclose(z_nnx, z, rtol=1e-5, atol=1e-6)
  _assert_same_trees(power.powers, power_nnx.powers)
  flat = _flat_linen(power.powers)
  assert sum(v is not None for v in flat.values()) == 8  # conv, q, k, v, out, mix, pool, head
  assert flat[("attention", "out", "kernel")].shape == ()


def test_insgd_updates_are_equal(nets):
  linen, params = nets
  model = _nnx_twin(params)
  tx = optax_ext.insgd(learning_rate=0.1, momentum=0.9, weight_decay=1e-3)

  @jax.jit
  def linen_step(params, state):
    def loss_fn(p):
      z, power = optax_ext.capture_input_power(linen.apply, {"params": p}, X)
      return xent(z), power

    (_, power), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = tx.update(grads, state, params, input_power=power)
    return optax.apply_updates(params, updates), state

  @nnx.jit
  def nnx_step(model, optimizer):
    def loss_fn(model):
      z, power = optax_ext.capture_input_power(model, X)
      return xent(z), power

    (_, power), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, input_power=power)

  state = tx.init(params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  for _ in range(2):
    params, state = linen_step(params, state)
    nnx_step(model, optimizer)
  _assert_same_trees(params, nnx.state(model, nnx.Param))
  diag, diag_nnx = optax_ext.diagnostics(state), optax_ext.diagnostics(optimizer.opt_state)
  assert diag.keys() == diag_nnx.keys()
  for key in ("insgd/step_scale/conv/kernel", "insgd/step_scale/attention/out/kernel"):
    np.testing.assert_allclose(diag_nnx[key], diag[key], rtol=1e-5)


def test_gal_updates_are_equal_with_one_forward_and_one_backward_pass(nets):
  linen, params = nets
  model = _nnx_twin(params)
  tx = optax_ext.gal_chain(optax.sgd, 0.1, output_dim=3)

  @jax.jit
  def linen_step(params, state):
    extra = optax_ext.gal_extra_args(lambda p: linen.apply({"params": p}, X), params, xent)
    updates, state = tx.update(None, state, params, **extra)
    return optax.apply_updates(params, updates), state

  def nnx_step(model, optimizer):
    extra = optax_ext.gal_extra_args(lambda m: m(X), model, xent)
    optimizer.update(model, None, **extra)

  state = tx.init(params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  jaxpr = str(jax.make_jaxpr(lambda m, o: nnx.jit(nnx_step)(m, o))(model, optimizer))
  for _ in range(2):
    params, state = linen_step(params, state)
    nnx.jit(nnx_step)(model, optimizer)
  _assert_same_trees(params, nnx.state(model, nnx.Param))
  diag, diag_nnx = optax_ext.diagnostics(state), optax_ext.diagnostics(optimizer.opt_state)
  assert float(diag["gal/used_adjusted"]) == float(diag_nnx["gal/used_adjusted"])
  for key in ("gal/tentative_loss", "gal/remainder", "gal/cosine"):
    np.testing.assert_allclose(diag_nnx[key], diag[key], rtol=1e-4, atol=1e-7, err_msg=key)
  # One forward and one backward pass: as many convolutions as a plain gradient step.
  plain = jax.make_jaxpr(nnx.grad(lambda m: xent(m(X))))(model)
  assert jaxpr.count("conv_general_dilated") == str(plain).count("conv_general_dilated")


class NnxWithState(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(3, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(self.drop(self.bn(self.dense(x))))


def test_gal_arguments_update_the_nnx_state_as_a_plain_call():
  x = jax.random.normal(jax.random.key(0), (6, 3))
  model = NnxWithState(nnx.Rngs(0))
  twin = nnx.clone(model)
  loss = lambda z: jnp.mean(z**2)
  extra, aux = optax_ext.gal_extra_args(lambda m: (m(x), 7), model, loss, has_aux=True)
  z = twin(x)
  assert aux == 7
  np.testing.assert_allclose(extra["outputs"], z, rtol=1e-6)  # the same dropout draw
  # The statistics and the dropout stream moved as in the plain call.
  stats = nnx.Any(nnx.BatchStat, nnx.RngCount)
  _assert_same_trees(nnx.state(twin, stats).to_pure_dict(), nnx.state(model, stats))
  assert int(model.drop.rngs.count[...]) == 1
  (grads,) = extra["outputs_vjp"](jax.grad(loss)(extra["outputs"]))
  want = nnx.grad(lambda m: loss(m(x)))(_rewound(model))
  _assert_same_trees(nnx.as_pure(want).to_pure_dict(), grads)


def _rewound(model):
  """``model`` with the BatchNorm statistics and RNG count it had before the GAL call."""
  fresh = NnxWithState(nnx.Rngs(0))
  nnx.update(fresh, nnx.state(model, nnx.Param))
  return fresh


@pytest.mark.parametrize("size", [8, 28])
def test_nnx_mnist_cnn_equals_linen(size):
  x = jax.random.normal(jax.random.key(1), (3, size, size, 1))
  linen = MnistCNN(10)
  params = linen.init(jax.random.key(0), x)["params"]
  model = NnxMnistCNN(10, image_shape=(size, size, 1), rngs=nnx.Rngs(5))
  load_linen_params(model, params, NnxMnistCNN.LINEN_NAMES)
  want = linen.apply({"params": params}, x)
  np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)
  # Dropout acts only with train=True.
  assert not np.allclose(model(x, train=True), want)


def test_nnx_mnist_cnn_errors():
  with pytest.raises(ValueError, match="dense_dropout"):
    NnxMnistCNN(10, dense_dropout=1.0, rngs=nnx.Rngs(0))
  model = NnxMnistCNN(10, image_shape=(8, 8, 1), rngs=nnx.Rngs(0))
  params = MnistCNN(10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  with pytest.raises(ValueError, match="dense1/kernel of shape \\(256, 128\\)"):
    load_linen_params(model, params, NnxMnistCNN.LINEN_NAMES)


@pytest.mark.parametrize("optimizer", ["momentum"])
def test_nnx_cnn_from_the_linen_initialisation_trains_as_linen(optimizer):
  """The NNX CNN holding the weights the training loop gives the linen CNN for a seed
  trains to the same numbers: the same first-step loss, the same final metrics. Without
  dropout: NNX draws its masks from the model's own stream, linen from the step's key."""
  ds = data_lib.load_digits(seed=0).subset(128, 64)
  off = dict(conv_dropout=0.0, dense_dropout=0.0)
  linen = MnistCNN(10, **off)
  opt = lambda: registry.make_optimizer(optimizer, registry.make_schedule("constant", 2, 4))
  start = init_state(linen, opt().tx, ds.x_train[:1], 7).params
  model = NnxMnistCNN(10, image_shape=(8, 8, 1), **off, rngs=nnx.Rngs(0))
  load_linen_params(model, start, NnxMnistCNN.LINEN_NAMES)
  runs = [
    train_run(m, opt(), ds, epochs=2, batch_size=64, seed=7, progress=False, log_every=1)
    for m in (linen, model)
  ]
  first = [[r["train/loss"] for r in run.log if "train/loss" in r] for run in runs]
  assert len(first[0]) == 4 and first[0][0] != first[0][-1]
  np.testing.assert_allclose(first[1], first[0], rtol=1e-5)
  for key in ("train_loss", "test_loss", "test_accuracy"):
    assert runs[1].final[key] == pytest.approx(runs[0].final[key], rel=1e-5), key
