"""Input-power capture against explicit patch extraction."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import optax_ext


def explicit_conv_power(x, kernel_size, strides, padding, dilation, groups, q, input_dilation=1):
  """Mean over batch and positions of ||patch||_q^q from materialised patches, per group."""
  n = len(kernel_size)
  if isinstance(padding, int):
    padding = [(padding, padding)] * n
  patches = lax.conv_general_dilated_patches(
    x,
    filter_shape=kernel_size,
    window_strides=(strides,) * n,
    padding=padding,
    lhs_dilation=(input_dilation,) * n,
    rhs_dilation=(dilation,) * n,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  patches = np.asarray(patches, np.float64)
  c = x.shape[-1]
  k = int(np.prod(kernel_size))
  patches = patches.reshape(patches.shape[:-1] + (groups, c // groups, k))  # (C, window) order
  v = np.abs(patches) if q == 1 else patches**2
  return v.sum(axis=(-1, -2)).mean(axis=(0, 1, 2))  # (groups,)


CASES = [
  # kernel, strides, padding, dilation, groups, input_dilation
  ((3, 3), 1, "SAME", 1, 1, 1),
  ((3, 3), 2, "SAME", 1, 1, 1),
  ((3, 3), 1, "VALID", 1, 1, 1),
  ((3, 2), 2, "VALID", 2, 1, 1),
  ((3, 3), 1, [(1, 2), (0, 1)], 1, 2, 1),
  ((5, 5), 2, "SAME", 2, 1, 1),
  ((3, 3), 1, "SAME", 1, 4, 1),  # depthwise (groups = input channels)
  ((2, 2), 1, 1, 1, 2, 1),
  ((3, 3), 1, [(0, 0), (1, 1)], 1, 1, 2),  # input (transposed-style) dilation
]


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("kernel,strides,padding,dilation,groups,in_dil", CASES)
def test_conv_power_matches_patches(q, kernel, strides, padding, dilation, groups, in_dil):
  x = jax.random.normal(jax.random.key(0), (3, 9, 8, 4))
  conv = nn.Conv(
    8,
    kernel,
    strides=strides,
    padding=padding,
    kernel_dilation=dilation,
    feature_group_count=groups,
    input_dilation=in_dil,
  )
  variables = conv.init(jax.random.key(1), x)
  y, power = optax_ext.capture_input_power(conv.apply, variables, x, norm_order=q)
  np.testing.assert_allclose(y, conv.apply(variables, x), rtol=1e-6)
  want = explicit_conv_power(np.asarray(x), kernel, strides, padding, dilation, groups, q, in_dil)
  got = np.asarray(power["kernel"])
  if groups == 1:
    assert got.shape == ()
    np.testing.assert_allclose(got, want[0], rtol=1e-5)
  else:
    assert got.shape == (8,)
    np.testing.assert_allclose(got, np.repeat(want, 8 // groups), rtol=1e-5)
  assert power["bias"] is None


@pytest.mark.parametrize("q", [1, 2])
def test_dense_power_any_rank(q):
  x = jax.random.normal(jax.random.key(0), (2, 5, 7))
  dense = nn.Dense(3)
  variables = dense.init(jax.random.key(1), x)
  _, power = optax_ext.capture_input_power(dense.apply, variables, x, norm_order=q)
  xn = np.asarray(x, np.float64)
  want = (np.abs(xn) if q == 1 else xn**2).sum(-1).mean()
  np.testing.assert_allclose(power["kernel"], want, rtol=1e-5)


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    h = nn.relu(x).reshape(x.shape[0], -1)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return nn.Dense(3)(h), h


def test_nested_model_with_batchnorm_dropout_and_mutable():
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  model = Net()
  variables = model.init(jax.random.key(1), x)
  (out, h), mutated = model.apply(
    variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
  )
  got, power = optax_ext.capture_input_power(
    model.apply,
    variables,
    x,
    train=True,
    rngs={"dropout": jax.random.key(2)},
    mutable=["batch_stats"],
  )
  (out2, h2), mutated2 = got
  np.testing.assert_allclose(out2, out, rtol=1e-6)
  assert set(mutated2) == {"batch_stats"}
  assert power["BatchNorm_0"] == {"scale": None, "bias": None}
  np.testing.assert_allclose(
    power["Dense_0"]["kernel"], np.mean(np.sum(np.square(h), -1)), rtol=1e-5
  )
  assert power["Conv_0"]["kernel"].shape == ()


def test_power_is_under_stop_gradient_and_one_forward_pass():
  x = jax.random.normal(jax.random.key(0), (4, 3))
  dense = nn.Dense(2)
  params = dense.init(jax.random.key(1), x)["params"]

  def loss(p):
    z, power = optax_ext.capture_input_power(dense.apply, {"params": p}, x)
    return jnp.sum(z**2) + power["kernel"]  # the power must not contribute a gradient

  g = jax.grad(loss)(params)
  g_plain = jax.grad(lambda p: jnp.sum(dense.apply({"params": p}, x) ** 2))(params)
  np.testing.assert_allclose(g["kernel"], g_plain["kernel"], rtol=1e-6)
  # One forward pass: the jaxpr holds one dot_general for the layer (plus the backward's).
  jaxpr = jax.make_jaxpr(lambda p: optax_ext.capture_input_power(dense.apply, {"params": p}, x))(
    params
  )
  assert str(jaxpr).count("dot_general") == 1


class WithEinsum(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Einsum((3, 4), "bi,ij->bj")(x)
    return nn.Dense(2)(x)


def test_unknown_layers_are_reported_once_and_left_none():
  x = jnp.ones((2, 3))
  model = WithEinsum()
  variables = model.init(jax.random.key(0), x)
  optax_ext.input_power._warned.clear()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _, power = optax_ext.capture_input_power(model.apply, variables, x)
    _, power = optax_ext.capture_input_power(model.apply, variables, x)
  assert power["Einsum_0"]["kernel"] is None
  assert power["Dense_0"]["kernel"] is not None
  msgs = [str(w.message) for w in caught if "Einsum_0" in str(w.message)]
  assert len(msgs) == 1  # reported once, not at every call


@settings(max_examples=6, deadline=None)
@given(
  h=st.integers(4, 9),
  w=st.integers(4, 9),
  k=st.integers(1, 3),
  s=st.integers(1, 2),
  d=st.integers(1, 2),
  g=st.sampled_from([1, 2]),
  pad=st.sampled_from(["SAME", "VALID"]),
  q=st.sampled_from([1, 2]),
)
def test_property_random_shapes(h, w, k, s, d, g, pad, q):
  if (k - 1) * d + 1 > min(h, w):
    return
  x = jax.random.normal(jax.random.key(h * 31 + w), (2, h, w, 4))
  conv = nn.Conv(4, (k, k), strides=s, padding=pad, kernel_dilation=d, feature_group_count=g)
  variables = conv.init(jax.random.key(0), x)
  _, power = optax_ext.capture_input_power(conv.apply, variables, x, norm_order=q)
  want = explicit_conv_power(np.asarray(x), (k, k), s, pad, d, g, q)
  got = np.asarray(power["kernel"]).reshape(-1)
  np.testing.assert_allclose(got, np.repeat(want, 4 // g) if g > 1 else want, rtol=1e-5)
