"""Every optax_ext optimizer through the same checks, as optax tests its own.

Each method's maths is tested against an independent transcription in its own
file; here every method meets the conventions users rely on: jit without
retracing, the optax wrappers, dtypes, ShapeDtypeStruct init, schedules,
non-finite gradients and extreme inputs.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


def _power(params):
  return jax.tree.map(lambda p: jnp.full((), 3.0, jnp.float32) if p.ndim >= 2 else None, params)


# name -> (factory, kwargs, extra-argument builder or None)
OPTIMIZERS = {
  "angulargrad_cos": (optax_ext.angulargrad, {"learning_rate": 1e-2, "method": "cos"}, None),
  "angulargrad_tan": (optax_ext.angulargrad, {"learning_rate": 1e-2, "method": "tan"}, None),
  "insgd": (optax_ext.insgd, {"learning_rate": 1e-2}, lambda p: {"input_power": _power(p)}),
  "sp": (optax_ext.sp, {"learning_rate": 1e-2, "sparsity": 0.1}, None),
  "sp_nesterov": (
    optax_ext.sp,
    {"learning_rate": 1e-2, "sparsity": 0.1, "momentum": 0.9, "nesterov": True},
    None,
  ),
  "saliency_after_adam": (
    lambda learning_rate, sparsity: optax.chain(
      optax.adam(learning_rate), optax_ext.saliency_proximal(sparsity)
    ),
    {"learning_rate": 1e-2, "sparsity": 0.1},
    None,
  ),
}
NAMES = list(OPTIMIZERS)
INJECTABLE = ["angulargrad_cos", "angulargrad_tan", "insgd", "sp", "sp_nesterov"]


def _params(dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {
    "conv": jax.random.normal(k1, (3, 3, 2, 4), dtype),
    "dense": {"kernel": jax.random.normal(k2, (6, 5), dtype), "bias": jnp.zeros((5,), dtype)},
    "scale": jax.random.normal(k3, (5,), dtype),
  }


def _loss(p):
  return sum(jnp.sum((x.astype(jnp.float32) - 0.5) ** 2) for x in jax.tree.leaves(p))


def _make(name):
  factory, kwargs, extra = OPTIMIZERS[name]
  return factory(**kwargs), (extra or (lambda p: {}))


@pytest.fixture(autouse=True)
def _clear_traces():
  chex.clear_trace_counter()


@pytest.mark.parametrize("name", NAMES)
def test_jit_once_and_loss_decreases(name):
  tx, extra = _make(name)
  params = _params()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params, **extra(params))
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  start = _loss(params)
  for _ in range(30):
    params, state = step(params, state)
  assert _loss(params) < start
  chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_extra_arguments_are_accepted(name):
  tx, extra = _make(name)
  params = _params()
  updates, _ = tx.update(params, tx.init(params), params, unrelated=1.0, **extra(params))
  chex.assert_trees_all_equal_shapes(updates, params)


@pytest.mark.parametrize("name", INJECTABLE)
def test_inject_hyperparams_matches_plain(name):
  factory, kwargs, extra = OPTIMIZERS[name]
  extra = extra or (lambda p: {})
  params = _params()
  grads = jax.tree.map(lambda x: -0.3 * x, params)
  plain = factory(**kwargs)
  import inspect

  statics = {"method", "nesterov", "norm_order"} & set(inspect.signature(factory).parameters)
  injected = optax.inject_hyperparams(factory, static_args=statics)(**kwargs)
  s1, s2 = plain.init(params), injected.init(params)
  for _ in range(3):
    u1, s1 = jax.jit(plain.update)(grads, s1, params, **extra(params))
    u2, s2 = jax.jit(injected.update)(grads, s2, params, **extra(params))
  chex.assert_trees_all_close(u1, u2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_in_bfloat16_out(name):
  tx, extra = _make(name)
  params = _params(jnp.bfloat16)
  state = tx.init(params)
  for _ in range(3):
    updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra(p)))(params, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    params = optax.apply_updates(params, updates)
  chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_first_call_is_zero_and_state_keeps_its_types(name):
  tx, extra = _make(name)
  ms = optax.MultiSteps(tx, every_k_schedule=4)
  params = _params()
  state = ms.init(params)
  updates, new_state = jax.jit(lambda g, s, p: ms.update(g, s, p, **extra(p)))(
    params, state, params
  )
  for u in jax.tree.leaves(updates):
    assert not np.any(np.asarray(u))
  chex.assert_trees_all_equal_dtypes(state, new_state)
  chex.assert_trees_all_equal_shapes(state, new_state)


@pytest.mark.parametrize("name", NAMES)
def test_masked_leaves_are_untouched(name):
  tx, extra = _make(name)
  params = _params()
  mask = {"conv": True, "dense": {"kernel": True, "bias": False}, "scale": False}
  masked = optax.masked(tx, mask, mask_compatible_extra_args=True)
  updates, _ = masked.update(params, masked.init(params), params, **extra(params))
  np.testing.assert_array_equal(updates["scale"], params["scale"])  # passed through
  assert np.any(np.asarray(updates["conv"]) != np.asarray(params["conv"]))


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_structs(name):
  tx, _ = _make(name)
  params = _params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  shapes = jax.eval_shape(tx.init, abstract)
  real = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes, real)


@pytest.mark.parametrize("name", INJECTABLE)
def test_constant_schedule_equals_constant_rate(name):
  factory, kwargs, extra = OPTIMIZERS[name]
  extra = extra or (lambda p: {})
  params = _params()
  a = factory(**kwargs)
  b = factory(**{**kwargs, "learning_rate": optax.constant_schedule(kwargs["learning_rate"])})
  sa, sb = a.init(params), b.init(params)
  for _ in range(3):
    ua, sa = a.update(params, sa, params, **extra(params))
    ub, sb = b.update(params, sb, params, **extra(params))
  chex.assert_trees_all_close(ua, ub, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_a_bad_step_and_keeps_state(name):
  tx, extra = _make(name)
  safe = optax.apply_if_finite(tx, max_consecutive_errors=5)
  params = _params()
  state = safe.init(params)
  good = jax.tree.map(lambda x: 0.1 * x, params)
  _, state = safe.update(good, state, params, **extra(params))
  bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), good)
  updates, after = safe.update(bad, state, params, **extra(params))
  for u in jax.tree.leaves(updates):
    assert not np.any(np.asarray(u))
  chex.assert_trees_all_equal(after.inner_state, state.inner_state)
  assert int(after.notfinite_count) == 1


@pytest.mark.parametrize("name", NAMES)
def test_extreme_gradients_give_finite_updates(name):
  """Zero gradients for many steps, magnitudes of 1e±30 and denormals."""
  tx, extra = _make(name)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra(p)))
  for magnitude in (0.0, 1e-30, 1e30, 1e-40):
    params = _params()
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.full_like(x, magnitude), params)
    for _ in range(5):
      updates, state = step(grads, state, params)
      chex.assert_tree_all_finite(updates)
      params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_tiny_trees(name):
  tx, extra = _make(name)
  for params in ({}, {"a": jnp.zeros((0, 3))}, {"a": jnp.ones((1,)), "b": jnp.ones((1, 1))}):
    state = tx.init(params)
    updates, state = tx.update(params, state, params, **extra(params))
    chex.assert_trees_all_equal_shapes(updates, params)
    chex.assert_tree_all_finite(updates)
