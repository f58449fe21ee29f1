"""GAL against a float64 NumPy transcription of Algorithm 1 (linear model, linear regressor)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext
from optax_ext.gal import gal_chain


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
  """Algorithm 1 for the model z = xW + b and the linear regressor h(z) = zA + c, in float64."""
  z = x @ W + b
  eta_t = beta * lr
  l0 = loss(z, y)
  nab = loss_grad(z, y)
  nab_norm = np.linalg.norm(nab, axis=1, keepdims=True)
  v = z @ A + c
  vn = np.linalg.norm(v, axis=1, keepdims=True)
  v_adj = alpha * nab_norm * v / vn  # Eq. 4, per sample
  g = nab + v_adj  # Eq. 5
  tent = loss(z - eta_t * g, y)
  weight = 1.0 if linear == "sum" else 1.0 / len(z)  # Eq. 7 sums; the published code averages
  r = tent - l0 + eta_t * weight * np.sum(nab * g)
  use = tent <= l0  # lines 7-10
  cot = g if use else nab
  dW, db = x.T @ cot, cot.sum(0)
  # The regressor's gradient of |r| (objective 6), by the chain rule:
  # d|r|/dṽ_n = sign(r) η̃ (w ∇_n - ℓ'(z - η̃ g)_n), then through ṽ_n = α‖∇_n‖ v_n/‖v_n‖.
  s = np.sign(r) * eta_t * (weight * nab - loss_grad(z - eta_t * g, y))
  u = v / vn
  dv = alpha * nab_norm / vn * (s - u * np.sum(u * s, axis=1, keepdims=True))
  dA, dc = z.T @ dv, dv.sum(0)
  cos = np.sum(v_adj * nab) / (np.linalg.norm(v_adj) * np.linalg.norm(nab))
  return dict(z=z, use=use, tent=tent, r=abs(r), dW=dW, db=db, dA=dA, dc=dc, cos=cos)


def close_to_1e_12(got, want, scale=None):
  """Within 1e-12 of ``want``, relative to each entry or to ``scale``.

  ``scale`` (default: the array's largest entry) is the size of the terms an
  entry is a sum of: the second bound admits the float64 rounding of entries
  whose terms nearly cancel (the remainder is a difference of two losses).
  """
  scale = np.max(np.abs(np.asarray(want, np.float64))) if scale is None else scale
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale)


def _setup(task, seed=0, d=3, n=6, k=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, k))
  y = rng.integers(0, d, n) if task == "ce" else rng.normal(size=(n, d))
  W, b = rng.normal(size=(k, d)) * 0.5, np.zeros(d)
  return x, y, W, b


def _jax_loss(task, y):
  if task == "ce":
    return lambda z: optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(y)).mean()
  return lambda z: jnp.mean((z - jnp.asarray(y)) ** 2)


def _finite(tree):
  return all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in jax.tree.leaves(tree))


def _all_zero(tree):
  return all(not np.any(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree))


def _f32_problem(task="ce", seed=5, n=6, k=4):
  x, y, W, b = _setup(task, seed=seed, n=n, k=k)
  params = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  model = lambda p: jnp.asarray(x, p["W"].dtype) @ p["W"] + p["b"]
  return params, model, _jax_loss(task, y)


@pytest.mark.parametrize(
  "task,alpha,beta,branch,linear",
  [
    # A small adjustment and tentative step lower the loss (adjusted gradient used);
    # an adjustment ten times the gradient, in the regressor's direction, does not.
    ("ce", 0.05, 0.5, True, "sum"),
    ("ce", 10.0, 50.0, False, "mean"),
    ("mse", 0.05, 0.5, True, "mean"),
    ("mse", 10.0, 50.0, False, "sum"),
  ],
)
def test_float64_steps_match_transcription(task, alpha, beta, branch, linear):
  """A float64 model keeps GAL in float64: outputs, remainder and gradients to 1e-12."""
  d, lr = 3, 0.1
  x, y, W, b = _setup(task, d=d)
  loss, loss_grad = (ce, ce_grad) if task == "ce" else (mse, mse_grad)
  close = close_to_1e_12
  with jax.enable_x64(True):
    # SGD behind a zero-decay trace, whose state then holds the regressor's gradient.
    regressor_optimizer = optax.chain(optax.trace(decay=0.0), optax.sgd(lr))
    tx = optax_ext.gal(
      d,
      hidden=(),
      alpha=alpha,
      beta=beta,
      learning_rate=lr,
      regressor_optimizer=regressor_optimizer,
      reference_compat=(linear == "mean"),
    )
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    state = tx.init(params)
    assert {a.dtype for a in jax.tree.leaves(state)} == {jnp.dtype("int32"), jnp.dtype("float64")}
    theta = state.regressor_params["Dense_0"]
    A, c = np.asarray(theta["kernel"]), np.asarray(theta["bias"])
    model = lambda p: jnp.asarray(x) @ p["W"] + p["b"]

    @jax.jit
    def step(state, params):
      extra = optax_ext.gal_extra_args(model, params, _jax_loss(task, y))
      grads, state = tx.update(None, state, params, **extra)
      return extra["outputs"], grads, state

    for t in range(3):
      ref = gal_step(W, b, A, c, x, y, lr, alpha, beta, loss, loss_grad, linear)
      if t == 0:
        assert ref["use"] == branch  # the constructed case takes the intended branch
      z, grads, state = step(state, params)
      assert float(state.used_adjusted) == float(ref["use"]), t
      close(z, ref["z"])
      close(state.tentative_loss, ref["tent"])
      close(state.remainder, ref["r"], scale=ref["tent"])
      close(optax_ext.diagnostics(state)["gal/remainder"], ref["r"], scale=ref["tent"])
      close(state.cosine, ref["cos"])
      close(grads["W"], ref["dW"])  # the chosen output gradient, back-propagated once
      close(grads["b"], ref["db"])
      reg_grads = state.regressor_state[0].trace["Dense_0"]
      close(reg_grads["kernel"], ref["dA"])
      close(reg_grads["bias"], ref["dc"])
      new_theta = state.regressor_params["Dense_0"]
      close(new_theta["kernel"], A - lr * ref["dA"])
      close(new_theta["bias"], c - lr * ref["dc"])
      # Advance both: the model by SGD, the regressor as GAL did.
      W, b = W - lr * ref["dW"], b - lr * ref["db"]
      A, c = np.asarray(new_theta["kernel"]), np.asarray(new_theta["bias"])
      params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}


def test_schedule_is_read_at_the_step_count():
  # With lr(t) = 0.1 * 0.5^t (in float64; optax's schedules compute in float32), step 2 of
  # a scheduled GAL equals the transcription at lr 0.05.
  x, y, W, b = _setup("mse", seed=2)
  with jax.enable_x64(True):
    tx = optax_ext.gal(
      3,
      hidden=(),
      alpha=0.05,
      beta=0.5,
      learning_rate=lambda count: 0.1 * 0.5 ** jnp.asarray(count, jnp.float64),
      regressor_optimizer=optax.sgd(0.0),
    )
    model = lambda p: jnp.asarray(x) @ p["W"] + p["b"]
    loss = _jax_loss("mse", y)
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    state = tx.init(params)
    theta = state.regressor_params["Dense_0"]
    A, c = np.asarray(theta["kernel"]), np.asarray(theta["bias"])

    @jax.jit
    def two_steps(state):
      extra = optax_ext.gal_extra_args(model, params, loss)
      _, state = tx.update(None, state, params, **extra)
      return tx.update(None, state, params, **extra)

    grads, state = two_steps(state)
  ref = gal_step(W, b, A, c, x, y, 0.05, 0.05, 0.5, mse, mse_grad)
  close_to_1e_12(state.tentative_loss, ref["tent"])
  close_to_1e_12(grads["W"], ref["dW"])


def test_zero_regressor_output_gives_the_vanilla_gradient():
  params, model, loss = _f32_problem()
  tx = optax_ext.gal(3, hidden=(4,), alpha=0.1, learning_rate=0.1)
  state = tx.init(params)
  state = state._replace(regressor_params=jax.tree.map(jnp.zeros_like, state.regressor_params))
  (grads, state), vanilla = jax.jit(
    lambda s, p: (
      tx.update(None, s, p, **optax_ext.gal_extra_args(model, p, loss)),
      jax.grad(lambda q: loss(model(q)))(p),
    )
  )(state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads, vanilla)
  assert _finite(state)
  assert float(state.cosine) == 0.0


def test_vanilla_gradient_path_equals_the_one_pass_path():
  params, model, loss = _f32_problem(seed=3)
  used = []
  for alpha, beta in ((0.05, 0.5), (10.0, 50.0)):  # both branches
    tx = optax_ext.gal(3, hidden=(8,), alpha=alpha, beta=beta, learning_rate=0.1)

    @jax.jit
    def both(state, params, tx=tx):
      extra = optax_ext.gal_extra_args(model, params, loss)
      vanilla = jax.grad(lambda p: loss(model(p)))(params)
      return tx.update(None, state, params, **extra), tx.update(vanilla, state, params, **extra)

    (u1, s1), (u2, s2) = both(tx.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u1, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s1, s2)
    used.append(float(s1.used_adjusted))
  assert used == [1.0, 0.0]


def _count_model_matmuls(jaxpr, shape):
  """dot_generals, in a jaxpr and its sub-jaxprs, with an operand of the model input's shape."""
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general" and any(
      getattr(v.aval, "shape", None) == shape for v in eqn.invars
    ):
      n += 1
    for p in eqn.params.values():
      for sub in p if isinstance(p, (list, tuple)) else (p,):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          n += _count_model_matmuls(getattr(inner, "jaxpr", inner), shape)
  return n


def test_model_is_differentiated_once_per_step():
  # Batch 7, input width 5: x has a shape nothing else in the step has.
  params, model, loss = _f32_problem(seed=1, n=7, k=5)
  tx = optax.chain(optax_ext.gal(3, hidden=(8,), learning_rate=0.1), optax.sgd(0.1))
  calls = {"forward": 0, "backward": 0}

  @jax.custom_vjp
  def counted(p):
    return model(p)

  def fwd(p):
    calls["forward"] += 1
    return jax.vjp(model, p)

  def bwd(vjp, ct):
    calls["backward"] += 1
    return vjp(ct)

  counted.defvjp(fwd, bwd)

  def one_pass(params, state):
    u, state = tx.update(None, state, params, **optax_ext.gal_extra_args(counted, params, loss))
    return optax.apply_updates(params, u), state

  def vanilla(params, state):
    extra = optax_ext.gal_extra_args(counted, params, loss)
    grads = jax.grad(lambda p: loss(counted(p)))(params)
    u, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, u), state

  state = tx.init(params)
  jax.jit(one_pass)(params, state)
  assert calls == {"forward": 1, "backward": 1}
  # In the traced step: one matmul with x forward (x @ W), one backward (xᵀ @ ct).
  assert _count_model_matmuls(jax.make_jaxpr(one_pass)(params, state).jaxpr, (7, 5)) == 2
  # The vanilla-gradient path differentiates twice (its own gradient, then VJP(ṽ)).
  assert _count_model_matmuls(jax.make_jaxpr(vanilla)(params, state).jaxpr, (7, 5)) >= 4


def _train(tx, params, model, loss, steps=12, extra_fn=None, fast=lambda p: p):
  @jax.jit
  def step(params, state):
    extra = optax_ext.gal_extra_args(model, fast(params), loss)
    if extra_fn is not None:
      extra.update(extra_fn())
    u, state = tx.update(None, state, params, **extra)
    return optax.apply_updates(params, u), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


BASES = {
  "sgd": lambda: optax.sgd(0.1),
  "momentum": lambda: optax.sgd(0.1, momentum=0.9),
  "adam": lambda: optax.adam(0.05),
  "angulargrad": lambda: optax_ext.angulargrad(0.05),
  "sp": lambda: optax_ext.sp(0.1, sparsity=0.05),
  "insgd": lambda: optax_ext.insgd(0.1),
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_in_front_of_other_optimizers(base):
  params, model, loss = _f32_problem()
  tx = optax.chain(optax_ext.gal(3, hidden=(8,), learning_rate=0.1), BASES[base]())
  extra_fn = None
  if base == "insgd":  # the batch mean of ‖x‖², the power of the linear layer's input
    power = jnp.asarray(np.mean(np.sum(_setup("ce", seed=5)[0] ** 2, 1)), jnp.float32)
    extra_fn = lambda: {"input_power": {"W": power, "b": None}}
  start = float(loss(model(params)))
  params, state = _train(tx, params, model, loss, extra_fn=extra_fn)
  assert float(loss(model(params))) < start
  assert _finite(state[0])


def test_in_front_of_lookahead():
  fast, model, loss = _f32_problem()
  params = optax.LookaheadParams.init_synced(fast)
  tx = optax.chain(
    optax_ext.gal(3, hidden=(8,), learning_rate=0.1), optax.lookahead(optax.sgd(0.1), 3, 0.5)
  )
  start = float(loss(model(fast)))
  params, _ = _train(tx, params, model, loss, fast=lambda p: p.fast)
  assert float(loss(model(params.slow))) < start
  assert float(loss(model(params.fast))) < start


def test_apply_if_finite_around_the_vanilla_path():
  # apply_if_finite behind GAL, the recommended place, is checked in tests/test_common.py;
  # around the whole chain it sees the vanilla gradient.
  params, model, loss = _f32_problem()
  nan_loss = lambda z: loss(z) * jnp.nan
  gal = optax_ext.gal(3, hidden=(8,), learning_rate=0.1)
  tx2 = optax.apply_if_finite(optax.chain(gal, optax.sgd(0.1)), 3)
  s2 = tx2.init(params)

  @jax.jit
  def vanilla_step(s):
    grads = jax.grad(lambda p: nan_loss(model(p)))(params)
    return tx2.update(grads, s, params, **optax_ext.gal_extra_args(model, params, nan_loss))

  u2, s2n = vanilla_step(s2)
  assert int(s2n.total_notfinite) == 1
  assert _all_zero(u2)


def _steps(tx, params, model, loss, steps=3):
  """``steps`` jitted updates; returns every update and the last state."""
  step = jax.jit(
    lambda s, p: tx.update(None, s, p, **optax_ext.gal_extra_args(model, p, loss)),
  )
  state, out = tx.init(params), []
  for _ in range(steps):
    updates, state = step(state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out, state


def test_gal_chain_equals_the_hand_written_chain_bit_for_bit():
  params, model, loss = _f32_problem()
  rate = optax.exponential_decay(0.2, 1, 0.7)
  kw = dict(hidden=(8,), alpha=0.05, beta=0.5)
  momentum = lambda lr: optax.sgd(lr, momentum=0.9)
  one_place = gal_chain(momentum, rate, 3, **kw)
  by_hand = optax.chain(optax_ext.gal(3, learning_rate=rate, **kw), momentum(rate))
  got, got_state = _steps(one_place, params, model, loss)
  want, want_state = _steps(by_hand, params, model, loss)
  jax.tree.map(np.testing.assert_array_equal, (got, got_state), (want, want_state))


def test_gal_chain_under_inject_hyperparams_shares_the_injected_rate():
  params, model, loss = _f32_problem()
  kw = dict(output_dim=3, hidden=(8,), alpha=0.05, beta=0.5)
  statics = ("optimizer", "output_dim", "seed", "activation")
  injected = optax.inject_hyperparams(gal_chain, static_args=statics)(optax.sgd, 0.1, **kw)
  # Equal updates and state under inject_hyperparams are checked in tests/test_common.py.
  _, state = _steps(injected, params, model, loss, steps=2)
  _, want_state = _steps(gal_chain(optax.sgd, 0.1, **kw), params, model, loss, steps=2)
  # A rate set in the state reaches GAL's tentative step too, as if built with it.
  state.hyperparams["learning_rate"] = jnp.asarray(0.5)
  extra = optax_ext.gal_extra_args(model, params, loss)
  _, set_later = jax.jit(lambda s: injected.update(None, s, params, **extra))(state)
  built_tx = gal_chain(optax.sgd, 0.5, **kw)
  _, built = jax.jit(lambda s: built_tx.update(None, s, params, **extra))(want_state)
  tentative = lambda chain_state: chain_state[0].tentative_loss
  np.testing.assert_allclose(tentative(set_later.inner_state), tentative(built), rtol=1e-6)


def test_the_learning_rate_is_required_and_the_optimizer_checked():
  with pytest.raises(ValueError, match="learning_rate.*gal_chain"):
    optax_ext.gal(3, hidden=(4,))
  for bad in (None, 0.1, lambda lr: lr):
    with pytest.raises(ValueError, match="optimizer"):
      gal_chain(bad, 0.1, 3)


def test_dtypes_diagnostics_and_activation():
  params, model, loss = _f32_problem()
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  tx = optax.chain(
    optax_ext.gal(3, hidden=(8,), activation=jax.nn.relu, learning_rate=0.1), optax.sgd(0.1)
  )
  state = tx.init(params)
  u, new = jax.jit(lambda s, p: tx.update(None, s, p, **optax_ext.gal_extra_args(model, p, loss)))(
    state, params
  )
  # Updates in the parameters' dtype are checked in tests/test_common.py. A bfloat16 model gets a float32 regressor, remainder and logs.
  assert {a.dtype for a in jax.tree.leaves(new[0])} == {jnp.dtype("int32"), jnp.dtype("float32")}
  assert _finite(u)
  d = optax_ext.diagnostics(new)
  assert set(d) == {"gal/used_adjusted", "gal/tentative_loss", "gal/remainder", "gal/cosine"}
  assert -1.0 <= float(d["gal/cosine"]) <= 1.0
  assert float(d["gal/used_adjusted"]) in (0.0, 1.0)


def test_errors_name_the_argument():
  tx = optax_ext.gal(3, hidden=(4,), learning_rate=0.1)
  params = {"W": jnp.ones((4, 3))}
  state = tx.init(params)
  model = lambda p: jnp.ones((2, 4)) @ p["W"]
  extra = optax_ext.gal_extra_args(model, params, lambda z: jnp.mean(z))
  for name in ("outputs", "loss_fn", "outputs_vjp"):
    bad = dict(extra)
    del bad[name]
    with pytest.raises(ValueError, match=name):
      tx.update(None, state, params, **bad)
  wrong = optax_ext.gal(5, hidden=(4,), learning_rate=0.1)
  with pytest.raises(ValueError, match="outputs"):
    wrong.update(None, wrong.init(params), params, **extra)
  for kwargs, name in [
    ({"alpha": -0.1}, "alpha"),
    ({"beta": 0.0}, "beta"),
    ({"beta": -1.0}, "beta"),
    ({"hidden": (0, 3)}, "hidden"),
    ({"output_dim": 0}, "output_dim"),
    ({"output_dim": 2.5}, "output_dim"),
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"activation": 3}, "activation"),
  ]:
    with pytest.raises(ValueError, match=name):
      optax_ext.gal(**{"output_dim": 3, "learning_rate": 0.1, **kwargs})
