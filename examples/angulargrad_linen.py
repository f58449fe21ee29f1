"""AngularGrad against Adam: a linen MLP on scikit-learn's digits.

AngularGrad is Adam with each entry's step scaled by a coefficient ``phi`` of the angle
between consecutive gradients (docs/design.md, AngularGrad — Definition). It needs
nothing but the gradient, so the train step is optax's usual one. The script trains the
same model from the same start with Adam and with both AngularGrad variants, prints the
test accuracy and the range of ``phi`` read from the optimizer state, and plots the
training loss.

Run: ``python examples/angulargrad_linen.py [figure.png]`` (a few seconds on a CPU).
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import optax_ext

STEPS, BATCH = 300, 128


class MLP(nn.Module):
  """64 pixels -> 64 hidden units -> 10 classes."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


def load():
  """The 8x8 digits scaled to [0, 1], split 1,500 / 297 after a fixed shuffle."""
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  x, y = (x[order] / 16.0).astype(np.float32), y[order]
  return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def train(tx, params, model, data):
  """STEPS minibatch steps of ``tx``; returns the final parameters, state and the losses."""
  (x, y), rng = data, np.random.default_rng(1)

  def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, xb), yb
    ).mean()

  @jax.jit
  def step(p, state, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  state, losses = tx.init(params), []
  for _ in range(STEPS):
    batch = rng.choice(len(y), BATCH, replace=False)
    params, state, loss = step(params, state, x[batch], y[batch])
    losses.append(float(loss))
  return params, state, losses


def main(figure="angulargrad_linen.png"):
  train_data, (x_test, y_test) = load()
  model = MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  optimizers = {
    "adam": optax.adam(1e-3),
    "angulargrad cos": optax_ext.angulargrad(1e-3, method="cos"),
    "angulargrad tan": optax_ext.angulargrad(1e-3, method="tan"),
  }
  curves = {}
  print(f"{'optimizer':<16} {'final loss':>10} {'test acc':>9}   phi (min..max, last step)")
  for name, tx in optimizers.items():
    final, state, curves[name] = train(tx, params, model, train_data)
    accuracy = float(jnp.mean(jnp.argmax(model.apply({"params": final}, x_test), -1) == y_test))
    phi = optax_ext.diagnostics(state)
    phi = f"{phi['angulargrad/phi_min']:.3f}..{phi['angulargrad/phi_max']:.3f}" if phi else "-"
    print(f"{name:<16} {curves[name][-1]:>10.4f} {accuracy:>9.3f}   {phi}")

  fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
  for name, losses in curves.items():
    ax.plot(np.convolve(losses, np.ones(10) / 10, mode="valid"), label=name)
  ax.set(xlabel="step", ylabel="training loss (mean of 10 steps)", yscale="log")
  ax.set_title("Digits, linen MLP: AngularGrad and Adam at learning rate 1e-3")
  ax.legend()
  fig.savefig(figure, dpi=120)
  print(f"figure: {figure}")


if __name__ == "__main__":
  main(*sys.argv[1:])
