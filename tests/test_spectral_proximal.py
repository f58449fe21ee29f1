"""SP against a direct NumPy transcription of the paper's Eq. 17-21 and 27-28."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


def damping_inverse(s, y, b_max):
  """Eq. 17-21 for one leaf: B⁻¹ (array) and the case taken."""
  sts, sty = float(np.sum(s * s)), float(np.sum(s * y))
  if sts == 0:
    return np.ones_like(s), "identity"
  if sts > sty:
    omega = (sts - sty) / float(np.sum(s**4))  # Eq. 20
    b = 1.0 / (1.0 + omega * s**2)  # Eq. 17
    case = "diagonal"
  else:
    b = np.full_like(s, sty / sts)  # Oren-Luenberger scaling
    case = "scalar"
  return np.clip(1.0 / b, 1.0 / b_max, b_max), case


def prox(theta, u, binv, p):
  """Eq. 27-28 on one leaf: prune c = θ + u where S ≤ Q_p(S)."""
  c = theta + u
  sal = (1.0 / binv) * (u**2 / 2) * (c**2 / 2)
  q = np.quantile(sal, p, method="lower")
  keep = sal > q
  return np.where(keep, c, 0.0), 1.0 - keep.mean()


def sp_transcription(grad_fn, theta0, lr, p, steps, b_max, mask, momentum=0.0, nesterov=False):
  theta = {k: v.astype(np.float64) for k, v in theta0.items()}
  prev_t = prev_g = None
  trace = {k: np.zeros_like(v) for k, v in theta.items()}
  out, cases = [], []
  for t in range(steps):
    raw = grad_fn(theta)
    g = {}
    for k in theta:
      trace[k] = momentum * trace[k] + raw[k]
      g[k] = raw[k] + momentum * trace[k] if nesterov else trace[k]
    new = {}
    for k in theta:
      if t == 0:
        binv, case = np.ones_like(theta[k]), "identity"
      else:
        binv, case = damping_inverse(theta[k] - prev_t[k], g[k] - prev_g[k], b_max)
      cases.append(case)
      u = -lr * binv * g[k]
      new[k] = prox(theta[k], u, binv, p)[0] if mask[k] else theta[k] + u
    prev_t, prev_g = theta, g
    theta = new
    out.append({k: v.copy() for k, v in theta.items()})
  return out, cases


def _run(tx, grad_fn, theta0, steps):
  params = {k: jnp.asarray(v, jnp.float64) for k, v in theta0.items()}
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  out = []
  for _ in range(steps):
    g = {
      k: jnp.asarray(v) for k, v in grad_fn({k: np.asarray(x) for k, x in params.items()}).items()
    }
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    out.append({k: np.asarray(v) for k, v in params.items()})
  return out, state


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, True)])
def test_matches_transcription_on_a_multi_leaf_quadratic(momentum, nesterov):
  rng = np.random.default_rng(0)
  # Leaf "soft" has curvatures below 1 (sᵀy < sᵀs: the diagonal case), "stiff" above
  # 1 (the scalar case), "bias" is 1-D and never pruned.
  h = {
    "soft": rng.uniform(0.2, 0.8, (6, 5)),
    "stiff": rng.uniform(1.5, 4.0, (4, 4)),
    "bias": rng.uniform(0.5, 2.0, (5,)),
  }
  centre = {k: rng.normal(size=v.shape) for k, v in h.items()}
  grad_fn = lambda th: {k: h[k] * (th[k] - centre[k]) for k in th}
  theta0 = {k: rng.normal(size=v.shape) for k, v in h.items()}
  mask = {"soft": True, "stiff": True, "bias": False}
  lr, p, steps = 0.1, 0.1, 25
  with jax.enable_x64(True):
    got, _ = _run(
      optax_ext.sp(lr, sparsity=p, momentum=momentum, nesterov=nesterov, quantile="exact"),
      grad_fn,
      theta0,
      steps,
    )
  want, cases = sp_transcription(grad_fn, theta0, lr, p, steps, 10.0, mask, momentum, nesterov)
  for t in range(steps):
    for k in theta0:
      np.testing.assert_allclose(
        got[t][k], want[t][k], rtol=1e-7, atol=1e-10, err_msg=f"{k} step {t + 1}"
      )
  assert "diagonal" in cases and "scalar" in cases


def test_matches_transcription_on_a_tiny_mlp():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 3))
  y = np.sin(x @ np.array([1.0, -2.0, 0.5]))[:, None]

  def grad_fn(th):
    def loss(p):
      hdn = jnp.tanh(x @ p["w1"] + p["b1"])
      return jnp.mean((hdn @ p["w2"] + p["b2"] - y) ** 2)

    with jax.enable_x64(True):
      g = jax.grad(loss)({k: jnp.asarray(v) for k, v in th.items()})
    return {k: np.asarray(v, np.float64) for k, v in g.items()}

  theta0 = {
    "w1": rng.normal(size=(3, 8)) * 0.5,
    "b1": np.zeros(8),
    "w2": rng.normal(size=(8, 1)) * 0.5,
    "b2": np.zeros(1),
  }
  mask = {"w1": True, "b1": False, "w2": True, "b2": False}
  steps = 20
  with jax.enable_x64(True):
    got, state = _run(optax_ext.sp(0.2, sparsity=0.1, quantile="exact"), grad_fn, theta0, steps)
  want, cases = sp_transcription(grad_fn, theta0, 0.2, 0.1, steps, 10.0, mask)
  for t in range(steps):
    for k in theta0:
      np.testing.assert_allclose(
        got[t][k], want[t][k], rtol=1e-6, atol=1e-9, err_msg=f"{k} step {t + 1}"
      )
  assert "diagonal" in cases and "scalar" in cases
  # The state's record of the last step agrees with the transcription's pruning.
  pruned = state[1].proximal.pruned
  assert np.isclose(float(pruned["w1"]), np.mean(want[-1]["w1"] == 0), atol=1 / 24)
  assert float(pruned["b1"]) == 0.0


def test_damping_bounds_and_degenerate_leaves():
  params = {
    "moving": jnp.array([[1.0, 2.0], [3.0, 4.0]]),
    "frozen": jnp.ones((2, 2)),
    "scalar": jnp.array(1.0),
  }
  tx = optax_ext.scale_by_spectral_damping(b_max=5.0)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: p * 0.0 + 1.0, params)
  for i in range(6):
    u, state = tx.update(grads, state, params)
    chex.assert_tree_all_finite(u)
    params = {
      "moving": params["moving"] * (1.0 + 0.3 * (-1) ** i),
      "frozen": params["frozen"],
      "scalar": params["scalar"] + 1e-3,
    }
    grads = jax.tree.map(lambda g: g * -2.5, grads)
    for lo, hi in zip(jax.tree.leaves(state.binv_min), jax.tree.leaves(state.binv_max)):
      assert 1 / 5.0 - 1e-6 <= float(lo) <= float(hi) <= 5.0 + 1e-6
  # A leaf that never moves keeps B = I.
  assert int(state.diagonal["frozen"]) == -1
  np.testing.assert_allclose(u["frozen"], grads["frozen"] / -2.5)


def test_zero_gradients_and_first_step():
  params = {"w": jnp.ones((3, 3))}
  tx = optax_ext.sp(0.1)
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update({"w": jnp.zeros((3, 3))}, state, params)
    chex.assert_tree_all_finite(u)


def test_saliency_after_adam_prunes_the_requested_fraction():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(40, 50)), jnp.float32), "b": jnp.ones(50)}
  grads = {"w": jnp.asarray(rng.normal(size=(40, 50)), jnp.float32), "b": jnp.ones(50)}
  for quantile in ("fast", "exact"):
    tx = optax.chain(optax.adam(1e-2), optax_ext.saliency_proximal(0.05, quantile=quantile))
    u, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    frac = float(jnp.mean(new["w"] == 0))
    assert abs(frac - 0.05) <= 0.005, (quantile, frac)
    np.testing.assert_array_equal(new["b"] != 0, True)
    assert abs(float(state[1].pruned["w"]) - frac) < 1e-6


def test_global_scope_uses_one_threshold():
  rng = np.random.default_rng(0)
  params = {
    "a": jnp.asarray(rng.normal(size=(10, 10)) * 10, jnp.float32),
    "b": jnp.asarray(rng.normal(size=(10, 10)) * 0.01, jnp.float32),
  }
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.chain(
    optax.sgd(0.1), optax_ext.saliency_proximal(0.3, scope="global", quantile="exact")
  )
  u, state = tx.update(grads, tx.init(params), params)
  pr = state[1].pruned
  # All the pruning lands on the small-magnitude leaf.
  assert float(pr["b"]) > 0.55 and float(pr["a"]) < 0.05
  np.testing.assert_allclose(float(state[1].pruned_total), 0.3, atol=0.006)


def test_secant_iterate_reproduces_published_rule():
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
  g = {"w": jnp.array([[0.3, 0.1], [-0.2, 0.4]])}
  tx = optax_ext.scale_by_spectral_damping(secant="iterate", b_max=1e6)
  _, state = tx.update(g, tx.init(params), params)
  u, _ = tx.update(g, state, params)
  binv, _ = damping_inverse(np.asarray(params["w"]), np.asarray(g["w"]), 1e6)
  np.testing.assert_allclose(u["w"], binv * np.asarray(g["w"]), rtol=1e-5)


def test_bad_hyperparameters():
  for kwargs, name in [
    ({"sparsity": 1.0}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"b_max": 0.5}, "b_max"),
    ({"scope": "layer"}, "scope"),
    ({"quantile": "approx"}, "quantile"),
    ({"secant": "x"}, "secant"),
    ({"momentum": 1.5}, "momentum"),
    ({"learning_rate": -1.0}, "learning_rate"),
  ]:
    with pytest.raises(ValueError, match=name):
      optax_ext.sp(**{"learning_rate": 0.1, **kwargs})
  tx = optax_ext.saliency_proximal()
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones((2, 2))}, tx.init({"w": jnp.ones((2, 2))}))


def test_diagnostics():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)}
  tx = optax_ext.sp(0.1, sparsity=0.25, quantile="exact")
  state = tx.init(params)
  for _ in range(2):
    u, state = tx.update(jax.tree.map(lambda p: 0.5 * p, params), state, params)
    params = optax.apply_updates(params, u)
  d = optax_ext.diagnostics(state)
  np.testing.assert_allclose(d["sp/pruned/w"], 16 / 64)
  np.testing.assert_allclose(d["sp/pruned_total"], 16 / 64)
  # g = 0.5 θ: y = s/2, sᵀy < sᵀs, so the diagonal case with B⁻¹ = 1 + ω s².
  assert float(d["sp/diagonal_fraction"]) == 1.0 and float(d["sp/binv_min"]) >= 1.0
