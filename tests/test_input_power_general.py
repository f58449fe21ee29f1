"""Input power of the layers transformers use, linen and NNX, against NumPy.

The reference is the definition itself (docs/design.md, INSGD — Input vectors
and capture): sum ``|x|^q`` over the axes a layer contracts, then average over
every other axis. Attention's output projection sees the per-head attention
output, recomputed here in NumPy from the layer's own weights.
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_ext
from tests.test_input_power import CASES, numpy_patch_power

pytestmark = pytest.mark.usefixtures("fast_compile")


def np_power(x, contracted, q):
  x = np.asarray(x, np.float64)
  v = np.abs(x) if q == 1 else x**2
  return v.sum(axis=tuple(contracted)).mean()


def _x(shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


# input shape, contracted axes, batch_dims (kernel-owning leading axes, still samples)
GENERAL = [
  ((2, 3, 4, 5, 6), (2, 4), (0, 1)),  # two contracted axes apart, batch axes of rank 2
  ((2, 3, 4, 5), (-2, -1), ()),  # attention's output projection: (heads, head_dim)
  ((2, 3, 4, 5), (1,), ()),  # a middle axis
]


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("shape,axis,batch", GENERAL)
def test_dense_general_and_linear_general(q, shape, axis, batch):
  x = _x(shape, seed=q)
  contracted = tuple(a % len(shape) for a in axis)
  want = np_power(x, contracted, q)
  dense = nn.DenseGeneral(features=(2, 3), axis=axis, batch_dims=batch)
  variables = dense.init(jax.random.key(0), x)
  _, power = optax_ext.capture_input_power(dense.apply, variables, x, norm_order=q)
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=1e-5)
  assert power.powers["bias"] is None and power.norm_order == q
  if batch:  # NNX's LinearGeneral names its batch axes with their sizes
    return
  linear = nnx.LinearGeneral(
    tuple(shape[a] for a in contracted), (2, 3), axis=axis, rngs=nnx.Rngs(0)
  )
  _, power = optax_ext.capture_input_power(linear, x, norm_order=q)
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=1e-5)
  assert power.powers["bias"] is None


def test_linear_general_with_batch_axes():
  x = _x((2, 3, 4, 5, 6))
  linear = nnx.LinearGeneral((4, 6), 7, axis=(2, 4), batch_axis={0: 2, 1: 3}, rngs=nnx.Rngs(0))
  _, power = optax_ext.capture_input_power(linear, x)
  np.testing.assert_allclose(power.powers["kernel"], np_power(x, (2, 4), 2), rtol=1e-5)


# equation, input shape, kernel shape, contracted input axes
EINSUMS = [
  ("btd,dh->bth", (2, 3, 4), (4, 5), (2,)),
  ("bthd,hdo->bto", (2, 3, 4, 5), (4, 5, 6), (2, 3)),
  ("...d,dh->...h", (2, 3, 4, 5), (5, 6), (3,)),
  ("btd,bdh->bth", (2, 3, 4), (2, 4, 5), (2,)),  # b shared with the kernel and kept: a sample
  ("bdt,dh->bth", (2, 4, 3), (4, 5), (1,)),
]


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("equation,shape,kernel,contracted", EINSUMS)
def test_einsum(q, equation, shape, kernel, contracted):
  x = _x(shape, seed=q)
  want = np_power(x, contracted, q)
  layer = nn.Einsum(kernel, equation, use_bias=False)
  variables = layer.init(jax.random.key(0), x)
  _, power = optax_ext.capture_input_power(layer.apply, variables, x, norm_order=q)
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=1e-5)
  layer = nnx.Einsum(equation, kernel, rngs=nnx.Rngs(0))
  _, power = optax_ext.capture_input_power(layer, x, norm_order=q)
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=1e-5)


def test_einsum_equation_given_at_the_call():
  x = _x((2, 3, 4))
  layer = nn.Einsum((4, 5), use_bias=False)
  variables = layer.init(jax.random.key(0), x, "btd,dh->bth")
  _, power = optax_ext.capture_input_power(layer.apply, variables, x, "btd,dh->bth")
  np.testing.assert_allclose(power.powers["kernel"], np_power(x, (2,), 2), rtol=1e-5)


def _np_attention_output(xq, xkv, p):
  """Per-head attention output (b, t, heads, head_dim), dot-product attention in float64."""
  f = lambda a: np.asarray(a, np.float64)
  proj = lambda x, name: np.einsum("btf,fhd->bthd", f(x), f(p[name]["kernel"])) + f(p[name]["bias"])
  q, k, v = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
  logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def _attention_powers(p, xq, xkv, q):
  return {
    "query": np_power(xq, (2,), q),
    "key": np_power(xkv, (2,), q),
    "value": np_power(xkv, (2,), q),
    "out": np_power(_np_attention_output(xq, xkv, p), (2, 3), q),
  }


@pytest.mark.parametrize("q", [1, 2])
def test_attention_projections(q):
  xq, xkv = _x((2, 5, 6), seed=1), _x((2, 7, 6), seed=2)
  attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, out_features=3)
  variables = attention.init(jax.random.key(0), xq, xkv)
  _, power = optax_ext.capture_input_power(attention.apply, variables, xq, xkv, norm_order=q)
  want = _attention_powers(variables["params"], xq, xkv, q)
  for name, value in want.items():
    np.testing.assert_allclose(power.powers[name]["kernel"], value, rtol=1e-5, err_msg=name)
    assert power.powers[name]["bias"] is None

  attention = nnx.MultiHeadAttention(2, 6, 4, 3, decode=False, rngs=nnx.Rngs(0))
  _, power = optax_ext.capture_input_power(attention, xq, xkv, norm_order=q)
  p = nnx.state(attention, nnx.Param).to_pure_dict()
  want = _attention_powers(p, xq, xkv, q)
  for name, value in want.items():
    np.testing.assert_allclose(power.powers[name]["kernel"], value, rtol=1e-5, err_msg=name)


def test_float64_inputs_give_float64_powers():
  with jax.enable_x64(True):
    x = _x((2, 3, 4, 5), dtype=jnp.float64)
    layer = nnx.LinearGeneral((4, 5), 2, axis=(-2, -1), rngs=nnx.Rngs(0))
    _, power = optax_ext.capture_input_power(layer, x)
    assert power.powers["kernel"].dtype == jnp.float64
    np.testing.assert_allclose(power.powers["kernel"], np_power(x, (2, 3), 2), rtol=1e-12)


class NnxConvs(nnx.Module):
  """Every convolution case of tests/test_input_power.py as an nnx.Conv."""

  def __init__(self, rngs):
    self.convs = nnx.List(
      nnx.Conv(4, 8, k, strides=s, padding=pad, kernel_dilation=d, feature_group_count=g,
               input_dilation=b, rngs=rngs)
      for k, s, pad, d, g, b, _ in CASES
    )  # fmt: skip

  def __call__(self, xs):
    return [conv(x) for conv, x in zip(self.convs, xs)]


@pytest.mark.parametrize("q", [1, 2])
def test_nnx_conv_matches_numpy_patches(q):
  rng = np.random.default_rng(q)
  xs = [jnp.asarray(rng.normal(size=(3, *case[-1], 4)), jnp.float32) for case in CASES]
  model = NnxConvs(nnx.Rngs(0))
  _, power = nnx.jit(lambda m, xs: optax_ext.capture_input_power(m, xs, norm_order=q))(model, xs)
  for i, (kernel, s, pad, d, g, b, _) in enumerate(CASES):
    want = numpy_patch_power(xs[i], kernel, s, pad, d, g, q, b)
    got = power.powers["convs"][i]["kernel"]
    np.testing.assert_allclose(got, np.repeat(want, 8 // g) if g > 1 else want[0], rtol=1e-5)


class LinenTied(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(11, 6)
    h = nn.LayerNorm()(embed(tokens))
    h = nn.Dense(6)(h)
    return embed.attend(h)  # the output projection tied to the embedding


class NnxTied(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 6, rngs=rngs)
    self.norm = nnx.LayerNorm(6, rngs=rngs)
    self.dense = nnx.Linear(6, 6, rngs=rngs)

  def __call__(self, tokens):
    return self.embed.attend(self.dense(self.norm(self.embed(tokens))))


def test_embeddings_and_tied_projections_are_none_without_a_warning():
  tokens = jnp.arange(10).reshape(2, 5)
  model = LinenTied()
  variables = model.init(jax.random.key(0), tokens)
  nnx_model = NnxTied(nnx.Rngs(0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, linen_power = optax_ext.capture_input_power(model.apply, variables, tokens)
    _, nnx_power = optax_ext.capture_input_power(nnx_model, tokens)
  assert linen_power.powers["Embed_0"]["embedding"] is None
  assert nnx_power.powers["embed"]["embedding"] is None
  assert linen_power.powers["Dense_0"]["kernel"] is not None
  assert nnx_power.powers["dense"]["kernel"] is not None


class NnxUnknown(nnx.Module):
  def __init__(self, rngs):
    self.outer = nnx.Einsum("bi,ij->bij", (3, 4), rngs=rngs)  # nothing contracted
    self.up = nnx.ConvTranspose(4, 4, (3,), rngs=rngs)
    self.gain = nnx.Param(jnp.ones(4))
    self.dense = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    h = self.up(self.outer(x)) * self.gain[...]
    return self.dense(h.sum(1))


def test_nnx_unknown_layers_are_reported_once_and_left_none():
  x = jnp.ones((2, 3))
  model = NnxUnknown(nnx.Rngs(0))
  optax_ext.input_power._warned.clear()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
      _, power = optax_ext.capture_input_power(model, x)
  assert power.powers["outer"]["kernel"] is None and power.powers["gain"] is None
  assert power.powers["up"]["kernel"] is None and power.powers["dense"]["kernel"] is not None
  msgs = [str(w.message) for w in caught]
  assert len(msgs) == 3, msgs
  assert sum("layer outer (a nnx.Einsum the capture cannot normalise" in m for m in msgs) == 1
  assert sum("layer up (a ConvTranspose)" in m for m in msgs) == 1
  assert sum("<top level>" in m for m in msgs) == 1  # the model's own parameter
  # Outside a capture the layers run unwrapped.
  assert nnx.Linear.__call__.__qualname__ == "Linear.__call__"


def test_linen_variables_and_nnx_models_are_told_apart():
  with pytest.raises(ValueError, match="capture_input_power\\(model, \\*args\\)"):
    optax_ext.capture_input_power(nn.Dense(2).apply, jnp.ones((1, 2)), jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="norm_order"):
    optax_ext.capture_input_power(
      nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 2)), norm_order=3
    )


def test_inputs_given_by_name():
  x = _x((2, 3, 4))
  want = np_power(x, (2,), 2)
  dense = nn.DenseGeneral(5)
  variables = dense.init(jax.random.key(0), x)
  _, power = optax_ext.capture_input_power(dense.apply, variables, inputs=x)
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=1e-5)
  linear = nnx.Linear(4, 5, rngs=nnx.Rngs(0))
  _, power = optax_ext.capture_input_power(linear, inputs=x)
  np.testing.assert_allclose(power.powers["kernel"], want, rtol=1e-5)
