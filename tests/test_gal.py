"""GAL against a NumPy transcription of Algorithm 1 (linear model, linear regressor)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


def ce(z, y):
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.mean(logp[np.arange(len(y)), y])


def ce_grad(z, y):
  e = np.exp(z - z.max(-1, keepdims=True))
  p = e / e.sum(-1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  return p / len(y)


def mse(z, y):
  return np.mean((z - y) ** 2)


def mse_grad(z, y):
  return 2 * (z - y) / z.size


def gal_step(W, b, A, c, x, y, lr, alpha, beta, loss, loss_grad, linear="sum"):
  """Algorithm 1 for z = xW + b and the linear regressor h(z) = zA + c."""
  z = x @ W + b
  eta_t = beta * lr
  l0 = loss(z, y)
  nab = loss_grad(z, y)

  def parts(A, c):
    v = z @ A + c
    vn = np.linalg.norm(v, axis=1, keepdims=True)
    v_adj = alpha * np.linalg.norm(nab, axis=1, keepdims=True) * v / vn  # per-sample
    g = nab + v_adj
    tent = loss(z - eta_t * g, y)
    dots = np.sum(nab * g, axis=1)
    r = tent - l0 + eta_t * (dots.sum() if linear == "sum" else dots.mean())
    return g, tent, r

  g, tent, r = parts(A, c)
  use = tent <= l0
  cot = g if use else nab
  dW, db = x.T @ cot, cot.sum(0)
  # The regressor's gradient of |r|, by central differences in float64.
  h = 1e-6
  dA, dc = np.zeros_like(A), np.zeros_like(c)
  for idx in np.ndindex(A.shape):
    Ap, Am = A.copy(), A.copy()
    Ap[idx] += h
    Am[idx] -= h
    dA[idx] = (abs(parts(Ap, c)[2]) - abs(parts(Am, c)[2])) / (2 * h)
  for idx in np.ndindex(c.shape):
    cp, cm = c.copy(), c.copy()
    cp[idx] += h
    cm[idx] -= h
    dc[idx] = (abs(parts(A, cp)[2]) - abs(parts(A, cm)[2])) / (2 * h)
  return dict(use=use, tent=tent, r=abs(r), dW=dW, db=db, dA=dA, dc=dc, g=g, nab=nab)


def _setup(task, seed=0, d=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(6, 4))
  y = rng.integers(0, d, 6) if task == "ce" else rng.normal(size=(6, d))
  W, b = rng.normal(size=(4, d)) * 0.5, np.zeros(d)
  return x, y, W, b


def _jax_loss(task, y):
  if task == "ce":
    return lambda z: optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(y)).mean()
  return lambda z: jnp.mean((z - jnp.asarray(y)) ** 2)


@pytest.mark.parametrize("task", ["ce", "mse"])
# A small adjustment and tentative step lower the loss (adjusted gradient used); an
# adjustment ten times the gradient, in the regressor's arbitrary direction, does not.
@pytest.mark.parametrize("alpha,beta,branch", [(0.05, 0.5, True), (10.0, 50.0, False)])
@pytest.mark.parametrize("linear", ["sum", "mean"])
def test_one_and_several_steps_match_transcription(task, alpha, beta, branch, linear):
  d, lr = 3, 0.1
  x, y, W, b = _setup(task, d=d)
  loss, loss_grad = (ce, ce_grad) if task == "ce" else (mse, mse_grad)
  with jax.enable_x64(True):
    tx = optax_ext.gal(
      d, hidden=(), alpha=alpha, beta=beta, learning_rate=lr, reference_compat=(linear == "mean")
    )
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    state = tx.init(params)
    theta = jax.tree.map(lambda a: np.asarray(a, np.float64), state.regressor_params)
    A, c = theta["Dense_0"]["kernel"], theta["Dense_0"]["bias"]
    model = lambda p: jnp.asarray(x) @ p["W"] + p["b"]
    step = jax.jit(
      lambda s, p: tx.update(None, s, p, **optax_ext.gal_extra_args(model, p, _jax_loss(task, y)))
    )
    branches = []
    for t in range(4):
      ref = gal_step(W, b, A, c, x, y, lr, alpha, beta, loss, loss_grad, linear)
      grads, state = step(state, params)
      branches.append(bool(ref["use"]))
      assert float(state.used_adjusted) == float(ref["use"]), t
      np.testing.assert_allclose(state.tentative_loss, ref["tent"], rtol=1e-7)
      np.testing.assert_allclose(state.remainder, ref["r"], rtol=1e-6, atol=1e-12)
      np.testing.assert_allclose(grads["W"], ref["dW"], rtol=1e-7, atol=1e-12)
      np.testing.assert_allclose(grads["b"], ref["db"], rtol=1e-7, atol=1e-12)
      new_theta = state.regressor_params["Dense_0"]
      # The regressor's parameters are float32: compare its SGD step with the
      # transcription's gradient, to float32 rounding of the parameters.
      np.testing.assert_allclose((A - new_theta["kernel"]) / lr, ref["dA"], rtol=1e-4, atol=2e-6)
      np.testing.assert_allclose((c - new_theta["bias"]) / lr, ref["dc"], rtol=1e-4, atol=2e-6)
      # Advance both: the model by SGD, the regressor as GAL did.
      W, b = W - lr * ref["dW"], b - lr * ref["db"]
      A = np.asarray(new_theta["kernel"], np.float64)
      c = np.asarray(new_theta["bias"], np.float64)
      params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    assert branches[0] == branch  # the constructed case takes the intended branch


def test_vanilla_gradient_path_equals_the_one_pass_path():
  x, y, W, b = _setup("ce", seed=3)
  params = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  model = lambda p: jnp.asarray(x, jnp.float32) @ p["W"] + p["b"]
  loss = _jax_loss("ce", y)
  used = []
  for alpha, beta in ((0.05, 0.5), (10.0, 50.0)):  # both branches
    tx = optax_ext.gal(3, alpha=alpha, beta=beta, learning_rate=0.1)
    s1 = s2 = tx.init(params)
    extra = optax_ext.gal_extra_args(model, params, loss)
    vanilla = jax.grad(lambda p: loss(model(p)))(params)
    u1, s1 = tx.update(None, s1, params, **extra)
    u2, s2 = tx.update(vanilla, s2, params, **extra)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u1, u2)
    assert float(s1.used_adjusted) == float(s2.used_adjusted)
    used.append(float(s1.used_adjusted))
  assert used == [1.0, 0.0]


def test_model_is_differentiated_once_per_step():
  x, y, W, b = _setup("ce")
  params = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  loss = _jax_loss("ce", y)
  tx = optax.chain(optax_ext.gal(3, learning_rate=0.1), optax.sgd(0.1))
  calls = {"forward": 0, "vjp": 0}

  def model(p):
    calls["forward"] += 1
    return jnp.asarray(x, jnp.float32) @ p["W"] + p["b"]

  @jax.jit
  def step(params, state):
    extra = optax_ext.gal_extra_args(model, params, loss)
    inner = extra["outputs_vjp"]

    def counted(ct):
      calls["vjp"] += 1
      return inner(ct)

    extra["outputs_vjp"] = counted
    u, state = tx.update(None, state, params, **extra)
    return optax.apply_updates(params, u), state

  params, state = step(params, tx.init(params))
  assert calls == {"forward": 1, "vjp": 1}
  # And in the compiled step's jaxpr: one matmul forward (x @ W), one backward (xᵀ @ ct).
  jaxpr = str(jax.make_jaxpr(step)(params, state))
  assert (
    jaxpr.count("dot_general")
    - str(jax.make_jaxpr(lambda s: tx.init(params))(state)).count("dot_general")
    >= 2
  )


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam", "angulargrad", "sp", "insgd"])
def test_in_front_of_other_optimizers(base):
  x, y, W, b = _setup("ce", seed=5)
  params = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  model = lambda p: jnp.asarray(x, jnp.float32) @ p["W"] + p["b"]
  loss = _jax_loss("ce", y)
  opt = {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.1, momentum=0.9),
    "adam": optax.adam(0.05),
    "angulargrad": optax_ext.angulargrad(0.05),
    "sp": optax_ext.sp(0.1, sparsity=0.05),
    "insgd": optax_ext.insgd(0.1),
  }[base]
  tx = optax.chain(optax_ext.gal(3, learning_rate=0.1), opt)
  state = tx.init(params)
  extra_power = {"input_power": {"W": jnp.asarray(float(np.mean(np.sum(x**2, 1)))), "b": None}}
  start = float(loss(model(params)))
  for _ in range(15):
    extra = optax_ext.gal_extra_args(model, params, loss)
    if base == "insgd":
      extra.update(extra_power)
    u, state = tx.update(None, state, params, **extra)
    params = optax.apply_updates(params, u)
  assert float(loss(model(params))) < start


def test_errors_name_the_argument():
  tx = optax_ext.gal(3)
  params = {"W": jnp.ones((4, 3))}
  state = tx.init(params)
  model = lambda p: jnp.ones((2, 4)) @ p["W"]
  extra = optax_ext.gal_extra_args(model, params, lambda z: jnp.mean(z))
  for name in ("outputs", "loss_fn", "outputs_vjp"):
    bad = dict(extra)
    del bad[name]
    with pytest.raises(ValueError, match=name):
      tx.update(None, state, params, **bad)
  wrong = optax_ext.gal(5)
  with pytest.raises(ValueError, match="outputs"):
    wrong.update(None, wrong.init(params), params, **extra)
  for kwargs, name in [
    ({"alpha": 0.0}, "alpha"),
    ({"beta": -1.0}, "beta"),
    ({"hidden": (0, 3)}, "hidden"),
    ({"output_dim": 0}, "output_dim"),
    ({"learning_rate": -0.1}, "learning_rate"),
  ]:
    with pytest.raises(ValueError, match=name):
      optax_ext.gal(**{"output_dim": 3, **kwargs})


def test_diagnostics_and_schedule():
  x, y, W, b = _setup("mse")
  params = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  model = lambda p: jnp.asarray(x, jnp.float32) @ p["W"] + p["b"]
  tx = optax_ext.gal(
    3, hidden=(8,), activation=jax.nn.relu, learning_rate=optax.exponential_decay(0.1, 1, 0.5)
  )
  state = tx.init(params)
  _, state = tx.update(
    None, state, params, **optax_ext.gal_extra_args(model, params, _jax_loss("mse", y))
  )
  d = optax_ext.diagnostics(state)
  assert set(d) == {"gal/used_adjusted", "gal/tentative_loss", "gal/remainder", "gal/cosine"}
  assert -1.0 <= float(d["gal/cosine"]) <= 1.0
