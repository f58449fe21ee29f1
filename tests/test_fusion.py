"""optax_ext._fusion: one_pass (the identity, written in one loop on CPU) and detached."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_ext import _fusion

SPECIAL = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1e-45, -3.0, 7.5e37], np.float32)


def _count_big_outputs(fn):
  """How many f32[1024] arrays the compiled entry computation writes from fusions."""
  x = jnp.ones(1024)
  hlo = jax.jit(fn).lower(x, x).compile().as_text()
  entry = hlo[hlo.index("ENTRY") :]
  return len(re.findall(r"= \(?f32\[1024\][^=]*fusion\(", entry))


def test_values_come_back_bit_for_bit():
  x = jnp.asarray(SPECIAL)
  out = jax.jit(lambda x: _fusion.one_pass(x * 1.0, -x, x * 0.5))(x)
  for got, want in zip(out, (SPECIAL, -SPECIAL, SPECIAL * np.float32(0.5))):
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), want.view(np.uint32))


def test_mixed_dtypes_shapes_and_empty_arrays_pass_through():
  a = jnp.arange(6.0).reshape(2, 3)
  b = a.astype(jnp.bfloat16)
  ints = jnp.arange(6).reshape(2, 3)
  other_shape = jnp.ones(4)
  empty = jnp.zeros((0, 3))
  out = jax.jit(lambda *xs: _fusion.one_pass(*xs))(a, b * 2, a * 3, ints, other_shape, empty, b)
  want = (a, b * 2, a * 3, ints, other_shape, empty, b)
  assert [o.dtype for o in out] == [w.dtype for w in want]
  for o, w in zip(out, want):
    np.testing.assert_array_equal(np.asarray(o, np.float64), np.asarray(w, np.float64))
  assert _fusion.one_pass() == ()


def test_derivatives_and_vmap_are_those_of_the_identity():
  def f(x):
    a, b = _fusion.one_pass(jnp.sin(x), x * x)
    return jnp.sum(a * b)

  x = jnp.linspace(-1.0, 1.0, 7)
  np.testing.assert_allclose(
    jax.grad(f)(x), np.cos(x) * x**2 + np.sin(x) * 2 * x, rtol=1e-6, atol=1e-7
  )
  batched = jax.vmap(lambda x: _fusion.one_pass(x + 1.0, x * 2.0))(jnp.ones((3, 4)))
  np.testing.assert_array_equal(batched[0], 2 * np.ones((3, 4)))
  np.testing.assert_array_equal(batched[1], 2 * np.ones((3, 4)))


def test_cpu_program_writes_the_arrays_in_one_loop():
  # The point of one_pass: on CPU its arrays come out of a single fusion with
  # several outputs, rather than one loop each. (Without it: three fusions.)
  if jax.default_backend() != "cpu":
    pytest.skip("one_pass is the plain identity off CPU")
  plain = lambda g, m: (m * 0.9 + g, g * g + 1.0, jnp.sqrt(m * 0.9 + g))  # noqa: E731
  assert _count_big_outputs(plain) == 3
  assert _count_big_outputs(lambda g, m: _fusion.one_pass(*plain(g, m))) == 1


def test_detached_computes_the_same_values():
  x = jnp.asarray(SPECIAL)
  scale = jnp.float32(0.5)

  def program(x, scale):
    fn = lambda: jnp.sort(x * scale - 1.0)  # noqa: E731
    return fn(), _fusion.detached(fn)()

  for run in (program, jax.jit(program)):
    plain, detached = run(x, scale)
    np.testing.assert_array_equal(
      np.asarray(detached).view(np.uint32), np.asarray(plain).view(np.uint32)
    )
  constant = lambda: jnp.arange(3.0)  # noqa: E731  (captures no traced array)
  assert _fusion.detached(constant) is constant


def test_detached_keeps_a_shared_expression_out_of_memory():
  # u feeds a reduction and the output. Merged, XLA writes u to memory for
  # both loops (two array outputs); detached, each loop computes its own u.
  if jax.default_backend() != "cpu":
    pytest.skip("fusion decisions checked on the CPU backend")

  def program(detach):
    def fn(g, p):
      u = lambda: g * 0.1 * (1.0 + g * g)  # noqa: E731
      v = (_fusion.detached(u) if detach else u)()
      sum_sq, largest = jax.lax.reduce(
        (v * v, v), (0.0, 0.0), lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1])), (0,)
      )
      return p + u() * (sum_sq + largest)

    return fn

  assert _count_big_outputs(program(False)) == 2
  assert _count_big_outputs(program(True)) == 1


def _fusions_writing(fn, *args, shape="f32[1024]"):
  """Per fusion of the compiled entry computation, how many ``shape`` arrays it writes."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  entry = hlo[hlo.index("ENTRY") :]
  # A fusion's line reads `%name = <result type(s)> fusion(<operands>), ...`.
  results = [
    line.split(" = ", 1)[1].split(" fusion(")[0]
    for line in entry.splitlines()
    if " fusion(" in line
  ]
  return [n for n in (r.count(shape + "{") for r in results) if n]


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_angulargrad_writes_each_leaf_from_one_fusion(method):
  # update, mu, nu, tan_angle and prev_grad of a leaf come out of one loop on
  # CPU (the learning rate and weight decay formed in it); without the seam,
  # XLA:CPU gives them loops of their own. The leaf is larger than the block
  # the φ statistics read: a leaf read whole shares φ with them, and XLA then
  # writes φ (and tan A) to memory for both loops.
  if jax.default_backend() != "cpu":
    pytest.skip("fusion decisions checked on the CPU backend")
  import optax

  import optax_ext

  def fusions(setting):
    optax_ext.config.update("cpu_fusion", setting)
    try:
      tx = optax_ext.angulargrad(optax.cosine_decay_schedule(0.1, 10), method, weight_decay=1e-2)
      params = {"w": jnp.ones(4096)}
      state = tx.init(params)
      program = lambda g, s, p: tx.update(g, s, p)  # noqa: E731
      return _fusions_writing(program, params, state, params, shape="f32[4096]")
    finally:
      optax_ext.config.update("cpu_fusion", True)

  assert fusions(True) == [5]
  assert len(fusions(False)) > 1  # (prev_grad may be a plain copy there, not a fusion)
