"""SP against a direct NumPy transcription of the paper's Eq. 17-21 and 27-28."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


def damping_inverse(s, y, b_max, upper=None):
  """Eq. 17-21 for one leaf: B⁻¹ (array, clipped to [1/b_max, upper]) and the case taken."""
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
  return np.clip(1.0 / b, 1.0 / b_max, b_max if upper is None else upper), case


def prox(theta, u, binv, p):
  """Eq. 27-28 on one leaf with the tie rule: prune the k = floor(p (n-1)) + 1 entries
  of c = θ + u first in the order (S, |c|, flat index)."""
  c = theta + u
  sal = (1.0 / binv) * (u**2 / 2) * (c**2 / 2)
  k = int(np.floor(p * (c.size - 1))) + 1 if p > 0 else 0
  order = np.lexsort((np.arange(c.size), np.abs(c).ravel(), sal.ravel()))
  keep = np.ones(c.size, bool)
  keep[order[:k]] = False
  keep = keep.reshape(c.shape)
  return np.where(keep, c, 0.0), 1.0 - keep.mean()


def sp_transcription(grad_fn, theta0, lr, p, steps, b_max, mask, momentum=None, nesterov=False):
  theta = {k: v.astype(np.float64) for k, v in theta0.items()}
  prev_t = prev_g = None
  trace = {k: np.zeros_like(v) for k, v in theta.items()}
  out, cases = [], []
  for t in range(steps):
    raw = grad_fn(theta)
    g = {}
    for k in theta:
      trace[k] = (momentum or 0.0) * trace[k] + raw[k]
      g[k] = raw[k] + momentum * trace[k] if nesterov else trace[k]
    new = {}
    for k in theta:
      if t == 0:
        binv, case = np.ones_like(theta[k]), "identity"
      else:
        upper = 1.0 if momentum else None  # with momentum the damping only shrinks steps
        binv, case = damping_inverse(theta[k] - prev_t[k], g[k] - prev_g[k], b_max, upper)
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


@pytest.mark.parametrize("momentum,nesterov", [(None, False), (0.9, True)])
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
        got[t][k], want[t][k], rtol=1e-12, atol=1e-14, err_msg=f"{k} step {t + 1}"
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
        got[t][k], want[t][k], rtol=1e-12, atol=1e-14, err_msg=f"{k} step {t + 1}"
      )
  assert "diagonal" in cases and "scalar" in cases
  # The state's record of the last step is the transcription's pruning: k = 3 of 24.
  pruned = state[1].proximal.pruned
  assert float(pruned["w1"]) == np.mean(want[-1]["w1"] == 0) == 3 / 24
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


def test_zero_gradients_prune_the_smallest_parameters_first():
  # A hand-worked step: zero gradients make every step u and every saliency 0,
  # so the tie rule prunes the k = floor(0.1 * 8) + 1 = 1 entry with the
  # smallest |c| = |θ|, the first by position among equals.
  params = {"w": jnp.asarray([[1.0, -0.5, 2.0], [0.5, 3.0, -1.0], [0.25, 1.5, -0.25]])}
  tx = optax_ext.sp(0.1)
  state = tx.init(params)
  zeros = {"w": jnp.zeros((3, 3))}
  step = jax.jit(tx.update)
  u, state = step(zeros, state, params)
  params = optax.apply_updates(params, u)
  want = np.array([[1.0, -0.5, 2.0], [0.5, 3.0, -1.0], [0.0, 1.5, -0.25]])
  np.testing.assert_array_equal(params["w"], want)
  # Next step: the zero just made is the smallest |c|: it is pruned again, nothing else.
  u, state = step(zeros, state, params)
  np.testing.assert_array_equal(optax.apply_updates(params, u)["w"], want)
  assert float(state[1].proximal.pruned["w"]) == np.float32(1 / 9)


def _tied_problem(seed):
  """Float32 parameters with exact zeros and gradients with zero columns: ties in S and |c|."""
  rng = np.random.default_rng(seed)
  theta = rng.choice([0.0, 0.5, -0.5, 1.0, 2.0], size=(8, 10)).astype(np.float32)
  grads = rng.normal(size=(8, 10)).astype(np.float32)
  grads[:, rng.choice(10, 4, replace=False)] = 0.0  # units a batch left inactive
  return theta, grads


def _np_pruned(theta, u, p):
  """The entries the tie rule prunes, from an independent float32 transcription."""
  c = theta + u
  sal = (u * u * np.float32(0.5)) * (c * c * np.float32(0.5))
  k = int(np.floor(np.float32(p) * np.float32(c.size - 1))) + 1
  order = np.lexsort((np.arange(c.size), np.abs(c).ravel(), sal.ravel()))
  pruned = np.zeros(c.size, bool)
  pruned[order[:k]] = True
  return pruned.reshape(c.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_mode_prunes_exactly_what_a_lexsort_picks(seed):
  theta, grads = _tied_problem(seed)
  lr, p = np.float32(0.1), 0.1
  u = grads * -lr  # what optax.sgd hands to the proximal step
  want = _np_pruned(theta, u, p)
  tx = optax.chain(optax.sgd(0.1), optax_ext.saliency_proximal(p, quantile="exact"))
  params = {"w": jnp.asarray(theta)}
  upd, state = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, upd)["w"])
  np.testing.assert_array_equal(new[want], 0.0)
  np.testing.assert_array_equal(new[~want], (theta + u)[~want])
  assert float(state[1].pruned["w"]) == np.float32(want.mean())
  # SP's first step (B = I) prunes the same entries.
  tx = optax_ext.sp(0.1, sparsity=p, quantile="exact")
  upd, _ = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(params), params)
  np.testing.assert_array_equal(
    np.asarray(optax.apply_updates(params, upd)["w"]) == 0, want | (theta + u == 0)
  )


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_mode_prunes_a_prefix_of_the_same_order_within_its_tolerance(seed):
  rng = np.random.default_rng(seed)
  theta = rng.choice([0.0, 0.5, 1.0, 2.0], size=(40, 60)).astype(np.float32)
  grads = rng.normal(size=(40, 60)).astype(np.float32)
  grads[:, :20] = 0.0
  u = grads * np.float32(-0.1)
  c = theta + u
  sal = (u * u * np.float32(0.5)) * (c * c * np.float32(0.5))
  order = np.lexsort((np.arange(c.size), np.abs(c).ravel(), sal.ravel()))
  k = int(np.floor(np.float32(0.1) * np.float32(c.size - 1))) + 1
  tx = optax.chain(optax.sgd(0.1), optax_ext.saliency_proximal(0.1))
  params = {"w": jnp.asarray(theta)}
  upd, state = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(params), params)
  pruned = (np.asarray(optax.apply_updates(params, upd)["w"]) == 0) & (c != 0)
  count = int(round(float(state[1].pruned["w"]) * c.size))
  assert k <= count <= k + int(np.floor(0.0045 * c.size))
  want = np.zeros(c.size, bool)
  want[order[:count]] = True
  np.testing.assert_array_equal(pruned, want.reshape(c.shape) & (c != 0))


def test_ties_all_is_the_literal_rule():
  theta, grads = _tied_problem(0)
  u = grads * np.float32(-0.1)
  c = theta + u
  sal = (u * u * np.float32(0.5)) * (c * c * np.float32(0.5))
  q = np.quantile(sal, 0.1, method="lower")
  tx = optax.chain(optax.sgd(0.1), optax_ext.saliency_proximal(0.1, quantile="exact", ties="all"))
  params = {"w": jnp.asarray(theta)}
  upd, _ = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, upd)["w"])
  np.testing.assert_array_equal(new == 0, (sal <= q) | (c == 0))
  assert np.mean(sal <= q) > 0.3  # the zero-gradient columns are all pruned


def test_no_momentum_is_structural_and_momentum_caps_the_damping():
  params = {"w": jnp.ones((3, 4))}
  assert isinstance(optax_ext.sp(0.1).init(params)[0], optax.EmptyState)
  assert isinstance(optax_ext.sp(0.1, momentum=0.9).init(params)[0], optax.TraceState)
  # With momentum B⁻¹ never exceeds 1 by default (the damping only shrinks steps);
  # without, the diagonal case enlarges them.
  rng = np.random.default_rng(0)
  for momentum, top in ((None, 10.0), (0.9, 1.0)):
    tx = optax_ext.sp(0.1, sparsity=0.0, momentum=momentum)
    state, p, step = tx.init(params), params, jax.jit(tx.update)
    highest = 0.0
    for _ in range(6):
      g = {"w": jnp.asarray(0.1 * p["w"] + rng.normal(size=(3, 4)) * 1e-3, jnp.float32)}
      u, state = step(g, state, p)
      p = optax.apply_updates(p, u)
      highest = max(highest, float(state[1].damping.binv_max["w"]))
    assert highest <= top
    assert (highest > 1.0) == (momentum is None)


def test_saliency_after_adam_prunes_the_requested_fraction():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(40, 50)), jnp.float32), "b": jnp.ones(50)}
  grads = {"w": jnp.asarray(rng.normal(size=(40, 50)), jnp.float32), "b": jnp.ones(50)}
  for quantile in ("fast", "exact"):
    tx = optax.chain(optax.adam(1e-2), optax_ext.saliency_proximal(0.05, quantile=quantile))
    u, state = jax.jit(tx.update)(grads, tx.init(params), params)
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
  u, state = jax.jit(tx.update)(grads, tx.init(params), params)
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
  state, step = tx.init(params), jax.jit(tx.update)
  for _ in range(2):
    u, state = step(jax.tree.map(lambda p: 0.5 * p, params), state, params)
    params = optax.apply_updates(params, u)
  d = optax_ext.diagnostics(state)
  np.testing.assert_allclose(d["sp/pruned/w"], 16 / 64)
  np.testing.assert_allclose(d["sp/pruned_total"], 16 / 64)
  # g = 0.5 θ: y = s/2, sᵀy < sᵀs, so the diagonal case with B⁻¹ = 1 + ω s².
  assert float(d["sp/diagonal_fraction"]) == 1.0 and float(d["sp/binv_min"]) >= 1.0
