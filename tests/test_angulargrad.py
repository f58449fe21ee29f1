"""AngularGrad against direct NumPy transcriptions of the paper and of the published code."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


def paper_algorithm2(
  grad_fn, theta0, lr, method, steps, b1=0.9, b2=0.999, eps=1e-8, l1=0.5, l2=0.5
):
  """Algorithm 2 of the paper, line by line, with the literal arctan, cos and tan.

  Returns the parameters after every step, φ at every step, and how many
  element-steps took A_min from the previous angle (A_{t-1} < A_t).
  """
  theta = np.array(theta0, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  g_prev = np.zeros_like(theta)  # g_0 = 0
  a_prev = None
  thetas, phis, took_prev = [], [], 0
  for t in range(1, steps + 1):
    g = grad_fn(theta)
    a_t = np.arctan(np.abs((g - g_prev) / (1.0 + g * g_prev)))
    if a_prev is None:
      a_min = a_t
    else:
      a_min = np.minimum(a_prev, a_t)
      took_prev += int(np.sum(a_prev < a_t))
    trig = np.cos(a_min) if method == "cos" else np.tan(a_min)
    phi = np.tanh(np.abs(trig)) * l1 + l2
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    theta = theta - lr * phi * m_hat / (np.sqrt(v_hat) + eps)
    g_prev, a_prev = g, a_t
    thetas.append(theta.copy())
    phis.append(phi)
  return thetas, phis, took_prev


def _grad(theta):
  # Gradient of sum(x^4/4 - 2x^2 + sin(3x)): it turns often, so angles vary.
  return theta**3 - 4.0 * theta + 3.0 * np.cos(3.0 * theta)


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_matches_algorithm2_transcription_for_60_steps(method):
  rng = np.random.default_rng(0)
  theta0 = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,)), "s": rng.normal(size=())}
  steps, lr, b1, b2 = 60, 0.05, 0.8, 0.99
  with jax.enable_x64(True):
    tx = optax_ext.angulargrad(lr, method=method, b1=b1, b2=b2)
    params = jax.tree.map(jnp.asarray, theta0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    got, phi_means = [], []
    for _ in range(steps):
      grads = jax.tree.map(lambda x: jnp.asarray(_grad(np.asarray(x))), params)
      updates, state = step(grads, state, params)
      params = optax.apply_updates(params, updates)
      got.append(jax.tree.map(np.asarray, params))
      phi_means.append(float(state[0].phi_stats[0]))
  total_took_prev = 0
  ref_phis = {}
  for key, x0 in theta0.items():
    ref, phis, took_prev = paper_algorithm2(_grad, x0, lr, method, steps, b1, b2)
    total_took_prev += took_prev
    ref_phis[key] = phis
    for t in range(steps):
      np.testing.assert_allclose(
        got[t][key], ref[t], rtol=1e-6, atol=1e-12, err_msg=f"{key}, step {t + 1}"
      )
  # Both branches of the minimum were exercised.
  assert 0 < total_took_prev < (steps - 1) * 18
  # phi_stats holds the mean of φ over every entry (these leaves are all sampled whole).
  for t in (0, 1, steps - 1):
    ref_mean = np.mean(np.concatenate([np.ravel(ref_phis[k][t]) for k in theta0]))
    np.testing.assert_allclose(phi_means[t], ref_mean, rtol=1e-6)


def test_first_step_by_hand():
  # g_0 = 0, so A_1 = arctan|g|; with g = 2: cos A = 1/sqrt(5), tan A = 2. Adam's first
  # direction is sign(g) (up to eps), so the update is -lr·φ.
  p = jnp.array([0.0])
  for method, trig in (("cos", 1 / np.sqrt(5.0)), ("tan", 2.0)):
    tx = optax_ext.angulargrad(1.0, method=method, eps=1e-12)
    u, state = tx.update(jnp.array([2.0]), tx.init(p), p)
    phi = np.tanh(trig) / 2 + 0.5
    np.testing.assert_allclose(u, [-phi], rtol=2e-5)  # float32 bias corrections
    np.testing.assert_allclose(state[0].phi_stats, [phi, phi, phi, 0.0], rtol=1e-6)


def test_state_holds_tangent_of_the_angle_and_the_gradient():
  tx = optax_ext.scale_by_angulargrad()
  p = jnp.zeros(3)
  g1, g2 = jnp.array([1.0, 2.0, -3.0]), jnp.array([0.5, -0.5, -3.0])
  _, s = tx.update(g1, tx.init(p))
  _, s = tx.update(g2, s)
  # Entry 1 has g·g_prev = -1: the angle is π/2 and its tangent is stored as inf.
  np.testing.assert_allclose(s.tan_angle, [1 / 3, np.inf, 0.0], rtol=1e-6)
  a = np.arctan(np.asarray(s.tan_angle, np.float64))
  np.testing.assert_allclose(a, np.arctan2(np.abs(g2 - g1), np.abs(1 + g2 * g1)), rtol=1e-6)
  np.testing.assert_array_equal(s.prev_grad, g2)
  assert s.ref_angle == () and s.ref_final == ()


def test_product_minus_one_and_zero_gradients():
  # g·g_prev = -1 exactly (2 · -0.5): the angle is π/2, never NaN.
  p = jnp.zeros(2)
  for method, floor_phi in (("cos", 0.5), ("tan", 1.0)):
    tx = optax_ext.angulargrad(0.1, method=method)
    s = tx.init(p)
    for g in ([2.0, 1.0], [-0.5, 1.0], [2.0, 1.0]):
      u, s = tx.update(jnp.array(g), s, p)
      chex.assert_tree_all_finite((u, s[0].mu, s[0].nu, s[0].phi_stats))
    assert float(s[0].tan_angle[0]) == np.inf  # stored as tan(π/2) = inf
    # Steps 2 and 3 both had A = π/2 in entry 0, so A_min = π/2: cos gives φ = λ2 = 0.5,
    # tan gives φ = λ1 + λ2 = 1. Entry 1 repeats its gradient: A = 0, the other extreme.
    phis = {float(s[0].phi_stats[1]), float(s[0].phi_stats[2])}
    assert any(np.isclose(x, floor_phi) for x in phis)
    for _ in range(4):
      u, s = tx.update(jnp.zeros(2), s, p)
      chex.assert_tree_all_finite((u, s[0].mu, s[0].nu, s[0].phi_stats))


def test_phi_statistics_use_a_prefix_block_of_every_leaf():
  # Samples (STATS_SAMPLE = 1024): a[:1024]; b (40, 7) and c whole; d (50, 30): d[:34, :30].
  rng = np.random.default_rng(1)
  shapes = {"a": (3000,), "b": (40, 7), "c": (), "d": (50, 30)}
  block = {"a": np.s_[:1024], "b": np.s_[:], "c": (), "d": np.s_[:34, :30]}
  g1 = {k: rng.normal(size=v) for k, v in shapes.items()}
  g2 = {k: rng.normal(size=v) for k, v in shapes.items()}
  tx = optax_ext.scale_by_angulargrad(method="tan")
  p = {k: jnp.zeros(v) for k, v in shapes.items()}
  as32 = lambda t: {k: jnp.asarray(v, jnp.float32) for k, v in t.items()}
  _, s = tx.update(as32(g1), tx.init(p))
  _, s = tx.update(as32(g2), s)
  phi = []
  for k in shapes:
    a1 = np.arctan(np.abs(g1[k]))
    a2 = np.arctan(np.abs((g2[k] - g1[k]) / (1 + g2[k] * g1[k])))
    phi.append(np.ravel((np.tanh(np.tan(np.minimum(a1, a2))) * 0.5 + 0.5)[block[k]]))
  phi = np.concatenate(phi)
  np.testing.assert_allclose(s.phi_stats, [phi.mean(), phi.min(), phi.max(), 0.0], rtol=1e-5)


def published_rule(grads, lr, method, b1=0.9, b2=0.999, eps=1e-8):
  """The published cos/tan AngularGrad step for one tensor, PyTorch semantics in NumPy."""
  theta = np.zeros_like(grads[0])
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  previous_grad = np.zeros_like(theta)
  stored_min = np.zeros_like(theta)
  final = np.zeros_like(theta)
  thetas, replaced = [], []
  for step, grad in enumerate(grads, start=1):
    m = m * b1 + (1 - b1) * grad
    v = v * b2 + (1 - b2) * grad * grad
    denom = np.sqrt(v) + eps
    tan_theta = np.abs((previous_grad - grad) / (1 + previous_grad * grad))
    cos_theta = 1 / np.sqrt(1 + np.square(tan_theta))
    angle = np.arctan(tan_theta) * (180 / 3.141592653589793238)
    values, count = np.unique(angle > stored_min, return_counts=True)
    # torch.unique sorts False before True; with one distinct value count[1] raises and the
    # fallback compares a tensor with the string "False", which is never equal.
    replace = len(count) == 2 and count[1] < count[0]
    replaced.append(bool(replace))
    if replace:
      stored_min = angle
      final = cos_theta if method == "cos" else tan_theta
    coeff = np.tanh(np.abs(final)) * 0.5 + 0.5
    step_size = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
    theta = theta - step_size * (m * coeff) / denom
    previous_grad = grad
    thetas.append(theta.copy())
  return thetas, replaced


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_reference_compat_matches_published_rule(method):
  grads = [
    np.array([1.0, 2.0, 3.0, 4.0]),  # every angle above the stored 0: keep
    np.array([1.0, 2.0, 3.0, 4.0]),  # every angle 0, none above: keep (string fallback)
    np.array([5.0, 2.0, 3.0, 4.0]),  # 1 of 4 above: replace
    np.array([5.0, 2.0, 7.0, -3.0]),  # 2 above, 2 not: a tie keeps
    np.array([-2.0, -9.0, 8.0, 6.0]),  # all above the stored angles: keep
    np.array([-2.0, -9.0, 8.0, 7.0]),  # 1 above: replace, now with a non-zero stored angle
    np.array([0.5, -9.0, 8.0, -1 / 7.0]),  # g·g_prev = -1 in two entries: 90 degrees
  ]
  ref, replaced = published_rule(grads, 0.1, method)
  assert replaced == [False, False, True, False, False, True, False]
  with jax.enable_x64(True):
    tx = optax_ext.angulargrad(0.1, method=method, reference_compat=True)
    p = jnp.zeros(4)
    state = tx.init(p)
    for t, g in enumerate(grads):
      u, state = tx.update(jnp.asarray(g), state, p)
      p = p + u
      np.testing.assert_allclose(np.asarray(p), ref[t], rtol=1e-9, err_msg=f"step {t + 1}")
    assert state[0].tan_angle == ()


def test_reference_compat_phi_stays_at_half_on_a_smooth_problem():
  """With the stored angle starting at 0 the vote does not pass (SPEC §1)."""
  tx = optax_ext.angulargrad(0.1, reference_compat=True)
  p = jnp.array([-1.0, 0.5, 2.0])
  state = tx.init(p)
  for _ in range(30):
    u, state = tx.update(2 * p, state, p)
    p = p + u
  diag = optax_ext.diagnostics(state)
  assert float(diag["angulargrad/phi_max"]) == 0.5
  assert float(diag["angulargrad/phi_at_floor"]) == 1.0


def _tree():
  return {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.3, -0.7, 1.1])}


def _grads(params, k):
  return jax.tree.map(lambda x: jnp.sin(3.0 * x + k) + 0.1 * k, params)


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_jit_traces_once_and_matches_eager(method):
  tx = optax_ext.angulargrad(0.05, method=method)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(g, s, p):
    return tx.update(g, s, p)

  params = _tree()
  s_jit = s_eager = tx.init(params)
  for k in range(4):
    g = _grads(params, k)
    u_jit, s_jit = step(g, s_jit, params)
    u_eager, s_eager = tx.update(g, s_eager, params)
    # 1 - b2**t loses ~1e-5 relative in float32 at t = 1, differently in and out of jit.
    chex.assert_trees_all_close(u_jit, u_eager, rtol=1e-4)


def test_inject_hyperparams_learning_rate_b1_b2():
  params = _tree()
  injected = optax.inject_hyperparams(optax_ext.angulargrad, static_args=("method",))(
    learning_rate=0.1, method="tan", b1=0.9, b2=0.999
  )
  s_inj = injected.init(params)
  # Change every injected value in the state; the result must equal a plain optimizer
  # built with the new values.
  s_inj.hyperparams["learning_rate"] = jnp.asarray(0.03)
  s_inj.hyperparams["b1"] = jnp.asarray(0.5)
  s_inj.hyperparams["b2"] = jnp.asarray(0.9)
  plain = optax_ext.angulargrad(0.03, method="tan", b1=0.5, b2=0.9)
  s_plain = plain.init(params)
  for k in range(3):
    g = _grads(params, k)
    u_inj, s_inj = jax.jit(injected.update)(g, s_inj, params)
    u_plain, s_plain = jax.jit(plain.update)(g, s_plain, params)
    chex.assert_trees_all_close(u_inj, u_plain, rtol=1e-5, atol=1e-8)


def test_multisteps_equals_one_step_on_the_mean_gradient():
  params = _tree()
  tx = optax_ext.angulargrad(0.1)
  ms = optax.MultiSteps(tx, every_k_schedule=3)
  s_ms = ms.init(params)
  micro = [_grads(params, k) for k in range(3)]
  for g in micro:
    u_ms, s_ms = jax.jit(ms.update)(g, s_ms, params)
  mean = jax.tree.map(lambda *x: sum(x) / 3.0, *micro)
  u_plain, _ = tx.update(mean, tx.init(params), params)
  chex.assert_trees_all_close(u_ms, u_plain, rtol=1e-5, atol=1e-8)


def test_masked_updates_only_the_selected_leaves():
  params = _tree()
  masked = optax.masked(optax_ext.angulargrad(0.1), {"a": True, "b": False})
  g = _grads(params, 1)
  u, _ = masked.update(g, masked.init(params), params)
  np.testing.assert_array_equal(u["b"], g["b"])  # passed through untouched
  sub = optax_ext.angulargrad(0.1)
  u_a, _ = sub.update({"a": g["a"]}, sub.init({"a": params["a"]}), {"a": params["a"]})
  np.testing.assert_allclose(u["a"], u_a["a"], rtol=1e-6)


def test_apply_if_finite_skips_a_nan_step():
  params = _tree()
  tx = optax_ext.angulargrad(0.1, method="cos")
  safe = optax.apply_if_finite(tx, max_consecutive_errors=3)
  s_safe, s_plain = safe.init(params), tx.init(params)
  g1, g2 = _grads(params, 1), _grads(params, 2)
  _, s_safe = safe.update(g1, s_safe, params)
  _, s_plain = tx.update(g1, s_plain, params)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g2)
  u, s_safe = safe.update(bad, s_safe, params)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
  u_safe, _ = safe.update(g2, s_safe, params)
  u_plain, _ = tx.update(g2, s_plain, params)
  chex.assert_trees_all_close(u_safe, u_plain, rtol=1e-6)


@pytest.mark.parametrize("reference_compat", [False, True])
def test_bfloat16_params_keep_their_dtype(reference_compat):
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree())
  tx = optax_ext.angulargrad(0.1, method="tan", reference_compat=reference_compat)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for k in range(3):
    updates, new_state = step(_grads(params, k), state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_trees_all_equal_dtypes(new_state, state)
    chex.assert_tree_all_finite(updates)
    params, state = optax.apply_updates(params, updates), new_state


def test_bad_hyperparameters_name_the_parameter():
  bad = {
    "method": "sin",
    "b1": 1.0,
    "b2": -0.1,
    "eps": 0.0,
    "lambda1": -0.5,
    "lambda2": float("nan"),
    "weight_decay": -1.0,
    "learning_rate": -0.1,
  }
  for name, value in bad.items():
    kwargs = {"learning_rate": 0.1, name: value}
    with pytest.raises(ValueError, match=name):
      optax_ext.angulargrad(**kwargs)
  with pytest.raises(ValueError, match="b2"):
    optax_ext.scale_by_angulargrad(b2=1.5)


def test_weight_decay_is_decoupled():
  p = jnp.array([2.0])
  tx, plain = optax_ext.angulargrad(0.1, weight_decay=0.5), optax_ext.angulargrad(0.1)
  u, _ = tx.update(jnp.array([1.0]), tx.init(p), p)
  u0, _ = plain.update(jnp.array([1.0]), plain.init(p), p)
  np.testing.assert_allclose(u - u0, [-0.1 * 0.5 * 2.0], rtol=1e-6)


def test_mu_dtype():
  tx = optax_ext.scale_by_angulargrad(mu_dtype=jnp.bfloat16)
  p = jnp.ones(3)
  u, state = tx.update(jnp.ones(3), tx.init(p), p)
  assert state.mu.dtype == jnp.bfloat16 and u.dtype == jnp.float32


@pytest.mark.parametrize("reference_compat", [False, True])
def test_alias_equals_optax_chain_of_its_stages(reference_compat):
  # angulargrad() forms -lr·(direction + wd·params) in the pass that writes its
  # state; optax's own stages, chained, must give the same numbers and state.
  lr = optax.linear_schedule(0.1, 0.01, 5)
  wd = optax.linear_schedule(0.0, 0.2, 5)
  mask = {"w": True, "b": {"x": False, "y": True}}
  params = {
    "w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
    "b": {"x": jnp.arange(3.0), "y": jnp.array(0.5)},
  }
  kw = dict(method="tan", b1=0.8, b2=0.95, reference_compat=reference_compat)
  fused = optax_ext.angulargrad(lr, weight_decay=wd, mask=mask, **kw)
  chained = optax.chain(
    optax_ext.scale_by_angulargrad(**kw),
    optax.add_decayed_weights(wd, mask),
    optax.scale_by_learning_rate(lr),
  )
  s_fused, s_chain = fused.init(params), chained.init(params)
  chex.assert_trees_all_equal_structs(s_fused, s_chain)
  step_f, step_c = jax.jit(fused.update), jax.jit(chained.update)
  for t in range(6):
    grads = jax.tree.map(lambda p: jnp.sin(p * (t + 1)) + 0.1 * t, params)
    u_f, s_fused = step_f(grads, s_fused, params)
    u_c, s_chain = step_c(grads, s_chain, params)
    chex.assert_trees_all_close(u_f, u_c, rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_close(s_fused, s_chain, rtol=1e-6, atol=1e-9)
    params = optax.apply_updates(params, u_f)
  assert int(s_fused[0].count) == 6 and int(s_fused[2].count) == 6


def test_alias_mask_as_function_and_as_prefix():
  params = {"w": jnp.ones((2, 3)), "b": {"x": jnp.ones(3), "y": jnp.ones(())}}
  grads = jax.tree.map(jnp.zeros_like, params)  # the direction is 0: only decay moves
  as_fn = optax_ext.angulargrad(0.1, weight_decay=0.5, mask=lambda p: {"w": True, "b": False})
  u, _ = as_fn.update(grads, as_fn.init(params), params)
  np.testing.assert_allclose(u["w"], -0.05 * np.ones((2, 3)))
  np.testing.assert_array_equal(u["b"]["x"], np.zeros(3))
  bad = optax_ext.angulargrad(0.1, weight_decay=0.5, mask={"w": jnp.array(True), "b": False})
  with pytest.raises(TypeError, match="Python booleans"):
    bad.update(grads, bad.init(params), params)
  with pytest.raises(ValueError, match="params"):
    as_fn.update(grads, as_fn.init(params))
