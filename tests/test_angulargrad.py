"""AngularGrad against direct NumPy transcriptions of the paper and of the published code."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


def paper_angulargrad(grads_seq, theta0, lr, method, b1=0.9, b2=0.999, eps=1e-8, l1=0.5, l2=0.5):
  """Algorithm 2 of the paper, line by line, with the literal arctan/cos/tan."""
  theta = theta0.copy()
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  g_prev = np.zeros_like(theta)
  a_prev = None
  out, phis = [], []
  for t, g in enumerate(grads_seq(theta) if callable(grads_seq) else grads_seq, start=1):
    g = g(theta) if callable(g) else g
    a_t = np.arctan(np.abs((g - g_prev) / (1.0 + g * g_prev)))
    a_min = a_t if a_prev is None else np.minimum(a_prev, a_t)
    ang = np.cos(a_min) if method == "cos" else np.tan(a_min)
    phi = np.tanh(np.abs(ang)) * l1 + l2
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    theta = theta - lr * phi * m_hat / (np.sqrt(v_hat) + eps)
    g_prev, a_prev = g, a_t
    out.append(theta.copy())
    phis.append(phi)
  return out, phis


def _grad_fn(theta):
  # A non-quadratic objective so consecutive gradients turn: sum(x^4/4 - 2x^2 + sin(3x)).
  return theta**3 - 4 * theta + 3 * np.cos(3 * theta)


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_matches_paper_transcription_for_50_steps(method):
  rng = np.random.default_rng(0)
  theta0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,)), "c": rng.normal(size=())}
  with jax.enable_x64(True):
    tx = optax_ext.angulargrad(0.05, method=method)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), theta0)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    traj = []
    for _ in range(50):
      grads = jax.tree.map(lambda x: jnp.asarray(_grad_fn(np.asarray(x))), params)
      updates, state = step(grads, state, params)
      params = optax.apply_updates(params, updates)
      traj.append(jax.tree.map(np.asarray, params))
    for key in theta0:
      ref, _ = paper_angulargrad([_grad_fn] * 50, theta0[key], 0.05, method)
      for t in range(50):
        np.testing.assert_allclose(
          traj[t][key], ref[t], rtol=1e-6, atol=1e-12, err_msg=f"{key} step {t + 1}"
        )


def test_first_step_by_hand():
  # g_0 = 0, so A_1 = arctan|g|; with g = 2: cos A = 1/sqrt(5), φ = tanh(1/sqrt 5)/2 + 1/2.
  # Adam's first direction is sign(g) (up to eps), so the update is -lr·φ.
  tx = optax_ext.angulargrad(1.0, method="cos", eps=1e-12)
  p = jnp.array([0.0])
  u, state = tx.update(jnp.array([2.0]), tx.init(p), p)
  phi = np.tanh(1 / np.sqrt(5)) / 2 + 0.5
  # float32 bias corrections (1 - 0.999 rounds) limit agreement to ~1e-5.
  np.testing.assert_allclose(u, [-phi], rtol=2e-5)
  np.testing.assert_allclose(state[0].phi_stats, [phi, phi, phi, 0.0], rtol=1e-6)
  # tan variant: tan(arctan 2) = 2.
  tx = optax_ext.angulargrad(1.0, method="tan", eps=1e-12)
  u, _ = tx.update(jnp.array([2.0]), tx.init(p), p)
  np.testing.assert_allclose(u, [-(np.tanh(2.0) / 2 + 0.5)], rtol=2e-5)


def test_minus_one_product_and_zero_gradients_are_finite():
  tx = optax_ext.angulargrad(0.1, method="tan")
  p = jnp.zeros(2)
  state = tx.init(p)
  _, state = tx.update(jnp.array([2.0, 0.0]), state, p)
  u, state = tx.update(jnp.array([-0.5, 0.0]), state, p)  # g·g_prev = -1: angle π/2
  chex.assert_tree_all_finite(u)
  # cos variant at exactly π/2: φ = λ2 (the floor); tan variant: φ = λ1 + λ2.
  txc = optax_ext.angulargrad(1.0, method="cos", eps=1e-12)
  s = txc.init(p)
  _, s = txc.update(jnp.array([2.0, 1.0]), s, p)
  _, s = txc.update(jnp.array([-0.5, 1.0]), s, p)  # A_2 = π/2, but A_min = A_1
  assert float(s[0].phi_stats[1]) > 0.6
  _, s = txc.update(jnp.array([2.0, 1.0]), s, p)  # A_3 = π/2 = A_2, so A_min = π/2
  assert np.isclose(float(s[0].phi_stats[1]), 0.5)  # min φ is the floor
  for _ in range(3):
    u, state = tx.update(jnp.zeros(2), state, p)
    chex.assert_tree_all_finite(u)


def reference_transcription(grads, lr, method, b1=0.9, b2=0.999, eps=1e-8):
  """The published cos/tan AngularGrad step for one tensor (PyTorch semantics)."""
  theta = np.zeros_like(grads[0])
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  prev = np.zeros_like(theta)
  stored_min = np.zeros_like(theta)  # degrees, broadcast of the scalar 0
  final = np.zeros_like(theta)
  out, replaced = [], []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    angle = np.degrees(np.arctan(np.abs((g - prev) / (1 + g * prev))))
    above = int(np.sum(angle > stored_min))
    below = angle.size - above
    replaced.append(above < below)
    if above < below:
      stored_min = angle
      final = np.cos(np.radians(angle)) if method == "cos" else np.tan(np.radians(angle))
    phi = np.tanh(np.abs(final)) * 0.5 + 0.5
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    theta = theta - step * (m * phi) / (np.sqrt(v) + eps)
    prev = g
    out.append(theta.copy())
  return out, replaced


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_reference_compat_matches_published_rules(method):
  g1 = np.array([1.0, 2.0, 3.0, 4.0])
  grads = [
    g1,
    g1.copy(),  # identical: every angle 0, none above the stored 0 -> replace
    np.array([5.0, 2.0, 3.0, 4.0]),  # one above stored (0,0,0,0)... 1 of 4 -> replace
    np.array([2.0, 7.0, -3.0, 4.0]),  # 2 above, 2 not: a tie keeps the stored values
    np.array([-2.0, -9.0, 8.0, 6.0]),  # every element above -> keep
  ]
  ref, replaced = reference_transcription(grads, 0.1, method)
  with jax.enable_x64(True):
    tx = optax_ext.angulargrad(0.1, method=method, reference_compat=True)
    p = jnp.zeros(4, jnp.float64)
    state = tx.init(p)
    for t, g in enumerate(grads):
      u, state = tx.update(jnp.asarray(g), state, p)
      p = p + u
      np.testing.assert_allclose(np.asarray(p), ref[t], rtol=1e-9, err_msg=f"step {t + 1}")
  # The scripted cases really exercised each branch: all above at step 1 (kept), none
  # above (replaced), 1 of 4 above (replaced), a 2-2 tie (kept), all above (kept).
  assert replaced == [False, True, True, False, False]


def test_reference_compat_phi_stays_at_half_on_smooth_problems():
  """With the stored angle starting at 0, the vote almost never passes (SPEC §1)."""
  tx = optax_ext.angulargrad(0.1, reference_compat=True)
  p = jnp.array([-1.0, 0.5, 2.0])
  state = tx.init(p)
  for _ in range(30):
    u, state = tx.update(2 * p, state, p)
    p = p + u
  diag = optax_ext.diagnostics(state)
  assert float(diag["angulargrad/phi_max"]) == 0.5 and float(diag["angulargrad/phi_at_floor"]) == 1


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="method"):
    optax_ext.angulargrad(0.1, method="sin")
  with pytest.raises(ValueError, match="b1"):
    optax_ext.angulargrad(0.1, b1=1.0)
  with pytest.raises(ValueError, match="b2"):
    optax_ext.angulargrad(0.1, b2=-0.1)
  with pytest.raises(ValueError, match="eps"):
    optax_ext.angulargrad(0.1, eps=0.0)
  with pytest.raises(ValueError, match="learning_rate"):
    optax_ext.angulargrad(-0.1)
  with pytest.raises(ValueError, match="weight_decay"):
    optax_ext.angulargrad(0.1, weight_decay=-1.0)


def test_weight_decay_is_decoupled():
  tx = optax_ext.angulargrad(0.1, weight_decay=0.5)
  plain = optax_ext.angulargrad(0.1)
  p = jnp.array([2.0])
  u, _ = tx.update(jnp.array([1.0]), tx.init(p), p)
  u0, _ = plain.update(jnp.array([1.0]), plain.init(p), p)
  np.testing.assert_allclose(u - u0, [-0.1 * 0.5 * 2.0], rtol=1e-6)


def test_mu_dtype():
  tx = optax_ext.scale_by_angulargrad(mu_dtype=jnp.bfloat16)
  p = jnp.ones(3)
  u, state = tx.update(jnp.ones(3), tx.init(p), p)
  assert state.mu.dtype == jnp.bfloat16 and u.dtype == jnp.float32
