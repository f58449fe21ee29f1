"""INSGD against a NumPy transcription of the paper's Algorithm 1, and under optax's wrappers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext
from optax_ext.insgd import InputPower

E = float(np.e)


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(4, (3, 3), feature_group_count=2, padding="VALID")(x))  # grouped
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(3)(x)


def algorithm1(grads, powers, theta0, lr, momentum, beta, eps, wd, nesterov=False):
  """One leaf, all steps: Algorithm 1, its momentum written as optax.trace
  (docs/design.md, INSGD — Definition).

  The paper's b_t = γ b_{t-1} + (1-γ) g_t is the same method with the learning
  rate scaled by 1-γ; the experiments (PyTorch SGD) use b_t = γ b_{t-1} + g_t.
  P and the division are per output unit: the leaf's last axis.
  """
  theta = np.array(theta0, np.float64)
  P = b = None
  out, scales = [], []
  for t, (g, m) in enumerate(zip(grads, powers), start=1):
    g = np.array(g, np.float64)
    if m is not None:
      m = np.array(m, np.float64)
      P = m if t == 1 else beta * P + (1 - beta) * m  # P_1 = m_1, then Eq. 26/29
      f = np.maximum(np.log(P), eps)  # f_eps(log P), Eq. 27
      g = g / f  # Eq. 28
      scales.append(np.mean(1 / f))
    g = g + wd * theta  # weight decay after the division
    b = g if b is None else momentum * b + g
    theta = theta - lr * (g + momentum * b if nesterov else b)
    out.append(theta.copy())
  return out, scales


def test_matches_algorithm1_for_20_steps_on_a_cnn():
  """Two runs: plain inputs, and inputs scaled by 0.05 so log P < ε (the floor) with Nesterov."""
  model = SmallCNN()
  rng = np.random.default_rng(0)
  lr, mom, beta, eps, wd = 0.05, 0.9, 0.8, 0.01, 1e-3
  keys = [(m, k) for m in ("Conv_0", "Conv_1", "Dense_0") for k in ("kernel", "bias")]

  @jax.jit
  def grads_and_power(p, x, y):
    def loss(p):
      z, power = optax_ext.capture_input_power(model.apply, {"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(z, y).mean(), power

    (_, power), g = jax.value_and_grad(loss, has_aux=True)(p)
    return g, power

  for scale_input, nesterov in [(1.0, False), (0.05, True)]:
    xs = [jnp.asarray(rng.normal(size=(8, 9, 9, 2)) * scale_input, jnp.float32) for _ in range(20)]
    ys = [jnp.asarray(rng.integers(0, 3, 8)) for _ in range(20)]
    params = model.init(jax.random.key(0), xs[0])["params"]
    tx = optax_ext.insgd(
      lr, momentum=mom, nesterov=nesterov, input_momentum=beta, eps=eps, weight_decay=wd
    )
    state = tx.init(params)
    step = jax.jit(lambda g, s, p, pw, tx=tx: tx.update(g, s, p, input_power=pw))
    seen = {k: ([], []) for k in keys}  # the gradients and powers the optimizer was given
    traj = {k: [] for k in keys}
    p = params
    for x, y in zip(xs, ys):
      g, power = grads_and_power(p, x, y)
      for m, k in keys:
        seen[m, k][0].append(np.asarray(g[m][k]))
        pw = power.powers[m][k]
        seen[m, k][1].append(None if pw is None else np.asarray(pw))
      u, state = step(g, state, p, power)
      p = optax.apply_updates(p, u)
      for m, k in keys:
        traj[m, k].append(np.asarray(p[m][k]))
    floors = 0
    for m, k in keys:
      ref, scales = algorithm1(*seen[m, k], params[m][k], lr, mom, beta, eps, wd, nesterov)
      floors += sum(np.isclose(s, 1 / eps) for s in scales)
      for t in range(20):
        np.testing.assert_allclose(
          traj[m, k][t], ref[t], rtol=2e-4, atol=1e-6, err_msg=f"{m} {k} {t}"
        )
    assert seen["Conv_1", "kernel"][1][0].shape == (4,)  # grouped: one power per output unit
    assert seen["Dense_0", "bias"][1][0] is None
    if scale_input < 1:
      assert floors > 0, "the eps floor was never reached"
    else:
      assert floors == 0


def test_first_step_uses_the_batch_power_and_then_the_running_mean():
  """Hand-worked: P_1 = m_1 = e^4, P_2 = 0.5 e^4 + 0.5 e^2; no momentum, lr 1."""
  tx = optax_ext.insgd(1.0, momentum=0.0, input_momentum=0.5)
  params = {"w": jnp.zeros((2, 1))}
  g = {"w": jnp.ones((2, 1))}
  s = tx.init(params)
  u, s = tx.update(g, s, params, input_power={"w": jnp.asarray(E**4)})
  np.testing.assert_allclose(u["w"], -0.25, rtol=1e-6)
  u, s = tx.update(g, s, params, input_power={"w": jnp.asarray(E**2)})
  np.testing.assert_allclose(u["w"], -1 / np.log(0.5 * E**4 + 0.5 * E**2), rtol=1e-6)
  # input_momentum 0: P_t = m_t.
  tx0 = optax_ext.insgd(1.0, momentum=0.0, input_momentum=0.0)
  s0 = tx0.init(params)
  _, s0 = tx0.update(g, s0, params, input_power={"w": jnp.asarray(E**4)})
  u, _ = tx0.update(g, s0, params, input_power={"w": jnp.asarray(E**2)})
  np.testing.assert_allclose(u["w"], -0.5, rtol=1e-6)


def test_leaves_without_power_update_like_sgd():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.array([0.3, -0.2])}
  for nesterov in (False, True):
    tx = optax_ext.insgd(0.1, momentum=0.9, nesterov=nesterov)
    ref = optax.sgd(0.1, momentum=0.9, nesterov=nesterov)
    s, r = tx.init(params), ref.init(params)
    for _ in range(4):
      u, s = tx.update(grads, s, params, input_power={"w": jnp.asarray(5.0), "b": None})
      ur, r = ref.update(grads, r, params)
      np.testing.assert_array_equal(u["b"], ur["b"])
      np.testing.assert_allclose(u["w"], ur["w"] / np.log(5.0), rtol=1e-6)


def test_power_shapes_broadcast_along_the_output_axis():
  tx = optax_ext.scale_by_input_norm()
  params = {"k": jnp.ones((3, 3, 2, 4))}
  state = tx.init(params)
  vec = jnp.asarray([E, E**2, E**4, E**0.5])
  want = np.broadcast_to([1.0, 0.5, 0.25, 2.0], (3, 3, 2, 4))
  for shaped in (vec, vec.reshape(1, 1, 1, 4)):
    u, _ = tx.update(params, state, params, input_power={"k": shaped})
    np.testing.assert_allclose(u["k"], want, rtol=1e-6)
  with pytest.raises(ValueError, match="input_power"):
    tx.update(params, state, params, input_power={"k": jnp.ones((3, 1, 1, 4))})


def test_input_power_errors_name_the_argument():
  tx = optax_ext.insgd(0.1)
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  state = tx.init(params)
  with pytest.raises(ValueError, match="input_power"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match="input_power.*structure"):
    tx.update(params, state, params, input_power={"w": jnp.asarray(2.0)})
  with pytest.raises(ValueError, match="input_power"):
    tx.update(params, state, params, input_power={"w": jnp.ones((3, 2)), "b": None})


def test_bad_hyperparameters():
  for kwargs, name in [
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"input_momentum": -0.1}, "input_momentum"),
    ({"input_momentum": 1.0}, "input_momentum"),
    ({"eps": 0.0}, "eps"),
    ({"norm_order": 3}, "norm_order"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"eps": float("nan")}, "eps"),
  ]:
    kw = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
      optax_ext.insgd(**kw)
  with pytest.raises(ValueError, match="input_momentum"):
    optax_ext.scale_by_input_norm(input_momentum=2.0)


def _tree():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.array([0.3, -0.2])}
  power = {"w": jnp.asarray(E**2), "b": None}
  return params, grads, power


def test_multisteps_uses_the_mean_gradient_and_the_last_power():
  params, grads, power = _tree()
  tx = optax.MultiSteps(optax_ext.insgd(0.1, momentum=0.0), every_k_schedule=2)
  s = tx.init(params)
  u, s = tx.update(grads, s, params, input_power={"w": jnp.asarray(E**9), "b": None})
  np.testing.assert_array_equal(u["w"], 0.0)
  g2 = jax.tree.map(lambda g: 3 * g, grads)
  u, s = jax.jit(lambda g, s: tx.update(g, s, params, input_power=power))(g2, s)
  np.testing.assert_allclose(u["w"], -0.1 * 2 * grads["w"] / 2.0, rtol=1e-6)  # mean 2g, log P 2
  np.testing.assert_allclose(u["b"], -0.1 * 2 * grads["b"], rtol=1e-6)


def test_diagnostics_report_log_power_and_step_scale():
  tx = optax_ext.insgd(0.1)
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  _, state = tx.update(
    params, tx.init(params), params, input_power={"w": jnp.asarray(E**3), "b": None}
  )
  d = optax_ext.diagnostics(state)
  np.testing.assert_allclose(d["insgd/log_power/w"], 3.0, rtol=1e-6)
  np.testing.assert_allclose(d["insgd/step_scale/w"], 1 / 3.0, rtol=1e-6)
  assert np.isnan(d["insgd/log_power/b"])


def test_float64_parameters_match_algorithm1_to_1e_12():
  """Float64 parameters keep a float64 running power and division (Eq. 26-29), over 8 steps."""
  rng = np.random.default_rng(7)
  lr, mom, beta, eps, wd, steps = 0.05, 0.9, 0.8, 0.01, 1e-3, 8
  shapes = {"conv": (3, 3, 2, 4), "dense": (6, 5), "bias": (5,)}
  grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(steps)]
  powers = [  # one power per output unit for the conv, a scalar for the dense layer
    {"conv": rng.uniform(0.5, 30.0, size=4), "dense": rng.uniform(0.9, 50.0), "bias": None}
    for _ in range(steps)
  ]
  powers[0]["conv"][0] = 0.7  # log P < ε: the floor
  theta0 = {k: rng.normal(size=s) for k, s in shapes.items()}
  as_jax = lambda tree: jax.tree.map(jnp.asarray, tree)
  with jax.enable_x64(True):
    for nesterov in (False, True):
      tx = optax_ext.insgd(
        lr, momentum=mom, nesterov=nesterov, input_momentum=beta, eps=eps, weight_decay=wd
      )
      params = as_jax(theta0)
      state = tx.init(params)
      step = jax.jit(lambda g, s, p, pw, tx=tx: tx.update(g, s, p, input_power=pw))
      traj = []
      for g, pw in zip(grads, powers):
        u, state = step(as_jax(g), state, params, as_jax(pw))
        params = optax.apply_updates(params, u)
        traj.append(params)
      assert state[0].power["conv"].dtype == jnp.float64
      for k in shapes:
        seen = ([g[k] for g in grads], [pw[k] for pw in powers])
        ref, _ = algorithm1(*seen, theta0[k], lr, mom, beta, eps, wd, nesterov)
        for t in range(steps):
          assert traj[t][k].dtype == jnp.float64
          # atol: float64 rounding of a parameter that happens to lie near zero
          np.testing.assert_allclose(traj[t][k], ref[t], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize(
  "dtype,power_dtype,state_dtype",
  [
    (jnp.bfloat16, None, jnp.float32),
    (jnp.float16, None, jnp.float32),
    (jnp.float32, None, jnp.float32),
    (jnp.float64, None, jnp.float64),
    (jnp.float64, jnp.float32, jnp.float32),
    (jnp.bfloat16, "float64", jnp.float64),
  ],
)
def test_state_dtype_follows_the_parameters_or_power_dtype(dtype, power_dtype, state_dtype):
  with jax.enable_x64(True):
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.ones(2, dtype)}
    tx = optax_ext.insgd(0.1, power_dtype=power_dtype)
    state = tx.init(params)
    power = {"w": jnp.asarray(E**2), "b": None}  # log P = 2, in float64
    u, new = jax.jit(lambda s: tx.update(params, s, params, input_power=power))(state)
    assert state[0].power["w"].dtype == new[0].power["w"].dtype == state_dtype
    assert u["w"].dtype == u["b"].dtype == dtype
    tol = 2 * float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(u["w"], np.float64), -0.1 / 2, rtol=tol)


def _captured(q):
  """A dense layer's gradient and input power, captured with order q under jit."""
  x = np.random.default_rng(0).normal(size=(4, 3))
  model = nn.Dense(2)
  params = model.init(jax.random.key(0), jnp.asarray(x, jnp.float32))["params"]

  @jax.jit
  def grads_and_power(p, x):
    def loss(p):
      z, power = optax_ext.capture_input_power(model.apply, {"params": p}, x, norm_order=q)
      return jnp.mean(z**2), power

    (_, power), g = jax.value_and_grad(loss, has_aux=True)(p)
    return g, power

  grads, power = grads_and_power(params, jnp.asarray(x, jnp.float32))
  m = np.mean(np.sum(np.abs(x) ** q, axis=-1))  # the batch mean of ||x||_q^q
  return params, grads, power, m


@pytest.mark.parametrize("captured", [1, 2])
def test_norm_order_is_said_once_and_a_mismatch_is_refused(captured):
  params, grads, power, m = _captured(captured)
  assert isinstance(power, InputPower) and power.norm_order == captured  # through jit and grad
  step = lambda tx: jax.jit(lambda g, s, pw: tx.update(g, s, params, input_power=pw))
  for tx in (optax_ext.insgd(0.1, momentum=0.0), optax_ext.insgd(0.1, 0.0, norm_order=captured)):
    u, _ = step(tx)(grads, tx.init(params), power)
    np.testing.assert_allclose(u["kernel"], -0.1 * grads["kernel"] / np.log(m), rtol=1e-5)
    np.testing.assert_allclose(u["bias"], -0.1 * grads["bias"], rtol=1e-6)
  mask = {"kernel": True, "bias": False}
  wrappers = {  # every wrapper hands the tagged power on, order and all
    "plain": lambda q: optax_ext.insgd(0.1, norm_order=q),
    "masked": lambda q: optax.masked(
      optax_ext.insgd(0.1, norm_order=q), mask, mask_compatible_extra_args=True
    ),
    "multisteps": lambda q: optax.MultiSteps(optax_ext.insgd(0.1, norm_order=q), 2),
    "apply_if_finite": lambda q: optax.apply_if_finite(optax_ext.insgd(0.1, norm_order=q), 3),
    "inject_hyperparams": lambda q: optax.inject_hyperparams(
      optax_ext.insgd, static_args="norm_order"
    )(0.1, norm_order=q),
  }
  other = 3 - captured
  for name, wrap in wrappers.items():
    tx = wrap(captured)
    step(tx)(grads, tx.init(params), power)
    tx = wrap(other)
    with pytest.raises(
      ValueError, match=f"captured with norm_order={captured}.*built with norm_order={other}"
    ):
      step(tx)(grads, tx.init(params), power)
      pytest.fail(name)


def test_masked_kernel_passes_through_and_the_order_survives_masking():
  params = {"w": jnp.ones((3, 2)), "v": jnp.ones((2, 2)), "b": jnp.ones(2)}
  grads = {"w": jnp.full((3, 2), 0.5), "v": jnp.full((2, 2), 0.7), "b": jnp.array([0.3, -0.2])}
  power = InputPower({"w": jnp.asarray(E**2), "v": jnp.asarray(E**4), "b": None}, norm_order=1)
  mask = {"w": True, "v": False, "b": True}
  tx = optax.masked(
    optax_ext.insgd(0.1, momentum=0.0, norm_order=1), mask, mask_compatible_extra_args=True
  )
  u, _ = jax.jit(lambda s, pw: tx.update(grads, s, params, input_power=pw))(tx.init(params), power)
  np.testing.assert_allclose(u["w"], -0.1 * grads["w"] / 2.0, rtol=1e-6)
  np.testing.assert_array_equal(u["v"], grads["v"])  # masked out: untouched
  np.testing.assert_allclose(u["b"], -0.1 * grads["b"], rtol=1e-6)


def test_norm_order_errors():
  with pytest.raises(ValueError, match="norm_order"):
    InputPower({}, norm_order=3)
  params, grads, power = _tree()
  tx = optax.inject_hyperparams(optax_ext.insgd)(0.1, norm_order=2)  # not listed as static
  with pytest.raises(ValueError, match="static_args"):
    jax.jit(lambda s: tx.update(grads, s, params, input_power=power))(tx.init(params))
