"""INSGD against a NumPy transcription of the paper's Algorithm 1."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(3)(x)


def algorithm1(grads, powers, params, lr, momentum, beta, eps, wd, nesterov=False):
  """One leaf, all steps: Algorithm 1 with optax.trace momentum (SPEC §3)."""
  theta = np.array(params, np.float64)
  P = b = None
  out, scales = [], []
  for t, (g, m) in enumerate(zip(grads, powers), start=1):
    g = np.array(g, np.float64)
    if m is not None:
      m = np.array(m, np.float64)
      P = m if t == 1 else beta * P + (1 - beta) * m  # first-step rule P_1 = m_1
      f = np.maximum(np.log(P), eps)  # Eq. 27
      g = g / f
      scales.append(np.mean(1 / f))
    g = g + wd * theta
    b = g if b is None else momentum * b + g
    step = g + momentum * b if nesterov else b
    theta = theta - lr * step
    out.append(theta.copy())
  return out, scales


@pytest.mark.parametrize("scale_input,nesterov", [(1.0, False), (0.05, True)])
def test_matches_algorithm1_for_20_steps_on_a_cnn(scale_input, nesterov):
  """scale_input=0.05 makes the conv's input power < e^ε, so the ε floor is hit."""
  model = SmallCNN()
  rng = np.random.default_rng(0)
  xs = [jnp.asarray(rng.normal(size=(8, 7, 7, 2)) * scale_input, jnp.float32) for _ in range(20)]
  ys = [jnp.asarray(rng.integers(0, 3, 8)) for _ in range(20)]
  params = model.init(jax.random.key(0), xs[0])["params"]
  lr, mom, beta, eps, wd = 0.05, 0.9, 0.8, 0.01, 1e-3
  tx = optax_ext.insgd(
    lr, momentum=mom, nesterov=nesterov, input_momentum=beta, eps=eps, weight_decay=wd
  )
  state = tx.init(params)

  @jax.jit
  def grads_and_power(p, x, y):
    def loss(p):
      z, power = optax_ext.capture_input_power(model.apply, {"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(z, y).mean(), power

    (_, power), g = jax.value_and_grad(loss, has_aux=True)(p)
    return g, power

  # Record the optimizer's trajectory, and the gradients and powers it was given.
  keys = [("Conv_0", "kernel"), ("Conv_0", "bias"), ("Dense_0", "kernel"), ("Dense_0", "bias")]
  seen = {k: ([], []) for k in keys}
  traj = {k: [] for k in keys}
  p = params
  step = jax.jit(lambda g, s, p, pw: tx.update(g, s, p, input_power=pw))
  for x, y in zip(xs, ys):
    g, power = grads_and_power(p, x, y)
    for k in keys:
      seen[k][0].append(np.asarray(g[k[0]][k[1]]))
      seen[k][1].append(None if power[k[0]][k[1]] is None else np.asarray(power[k[0]][k[1]]))
    u, state = step(g, state, p, power)
    p = optax.apply_updates(p, u)
    for k in keys:
      traj[k].append(np.asarray(p[k[0]][k[1]]))
  floors = 0
  for k in keys:
    ref, scales = algorithm1(
      seen[k][0], seen[k][1], params[k[0]][k[1]], lr, mom, beta, eps, wd, nesterov
    )
    floors += sum(np.isclose(s, 1 / eps) for s in scales)
    for t in range(20):
      np.testing.assert_allclose(traj[k][t], ref[t], rtol=2e-4, atol=1e-6, err_msg=f"{k} {t}")
  if scale_input < 1:
    assert floors > 0, "the eps floor was never reached"
  # Biases carry no input power.
  assert seen[("Dense_0", "bias")][1][0] is None


def test_leaves_without_power_update_like_sgd():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.array([0.3, -0.2])}
  tx = optax_ext.insgd(0.1, momentum=0.9)
  ref = optax.sgd(0.1, momentum=0.9)
  s, r = tx.init(params), ref.init(params)
  for _ in range(4):
    u, s = tx.update(grads, s, params, input_power={"w": jnp.asarray(5.0), "b": None})
    ur, r = ref.update(grads, r, params)
    np.testing.assert_allclose(u["b"], ur["b"], rtol=1e-7)
    np.testing.assert_allclose(u["w"], ur["w"] / np.log(5.0), rtol=1e-6)


def test_input_power_errors_name_the_argument():
  tx = optax_ext.insgd(0.1)
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  state = tx.init(params)
  with pytest.raises(ValueError, match="input_power"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match="input_power"):
    tx.update(params, state, params, input_power={"w": jnp.asarray(2.0)})
  with pytest.raises(ValueError, match="input_power"):
    tx.update(params, state, params, input_power={"w": jnp.ones((3, 2)), "b": None})


def test_bad_hyperparameters():
  for kwargs, name in [
    ({"momentum": 1.0}, "momentum"),
    ({"input_momentum": -0.1}, "input_momentum"),
    ({"eps": 0.0}, "eps"),
    ({"norm_order": 3}, "norm_order"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"learning_rate": -1.0}, "learning_rate"),
  ]:
    kw = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
      optax_ext.insgd(**kw)


def test_diagnostics_report_log_power_and_step_scale():
  tx = optax_ext.insgd(0.1)
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  _, state = tx.update(
    params, tx.init(params), params, input_power={"w": jnp.asarray(np.e**3), "b": None}
  )
  d = optax_ext.diagnostics(state)
  np.testing.assert_allclose(d["insgd/log_power/w"], 3.0, rtol=1e-6)
  np.testing.assert_allclose(d["insgd/step_scale/w"], 1 / 3.0, rtol=1e-6)
  assert np.isnan(d["insgd/log_power/b"])
