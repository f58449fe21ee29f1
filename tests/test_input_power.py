"""Input-power capture against explicit patch extraction (NumPy and lax)."""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import optax_ext


def _pads(padding, spatial, kernel, strides, dilation):
  """Explicit (lo, hi) pads of each spatial axis, plus a pre-pad mode for flax's own modes."""
  n = len(kernel)
  spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
  if padding == "VALID":
    return [(0, 0)] * n, None
  if padding == "SAME":  # output ceil(n / s), the deficit split with the extra on the high side
    out = []
    for size, s, span in zip(spatial, strides, spans):
      total = max((math.ceil(size / s) - 1) * s + span - size, 0)
      out.append((total // 2, total - total // 2))
    return out, None
  if padding in ("CIRCULAR", "REFLECT"):  # pad the input by copies, then 'VALID'
    return [((s - 1) // 2, s // 2) for s in spans], padding
  if padding == "CAUSAL":
    return [(spans[0] - 1, 0)], None
  if isinstance(padding, int):
    return [(padding, padding)] * n, None
  return [tuple(p) for p in padding], None


def numpy_patch_power(x, kernel, strides, padding, dilation, groups, q, input_dilation):
  """Builds every receptive-field patch in NumPy; returns mean ||patch||_q^q per group."""
  x = np.asarray(x, np.float64)
  n = len(kernel)
  strides, dilation, base = (
    (v,) * n if isinstance(v, int) else v for v in (strides, dilation, input_dilation)
  )
  pads, copy_mode = _pads(padding, x.shape[1:-1], kernel, strides, dilation)
  if copy_mode:
    mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[copy_mode]
    x = np.pad(x, [(0, 0), *pads, (0, 0)], mode=mode)
    pads = [(0, 0)] * n
  # Input dilation: insert base-1 zeros between neighbours.
  shape = [x.shape[0]] + [(s - 1) * b + 1 for s, b in zip(x.shape[1:-1], base)] + [x.shape[-1]]
  xd = np.zeros(shape)
  xd[(slice(None), *[slice(None, None, b) for b in base], slice(None))] = x
  # Padding, negative values crop.
  for axis, (lo, hi) in enumerate(pads, start=1):
    widths = [(0, 0)] * xd.ndim
    widths[axis] = (max(lo, 0), max(hi, 0))
    xd = np.pad(xd, widths)
    start, stop = max(-lo, 0), xd.shape[axis] - max(-hi, 0)
    xd = np.take(xd, np.arange(start, stop), axis=axis)
  patches = []
  outs = [(xd.shape[1 + a] - (kernel[a] - 1) * dilation[a] - 1) // strides[a] + 1 for a in range(n)]
  for pos in np.ndindex(*outs):
    idx = np.ix_(*[pos[a] * strides[a] + np.arange(kernel[a]) * dilation[a] for a in range(n)])
    patch = xd[(slice(None), *idx, slice(None))]  # (B, *kernel, C)
    patches.append(patch.reshape(x.shape[0], -1, groups, x.shape[-1] // groups))
  p = np.stack(patches, 1)  # (B, positions, window, G, C/G)
  v = np.abs(p) if q == 1 else p**2
  return v.sum(axis=(2, 4)).mean(axis=(0, 1))  # (G,)


# kernel, strides, padding, kernel_dilation, groups, input_dilation, input spatial shape
CASES = [
  ((3, 3), 1, "SAME", 1, 1, 1, (7, 6)),
  ((3, 3), 2, "SAME", 1, 1, 1, (7, 6)),
  ((3, 3), 1, "VALID", 1, 1, 1, (7, 6)),
  ((3, 2), (2, 1), "VALID", 2, 1, 1, (7, 6)),
  ((3, 3), 1, ((1, 2), (0, 1)), 1, 2, 1, (7, 6)),
  ((5, 5), 2, "SAME", 2, 1, 1, (9, 8)),
  ((3, 3), 1, "SAME", 1, 4, 1, (7, 6)),  # depthwise: groups = input channels
  ((2, 2), 1, 1, 1, 2, 1, (7, 6)),
  ((3, 3), 1, ((0, 0), (1, 1)), 1, 1, 2, (5, 4)),  # input (transposed-style) dilation
  ((3, 3), 2, ((2, -1), (-1, 2)), (1, 2), 1, 1, (7, 8)),  # negative (cropping) padding
  ((3, 3), 1, "CIRCULAR", 1, 1, 1, (7, 6)),
  ((4, 3), 2, "CIRCULAR", (1, 2), 2, 1, (7, 6)),
  ((3, 3), 1, "REFLECT", 1, 1, 1, (7, 6)),
  ((3,), 1, "CAUSAL", 2, 1, 1, (9,)),
  ((3, 3, 2), (1, 2, 1), "SAME", 1, 2, 1, (4, 5, 3)),  # 3-D
  ((1, 1), 1, "VALID", 1, 1, 1, (3, 3)),
]


class Branches(nn.Module):
  """Every case as its own Conv, each on its own input."""

  @nn.compact
  def __call__(self, xs):
    outs = []
    for i, ((kernel, s, pad, d, g, b, _), x) in enumerate(zip(CASES, xs)):
      conv = nn.Conv(
        8,
        kernel,
        strides=s,
        padding=pad,
        kernel_dilation=d,
        feature_group_count=g,
        input_dilation=b,
        name=f"case{i}",
      )
      outs.append(conv(x))
    return outs


def _zeros_like_init(model, *args):
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
  return jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)


# The power is computed in the input's dtype (at least float32): float64 inputs give float64 powers.
ORDERS_AND_DTYPES = [(1, "float32", 1e-5), (2, "float32", 1e-5), (2, "float64", 1e-12)]


@pytest.mark.parametrize("q,dtype,rtol", ORDERS_AND_DTYPES)
def test_conv_power_matches_numpy_patches(q, dtype, rtol):
  rng = np.random.default_rng(q)
  with jax.enable_x64(dtype == "float64"):
    xs = [jnp.asarray(rng.normal(size=(3, *case[-1], 4)), dtype) for case in CASES]
    model = Branches()
    variables = _zeros_like_init(model, xs)
    capture = jax.jit(lambda v, xs: optax_ext.capture_input_power(model.apply, v, xs, norm_order=q))
    ys, power = capture(variables, xs)
  assert power.norm_order == q
  for i, case in enumerate(CASES):
    kernel, s, pad, d, g, b, _ = case
    want = numpy_patch_power(xs[i], kernel, s, pad, d, g, q, b)
    got = power.powers[f"case{i}"]["kernel"]
    assert got.dtype == dtype, case
    if g == 1:
      assert got.shape == (), case
      np.testing.assert_allclose(got, want[0], rtol=rtol, err_msg=str(case))
    else:
      assert got.shape == (8,), case
      np.testing.assert_allclose(got, np.repeat(want, 8 // g), rtol=rtol, err_msg=str(case))
    assert power.powers[f"case{i}"]["bias"] is None
    # The patches' positions are the outputs' positions.
    assert ys[i].shape[0] == 3


@pytest.mark.parametrize("q", [1, 2])
def test_conv_power_matches_lax_patches(q):
  """A second reference: lax.conv_general_dilated_patches, strided, dilated, grouped."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 6))
  conv = nn.Conv(
    6,
    (3, 2),
    strides=(2, 1),
    padding=((1, 0), (2, 1)),
    kernel_dilation=(1, 2),
    feature_group_count=3,
  )
  variables = _zeros_like_init(conv, x)
  _, power = jax.jit(lambda v: optax_ext.capture_input_power(conv.apply, v, x, norm_order=q))(
    variables
  )
  patches = jax.jit(
    lambda x: lax.conv_general_dilated_patches(
      x,
      (3, 2),
      (2, 1),
      ((1, 0), (2, 1)),
      rhs_dilation=(1, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
  )(x)  # channel-major: feature index = c * window + tap
  p = np.asarray(patches, np.float64).reshape(patches.shape[:-1] + (3, 2, 6))
  v = np.abs(p) if q == 1 else p**2
  want = v.sum(axis=(-2, -1)).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(power.powers["kernel"], np.repeat(want, 2), rtol=1e-5)


@pytest.mark.parametrize("q,dtype,rtol", ORDERS_AND_DTYPES)
def test_dense_power_any_rank(q, dtype, rtol):
  with jax.enable_x64(dtype == "float64"):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7)), dtype)
    dense = nn.Dense(3)
    variables = _zeros_like_init(dense, x)
    _, power = optax_ext.capture_input_power(dense.apply, variables, x, norm_order=q)
  xn = np.asarray(x, np.float64)
  want = (np.abs(xn) if q == 1 else xn**2).sum(-1).mean()  # rows = last axis, 10 of them
  assert power.norm_order == q and power.powers["kernel"].dtype == dtype
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=rtol)
  assert power.powers["bias"] is None


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    h = nn.relu(x).reshape(x.shape[0], -1)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    shared = nn.Dense(3)
    return shared(h) + shared(2 * h), h


def test_nested_model_with_batchnorm_dropout_mutable_and_a_shared_layer():
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  model = Net()
  variables = _zeros_like_init(model, x)
  kw = dict(train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])

  @jax.jit
  def both(variables):
    return model.apply(variables, x, **kw), optax_ext.capture_input_power(
      model.apply, variables, x, **kw
    )

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # BatchNorm and biases are known: no warning
    ((out, h), mutated), (got, power) = both(variables)
  (out2, h2), mutated2 = got  # exactly what apply returned
  np.testing.assert_allclose(out2, out, rtol=1e-6)
  np.testing.assert_allclose(
    mutated2["batch_stats"]["BatchNorm_0"]["mean"],
    mutated["batch_stats"]["BatchNorm_0"]["mean"],
    rtol=1e-6,
  )
  assert set(mutated2) == {"batch_stats"}
  assert power.powers["BatchNorm_0"] == {"scale": None, "bias": None}
  hn = np.asarray(h, np.float64)  # the dropped-out features the Dense layer saw
  want = 0.5 * ((hn**2).sum(-1).mean() + (4 * hn**2).sum(-1).mean())  # mean of its two calls
  np.testing.assert_allclose(power.powers["Dense_0"]["kernel"], want, rtol=1e-5)
  assert power.powers["Conv_0"]["kernel"].shape == ()


def test_power_is_under_stop_gradient_and_one_forward_pass():
  x = jax.random.normal(jax.random.key(0), (4, 3))
  dense = nn.Dense(2)
  params = _zeros_like_init(dense, x)["params"]

  def loss(p):
    z, power = optax_ext.capture_input_power(dense.apply, {"params": p}, x)
    return jnp.sum(z**2) + power.powers["kernel"]  # the power must not contribute a gradient

  g = jax.grad(loss)(params)
  g_plain = jax.grad(lambda p: jnp.sum(dense.apply({"params": p}, x) ** 2))(params)
  np.testing.assert_allclose(g["kernel"], g_plain["kernel"], rtol=1e-6)
  # One forward pass: the jaxpr holds the layer's dot_general once.
  jaxpr = jax.make_jaxpr(lambda p: optax_ext.capture_input_power(dense.apply, {"params": p}, x))(
    params
  )
  assert str(jaxpr).count("dot_general") == 1


class WithUnknownLayers(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Einsum((3, 4), "bi,ij->bij")(x).sum(1)  # no contracted axis: no input vector
    x = x * self.param("gain", nn.initializers.ones, (4,))
    x = nn.LayerNorm()(x)
    return nn.Dense(2)(x)


def test_unknown_layers_are_reported_once_and_left_none():
  x = jnp.ones((2, 3))
  model = WithUnknownLayers()
  variables = model.init(jax.random.key(0), x)
  optax_ext.input_power._warned.clear()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
      _, power = optax_ext.capture_input_power(model.apply, variables, x)
  assert power.powers["Einsum_0"]["kernel"] is None and power.powers["gain"] is None
  assert power.powers["LayerNorm_0"] == {"scale": None, "bias": None}
  assert power.powers["Dense_0"]["kernel"] is not None
  msgs = [str(w.message) for w in caught]
  assert sum("Einsum_0" in m for m in msgs) == 1  # reported once, not at every call
  assert sum("<top level>" in m for m in msgs) == 1  # the custom module's own parameter
  assert not any("LayerNorm" in m or "Dense_0" in m for m in msgs)


def test_bad_norm_order():
  dense = nn.Dense(2)
  with pytest.raises(ValueError, match="norm_order"):
    optax_ext.capture_input_power(dense.apply, {"params": {}}, jnp.ones((1, 2)), norm_order=3)
