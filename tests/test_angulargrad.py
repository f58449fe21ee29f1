"""AngularGrad against direct NumPy transcriptions of the paper and of the published code."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext
from optax_ext.published.angulargrad import (
  PublishedAngularGradState,
  scale_by_published_angulargrad,
)


def paper_algorithm2(
  grad_fn, theta0, lr, method, steps, b1=0.9, b2=0.999, eps=1e-8, l1=0.5, l2=0.5, wd=0.0
):
  """Algorithm 2 of the paper, line by line, with the literal arctan, cos and tan.

  Returns the parameters after every step, φ at every step, how many
  element-steps took A_min from the previous angle (A_{t-1} < A_t), and the
  update of every step (decoupled weight decay ``wd`` included).
  """
  theta = np.array(theta0, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  g_prev = np.zeros_like(theta)  # g_0 = 0
  a_prev = None
  thetas, phis, took_prev, updates = [], [], 0, []
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
    update = -lr * (phi * m_hat / (np.sqrt(v_hat) + eps) + wd * theta)
    theta = theta + update
    g_prev, a_prev = g, a_t
    thetas.append(theta.copy())
    phis.append(phi)
    updates.append(update)
  return thetas, phis, took_prev, updates


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
    ref, phis, took_prev, _ = paper_algorithm2(_grad, x0, lr, method, steps, b1, b2)
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


def test_float64_params_match_the_float64_transcription():
  # With float64 parameters every state array and every operation is float64:
  # the updates agree with the transcription to float64 rounding.
  rng = np.random.default_rng(3)
  theta0 = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
  steps, lr, wd = 6, 0.05, 0.1
  for method in ("cos", "tan"):
    with jax.enable_x64(True):
      tx = optax_ext.angulargrad(lr, method=method, b1=0.8, b2=0.99, weight_decay=wd)
      params = jax.tree.map(jnp.asarray, theta0)
      state = tx.init(params)
      got = []
      for _ in range(steps):
        grads = jax.tree.map(lambda x: jnp.asarray(_grad(np.asarray(x))), params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
        got.append(jax.tree.map(np.asarray, updates))
      for x in jax.tree.leaves((state[0].mu, state[0].nu, state[0].prev_grad, state[0].tan_angle)):
        assert x.dtype == jnp.float64
    for key, x0 in theta0.items():
      *_, want = paper_algorithm2(_grad, x0, lr, method, steps, 0.8, 0.99, wd=wd)
      for t in range(steps):
        np.testing.assert_allclose(got[t][key], want[t], rtol=1e-12, err_msg=f"{key} {t + 1}")


def test_mu_dtype_keeps_the_first_moment_in_bfloat16():
  # As optax.adam(mu_dtype=...): the update uses the new first moment before it
  # is stored, and the state holds it rounded to bfloat16.
  bf16 = jnp.bfloat16
  tx = optax_ext.scale_by_angulargrad(method="tan", b1=0.5, mu_dtype=bf16)
  p = jnp.zeros(4)
  state = tx.init(p)
  assert state.mu.dtype == bf16 and state.nu.dtype == jnp.float32
  grads = [np.array([0.3, -1.7, 2.9, 0.01], np.float32) * (k + 1) for k in range(3)]
  step = jax.jit(tx.update)
  m_stored = np.zeros(4, np.float32)
  v = np.zeros(4, np.float64)
  g_prev, r_prev = np.zeros(4), None
  for t, g in enumerate(grads, start=1):
    u, state = step(jnp.asarray(g), state)
    assert state.mu.dtype == bf16 and u.dtype == jnp.float32
    m_new = np.float32(0.5) * m_stored + np.float32(1 - 0.5) * g  # from the stored moment
    m_stored = np.asarray(jnp.asarray(m_new).astype(bf16), np.float32)
    np.testing.assert_array_equal(np.asarray(state.mu, np.float32), m_stored)
    v = 0.999 * v + 0.001 * np.square(g.astype(np.float64))
    r = np.abs(g - g_prev) / np.abs(1 + g * g_prev)  # tan A_t
    r_min = r if r_prev is None else np.minimum(r, r_prev)
    phi = np.tanh(r_min) * 0.5 + 0.5
    want = phi * m_new / (1 - 0.5**t) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(u, want, rtol=1e-5)
    g_prev, r_prev = g.astype(np.float64), r


def published_rule(grads, lr, method, b1=0.9, b2=0.999, eps=1e-8, none_above_replaces=False):
  """The published cos/tan AngularGrad step for one tensor, PyTorch semantics in NumPy.

  ``none_above_replaces=True`` is the rule with the other reading of the
  fallback (replace when no element is above), to show the tests tell the two apart.
  """
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
    with np.errstate(divide="ignore", invalid="ignore"):
      tan_theta = np.abs((previous_grad - grad) / (1 + previous_grad * grad))
    cos_theta = 1 / np.sqrt(1 + np.square(tan_theta))
    angle = np.arctan(tan_theta) * (180 / 3.141592653589793238)
    # torch.unique sorts False before True and counts each value present.
    values, count = np.unique(angle > stored_min, return_counts=True)
    try:
      replace = bool(count[1] < count[0])
    except IndexError:
      # `ans1[0] == "False"`: Tensor.__eq__ returns NotImplemented for a str,
      # so Python compares identities, which differ.
      replace = none_above_replaces and not values[0]
    replaced.append(replace)
    if replace:
      stored_min = angle
      final = cos_theta if method == "cos" else tan_theta
    coeff = np.tanh(np.abs(final)) * 0.5 + 0.5
    step_size = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
    theta = theta - step_size * (m * coeff) / denom
    previous_grad = grad
    thetas.append(theta.copy())
  return thetas, replaced


def _run_published(grads, method):
  with jax.enable_x64(True):
    tx = optax_ext.angulargrad(0.1, method=method, reference_compat=True)
    p = jnp.zeros(grads[0].shape)
    state = tx.init(p)
    thetas = []
    for g in grads:
      u, state = tx.update(jnp.asarray(g), state, p)
      p = p + u
      thetas.append(np.asarray(p))
  return thetas, state


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
  got, state = _run_published(grads, method)
  for t in range(len(grads)):
    np.testing.assert_allclose(got[t], ref[t], rtol=1e-9, err_msg=f"step {t + 1}")
  assert isinstance(state[0], PublishedAngularGradState)


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_reference_compat_vote_through_exactly_zero_angles(method):
  # Gradients that repeat exactly give angles of exactly 0, none above the
  # stored ones: the fallback keeps the stored value. One parameter with a
  # constant gradient (cos: φ would become tanh(1)/2 + 1/2 on replacing), and a
  # leaf whose stored tan is non-zero when its gradients start repeating (tan:
  # φ would fall back to 1/2 on replacing).
  one = [np.array([3.0])] * 5
  three = [
    np.array(g) for g in ([1.0, 2.0, 3.0], [1.0, 2.0, 5.0], [1.0, 2.0, 5.0], [1.0, 2.0, 5.0])
  ]
  for grads, replaced_want in ((one, [False] * 5), (three, [False, True, False, False])):
    ref, replaced = published_rule(grads, 0.1, method)
    assert replaced == replaced_want
    got, _ = _run_published(grads, method)
    for t in range(len(grads)):
      np.testing.assert_allclose(got[t], ref[t], rtol=1e-9, err_msg=f"step {t + 1}")
  # The other reading of the fallback gives another trajectory on these problems.
  differs = one if method == "cos" else three
  other, _ = published_rule(differs, 0.1, method, none_above_replaces=True)
  assert not np.allclose(other[-1], published_rule(differs, 0.1, method)[0][-1], rtol=1e-3)


def test_reference_compat_phi_stays_at_half_on_a_smooth_problem():
  """With the stored angle starting at 0 the vote does not pass (docs/design.md, AngularGrad)."""
  tx = optax_ext.angulargrad(0.1, reference_compat=True)
  p = jnp.array([-1.0, 0.5, 2.0])
  state = tx.init(p)
  step = jax.jit(tx.update)
  for _ in range(30):
    u, state = step(2 * p, state, p)
    p = p + u
  diag = optax_ext.diagnostics(state)
  assert float(diag["angulargrad/phi_max"]) == 0.5
  assert float(diag["angulargrad/phi_at_floor"]) == 1.0


def test_reference_compat_switch_returns_the_published_transform():
  p = jnp.ones(3)
  s = optax_ext.scale_by_angulargrad(method="tan", reference_compat=True).init(p)
  assert isinstance(s, PublishedAngularGradState)
  direct = scale_by_published_angulargrad(method="tan")
  g = jnp.array([0.5, -1.0, 2.0])
  u1, _ = optax_ext.scale_by_angulargrad(method="tan", reference_compat=True).update(g, s)
  u2, _ = direct.update(g, direct.init(p))
  np.testing.assert_array_equal(u1, u2)


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
  with pytest.raises(ValueError, match="b1"):
    optax_ext.scale_by_angulargrad(b1=-0.5, reference_compat=True)


def test_weight_decay_is_decoupled():
  p = jnp.array([2.0])
  tx, plain = optax_ext.angulargrad(0.1, weight_decay=0.5), optax_ext.angulargrad(0.1)
  u, _ = tx.update(jnp.array([1.0]), tx.init(p), p)
  u0, _ = plain.update(jnp.array([1.0]), plain.init(p), p)
  np.testing.assert_allclose(u - u0, [-0.1 * 0.5 * 2.0], rtol=1e-6)


def test_alias_mask_as_function_and_as_prefix():
  params = {"w": jnp.ones((2, 3)), "b": {"x": jnp.ones(3), "y": jnp.ones(())}}
  grads = jax.tree.map(jnp.zeros_like, params)  # the direction is 0: only decay moves
  for mask in (lambda p: {"w": True, "b": False}, {"w": True, "b": False}):
    tx = optax_ext.angulargrad(0.1, weight_decay=0.5, mask=mask)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(u["w"], -0.05 * np.ones((2, 3)))
    np.testing.assert_array_equal(u["b"]["x"], np.zeros(3))
    np.testing.assert_array_equal(u["b"]["y"], 0.0)
  with pytest.raises(ValueError, match="params"):
    tx.update(grads, tx.init(params))


def _bits(tree):
  return [(x.dtype, np.asarray(x).tobytes()) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("method,reference_compat", [("cos", False), ("tan", False), ("cos", True)])
def test_cpu_fusion_setting_changes_no_bit(dtype, method, reference_compat):
  # The seam only lays the work out differently: updates and states must be the
  # same bits with it on and off. jit keeps the programs it traced, so each
  # setting builds and jits its own function.
  params0 = {
    "w": (jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)).astype(dtype),
    "k": jnp.linspace(-2.0, 2.0, 2048).reshape(16, 128).astype(dtype),  # past STATS_SAMPLE
    "b": {"x": jnp.arange(3.0).astype(dtype), "y": jnp.array(0.5, dtype)},
  }
  mask = {"w": True, "k": True, "b": {"x": False, "y": True}}
  grads = [
    jax.tree.map(
      lambda p, k=k: (jnp.sin(p.astype(jnp.float32) * (k + 1)) + 0.1 * k).astype(dtype), params0
    )
    for k in range(4)
  ]
  grads[2] = grads[1]  # a repeated gradient: angles of exactly 0

  def run(fusion):
    optax_ext.config.update("cpu_fusion", fusion)
    try:
      tx = optax_ext.angulargrad(
        optax.linear_schedule(0.1, 0.01, 4), method, b1=0.8, b2=0.95,
        weight_decay=optax.linear_schedule(0.0, 0.2, 4), mask=mask,
        reference_compat=reference_compat,
      )  # fmt: skip
      step = jax.jit(lambda g, s, p: tx.update(g, s, p))
      params, state, out = params0, tx.init(params0), []
      for g in grads:
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append((_bits(updates), _bits(state)))
      return out
    finally:
      optax_ext.config.update("cpu_fusion", True)

  on, off = run(True), run(False)
  for t, (a, b) in enumerate(zip(on, off)):
    assert a == b, f"step {t + 1}"
